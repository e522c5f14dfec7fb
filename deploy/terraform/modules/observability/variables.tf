variable "name" {
  description = "Name prefix of the log groups, alarms, topic and dashboard."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens."
  }
}

variable "log_retention_days" {
  description = "Retention of the container and build log groups, in days."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts."
  }
}

variable "alarm_email" {
  description = "Address subscribed to the alarm topic (confirm the subscription mail). Empty: no subscription."
  type        = string
  default     = ""

  validation {
    condition     = var.alarm_email == "" || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alarm_email))
    error_message = "alarm_email must be empty or an e-mail address."
  }
}

variable "kms_key_arn" {
  description = "ARN of the customer-managed KMS key for the log groups and the SNS topic."
  type        = string
}

variable "cluster_name" {
  description = "ECS cluster name (ClusterName dimension)."
  type        = string
}

variable "service_name" {
  description = "ECS service name (ServiceName dimension)."
  type        = string
}

variable "alb_arn_suffix" {
  description = "ARN suffix of the load balancer (LoadBalancer dimension)."
  type        = string
}

variable "target_group_arn_suffix" {
  description = "ARN suffix of the target group (TargetGroup dimension)."
  type        = string
}

variable "db_instance_identifier" {
  description = "RDS instance identifier (DBInstanceIdentifier dimension)."
  type        = string
}

variable "db_allocated_storage_bytes" {
  description = "Allocated database storage in bytes (the free-storage alarm fires below a fraction of it)."
  type        = number
}

variable "service_cpu_threshold" {
  description = "Alarm when the service's average CPU stays above this percentage (above the autoscaling target: scaling is not keeping up)."
  type        = number
  default     = 85

  validation {
    condition     = var.service_cpu_threshold > 0 && var.service_cpu_threshold <= 100
    error_message = "service_cpu_threshold must be a percentage between 1 and 100."
  }
}

variable "service_memory_threshold" {
  description = "Alarm when the service's average memory stays above this percentage."
  type        = number
  default     = 85

  validation {
    condition     = var.service_memory_threshold > 0 && var.service_memory_threshold <= 100
    error_message = "service_memory_threshold must be a percentage between 1 and 100."
  }
}

variable "alb_5xx_threshold" {
  description = "Alarm when the load balancer and the targets together answer more than this many 5xx per minute."
  type        = number
  default     = 10

  validation {
    condition     = var.alb_5xx_threshold >= 1
    error_message = "alb_5xx_threshold must be at least 1."
  }
}

variable "target_response_time_p99_seconds" {
  description = "Alarm when the 99th percentile target response time exceeds this many seconds."
  type        = number
  default     = 1

  validation {
    condition     = var.target_response_time_p99_seconds > 0 && var.target_response_time_p99_seconds <= 60
    error_message = "target_response_time_p99_seconds must be between 0 and 60."
  }
}

variable "db_cpu_threshold" {
  description = "Alarm when the database's CPU stays above this percentage."
  type        = number
  default     = 80

  validation {
    condition     = var.db_cpu_threshold > 0 && var.db_cpu_threshold <= 100
    error_message = "db_cpu_threshold must be a percentage between 1 and 100."
  }
}

variable "db_free_storage_ratio" {
  description = "Alarm when free database storage drops below this fraction of the allocated storage."
  type        = number
  default     = 0.2

  validation {
    condition     = var.db_free_storage_ratio > 0 && var.db_free_storage_ratio < 1
    error_message = "db_free_storage_ratio must be between 0 and 1."
  }
}

variable "db_replica_identifier" {
  description = "RDS identifier of the read replica (empty: no replica, no lag alarm)."
  type        = string
  default     = ""
}

variable "db_replica_lag_threshold_secs" {
  description = "Alarm when the read replica lags the primary by more than this many seconds for 5 minutes."
  type        = number
  default     = 30

  validation {
    condition     = var.db_replica_lag_threshold_secs >= 1
    error_message = "db_replica_lag_threshold_secs must be at least 1."
  }
}

variable "db_connections_threshold" {
  description = "Alarm when the database holds more connections than this (size it below max_connections; max tasks x pool size is the expected peak)."
  type        = number
  default     = 60

  validation {
    condition     = var.db_connections_threshold >= 1
    error_message = "db_connections_threshold must be at least 1."
  }
}

variable "tags" {
  description = "Tags merged into every resource of the module."
  type        = map(string)
  default     = {}
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the service's own metrics (the collector's EMF output and the latency metric filter)."
  type        = string
  default     = "users-api"

  validation {
    condition     = can(regex("^[A-Za-z0-9._/#:-]{1,255}$", var.metrics_namespace)) && !startswith(var.metrics_namespace, "AWS/")
    error_message = "metrics_namespace must be 1-255 of letters, digits and . _ / # : -, and not start with AWS/."
  }
}

variable "metrics_log_retention_days" {
  description = "Retention of the EMF log group (the metrics themselves are kept by CloudWatch for 15 months)."
  type        = number
  default     = 7

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90], var.metrics_log_retention_days)
    error_message = "metrics_log_retention_days must be one of 1, 3, 5, 7, 14, 30, 60, 90."
  }
}

variable "shed_503_percent" {
  description = "Alarm when more than this percentage of the API's answers are 503 (3 of 5 minutes)."
  type        = number
  default     = 1

  validation {
    condition     = var.shed_503_percent > 0 && var.shed_503_percent < 100
    error_message = "shed_503_percent must be between 0 and 100."
  }
}

variable "pool_in_use_percent" {
  description = "Alarm when a task's database pool is more than this percentage in use for 5 minutes."
  type        = number
  default     = 90

  validation {
    condition     = var.pool_in_use_percent > 0 && var.pool_in_use_percent <= 100
    error_message = "pool_in_use_percent must be in (0, 100]."
  }
}

variable "latency_p99_ms_by_route" {
  description = "p99 latency alarm threshold per route template, in milliseconds, measured in the API."
  type        = map(number)
  default = {
    "/user"       = 250
    "/users/{id}" = 100
    "/users"      = 500
  }

  validation {
    condition     = alltrue([for route, ms in var.latency_p99_ms_by_route : contains(["/health", "/ready", "/users", "/users/{id}", "/user", "unmatched"], route) && ms > 0])
    error_message = "latency_p99_ms_by_route keys must be route templates of the API (/health, /ready, /users, /users/{id}, /user, unmatched) and thresholds positive."
  }
}

variable "write_batch_seconds" {
  description = "Alarm when write batches take this long on average (3 of 5 minutes)."
  type        = number
  default     = 0.5

  validation {
    condition     = var.write_batch_seconds > 0
    error_message = "write_batch_seconds must be positive."
  }
}
