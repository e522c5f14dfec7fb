# users-api on AWS: VPC -> public ALB (+WAF) -> ECS Fargate (nginx + API) ->
# RDS PostgreSQL, images in ECR, delivered by CodePipeline. Every module is
# local (./modules), so the scanner sees every resource.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  tags = merge(var.tags, {
    Project   = var.name
    ManagedBy = "terraform"
  })

  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # nginx in the proxy image runs as a non-root user on an unprivileged port.
  proxy_port = 8080

  # Rolling-deploy timing: every value below follows from the three inputs
  # (docs/DEPLOY.md, "Shutdown and draining budget"); change an input, not a
  # result. tests/terraform checks the inequalities.
  request_timeout_secs = 10 # REQUEST_TIMEOUT_SECS: the API answers 503 past it
  proxy_timeout_secs   = 15 # nginx proxy_read/send_timeout (proxy/nginx.conf.template)
  api_start_secs       = 20 # API start + migrations until its container health check passes

  # The ALB keeps draining a deregistered task until its longest request
  # (bounded by nginx) has ended, with as much again in reserve.
  deregistration_delay = 2 * local.proxy_timeout_secs
  # ECS sends SIGTERM only after the drain; a request that still reached the
  # API gets two request timeouts to finish.
  shutdown_grace_secs = 2 * local.request_timeout_secs
  # SIGKILL only after the API's own grace, plus time to exit.
  stop_timeout = local.shutdown_grace_secs + 10
  # Load-balancer health check: a new task is in service after
  # healthy_threshold passing checks; a hung one is out after unhealthy_threshold.
  health_check_interval            = 15
  health_check_timeout             = 5
  health_check_healthy_threshold   = 2
  health_check_unhealthy_threshold = 3
  # ECS ignores failing load-balancer checks while a task starts: the API's
  # start, up to one interval until the first check, then the passing checks
  # that put it in service.
  health_check_grace_period = local.api_start_secs + (1 + local.health_check_healthy_threshold) * local.health_check_interval

  # Rolling deployments start every new task before stopping an old one.
  deployment_maximum_percent = 200

  # The service module names its cluster and service after its `name`. The
  # observability module gets these names from here rather than from the
  # service module's outputs, because the service module consumes
  # observability's log groups (no two-way module dependency).
  service_name = var.name
}

