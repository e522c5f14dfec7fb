# ----------------------------------------------------------------- general

variable "name" {
  description = "Name of the deployment; prefixes every resource (ECS cluster and service, ALB, RDS, pipeline, ...)."
  type        = string
  default     = "users-api"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3-20 characters of lowercase letters, digits and hyphens, starting with a letter (the ALB and bucket names derived from it have length limits)."
  }
}

variable "region" {
  description = "AWS region to deploy into."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region code such as eu-west-1."
  }
}

variable "tags" {
  description = "Tags added to every resource (merged with Project and ManagedBy)."
  type        = map(string)
  default     = {}
}

# ----------------------------------------------------------------- network

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC (/16 to /18)."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 18
    error_message = "vpc_cidr must be a valid IPv4 CIDR with a prefix length between /16 and /18."
  }
}

variable "az_count" {
  description = "Number of availability zones (2 or 3)."
  type        = number
  default     = 3

  validation {
    condition     = contains([2, 3], var.az_count)
    error_message = "az_count must be 2 or 3."
  }
}

variable "single_nat_gateway" {
  description = "One shared NAT gateway (cheaper) instead of one per zone (survives a zone outage)."
  type        = bool
  default     = true
}

# ------------------------------------------------------------ load balancer

variable "certificate_arn" {
  description = "Issued ACM certificate (same region) for HTTPS. Empty: set route53_zone_id and domain_name to have one created and validated, or allow_plaintext_http."
  type        = string
  default     = ""

  validation {
    condition     = var.certificate_arn == "" || can(regex("^arn:aws[a-z-]*:acm:", var.certificate_arn))
    error_message = "certificate_arn must be empty or an ACM certificate ARN."
  }
}

variable "domain_name" {
  description = "Name the service answers on, e.g. users.example.com (the created certificate's name and its alias record; the url output)."
  type        = string
  default     = ""
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone of domain_name: with an empty certificate_arn, an ACM certificate is requested and DNS-validated there, and an alias record points domain_name at the load balancer."
  type        = string
  default     = ""

  validation {
    condition     = var.route53_zone_id == "" || var.domain_name != ""
    error_message = "route53_zone_id needs domain_name (the name to certify and point at the load balancer)."
  }
}

variable "allow_plaintext_http" {
  description = "Explicit opt-in to plain HTTP on port 80 without any certificate (bearer tokens in clear: tests and bootstrap only). Without it, a certificate is required."
  type        = bool
  default     = false

  validation {
    condition     = var.allow_plaintext_http || var.certificate_arn != "" || var.route53_zone_id != ""
    error_message = "HTTPS is required: set certificate_arn, or route53_zone_id and domain_name to create a certificate. Plain HTTP only with allow_plaintext_http = true."
  }
}

variable "enable_waf" {
  description = "Put a WAF web ACL (AWS managed rules + per-IP rate rule) in front of the load balancer."
  type        = bool
  default     = true
}

variable "waf_rate_limit" {
  description = "WAF: requests per 5 minutes per client IP before it is blocked (a flood backstop above the API's per-client rate limit)."
  type        = number
  default     = 20000

  validation {
    condition     = var.waf_rate_limit >= 100
    error_message = "waf_rate_limit must be at least 100 (WAF's minimum)."
  }
}

variable "alb_deletion_protection" {
  description = "Deletion protection of the load balancer."
  type        = bool
  default     = true
}

# ----------------------------------------------------------------- service

variable "image_tag" {
  description = "Commit SHA of the images of the first deploy (docs/DEPLOY.md). Afterwards the pipeline owns the running image: changing this never moves it. Never latest."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{7,40}$", var.image_tag)) && lower(var.image_tag) != "latest"
    error_message = "image_tag must be a git commit SHA (7-40 lowercase hex characters); moving tags such as latest are refused."
  }
}

variable "cpu_architecture" {
  description = "X86_64 or ARM64 (Graviton); the build and the tasks use the same."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "task_cpu" {
  description = "Fargate task CPU units."
  type        = number
  default     = 512

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096], var.task_cpu)
    error_message = "task_cpu must be one of 256, 512, 1024, 2048, 4096."
  }
}

variable "task_memory" {
  description = "Fargate task memory (MiB)."
  type        = number
  default     = 1024

  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 30720
    error_message = "task_memory must be between 512 and 30720 MiB."
  }
}

variable "min_tasks" {
  description = "Autoscaling minimum number of tasks. 2 by default: one task is a single point of failure (a zone outage, a crashed task, every deployment's start)."
  type        = number
  default     = 2

  validation {
    condition     = var.min_tasks >= 1 && floor(var.min_tasks) == var.min_tasks
    error_message = "min_tasks must be a whole number of at least 1."
  }
}

