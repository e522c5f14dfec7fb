variable "name" {
  description = "Name of the ECS cluster, service and task family."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens."
  }
}

# ------------------------------------------------------------------ network

variable "vpc_id" {
  description = "ID of the VPC."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR of the VPC; nginx trusts X-Forwarded-For only from addresses in it (the ALB)."
  type        = string

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr must be a valid IPv4 CIDR."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets the tasks run in (no public IPs)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "Spread the tasks over at least two availability zones."
  }
}

variable "alb_security_group_id" {
  description = "Security group of the load balancer: the only source allowed to reach the tasks."
  type        = string
}

variable "db_security_group_id" {
  description = "Security group of the database: the tasks' only PostgreSQL destination."
  type        = string
}

variable "endpoint_security_group_id" {
  description = "Security group of the VPC's interface endpoints: the tasks' HTTPS egress to AWS APIs goes there."
  type        = string
}

variable "s3_prefix_list_id" {
  description = "Prefix list of the S3 gateway endpoint (ECR image layers)."
  type        = string
}

variable "target_group_arn" {
  description = "Target group the proxy containers are registered in."
  type        = string
}

variable "listener_arn" {
  description = "Listener that forwards to the target group. The service is created only after it exists (ECS rejects a target group without a load balancer)."
  type        = string
}

# ------------------------------------------------------------------- images

variable "api_repository_url" {
  description = "ECR repository URL of the API image (without tag)."
  type        = string
}

variable "proxy_repository_url" {
  description = "ECR repository URL of the nginx proxy image (without tag)."
  type        = string
}

variable "repository_arns" {
  description = "ARNs of the ECR repositories the execution role may pull from."
  type        = list(string)
}

variable "image_tag" {
  description = "Tag of both images for the first deploy only: it seeds the deployed-image-tag parameter, which the pipeline owns afterwards. A git commit SHA, never a moving tag such as latest."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-f]{7,40}$", var.image_tag)) && lower(var.image_tag) != "latest"
    error_message = "image_tag must be a git commit SHA (7-40 lowercase hex characters); moving tags such as latest are refused."
  }
}

variable "cpu_architecture" {
  description = "CPU architecture of the images: X86_64 or ARM64 (Graviton, cheaper; the images must be built for it)."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

# ------------------------------------------------------------- task sizing

variable "task_cpu" {
  description = "Task CPU units (1024 = 1 vCPU)."
  type        = number
  default     = 512

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096], var.task_cpu)
    error_message = "task_cpu must be one of 256, 512, 1024, 2048, 4096."
  }
}

variable "task_memory" {
  description = "Task memory in MiB (must be a valid Fargate combination with task_cpu)."
  type        = number
  default     = 1024

  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 30720
    error_message = "task_memory must be between 512 and 30720 MiB."
  }
}

variable "min_capacity" {
  description = "Minimum number of tasks (autoscaling floor, and the initial desired count). Two or more: one task is a single point of failure."
  type        = number
  default     = 2

  validation {
    condition     = var.min_capacity >= 1 && floor(var.min_capacity) == var.min_capacity
    error_message = "min_capacity must be a whole number of at least 1."
  }
}

variable "max_capacity" {
  description = "Maximum number of tasks (autoscaling ceiling). Each task holds up to database_max_connections PostgreSQL connections."
  type        = number
  default     = 4

  validation {
    condition     = var.max_capacity >= 1 && var.max_capacity <= 100 && floor(var.max_capacity) == var.max_capacity && var.max_capacity >= var.min_capacity
    error_message = "max_capacity must be a whole number between min_capacity and 100."
  }
}

variable "cpu_target" {
  description = "Average service CPU utilisation (%) that target tracking keeps the service at."
  type        = number
  default     = 70

  validation {
    condition     = var.cpu_target >= 10 && var.cpu_target <= 90
    error_message = "cpu_target must be between 10 and 90 percent."
  }
}

