variable "name" {
  description = "Name prefix for the load balancer and its resources (the ALB name is limited to 32 characters)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3-24 characters of lowercase letters, digits and hyphens (room is left for suffixes within AWS's 32-character limit)."
  }
}

variable "vpc_id" {
  description = "ID of the VPC the load balancer and its target group live in."
  type        = string
}

variable "vpc_cidr" {
  description = "CIDR of the VPC: the load balancer's only egress is to targets inside it."
  type        = string

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0))
    error_message = "vpc_cidr must be a valid IPv4 CIDR."
  }
}

variable "public_subnet_ids" {
  description = "Public subnets (at least two zones) the load balancer is placed in."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2
    error_message = "An application load balancer needs subnets in at least two availability zones."
  }
}

variable "certificate_arn" {
  description = "ARN of an issued ACM certificate for HTTPS. Empty: one is created when route53_zone_id is set; otherwise allow_plaintext_http must be set."
  type        = string
  default     = ""

  validation {
    condition     = var.certificate_arn == "" || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn must be empty or an ACM certificate ARN."
  }
}

variable "domain_name" {
  description = "Name the service answers on (e.g. users.example.com). With route53_zone_id: the created certificate's name and an alias record to the load balancer."
  type        = string
  default     = ""

  validation {
    condition     = var.domain_name == "" || can(regex("^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63}$", var.domain_name))
    error_message = "domain_name must be empty or a lowercase DNS name such as users.example.com."
  }
}

variable "route53_zone_id" {
  description = "Route 53 hosted zone holding domain_name. Set with an empty certificate_arn: the module requests an ACM certificate and validates it through DNS in this zone."
  type        = string
  default     = ""
}

variable "allow_plaintext_http" {
  description = "Explicit opt-in to serving plain HTTP on port 80 when no certificate is given or created (tokens cross the network in clear: tests and bootstrap only)."
  type        = bool
  default     = false
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "target_port" {
  description = "Port the targets (the nginx proxy containers) listen on."
  type        = number
  default     = 8080

  validation {
    condition     = var.target_port > 0 && var.target_port < 65536
    error_message = "target_port must be a TCP port number."
  }
}

variable "health_check_path" {
  description = "Path of the target group's health check. /health is liveness through nginx to the API, without a database call, so a database outage does not make ECS replace every task."
  type        = string
  default     = "/health"
}

variable "health_check_interval" {
  description = "Seconds between two health checks of a target."
  type        = number
  default     = 15

  validation {
    condition     = var.health_check_interval >= 5 && var.health_check_interval <= 300
    error_message = "health_check_interval must be between 5 and 300 seconds."
  }
}

variable "health_check_timeout" {
  description = "Seconds without an answer after which a health check fails (below the interval)."
  type        = number
  default     = 5

  validation {
    condition     = var.health_check_timeout >= 2 && var.health_check_timeout < var.health_check_interval
    error_message = "health_check_timeout must be at least 2 seconds and below health_check_interval."
  }
}

variable "health_check_healthy_threshold" {
  description = "Passing checks in a row that put a target in service."
  type        = number
  default     = 2

  validation {
    condition     = var.health_check_healthy_threshold >= 2 && var.health_check_healthy_threshold <= 10
    error_message = "health_check_healthy_threshold must be between 2 and 10."
  }
}

variable "health_check_unhealthy_threshold" {
  description = "Failing checks in a row that take a target out of service."
  type        = number
  default     = 3

  validation {
    condition     = var.health_check_unhealthy_threshold >= 2 && var.health_check_unhealthy_threshold <= 10
    error_message = "health_check_unhealthy_threshold must be between 2 and 10."
  }
}

variable "idle_timeout" {
  description = "ALB idle timeout in seconds. Must stay below nginx's keepalive_timeout (75 s), or the ALB reuses connections nginx has closed (sporadic 502s)."
  type        = number
  default     = 60

  validation {
    condition     = var.idle_timeout >= 1 && var.idle_timeout < 75
    error_message = "idle_timeout must be between 1 and 74 seconds (below nginx's keepalive_timeout of 75 s)."
  }
}

variable "deregistration_delay" {
  description = "Seconds the target group keeps draining in-flight requests of a deregistering task. Part of the shutdown budget in docs/DEPLOY.md."
  type        = number
  default     = 30

  validation {
    condition     = var.deregistration_delay >= 0 && var.deregistration_delay <= 3600
    error_message = "deregistration_delay must be between 0 and 3600 seconds."
  }
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion (set false before a deliberate terraform destroy)."
  type        = bool
  default     = true
}

variable "enable_waf" {
  description = "Attach a WAFv2 web ACL with AWS managed rule groups and a per-IP rate rule."
  type        = bool
  default     = true
}

variable "waf_rate_limit" {
  description = "Requests per 5 minutes from one client IP above which the WAF blocks that IP. A flood backstop: the default (about 67 requests/s) sits above the API's own per-client limit (50/s, answered with 429 and Retry-After), so well-behaved clients meet the API's limit first."
  type        = number
  default     = 20000

  validation {
    condition     = var.waf_rate_limit >= 100 && var.waf_rate_limit <= 2000000000
    error_message = "waf_rate_limit must be between 100 and 2,000,000,000 (WAF's limits)."
  }
}

variable "access_log_retention_days" {
  description = "Days after which ALB access logs (and S3 server access logs) expire from the log bucket."
  type        = number
  default     = 90

  validation {
    condition     = var.access_log_retention_days >= 1
    error_message = "access_log_retention_days must be at least 1."
  }
}

variable "log_retention_days" {
  description = "Retention of the WAF log group, in days."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of the values CloudWatch Logs accepts."
  }
}

variable "kms_key_arn" {
  description = "ARN of the customer-managed KMS key that encrypts the WAF log group."
  type        = string
}

variable "force_destroy_log_bucket" {
  description = "Allow terraform destroy to delete the access-log bucket with its objects."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags merged into every resource of the module."
  type        = map(string)
  default     = {}
}