variable "max_tasks" {
  description = "Autoscaling maximum number of tasks."
  type        = number
  default     = 4

  validation {
    condition     = var.max_tasks >= var.min_tasks && var.max_tasks <= 100 && floor(var.max_tasks) == var.max_tasks
    error_message = "max_tasks must be a whole number between min_tasks and 100."
  }
}

variable "cpu_target" {
  description = "Autoscaling target for average CPU (%)."
  type        = number
  default     = 70

  validation {
    condition     = var.cpu_target >= 10 && var.cpu_target <= 90
    error_message = "cpu_target must be between 10 and 90."
  }
}

variable "memory_target" {
  description = "Autoscaling target for average memory (%)."
  type        = number
  default     = 75

  validation {
    condition     = var.memory_target >= 10 && var.memory_target <= 90
    error_message = "memory_target must be between 10 and 90."
  }
}

variable "log_level" {
  description = "API log level."
  type        = string
  default     = "info"

  validation {
    condition     = contains(["error", "warn", "info", "debug", "trace"], var.log_level)
    error_message = "log_level must be one of error, warn, info, debug, trace."
  }
}

variable "rate_limit_per_second" {
  description = "API per-client rate limit (requests/s, 0 = off); the client address is the ALB's X-Forwarded-For last hop."
  type        = number
  default     = 50

  validation {
    condition     = var.rate_limit_per_second >= 0
    error_message = "rate_limit_per_second must be 0 or more."
  }
}

variable "rate_limit_burst" {
  description = "Burst of the per-client rate limit."
  type        = number
  default     = 100

  validation {
    condition     = var.rate_limit_burst >= 1
    error_message = "rate_limit_burst must be at least 1."
  }
}

variable "database_max_connections" {
  description = "PostgreSQL pool size per task."
  type        = number
  default     = 10

  validation {
    condition     = var.database_max_connections >= 1 && var.database_max_connections <= 100
    error_message = "database_max_connections must be between 1 and 100."
  }
}

variable "auth_enabled" {
  description = "Require JWT bearer tokens on /users (on by default)."
  type        = bool
  default     = true
}

variable "auth_jwks_url" {
  description = "JWKS URL of an identity provider such as Cognito. Empty: HS256 with a secret generated into Secrets Manager."
  type        = string
  default     = ""

  validation {
    condition     = var.auth_jwks_url == "" || can(regex("^https://", var.auth_jwks_url))
    error_message = "auth_jwks_url must be empty or an https:// URL."
  }
}

variable "auth_issuer" {
  description = "Expected iss claim with auth_jwks_url (for Cognito: https://cognito-idp.<region>.amazonaws.com/<user-pool-id>)."
  type        = string
  default     = ""

  validation {
    condition     = var.auth_jwks_url == "" || var.auth_issuer != ""
    error_message = "auth_issuer is required when auth_jwks_url is set."
  }
}

variable "auth_audience" {
  description = "Expected aud claim with auth_jwks_url (for Cognito: the app client id)."
  type        = string
  default     = ""

  validation {
    condition     = var.auth_jwks_url == "" || var.auth_audience != ""
    error_message = "auth_audience is required when auth_jwks_url is set."
  }
}

variable "redeploy_on_secret_rotation" {
  description = "Force a new ECS deployment whenever the database secret rotates (see docs/DEPLOY.md)."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------- database

variable "db_instance_class" {
  description = "RDS instance class (db.t4g.medium or larger keeps Performance Insights available)."
  type        = string
  default     = "db.t4g.medium"

  validation {
    condition     = can(regex("^db\\.[a-z0-9]+\\.[a-z0-9]+$", var.db_instance_class))
    error_message = "db_instance_class must look like db.t4g.small."
  }
}

variable "db_performance_insights" {
  description = "Performance Insights on the database (not available on db.t*.micro/small)."
  type        = bool
  default     = true
}

variable "db_engine_version" {
  description = "PostgreSQL version (major, or major.minor)."
  type        = string
  default     = "16"

  validation {
    condition     = can(regex("^1[4-9](\\.[0-9]+)?$", var.db_engine_version))
    error_message = "db_engine_version must be 14 or newer, e.g. \"16\"."
  }
}

variable "db_allocated_storage" {
  description = "Initial database storage (GiB)."
  type        = number
  default     = 20

  validation {
    condition     = var.db_allocated_storage >= 20
    error_message = "db_allocated_storage must be at least 20 GiB."
  }
}

variable "db_max_allocated_storage" {
  description = "Storage autoscaling ceiling (GiB)."
  type        = number
  default     = 100

  validation {
    condition     = var.db_max_allocated_storage == 0 || var.db_max_allocated_storage >= var.db_allocated_storage
    error_message = "db_max_allocated_storage must be 0 (no autoscaling) or at least db_allocated_storage."
  }
}

variable "db_multi_az" {
  description = "Multi-AZ standby for the database."
  type        = bool
  default     = true
}

variable "db_deletion_protection" {
  description = "Deletion protection of the database."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days of automated backups / point-in-time recovery (1-35)."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 1 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days must be between 1 and 35."
  }
}

