output "repository_urls" {
  description = "Repository URLs by short name (api, proxy)."
  value       = { for k, r in aws_ecr_repository.this : k => r.repository_url }
}

output "repository_arns" {
  description = "Repository ARNs by short name (api, proxy)."
  value       = { for k, r in aws_ecr_repository.this : k => r.arn }
}

output "registry_id" {
  description = "ID (account) of the registry holding the repositories."
  value       = one(distinct([for r in aws_ecr_repository.this : r.registry_id]))
}

output "ecr_public_mirror" {
  description = "Image prefix that mirrors ECR Public: <registry>/<name>-ecr-public (append the public path and tag)."
  value       = "${one(distinct([for r in aws_ecr_repository.this : r.registry_id]))}.dkr.ecr.${data.aws_region.current.name}.amazonaws.com/${aws_ecr_pull_through_cache_rule.ecr_public.ecr_repository_prefix}"
}

output "ecr_public_mirror_repository_arns" {
  description = "ARN pattern of the repositories the ECR Public mirror creates (the task's execution role pulls from them)."
  value       = ["arn:${data.aws_partition.current.partition}:ecr:${data.aws_region.current.name}:${one(distinct([for r in aws_ecr_repository.this : r.registry_id]))}:repository/${aws_ecr_pull_through_cache_rule.ecr_public.ecr_repository_prefix}/*"]
}
