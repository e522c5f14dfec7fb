variable "name" {
  description = "Identifier prefix of the database instance and its resources."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,40}[a-z0-9]$", var.name))
    error_message = "name must be 3-42 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "vpc_id" {
  description = "ID of the VPC the database lives in."
  type        = string
}

variable "subnet_ids" {
  description = "Intra subnets (no internet route) of at least two zones for the DB subnet group."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2
    error_message = "A DB subnet group needs subnets in at least two availability zones."
  }
}

variable "engine_version" {
  description = "PostgreSQL major (\"16\") or major.minor version. With a major only, RDS picks the default minor and auto_minor_version_upgrade keeps it patched."
  type        = string
  default     = "16"

  validation {
    condition     = can(regex("^1[4-9](\\.[0-9]+)?$", var.engine_version))
    error_message = "engine_version must be a PostgreSQL version 14 or newer, e.g. \"16\" or \"16.4\"."
  }
}

variable "parameter_group_family" {
  description = "DB parameter group family matching engine_version."
  type        = string
  default     = "postgres16"

  validation {
    condition     = can(regex("^postgres1[4-9]$", var.parameter_group_family))
    error_message = "parameter_group_family must look like postgres16."
  }
}

variable "instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.medium"

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.instance_class))
    error_message = "instance_class must look like db.t4g.small."
  }
}

variable "performance_insights_enabled" {
  description = "Performance Insights (7 days, free tier). Not available on the smallest classes (db.t*.micro, db.t*.small)."
  type        = bool
  default     = true

  validation {
    condition     = !var.performance_insights_enabled || !can(regex("^db\\.t[234]g?\\.(micro|small)$", var.instance_class))
    error_message = "Performance Insights is not available on db.t*.micro/small: choose db.t4g.medium or larger, or set performance_insights_enabled = false."
  }
}

variable "allocated_storage" {
  description = "Initial storage in GiB."
  type        = number
  default     = 20

  validation {
    condition     = var.allocated_storage >= 20 && var.allocated_storage <= 65536
    error_message = "allocated_storage must be between 20 and 65536 GiB."
  }
}

variable "max_allocated_storage" {
  description = "Upper bound for storage autoscaling in GiB (0 disables autoscaling)."
  type        = number
  default     = 100

  validation {
    condition     = var.max_allocated_storage == 0 || (var.max_allocated_storage >= 20 && var.max_allocated_storage <= 65536)
    error_message = "max_allocated_storage must be 0 or between 20 and 65536 GiB."
  }
}

variable "db_name" {
  description = "Name of the database the API uses."
  type        = string
  default     = "users"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.db_name))
    error_message = "db_name must start with a letter and contain lowercase letters, digits and underscores only."
  }
}

variable "username" {
  description = "Master user name. Its password is generated and kept in Secrets Manager by RDS; it never appears in Terraform."
  type        = string
  default     = "users_api"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.username)) && !contains(["postgres", "admin", "rdsadmin"], var.username)
    error_message = "username must be a lowercase identifier and not a reserved name (postgres, admin, rdsadmin)."
  }
}

variable "multi_az" {
  description = "Run a synchronous standby in a second zone (automatic failover)."
  type        = bool
  default     = true
}

variable "deletion_protection" {
  description = "Protect the instance from deletion (set false before a deliberate terraform destroy)."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Days of automated backups and point-in-time recovery."
  type        = number
  default     = 14

  validation {
    condition     = var.backup_retention_days >= 1 && var.backup_retention_days <= 35
    error_message = "backup_retention_days must be between 1 and 35 (0 would disable automated backups)."
  }
}

variable "backup_window" {
  description = "Daily backup window (UTC, hh24:mi-hh24:mi), at least 30 minutes, not overlapping the maintenance window."
  type        = string
  default     = "02:00-03:00"

  validation {
    condition     = can(regex("^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$", var.backup_window))
    error_message = "backup_window must look like hh24:mi-hh24:mi (UTC)."
  }
}

variable "maintenance_window" {
  description = "Weekly maintenance window (UTC, ddd:hh24:mi-ddd:hh24:mi)."
  type        = string
  default     = "sun:04:00-sun:05:00"

  validation {
    condition     = can(regex("^(mon|tue|wed|thu|fri|sat|sun):([01][0-9]|2[0-3]):[0-5][0-9]-(mon|tue|wed|thu|fri|sat|sun):([01][0-9]|2[0-3]):[0-5][0-9]$", var.maintenance_window))
    error_message = "maintenance_window must look like ddd:hh24:mi-ddd:hh24:mi (UTC)."
  }
}

variable "log_retention_days" {
  description = "Retention of the exported PostgreSQL log groups, in days."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts."
  }
}

variable "slow_query_ms" {
  description = "Statements slower than this many milliseconds are logged (log_min_duration_statement)."
  type        = number
  default     = 500

  validation {
    condition     = var.slow_query_ms >= 0
    error_message = "slow_query_ms must be 0 or more."
  }
}

variable "kms_key_arn" {
  description = "ARN of the customer-managed KMS key for storage, Performance Insights, the master secret and the log groups."
  type        = string
}

variable "tags" {
  description = "Tags merged into every resource of the module."
  type        = map(string)
  default     = {}
}

variable "read_replica_enabled" {
  description = "Create a streaming read replica of the instance (reads by id and pages go there: DATABASE_READ_URL)."
  type        = bool
  default     = false
}

variable "read_replica_instance_class" {
  description = "Instance class of the read replica (empty: the primary's class)."
  type        = string
  default     = ""

  validation {
    condition     = var.read_replica_instance_class == "" || can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.read_replica_instance_class))
    error_message = "read_replica_instance_class must be empty or look like db.t4g.small."
  }
}