variable "read_replica_enabled" {
  description = "Create an RDS read replica and have the API read users by id and pages from it (DATABASE_READ_URL)."
  type        = bool
  default     = false
}

variable "db_read_replica_instance_class" {
  description = "Instance class of the read replica (empty: db_instance_class)."
  type        = string
  default     = ""
}

variable "database_read_max_lag" {
  description = "Replica lag above which the API reads from the primary (DATABASE_READ_MAX_LAG)."
  type        = string
  default     = "5s"
}

variable "db_max_connections" {
  description = "The database's max_connections, for the connection budget check (null: RDS's default for db_instance_class, estimated; set it to what SHOW max_connections reports for an exact check or a class the estimate does not know)."
  type        = number
  default     = null

  validation {
    condition     = var.db_max_connections == null || try(var.db_max_connections >= 10, false)
    error_message = "db_max_connections must be null or at least 10."
  }
}

variable "db_connections_reserve" {
  description = "Connections of max_connections kept out of the service's budget: RDS and superuser reserved slots, the migrate containers, operators, monitoring."
  type        = number
  default     = 20

  validation {
    condition     = var.db_connections_reserve >= 5
    error_message = "db_connections_reserve must be at least 5 (RDS and PostgreSQL reserve slots of their own)."
  }
}

variable "use_rds_proxy" {
  description = "Put RDS Proxy between the API and the primary: the database then holds at most rds_proxy_max_connections_percent of max_connections however many tasks run (see docs/DEPLOY.md for what the proxy does and does not do for this service)."
  type        = bool
  default     = false
}

variable "rds_proxy_max_connections_percent" {
  description = "Share of the database's max_connections RDS Proxy may open (its connection pool)."
  type        = number
  default     = 80

  validation {
    condition     = var.rds_proxy_max_connections_percent >= 1 && var.rds_proxy_max_connections_percent <= 100
    error_message = "rds_proxy_max_connections_percent must be between 1 and 100."
  }
}

# ----------------------------------------------------------- observability

variable "log_retention_days" {
  description = "Retention of every CloudWatch log group of the stack (days)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts."
  }
}

variable "alarm_email" {
  description = "E-mail address subscribed to the alarm topic (empty: subscribe later)."
  type        = string
  default     = ""

  validation {
    condition     = var.alarm_email == "" || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alarm_email))
    error_message = "alarm_email must be empty or an e-mail address."
  }
}

# ----------------------------------------------------------------- pipeline

variable "repository_id" {
  description = "Source repository, owner/name, reached through the CodeStar connection."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.repository_id))
    error_message = "repository_id must look like owner/name."
  }
}

variable "branch" {
  description = "Branch that is deployed to production on every push."
  type        = string
  default     = "main"
}

variable "codestar_connection_arn" {
  description = "Existing CodeStar/CodeConnections connection ARN; empty creates one (activate it once in the console)."
  type        = string
  default     = ""
}

variable "connection_provider_type" {
  description = "Provider of a created connection: GitHub, GitLab or Bitbucket."
  type        = string
  default     = "GitHub"
}

variable "require_approval" {
  description = "Manual approval step between build and deploy."
  type        = bool
  default     = false
}

variable "trace_sample_ratio" {
  description = "Share of new traces the API samples and the collector sends to X-Ray (a caller's sampled traceparent is always kept)."
  type        = number
  default     = 0.1

  validation {
    condition     = var.trace_sample_ratio >= 0 && var.trace_sample_ratio <= 1
    error_message = "trace_sample_ratio must be between 0 and 1."
  }
}

variable "collector_version" {
  description = "Version tag of the AWS Distro for OpenTelemetry collector image (public.ecr.aws/aws-observability/aws-otel-collector), pulled through the registry's ECR Public mirror."
  type        = string
  default     = "v0.47.0"

  validation {
    condition     = can(regex("^v[0-9]+\\.[0-9]+\\.[0-9]+$", var.collector_version))
    error_message = "collector_version must be a release tag such as v0.47.0 (never latest)."
  }
}