variable "memory_target" {
  description = "Average service memory utilisation (%) that target tracking keeps the service at."
  type        = number
  default     = 75

  validation {
    condition     = var.memory_target >= 10 && var.memory_target <= 90
    error_message = "memory_target must be between 10 and 90 percent."
  }
}

# ------------------------------------------------------ shutdown budget (s)

variable "api_request_timeout_secs" {
  description = "API per-request timeout (REQUEST_TIMEOUT_SECS). Must stay below nginx's proxy timeouts (15 s) and the shutdown grace."
  type        = number
  default     = 10

  validation {
    condition     = var.api_request_timeout_secs >= 1 && var.api_request_timeout_secs < 15
    error_message = "api_request_timeout_secs must be between 1 and 14 (below nginx's 15 s proxy timeouts)."
  }
}

variable "api_shutdown_grace_secs" {
  description = "How long the API finishes in-flight requests after SIGTERM (SHUTDOWN_GRACE_SECS). Must exceed the request timeout and stay below stop_timeout."
  type        = number
  default     = 20

  validation {
    condition     = var.api_shutdown_grace_secs > var.api_request_timeout_secs && var.api_shutdown_grace_secs < var.stop_timeout
    error_message = "api_shutdown_grace_secs must be greater than api_request_timeout_secs and less than stop_timeout."
  }
}

variable "stop_timeout" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL (containers' stopTimeout; Fargate maximum 120)."
  type        = number
  default     = 30

  validation {
    condition     = var.stop_timeout >= 2 && var.stop_timeout <= 120
    error_message = "stop_timeout must be between 2 and 120 seconds."
  }
}

variable "deployment_maximum_percent" {
  description = "Upper limit of running tasks during a deployment, in percent of the desired count (new tasks start before old ones stop)."
  type        = number
  default     = 200

  validation {
    condition     = var.deployment_maximum_percent >= 100 && var.deployment_maximum_percent <= 200
    error_message = "deployment_maximum_percent must be between 100 and 200."
  }
}

variable "health_check_grace_period" {
  description = "Seconds after a task starts during which ECS ignores failing load balancer health checks."
  type        = number
  default     = 60

  validation {
    condition     = var.health_check_grace_period >= 0 && var.health_check_grace_period <= 2147483647
    error_message = "health_check_grace_period must be 0 or more seconds."
  }
}

# ---------------------------------------------------------- application env

variable "log_level" {
  description = "API log level (LOG_LEVEL)."
  type        = string
  default     = "info"

  validation {
    condition     = contains(["error", "warn", "info", "debug", "trace"], var.log_level)
    error_message = "log_level must be one of error, warn, info, debug, trace."
  }
}

variable "rate_limit_per_second" {
  description = "Per-client request rate limit of the API (RATE_LIMIT_PER_SECOND); 0 disables it."
  type        = number
  default     = 50

  validation {
    condition     = var.rate_limit_per_second >= 0
    error_message = "rate_limit_per_second must be 0 (off) or more."
  }
}

variable "rate_limit_burst" {
  description = "Burst allowance of the per-client rate limit (RATE_LIMIT_BURST)."
  type        = number
  default     = 100

  validation {
    condition     = var.rate_limit_burst >= 1
    error_message = "rate_limit_burst must be at least 1."
  }
}

variable "database_max_connections" {
  description = "PostgreSQL pool size per task (DATABASE_MAX_CONNECTIONS). max_capacity x this must fit the instance's max_connections."
  type        = number
  default     = 10

  validation {
    condition     = var.database_max_connections >= 1 && var.database_max_connections <= 100
    error_message = "database_max_connections must be between 1 and 100."
  }
}

variable "db_address" {
  description = "Host name of the PostgreSQL endpoint."
  type        = string
}

variable "api_db_address" {
  description = "Host name the API (not the migrate container) connects to for the primary, e.g. an RDS Proxy endpoint; empty: db_address."
  type        = string
  default     = ""
}

