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