# ---------------------------------------------------------------- KMS key
#
# One customer-managed key for the stack's data at rest: log groups, the
# database (storage, Performance Insights, master secret), the JWT secret,
# ECR, pipeline artifacts, build output and the alarm topic.

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:Key policy, not an identity policy: Resource "*" is this key only, and the account statement is AWS's default that hands control to IAM.
  #checkov:skip=CKV_AWS_111:Key policy: Resource "*" is this key only; service principals are limited by encryption-context or kms:ViaService conditions.
  #checkov:skip=CKV_AWS_356:Key policy: Resource "*" is the only valid resource in a key policy and means this key.
  # Key administration and use are governed by IAM policies in this account
  # (the roles in the modules grant themselves narrowly).
  statement {
    sid       = "AccountIamPolicies"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy "*" means this key

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsOfThisAccount"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }

  # Services that publish to the encrypted alarm topic.
  statement {
    sid       = "PublishToEncryptedTopic"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey*"]
    resources = ["*"]

    principals {
      type = "Service"
      identifiers = [
        "cloudwatch.amazonaws.com",
        "events.amazonaws.com",
        "codestar-notifications.amazonaws.com",
      ]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["sns.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: data at rest (logs, RDS, secrets, ECR, artifacts, SNS)"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json

  tags = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

# ---------------------------------------------------------------- modules

module "network" {
  source = "./modules/network"

  name                    = var.name
  vpc_cidr                = var.vpc_cidr
  az_count                = var.az_count
  single_nat_gateway      = var.single_nat_gateway
  flow_log_retention_days = var.log_retention_days
  kms_key_arn             = aws_kms_key.this.arn
  tags                    = local.tags
}

module "alb" {
  source = "./modules/alb"

  name                 = var.name
  vpc_id               = module.network.vpc_id
  vpc_cidr             = module.network.vpc_cidr
  public_subnet_ids    = module.network.public_subnet_ids
  certificate_arn      = var.certificate_arn
  domain_name          = var.domain_name
  route53_zone_id      = var.route53_zone_id
  allow_plaintext_http = var.allow_plaintext_http
  enable_waf           = var.enable_waf
  waf_rate_limit       = var.waf_rate_limit
  deletion_protection  = var.alb_deletion_protection
  log_retention_days   = var.log_retention_days
  kms_key_arn          = aws_kms_key.this.arn
  tags                 = local.tags

  target_port = local.proxy_port

  # Rolling-deploy timing (locals above); idle 60 s < nginx keepalive 75 s.
  deregistration_delay             = local.deregistration_delay
  health_check_interval            = local.health_check_interval
  health_check_timeout             = local.health_check_timeout
  health_check_healthy_threshold   = local.health_check_healthy_threshold
  health_check_unhealthy_threshold = local.health_check_unhealthy_threshold
  idle_timeout                     = 60
}

module "registry" {
  source = "./modules/registry"

  name        = var.name
  kms_key_arn = aws_kms_key.this.arn
  tags        = local.tags
}

module "database" {
  source = "./modules/database"

  name                         = var.name
  vpc_id                       = module.network.vpc_id
  subnet_ids                   = module.network.intra_subnet_ids
  instance_class               = var.db_instance_class
  performance_insights_enabled = var.db_performance_insights
  engine_version               = var.db_engine_version
  parameter_group_family       = "postgres${split(".", var.db_engine_version)[0]}"
  allocated_storage            = var.db_allocated_storage
  max_allocated_storage        = var.db_max_allocated_storage
  multi_az                     = var.db_multi_az
  deletion_protection          = var.db_deletion_protection
  backup_retention_days        = var.db_backup_retention_days
  read_replica_enabled         = var.read_replica_enabled
  read_replica_instance_class  = var.db_read_replica_instance_class
  log_retention_days           = var.log_retention_days
  kms_key_arn                  = aws_kms_key.this.arn
  tags                         = local.tags
}

# Wiring between two modules: PostgreSQL is reachable from the service's
# security group and nothing else. Kept here so that neither module depends on
# the other in both directions.
resource "aws_vpc_security_group_ingress_rule" "database_from_service" {
  security_group_id            = module.database.security_group_id
  description                  = "PostgreSQL from the ECS service"
  ip_protocol                  = "tcp"
  from_port                    = module.database.port
  to_port                      = module.database.port
  referenced_security_group_id = module.service.security_group_id

  tags = local.tags
}

module "service" {
  source = "./modules/service"

  name                       = local.service_name
  vpc_id                     = module.network.vpc_id
  vpc_cidr                   = module.network.vpc_cidr
  private_subnet_ids         = module.network.private_subnet_ids
  alb_security_group_id      = module.alb.security_group_id
  db_security_group_id       = module.database.security_group_id
  endpoint_security_group_id = module.network.endpoint_security_group_id
  s3_prefix_list_id          = module.network.s3_prefix_list_id
  target_group_arn           = module.alb.target_group_arn
  listener_arn               = module.alb.listener_arn
  proxy_port                 = local.proxy_port

  api_repository_url   = module.registry.repository_urls["api"]
  proxy_repository_url = module.registry.repository_urls["proxy"]
  repository_arns      = values(module.registry.repository_arns)
  image_tag            = var.image_tag
  cpu_architecture     = var.cpu_architecture

  task_cpu      = var.task_cpu
  task_memory   = var.task_memory
  min_capacity  = var.min_tasks
  max_capacity  = var.max_tasks
  cpu_target    = var.cpu_target
  memory_target = var.memory_target

  # Rolling-deploy timing (locals above).
  api_request_timeout_secs   = local.request_timeout_secs
  api_shutdown_grace_secs    = local.shutdown_grace_secs
  stop_timeout               = local.stop_timeout
  health_check_grace_period  = local.health_check_grace_period
  deployment_maximum_percent = local.deployment_maximum_percent

  log_level                = var.log_level
  rate_limit_per_second    = var.rate_limit_per_second
  rate_limit_burst         = var.rate_limit_burst
  database_max_connections = var.database_max_connections

  db_address                  = module.database.address
  api_db_address              = var.use_rds_proxy ? aws_db_proxy.this[0].endpoint : ""
  create_proxy_auth_secret    = var.use_rds_proxy
  db_read_address             = module.database.replica_address
  database_read_max_lag       = var.database_read_max_lag
  db_port                     = module.database.port
  db_name                     = module.database.db_name
  db_username                 = module.database.username
  db_secret_arn               = module.database.master_user_secret_arn
  redeploy_on_secret_rotation = var.redeploy_on_secret_rotation

  auth_enabled  = var.auth_enabled
  auth_jwks_url = var.auth_jwks_url
  auth_issuer   = var.auth_issuer
  auth_audience = var.auth_audience

  api_log_group_name   = module.observability.api_log_group_name
  proxy_log_group_name = module.observability.proxy_log_group_name
  log_group_arns       = module.observability.container_log_group_arns

  # The collector sidecar (deploy/otel/collector-ecs.yaml).
  collector_image          = "${module.registry.ecr_public_mirror}/aws-observability/aws-otel-collector:${var.collector_version}"
  mirrored_repository_arns = module.registry.ecr_public_mirror_repository_arns
  collector_config         = file("${path.module}/../otel/collector-ecs.yaml")
  collector_log_group_name = module.observability.collector_log_group_name
  metrics_log_group_name   = module.observability.metrics_log_group_name
  metrics_log_group_arn    = module.observability.metrics_log_group_arn
  metrics_namespace        = module.observability.metrics_namespace
  trace_sample_ratio       = var.trace_sample_ratio
  log_retention_days       = var.log_retention_days
  kms_key_arn              = aws_kms_key.this.arn
  tags                     = local.tags
}

module "observability" {
  source = "./modules/observability"

  name               = var.name
  log_retention_days = var.log_retention_days
  alarm_email        = var.alarm_email
  kms_key_arn        = aws_kms_key.this.arn

  cluster_name               = local.service_name
  service_name               = local.service_name
  alb_arn_suffix             = module.alb.arn_suffix
  target_group_arn_suffix    = module.alb.target_group_arn_suffix
  db_instance_identifier     = module.database.identifier
  db_allocated_storage_bytes = module.database.allocated_storage_bytes
  # The most connections the service holds legitimately on the primary
  # (connection_budget.tf): the fleet at deployment surge, or the proxy's pool.
  db_connections_threshold = local.primary_service_connections
  db_replica_identifier    = module.database.replica_identifier

  tags = local.tags
}

module "pipeline" {
  source = "./modules/pipeline"

  name                     = var.name
  repository_id            = var.repository_id
  branch                   = var.branch
  codestar_connection_arn  = var.codestar_connection_arn
  connection_provider_type = var.connection_provider_type
  buildspec_path           = "deploy/buildspec.yml"
  cpu_architecture         = var.cpu_architecture
  require_approval         = var.require_approval

  repository_urls = module.registry.repository_urls
  repository_arns = values(module.registry.repository_arns)

  cluster_name           = module.service.cluster_name
  service_name           = module.service.service_name
  service_arn            = module.service.service_arn
  task_definition_family = module.service.task_definition_family
  pass_role_arns         = [module.service.execution_role_arn, module.service.task_role_arn]

  codebuild_log_group_name    = module.observability.codebuild_log_group_name
  codebuild_log_group_arn     = module.observability.codebuild_log_group_arn
  access_log_bucket           = module.alb.log_bucket_id
  notification_topic_arn      = module.observability.alarm_topic_arn
  deployed_tag_parameter_name = module.service.deployed_tag_parameter_name
  deployed_tag_parameter_arn  = module.service.deployed_tag_parameter_arn
  kms_key_arn                 = aws_kms_key.this.arn
  tags                        = local.tags
}
