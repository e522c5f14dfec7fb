variable "name" {
  description = "Name of the pipeline, build project and their resources."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens."
  }
}

variable "repository_id" {
  description = "Source repository as owner/name (e.g. acme/users-api)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.repository_id))
    error_message = "repository_id must look like owner/name."
  }
}

variable "branch" {
  description = "Branch whose pushes are built and deployed."
  type        = string
  default     = "main"

  validation {
    condition     = length(var.branch) > 0
    error_message = "branch must not be empty."
  }
}

variable "codestar_connection_arn" {
  description = "ARN of an existing, AVAILABLE CodeStar/CodeConnections connection. Empty: the module creates one (PENDING until a person completes the handshake in the console)."
  type        = string
  default     = ""

  validation {
    condition     = var.codestar_connection_arn == "" || can(regex("^arn:aws[a-z-]*:(codestar-connections|codeconnections):", var.codestar_connection_arn))
    error_message = "codestar_connection_arn must be empty or a connection ARN."
  }
}

variable "connection_provider_type" {
  description = "Provider of the connection the module creates: GitHub, GitLab or Bitbucket."
  type        = string
  default     = "GitHub"

  validation {
    condition     = contains(["GitHub", "GitLab", "Bitbucket"], var.connection_provider_type)
    error_message = "connection_provider_type must be GitHub, GitLab or Bitbucket."
  }
}

variable "buildspec_path" {
  description = "Path of the buildspec in the repository. It reads API_REPOSITORY_URI and PROXY_REPOSITORY_URI, pushes both images tagged with the commit and writes imagedefinitions.json naming the containers api and proxy."
  type        = string
  default     = "deploy/buildspec.yml"
}

variable "build_compute_type" {
  description = "CodeBuild compute type (the Rust release build wants at least MEDIUM)."
  type        = string
  default     = "BUILD_GENERAL1_MEDIUM"

  validation {
    condition     = contains(["BUILD_GENERAL1_SMALL", "BUILD_GENERAL1_MEDIUM", "BUILD_GENERAL1_LARGE", "BUILD_GENERAL1_XLARGE", "BUILD_GENERAL1_2XLARGE"], var.build_compute_type)
    error_message = "build_compute_type must be a BUILD_GENERAL1_* compute type."
  }
}

variable "cpu_architecture" {
  description = "Architecture the images are built for; must match the service's (X86_64 or ARM64)."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "build_timeout_minutes" {
  description = "Build timeout in minutes."
  type        = number
  default     = 60

  validation {
    condition     = var.build_timeout_minutes >= 5 && var.build_timeout_minutes <= 480
    error_message = "build_timeout_minutes must be between 5 and 480."
  }
}

variable "deploy_timeout_minutes" {
  description = "How long the ECS deploy action waits for the service to become stable."
  type        = number
  default     = 30

  validation {
    condition     = var.deploy_timeout_minutes >= 1 && var.deploy_timeout_minutes <= 60
    error_message = "deploy_timeout_minutes must be between 1 and 60."
  }
}

variable "require_approval" {
  description = "Add a manual approval between build and deploy (the approval request goes to notification_topic_arn)."
  type        = bool
  default     = false
}

variable "repository_urls" {
  description = "ECR repository URLs by short name; must contain api and proxy."
  type        = map(string)

  validation {
    condition     = contains(keys(var.repository_urls), "api") && contains(keys(var.repository_urls), "proxy")
    error_message = "repository_urls must contain the keys api and proxy."
  }
}

variable "repository_arns" {
  description = "ARNs of the ECR repositories the build may push to."
  type        = list(string)
}

variable "cluster_name" {
  description = "ECS cluster the pipeline deploys to."
  type        = string
}

variable "service_name" {
  description = "ECS service the pipeline deploys to."
  type        = string
}

variable "service_arn" {
  description = "ARN of that ECS service (the pipeline role may update only it)."
  type        = string
}

variable "task_definition_family" {
  description = "Task definition family the deploy action registers revisions of."
  type        = string
}

variable "pass_role_arns" {
  description = "Execution and task role ARNs the deploy action passes to ECS when registering a revision."
  type        = list(string)
}

variable "codebuild_log_group_name" {
  description = "CloudWatch log group of the build."
  type        = string
}

variable "codebuild_log_group_arn" {
  description = "ARN of that log group (the build role writes only there)."
  type        = string
}

variable "access_log_bucket" {
  description = "Bucket receiving the artifact bucket's S3 server access logs (under s3-access/)."
  type        = string
}

variable "artifact_retention_days" {
  description = "Days after which pipeline artifacts expire."
  type        = number
  default     = 30

  validation {
    condition     = var.artifact_retention_days >= 1
    error_message = "artifact_retention_days must be at least 1."
  }
}

variable "force_destroy_artifacts" {
  description = "Allow terraform destroy to delete the artifact bucket with its objects."
  type        = bool
  default     = false
}

variable "notification_topic_arn" {
  description = "SNS topic for failed pipeline executions and approval requests."
  type        = string
}

variable "deployed_tag_parameter_name" {
  description = "SSM parameter the build writes the deployed image tag to (Terraform reads it for the task definition)."
  type        = string
}

variable "deployed_tag_parameter_arn" {
  description = "ARN of that parameter: the only one the build role may write."
  type        = string
}

variable "kms_key_arn" {
  description = "ARN of the customer-managed KMS key for artifacts and build output."
  type        = string
}

variable "tags" {
  description = "Tags merged into every resource of the module."
  type        = map(string)
  default     = {}
}
