output "cluster_name" {
  description = "Name of the ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = aws_ecs_cluster.this.arn
}

output "service_name" {
  description = "Name of the ECS service."
  value       = aws_ecs_service.this.name
}

output "service_arn" {
  description = "ARN of the ECS service."
  value       = local.service_arn
}

output "task_definition_family" {
  description = "Family of the task definition (the pipeline registers new revisions of it)."
  value       = aws_ecs_task_definition.this.family
}

output "execution_role_arn" {
  description = "ARN of the task execution role (the pipeline passes it when registering revisions)."
  value       = aws_iam_role.execution.arn
}

output "task_role_arn" {
  description = "ARN of the task role."
  value       = aws_iam_role.task.arn
}

output "security_group_id" {
  description = "ID of the service's security group (the database admits only this one)."
  value       = aws_security_group.this.id
}

output "jwt_secret_arn" {
  description = "ARN of the generated HS256 signing secret, or null when auth is off or uses a JWKS."
  value       = local.create_jwt_secret ? aws_secretsmanager_secret.jwt[0].arn : null
}

output "redeploy_state_machine_arn" {
  description = "ARN of the state machine that forces a new deployment (also callable by hand), or null when disabled."
  value       = var.redeploy_on_secret_rotation ? aws_sfn_state_machine.redeploy[0].arn : null
}

output "deployed_tag_parameter_name" {
  description = "SSM parameter holding the deployed image tag (the pipeline writes it; Terraform reads it)."
  value       = aws_ssm_parameter.image_tag.name
}

output "deployed_tag_parameter_arn" {
  description = "ARN of the deployed-image-tag parameter (the build role may write it)."
  value       = aws_ssm_parameter.image_tag.arn
}

output "db_app_proxy_secret_arn" {
  description = "ARN of the API role's credentials for RDS Proxy (JSON username/password); empty unless create_proxy_auth_secret."
  value       = try(aws_secretsmanager_secret.db_app_proxy[0].arn, "")
}
