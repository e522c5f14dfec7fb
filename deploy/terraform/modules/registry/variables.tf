variable "name" {
  description = "Prefix of the repository names (<name>/<repository>)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens."
  }
}

variable "repositories" {
  description = "Short names of the repositories to create. The service expects \"api\" and \"proxy\"."
  type        = set(string)
  default     = ["api", "proxy"]

  validation {
    condition     = alltrue([for r in var.repositories : can(regex("^[a-z][a-z0-9-]*$", r))])
    error_message = "Repository names must be lowercase letters, digits and hyphens."
  }
}

variable "keep_tagged_images" {
  description = "How many tagged images each repository keeps (older ones expire; rollbacks can go back this far)."
  type        = number
  default     = 30

  validation {
    condition     = var.keep_tagged_images >= 5 && var.keep_tagged_images <= 1000
    error_message = "keep_tagged_images must be between 5 and 1000."
  }
}

variable "untagged_expiry_days" {
  description = "Days after which untagged images (layers of failed or superseded pushes) expire."
  type        = number
  default     = 7

  validation {
    condition     = var.untagged_expiry_days >= 1
    error_message = "untagged_expiry_days must be at least 1."
  }
}

variable "enhanced_scanning" {
  description = "Amazon Inspector enhanced scanning (OS and language packages, continuous rescans) for this stack's repositories; false keeps ECR's basic scan on push."
  type        = bool
  default     = true
}

variable "force_delete" {
  description = "Allow terraform destroy to delete repositories that still hold images."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "ARN of the customer-managed KMS key that encrypts the repositories."
  type        = string
}

variable "tags" {
  description = "Tags merged into every resource of the module."
  type        = map(string)
  default     = {}
}
