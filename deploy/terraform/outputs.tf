output "url" {
  description = "Base URL of the service (https:// with a certificate, http:// without). Point your domain's DNS at alb_dns_name."
  value       = module.alb.url
}

output "alb_dns_name" {
  description = "DNS name of the load balancer."
  value       = module.alb.dns_name
}

output "alb_zone_id" {
  description = "Hosted zone ID of the load balancer, for a Route 53 alias record."
  value       = module.alb.zone_id
}

output "ecr_repository_urls" {
  description = "ECR repository URLs (api, proxy)."
  value       = module.registry.repository_urls
}

output "pipeline_name" {
  description = "Name of the CodePipeline that deploys every push to the branch."
  value       = module.pipeline.pipeline_name
}

output "pipeline_console_url" {
  description = "Console URL of the pipeline."
  value       = module.pipeline.pipeline_console_url
}

output "codestar_connection_arn" {
  description = "Source connection; a newly created one stays PENDING until activated in the console (Developer Tools > Settings > Connections)."
  value       = module.pipeline.connection_arn
}

output "database_endpoint" {
  description = "PostgreSQL endpoint (host:port), reachable only from the service."
  value       = "${module.database.address}:${module.database.port}"
}

output "database_secret_arn" {
  description = "RDS-managed secret with the master credentials."
  value       = module.database.master_user_secret_arn
}

output "jwt_secret_arn" {
  description = "Secrets Manager secret holding the HS256 signing key (null when auth is off or uses a JWKS)."
  value       = module.service.jwt_secret_arn
}

output "ecs_cluster_name" {
  description = "ECS cluster name."
  value       = module.service.cluster_name
}

output "ecs_service_name" {
  description = "ECS service name."
  value       = module.service.service_name
}

output "redeploy_state_machine_arn" {
  description = "State machine that forces a new deployment (run on secret rotation; can be started by hand)."
  value       = module.service.redeploy_state_machine_arn
}

output "alarm_topic_arn" {
  description = "SNS topic receiving alarms, failed deployments and failed pipeline runs."
  value       = module.observability.alarm_topic_arn
}

output "dashboard_name" {
  description = "CloudWatch dashboard of the service."
  value       = module.observability.dashboard_name
}

output "kms_key_arn" {
  description = "Customer-managed KMS key of the stack."
  value       = aws_kms_key.this.arn
}