variable "db_read_address" {
  description = "Host name of a read replica (DATABASE_READ_URL); empty: no replica."
  type        = string
  default     = ""
}

variable "database_read_max_lag" {
  description = "Replica lag above which the API reads from the primary (DATABASE_READ_MAX_LAG, e.g. 5s)."
  type        = string
  default     = "5s"

  validation {
    condition     = can(regex("^[0-9]+(ms|s|m)$", var.database_read_max_lag))
    error_message = "database_read_max_lag must look like 500ms, 5s or 1m."
  }
}

variable "create_proxy_auth_secret" {
  description = "Also keep the API role's credentials as RDS Proxy reads them (JSON username/password): see output db_app_proxy_secret_arn."
  type        = bool
  default     = false
}

variable "db_port" {
  description = "Port of the PostgreSQL endpoint."
  type        = number
  default     = 5432
}

variable "db_name" {
  description = "Database name."
  type        = string
}

variable "db_username" {
  description = "Master user name (the migrate container's; its password comes from db_secret_arn)."
  type        = string
}

variable "db_app_role" {
  description = "The API's own PostgreSQL role, made by the migrate container; it may read and write rows, nothing else."
  type        = string
  default     = "users_api_app"

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_]{0,62}$", var.db_app_role))
    error_message = "db_app_role must be a lowercase PostgreSQL identifier."
  }
}

variable "db_app_password_rotation_days" {
  description = "Days after which the next apply replaces the API role's password (and the rotation redeploy applies it)."
  type        = number
  default     = 30

  validation {
    condition     = var.db_app_password_rotation_days >= 1 && var.db_app_password_rotation_days <= 365
    error_message = "db_app_password_rotation_days must be between 1 and 365."
  }
}

variable "db_secret_arn" {
  description = "ARN of the RDS-managed master secret; only the migrate container receives it (DATABASE_PASSWORD)."
  type        = string
}

variable "redeploy_on_secret_rotation" {
  description = "Force a new deployment when the database secret rotates, so tasks start with the new password (ECS injects secrets only at container start)."
  type        = bool
  default     = true
}

variable "auth_enabled" {
  description = "Require a bearer JWT on /users endpoints. With auth_jwks_url empty, an HS256 secret is generated in Secrets Manager; otherwise tokens are verified against the JWKS (e.g. Cognito)."
  type        = bool
  default     = true
}

variable "auth_jwks_url" {
  description = "JWKS URL of an external identity provider (e.g. https://cognito-idp.<region>.amazonaws.com/<pool>/.well-known/jwks.json). Empty: HS256 with a generated secret."
  type        = string
  default     = ""

  validation {
    condition     = var.auth_jwks_url == "" || can(regex("^https://", var.auth_jwks_url))
    error_message = "auth_jwks_url must be empty or an https:// URL."
  }
}

variable "auth_issuer" {
  description = "Expected iss claim when auth_jwks_url is set."
  type        = string
  default     = ""

  validation {
    condition     = var.auth_jwks_url == "" || var.auth_issuer != ""
    error_message = "auth_issuer is required when auth_jwks_url is set."
  }
}

variable "auth_audience" {
  description = "Expected aud claim (e.g. the Cognito app client id) when auth_jwks_url is set."
  type        = string
  default     = ""

  validation {
    condition     = var.auth_jwks_url == "" || var.auth_audience != ""
    error_message = "auth_audience is required when auth_jwks_url is set."
  }
}

variable "proxy_port" {
  description = "Port nginx listens on inside the task (LISTEN_PORT of the proxy image, which runs as a non-root user and so needs a port above 1023); the target group must use the same."
  type        = number
  default     = 8080

  validation {
    condition     = var.proxy_port > 1023 && var.proxy_port < 65536 && var.proxy_port != 8000
    error_message = "proxy_port must be an unprivileged TCP port (1024-65535) other than the API's 8000."
  }
}

