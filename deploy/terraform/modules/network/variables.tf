variable "name" {
  description = "Name prefix for every resource of the network."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "vpc_cidr" {
  description = "IPv4 CIDR of the VPC. A /16 to /18: private subnets take a /20-equivalent quarter each (newbits 4), public and intra subnets a /24-equivalent (newbits 8)."
  type        = string
  default     = "10.20.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) >= 16 && tonumber(split("/", var.vpc_cidr)[1]) <= 18
    error_message = "vpc_cidr must be a valid IPv4 CIDR with a prefix length between /16 and /18."
  }
}

variable "az_count" {
  description = "How many availability zones to spread the subnets over (taken in order from the region's available zones)."
  type        = number
  default     = 3

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 3 && floor(var.az_count) == var.az_count
    error_message = "az_count must be 2 or 3 (RDS Multi-AZ and the ALB need at least two zones)."
  }
}

variable "single_nat_gateway" {
  description = "true: one NAT gateway shared by all private subnets (cheaper, one zone is a single point of failure for egress). false: one NAT gateway per zone."
  type        = bool
  default     = true
}

variable "flow_log_retention_days" {
  description = "Retention of the VPC flow log group, in days."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.flow_log_retention_days)
    error_message = "flow_log_retention_days must be one of the values CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, ...)."
  }
}

variable "flow_log_traffic_type" {
  description = "Which traffic the VPC flow log records: ACCEPT, REJECT or ALL."
  type        = string
  default     = "ALL"

  validation {
    condition     = contains(["ACCEPT", "REJECT", "ALL"], var.flow_log_traffic_type)
    error_message = "flow_log_traffic_type must be ACCEPT, REJECT or ALL."
  }
}

variable "kms_key_arn" {
  description = "ARN of the customer-managed KMS key that encrypts the flow log group."
  type        = string
}

variable "tags" {
  description = "Tags merged into every resource of the module."
  type        = map(string)
  default     = {}
}

variable "interface_endpoints" {
  description = "AWS services reached through interface endpoints in the private subnets (what the tasks call: image pulls, logs and EMF metrics, secrets, X-Ray for the collector's traces)."
  type        = list(string)
  default     = ["ecr.api", "ecr.dkr", "logs", "secretsmanager", "xray"]

  validation {
    condition     = alltrue([for e in var.interface_endpoints : can(regex("^[a-z0-9.-]+$", e))])
    error_message = "interface_endpoints holds service names such as ecr.api or secretsmanager."
  }
}
