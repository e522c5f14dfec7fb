output "alarm_topic_arn" {
  description = "ARN of the SNS topic that receives every alarm and deployment failure."
  value       = aws_sns_topic.alarms.arn
}

output "api_log_group_name" {
  description = "Log group of the api container."
  value       = aws_cloudwatch_log_group.this["api"].name
}

output "proxy_log_group_name" {
  description = "Log group of the proxy container."
  value       = aws_cloudwatch_log_group.this["proxy"].name
}

output "codebuild_log_group_name" {
  description = "Log group of the CodeBuild project."
  value       = aws_cloudwatch_log_group.this["codebuild"].name
}

output "container_log_group_arns" {
  description = "ARNs of the api, proxy and collector log groups."
  value = [
    aws_cloudwatch_log_group.this["api"].arn,
    aws_cloudwatch_log_group.this["proxy"].arn,
    aws_cloudwatch_log_group.collector.arn,
  ]
}

output "codebuild_log_group_arn" {
  description = "ARN of the CodeBuild log group."
  value       = aws_cloudwatch_log_group.this["codebuild"].arn
}

output "dashboard_name" {
  description = "Name of the CloudWatch dashboard."
  value       = aws_cloudwatch_dashboard.this.dashboard_name
}

output "collector_log_group_name" {
  description = "Log group of the collector sidecar's own output."
  value       = aws_cloudwatch_log_group.collector.name
}

output "metrics_log_group_name" {
  description = "Log group the collector writes EMF events to."
  value       = aws_cloudwatch_log_group.emf.name
}

output "metrics_log_group_arn" {
  description = "ARN of the EMF log group (the task role may write only there)."
  value       = aws_cloudwatch_log_group.emf.arn
}

output "metrics_namespace" {
  description = "CloudWatch namespace of the service's own metrics."
  value       = var.metrics_namespace
}

output "service_dashboard_name" {
  description = "Name of the dashboard of the service's own signals."
  value       = aws_cloudwatch_dashboard.service_signals.dashboard_name
}
