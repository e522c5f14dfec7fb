output "pipeline_name" {
  description = "Name of the CodePipeline."
  value       = aws_codepipeline.this.name
}

output "pipeline_arn" {
  description = "ARN of the CodePipeline."
  value       = aws_codepipeline.this.arn
}

output "pipeline_console_url" {
  description = "Console URL of the pipeline."
  value       = "https://${local.region}.console.aws.amazon.com/codesuite/codepipeline/pipelines/${aws_codepipeline.this.name}/view?region=${local.region}"
}

output "codebuild_project_name" {
  description = "Name of the CodeBuild project."
  value       = aws_codebuild_project.this.name
}

output "connection_arn" {
  description = "ARN of the source connection (a new one must be activated once in the console)."
  value       = local.connection_arn
}

output "artifact_bucket" {
  description = "Name of the artifact bucket."
  value       = aws_s3_bucket.artifacts.id
}