variable "proxy_writable_paths" {
  description = "Paths given to nginx as task-local bind-mount volumes (its root filesystem is read-only). The proxy image renders its config and keeps its pid/temp files under /tmp/nginx; a non-root user can write such a volume only if the image declares it with VOLUME (ECS then copies the image's directory and permissions)."
  type        = list(string)
  default     = ["/var/cache/nginx", "/var/run", "/tmp"]
}

# ------------------------------------------------------------ observability

variable "api_log_group_name" {
  description = "CloudWatch log group of the api container."
  type        = string
}

variable "proxy_log_group_name" {
  description = "CloudWatch log group of the proxy container."
  type        = string
}

variable "log_group_arns" {
  description = "ARNs of the two container log groups (the execution role writes only to these)."
  type        = list(string)
}

variable "log_retention_days" {
  description = "Retention of the rotation-redeploy state machine's log group, in days."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts."
  }
}

variable "kms_key_arn" {
  description = "ARN of the customer-managed KMS key encrypting the secrets (the execution role may decrypt through Secrets Manager only)."
  type        = string
}

variable "tags" {
  description = "Tags merged into every resource of the module."
  type        = map(string)
  default     = {}
}

variable "collector_image" {
  description = "AWS Distro for OpenTelemetry collector image, pinned by version (the root passes it through the registry's ECR Public mirror)."
  type        = string

  validation {
    condition     = can(regex(":v[0-9]+\\.[0-9]+\\.[0-9]+$", var.collector_image)) || can(regex("@sha256:[0-9a-f]{64}$", var.collector_image))
    error_message = "collector_image must be pinned: a :vX.Y.Z tag or an @sha256 digest."
  }
}

variable "collector_config" {
  description = "The collector's configuration (YAML), passed in AOT_CONFIG_CONTENT (deploy/otel/collector-ecs.yaml)."
  type        = string
}

variable "collector_cpu" {
  description = "CPU units reserved for the collector sidecar (1024 = one vCPU)."
  type        = number
  default     = 128

  validation {
    condition     = var.collector_cpu >= 64 && var.collector_cpu <= 512
    error_message = "collector_cpu must be between 64 and 512."
  }
}

variable "collector_memory" {
  description = "Hard memory limit of the collector sidecar, in MiB (its memory_limiter stops accepting data below it)."
  type        = number
  default     = 256

  validation {
    condition     = var.collector_memory >= 128 && var.collector_memory <= 1024
    error_message = "collector_memory must be between 128 and 1024 MiB."
  }
}

variable "collector_memory_reservation" {
  description = "Memory reserved for the collector sidecar, in MiB."
  type        = number
  default     = 96

  validation {
    condition     = var.collector_memory_reservation >= 32 && var.collector_memory_reservation <= var.collector_memory
    error_message = "collector_memory_reservation must be at least 32 and at most collector_memory."
  }
}

variable "collector_log_group_name" {
  description = "Log group of the collector container's own output."
  type        = string
}

variable "metrics_log_group_name" {
  description = "Log group the collector writes EMF events to."
  type        = string
}

variable "metrics_log_group_arn" {
  description = "ARN of the EMF log group: the only log group the task role may write to."
  type        = string
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the service's own metrics."
  type        = string
}

variable "trace_sample_ratio" {
  description = "Share of new traces sampled (OTEL_TRACES_SAMPLER_ARG, parent-based: a caller's decision is kept)."
  type        = number
  default     = 0.1

  validation {
    condition     = var.trace_sample_ratio >= 0 && var.trace_sample_ratio <= 1
    error_message = "trace_sample_ratio must be between 0 and 1."
  }
}

variable "mirrored_repository_arns" {
  description = "Repositories of the registry's ECR Public mirror the execution role may pull (and create on first pull) the collector image from."
  type        = list(string)
}
