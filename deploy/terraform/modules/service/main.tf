# ECS on Fargate: one task = nginx proxy (port 80, the load balancer's target)
# in front of the API (127.0.0.1:8000, reachable only inside the task).

data "aws_caller_identity" "current" {}

data "aws_region" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name
  partition  = data.aws_partition.current.partition

  # HS256 with a generated secret unless an external JWKS is configured.
  create_jwt_secret = var.auth_enabled && var.auth_jwks_url == ""
  use_jwks          = var.auth_enabled && var.auth_jwks_url != ""

  # The deployed tag, as the pipeline last recorded it (image_tag only seeds the
  # parameter): an apply never moves the running image.
  deployed_tag = nonsensitive(aws_ssm_parameter.image_tag.value)
  api_image    = "${var.api_repository_url}:${local.deployed_tag}"
  proxy_image  = "${var.proxy_repository_url}:${local.deployed_tag}"

  # No password in a URL: DATABASE_PASSWORD (from Secrets Manager) supplies it.
  # The migrate container connects as the master user and makes the API's own
  # role; the API connects as that role, which may only read and write rows.
  # The API may reach the primary through RDS Proxy (api_db_address); the
  # migrate container always connects to the instance itself.
  api_db_address      = var.api_db_address == "" ? var.db_address : var.api_db_address
  database_url        = "postgres://${var.db_app_role}@${local.api_db_address}:${var.db_port}/${var.db_name}?sslmode=require"
  database_read_url   = "postgres://${var.db_app_role}@${var.db_read_address}:${var.db_port}/${var.db_name}?sslmode=require"
  master_database_url = "postgres://${var.db_username}@${var.db_address}:${var.db_port}/${var.db_name}?sslmode=require"
  # RDS's CA bundle ships in the API image: with it, TLS to the database is
  # verified (certificate chain and host name), not only encrypted.
  database_ca_file = "/etc/ssl/certs/rds-global-bundle.pem"
  # RDS Proxy presents an ACM certificate (Amazon's public roots, in the
  # image's system bundle), not one of the RDS CA: the API verifies against
  # that bundle when it goes through the proxy. The replica is an RDS instance.
  api_database_ca_file = var.api_db_address == "" ? local.database_ca_file : "/etc/ssl/certs/ca-certificates.crt"

  service_arn = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:service/${aws_ecs_cluster.this.name}/${var.name}"

  proxy_volumes = { for p in var.proxy_writable_paths : "nginx${replace(p, "/", "-")}" => p }

  api_environment = concat(
    [
      # Only nginx, in the same task, talks to the API: bind to loopback.
      { name = "BIND_ADDR", value = "127.0.0.1:8000" },
      { name = "DATABASE_URL", value = local.database_url },
      { name = "DATABASE_CA_FILE", value = local.api_database_ca_file },
      { name = "DATABASE_MAX_CONNECTIONS", value = tostring(var.database_max_connections) },
      # The migrate container has applied them; this role may not.
      { name = "SKIP_MIGRATIONS", value = "true" },
      { name = "LOG_FORMAT", value = "json" },
      { name = "LOG_LEVEL", value = var.log_level },
      { name = "TRUST_FORWARDED_FOR", value = "true" },
      { name = "RATE_LIMIT_PER_SECOND", value = tostring(var.rate_limit_per_second) },
      { name = "RATE_LIMIT_BURST", value = tostring(var.rate_limit_burst) },
      { name = "REQUEST_TIMEOUT_SECS", value = tostring(var.api_request_timeout_secs) },
      { name = "SHUTDOWN_GRACE_SECS", value = tostring(var.api_shutdown_grace_secs) },
    ],
    # Traces to the collector sidecar (same task, loopback); the metrics
    # listener stays on its default, 127.0.0.1:9100, where the sidecar scrapes.
    [
      { name = "OTEL_EXPORTER_OTLP_ENDPOINT", value = "http://127.0.0.1:4318" },
      { name = "OTEL_SERVICE_NAME", value = var.name },
      { name = "OTEL_TRACES_SAMPLER", value = "parentbased_traceidratio" },
      { name = "OTEL_TRACES_SAMPLER_ARG", value = tostring(var.trace_sample_ratio) },
    ],
    # Reads by id and pages from the replica, same role and password (roles
    # replicate); no secret in the URL.
    var.db_read_address == "" ? [] : [
      { name = "DATABASE_READ_URL", value = local.database_read_url },
      { name = "DATABASE_READ_MAX_LAG", value = var.database_read_max_lag },
    ],
    local.use_jwks ? [
      { name = "AUTH_JWKS_URL", value = var.auth_jwks_url },
      { name = "AUTH_ISSUER", value = var.auth_issuer },
      { name = "AUTH_AUDIENCE", value = var.auth_audience },
    ] : [],
  )

  api_secrets = concat(
    [{ name = "DATABASE_PASSWORD", valueFrom = aws_secretsmanager_secret.db_app.arn }],
    local.create_jwt_secret ? [{ name = "AUTH_JWT_SECRET", valueFrom = aws_secretsmanager_secret.jwt[0].arn }] : [],
  )

  secret_arns = concat([var.db_secret_arn, aws_secretsmanager_secret.db_app.arn], aws_secretsmanager_secret.jwt[*].arn)

  container_definitions = [
    {
      # Runs to completion before the API starts: migrations and the API's
      # role, the only use of the master credentials. Same image as the API
      # (the pipeline's image definitions name both).
      name                   = "migrate"
      image                  = local.api_image
      essential              = false
      readonlyRootFilesystem = true
      command                = ["migrate"]
      environment = [
        { name = "DATABASE_URL", value = local.master_database_url },
        { name = "DATABASE_CA_FILE", value = local.database_ca_file },
        { name = "DATABASE_APP_ROLE", value = var.db_app_role },
        { name = "LOG_FORMAT", value = "json" },
      ]
      secrets = [
        { name = "DATABASE_PASSWORD", valueFrom = "${var.db_secret_arn}:password::" },
        { name = "DATABASE_APP_PASSWORD", valueFrom = aws_secretsmanager_secret.db_app.arn },
      ]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = var.api_log_group_name
          awslogs-region        = local.region
          awslogs-stream-prefix = "migrate"
        }
      }
    },
    {
      name                   = "api"
      image                  = local.api_image
      essential              = true
      readonlyRootFilesystem = true
      # No portMappings: the API listens on 127.0.0.1:8000 and only the proxy,
      # over the task's loopback, reaches it.
      environment = local.api_environment
      secrets     = local.api_secrets
      # ECS ignores the image's HEALTHCHECK; the binary checks itself (the image
      # has no shell or curl).
      healthCheck = {
        command     = ["CMD", "/usr/local/bin/users-api", "healthcheck"]
        interval    = 10
        timeout     = 5
        retries     = 3
        startPeriod = 10
      }
      dependsOn   = [{ containerName = "migrate", condition = "SUCCESS" }]
      stopTimeout = var.stop_timeout
      ulimits     = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = var.api_log_group_name
          awslogs-region        = local.region
          awslogs-stream-prefix = "api"
          mode                  = "non-blocking"
          max-buffer-size       = "25m"
        }
      }
    },
    {
      name                   = "proxy"
      image                  = local.proxy_image
      essential              = true
      readonlyRootFilesystem = true
      # The proxy image runs nginx as a non-root user, so it listens on an
      # unprivileged port; the load balancer's target group uses the same one.
      portMappings = [{ containerPort = var.proxy_port, protocol = "tcp", name = "http" }]
      environment = [
        # Template variables of proxy/nginx.conf.template.
        { name = "LISTEN_PORT", value = tostring(var.proxy_port) },
        { name = "UPSTREAM", value = "127.0.0.1:8000" },
        # Trust X-Forwarded-For only from the VPC (the ALB's addresses).
        { name = "REAL_IP_FROM", value = var.vpc_cidr },
      ]
      # The image's own check (GET /nginx-health over bash's /dev/tcp).
      healthCheck = {
        command     = ["CMD", "/usr/local/bin/healthcheck"]
        interval    = 10
        timeout     = 5
        retries     = 3
        startPeriod = 5
      }
      mountPoints = [for v, p in local.proxy_volumes : { sourceVolume = v, containerPath = p, readOnly = false }]
      dependsOn   = [{ containerName = "api", condition = "HEALTHY" }]
      stopTimeout = var.stop_timeout
      ulimits     = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = var.proxy_log_group_name
          awslogs-region        = local.region
          awslogs-stream-prefix = "proxy"
          mode                  = "non-blocking"
          max-buffer-size       = "25m"
        }
      }
    },
    {
      # ADOT collector: scrapes the API's private /metrics into CloudWatch
      # (EMF) and forwards its spans to X-Ray. Not essential: if it stops, the
      # task keeps serving (spans are dropped and counted by the API, metrics
      # pause). Nothing depends on it; it has its own CPU and memory bounds.
      name                   = "collector"
      image                  = var.collector_image
      essential              = false
      readonlyRootFilesystem = true
      cpu                    = var.collector_cpu
      memory                 = var.collector_memory
      memoryReservation      = var.collector_memory_reservation
      environment = [
        { name = "AOT_CONFIG_CONTENT", value = var.collector_config },
        { name = "METRICS_NAMESPACE", value = var.metrics_namespace },
        { name = "METRICS_LOG_GROUP", value = var.metrics_log_group_name },
        { name = "AWS_REGION", value = local.region },
      ]
      healthCheck = {
        command     = ["CMD", "/healthcheck"]
        interval    = 30
        timeout     = 5
        retries     = 3
        startPeriod = 10
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = var.collector_log_group_name
          awslogs-region        = local.region
          awslogs-stream-prefix = "collector"
          mode                  = "non-blocking"
          max-buffer-size       = "4m"
        }
      }
    },
  ]
}

# ------------------------------------------------------------------ cluster

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = var.tags
}

resource "aws_ecs_cluster_capacity_providers" "this" {
  cluster_name       = aws_ecs_cluster.this.name
  capacity_providers = ["FARGATE"]

  default_capacity_provider_strategy {
    capacity_provider = "FARGATE"
    weight            = 1
  }
}

# ------------------------------------------------------------ secrets (JWT)

resource "random_password" "jwt" {
  count = local.create_jwt_secret ? 1 : 0

  length  = 64
  special = false
}

resource "aws_secretsmanager_secret" "jwt" {
  #checkov:skip=CKV2_AWS_57:HS256 signing key shared by all tasks; it is rotated by replacing it (docs/DEPLOY.md), since automatic rotation would invalidate every issued token at an arbitrary time.
  count = local.create_jwt_secret ? 1 : 0

  name_prefix = "${var.name}/auth-jwt-secret-"
  description = "HS256 signing secret of ${var.name} (AUTH_JWT_SECRET)"
  kms_key_id  = var.kms_key_arn

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "jwt" {
  count = local.create_jwt_secret ? 1 : 0

  secret_id     = aws_secretsmanager_secret.jwt[0].id
  secret_string = random_password.jwt[0].result
}

# ------------------------------------------------------- the deployed image

# One owner of the running image: the pipeline. It writes the tag it deploys
# here; Terraform reads it for the task definition and never writes it again
# after creating it with image_tag (the first deploy's images).
resource "aws_ssm_parameter" "image_tag" {
  name        = "/${var.name}/deployed-image-tag"
  description = "Image tag ${var.name} runs, written by the pipeline on every deploy; read by Terraform"
  type        = "SecureString"
  key_id      = var.kms_key_arn
  value       = var.image_tag

  tags = var.tags

  lifecycle {
    ignore_changes = [value]
  }
}

# ------------------------------------------------- secret (API's DB role)

# The API's own database password. Rotated by replacement every
# db_app_password_rotation_days: the apply after that period writes a new
# value; the rotation rule below then redeploys, and each new task's migrate
# container sets the role's password before its API starts.
resource "time_rotating" "db_app" {
  rotation_days = var.db_app_password_rotation_days
}

resource "random_password" "db_app" {
  length  = 48
  special = false

  keepers = {
    rotated = time_rotating.db_app.id
  }
}

resource "aws_secretsmanager_secret" "db_app" {
  #checkov:skip=CKV2_AWS_57:Rotated by replacement on the db_app_password_rotation_days schedule (time_rotating), and applied by the migrate container of the redeploy that the new value triggers; a rotation Lambda would change the password under running tasks.
  name_prefix = "${var.name}/db-app-password-"
  description = "Password of ${var.name}'s own database role ${var.db_app_role} (DATABASE_PASSWORD of the api container)"
  kms_key_id  = var.kms_key_arn

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "db_app" {
  secret_id     = aws_secretsmanager_secret.db_app.id
  secret_string = random_password.db_app.result
}

# The same credentials as RDS Proxy reads them (JSON username/password), when
# the API connects through a proxy.
resource "aws_secretsmanager_secret" "db_app_proxy" {
  #checkov:skip=CKV2_AWS_57:The API role's password, rotated with db_app by replacement (same random_password); a rotation Lambda would change it under running tasks.
  count = var.create_proxy_auth_secret ? 1 : 0

  name_prefix = "${var.name}/db-app-proxy-auth-"
  description = "RDS Proxy credentials of ${var.name}'s database role ${var.db_app_role}"
  kms_key_id  = var.kms_key_arn

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "db_app_proxy" {
  count = var.create_proxy_auth_secret ? 1 : 0

  secret_id     = aws_secretsmanager_secret.db_app_proxy[0].id
  secret_string = jsonencode({ username = var.db_app_role, password = random_password.db_app.result })
}

# ---------------------------------------------------------------------- IAM

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
  }
}

# Execution role: used by the ECS agent to pull the images, write the logs and
# read the secrets. Nothing else.
resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  tags = var.tags
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid = "EcrAuthToken"
    # GetAuthorizationToken has no resource-level permissions: AWS requires "*".
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PullImages"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = var.repository_arns
  }

  # The collector image, mirrored from ECR Public on first pull (registry module).
  statement {
    sid = "PullMirroredImages"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:BatchImportUpstreamImage",
      "ecr:CreateRepository",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = var.mirrored_repository_arns
  }

  statement {
    sid       = "WriteContainerLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = flatten([for arn in var.log_group_arns : [arn, "${arn}:log-stream:*"]])
  }

  statement {
    sid       = "ReadSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = local.secret_arns
  }

  statement {
    sid       = "DecryptSecrets"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-log-secrets"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# Task role: what the containers themselves may do in AWS. The API needs
# nothing; the collector sidecar writes EMF events to its one log group and
# sends trace segments to X-Ray.
resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json

  tags = var.tags
}

data "aws_iam_policy_document" "task" {
  statement {
    sid       = "WriteEmfMetrics"
    actions   = ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
    resources = [var.metrics_log_group_arn, "${var.metrics_log_group_arn}:log-stream:*"]
  }

  statement {
    #checkov:skip=CKV_AWS_356:X-Ray's PutTraceSegments and PutTelemetryRecords have no resource-level permissions; AWS requires "*".
    sid       = "SendTraces"
    actions   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "collector-metrics-traces"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# ------------------------------------------------------------ task + service

resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  # Empty task-local volumes (Fargate ephemeral storage) for nginx's
  # cache, pid file and temp files.
  dynamic "volume" {
    for_each = local.proxy_volumes

    content {
      name = volume.key
    }
  }

  container_definitions = jsonencode(local.container_definitions)

  # The pipeline's ECS deploy action registers new revisions of this family
  # (same definition, new image tag). Tracking the latest revision, with the
  # tag read from the parameter the pipeline writes, keeps Terraform from
  # fighting it.
  track_latest = true

  tags = var.tags
}

resource "aws_security_group" "this" {
  name_prefix = "${var.name}-service-"
  description = "ECS tasks: HTTP from the load balancer only"
  vpc_id      = var.vpc_id

  tags = merge(var.tags, { Name = "${var.name}-service" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "from_alb" {
  #checkov:skip=CKV_AWS_260:False positive: the source is referenced_security_group_id (the ALB's group), no CIDR; the check only knows the older source_security_group_id argument. tests/terraform asserts the same rule independently.
  security_group_id            = aws_security_group.this.id
  description                  = "HTTP from the load balancer to nginx"
  ip_protocol                  = "tcp"
  from_port                    = var.proxy_port
  to_port                      = var.proxy_port
  referenced_security_group_id = var.alb_security_group_id

  tags = var.tags
}

# HTTPS out only to the interface endpoints (ECR, Secrets Manager, CloudWatch
# Logs) and the S3 gateway (image layers); with an external JWKS, to the
# internet as well (the identity provider's keys).
resource "aws_vpc_security_group_egress_rule" "endpoints" {
  security_group_id            = aws_security_group.this.id
  description                  = "HTTPS to the AWS interface endpoints (ECR, Secrets Manager, CloudWatch Logs, X-Ray)"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = var.endpoint_security_group_id

  tags = var.tags
}

resource "aws_vpc_security_group_egress_rule" "s3" {
  security_group_id = aws_security_group.this.id
  description       = "HTTPS to S3 through the gateway endpoint (ECR image layers)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  prefix_list_id    = var.s3_prefix_list_id

  tags = var.tags
}

resource "aws_vpc_security_group_egress_rule" "jwks" {
  count = local.use_jwks ? 1 : 0

  security_group_id = aws_security_group.this.id
  description       = "HTTPS to the identity provider's JWKS (through the NAT gateway)"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"

  tags = var.tags
}

resource "aws_vpc_security_group_egress_rule" "postgres" {
  security_group_id            = aws_security_group.this.id
  description                  = "PostgreSQL to the database"
  ip_protocol                  = "tcp"
  from_port                    = var.db_port
  to_port                      = var.db_port
  referenced_security_group_id = var.db_security_group_id

  tags = var.tags
}

# ECS rejects a service whose target group is not yet attached to a listener.
resource "terraform_data" "listener" {
  input = var.listener_arn
}

resource "aws_ecs_service" "this" {
  name             = var.name
  cluster          = aws_ecs_cluster.this.id
  task_definition  = aws_ecs_task_definition.this.arn
  desired_count    = var.min_capacity
  launch_type      = "FARGATE"
  platform_version = "LATEST"

  propagate_tags          = "SERVICE"
  enable_ecs_managed_tags = true
  enable_execute_command  = false

  # Spread tasks evenly over the zones again after a zone recovers.
  availability_zone_rebalancing = "ENABLED"

  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = var.deployment_maximum_percent
  health_check_grace_period_seconds  = var.health_check_grace_period

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.this.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = var.target_group_arn
    container_name   = "proxy"
    container_port   = var.proxy_port
  }

  tags = var.tags

  lifecycle {
    # Autoscaling owns the running count.
    ignore_changes = [desired_count]
  }

  depends_on = [terraform_data.listener, aws_iam_role_policy.execution]
}

# -------------------------------------------------------------- autoscaling

resource "aws_appautoscaling_target" "this" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.this.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_capacity
  max_capacity       = var.max_capacity

  tags = var.tags
}

resource "aws_appautoscaling_policy" "cpu" {
  name               = "${var.name}-cpu-${var.cpu_target}"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.cpu_target
    scale_in_cooldown  = 300
    scale_out_cooldown = 60

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageCPUUtilization"
    }
  }
}

resource "aws_appautoscaling_policy" "memory" {
  name               = "${var.name}-memory-${var.memory_target}"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  resource_id        = aws_appautoscaling_target.this.resource_id
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value       = var.memory_target
    scale_in_cooldown  = 300
    scale_out_cooldown = 60

    predefined_metric_specification {
      predefined_metric_type = "ECSServiceAverageMemoryUtilization"
    }
  }
}

# ------------------------------------- redeploy when the DB password rotates
#
# ECS resolves `secrets` only when a container starts, so a rotated password
# never reaches running tasks. RDS rotates the master secret itself (7 days by
# default); Secrets Manager records the rotation in CloudTrail, EventBridge
# matches it, and a one-step state machine calls ecs:UpdateService with
# forceNewDeployment. New tasks start with the new password; the old ones
# drain as in any deployment. No function code to maintain.

resource "aws_cloudwatch_event_rule" "secret_rotated" {
  count = var.redeploy_on_secret_rotation ? 1 : 0

  name        = "${var.name}-db-secret-rotated"
  description = "The database secret of ${var.name} got a new value"

  event_pattern = jsonencode({
    source        = ["aws.secretsmanager"]
    "detail-type" = ["AWS API Call via CloudTrail", "AWS Service Event via CloudTrail"]
    detail = {
      eventSource = ["secretsmanager.amazonaws.com"]
      "$or" = [
        {
          eventName           = ["RotationSucceeded"]
          additionalEventData = { SecretId = [var.db_secret_arn, aws_secretsmanager_secret.db_app.arn] }
        },
        {
          eventName         = ["PutSecretValue", "UpdateSecretVersionStage"]
          requestParameters = { secretId = [var.db_secret_arn, aws_secretsmanager_secret.db_app.arn] }
        },
      ]
    }
  })

  tags = var.tags
}

resource "aws_cloudwatch_log_group" "redeploy" {
  count = var.redeploy_on_secret_rotation ? 1 : 0

  name              = "/aws/vendedlogs/states/${var.name}-redeploy"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

resource "aws_sfn_state_machine" "redeploy" {
  count = var.redeploy_on_secret_rotation ? 1 : 0

  name     = "${var.name}-redeploy"
  role_arn = aws_iam_role.redeploy[0].arn

  definition = jsonencode({
    Comment = "Force a new deployment of ${var.name} so its tasks read the rotated database password"
    StartAt = "LetRotationSettle"
    States = {
      # Several events can fire for one rotation; wait until it has finished.
      LetRotationSettle = {
        Type    = "Wait"
        Seconds = 60
        Next    = "ForceNewDeployment"
      }
      ForceNewDeployment = {
        Type     = "Task"
        Resource = "arn:aws:states:::aws-sdk:ecs:updateService"
        Parameters = {
          Cluster            = aws_ecs_cluster.this.arn
          Service            = aws_ecs_service.this.name
          ForceNewDeployment = true
        }
        Retry = [{
          ErrorEquals     = ["States.ALL"]
          IntervalSeconds = 30
          MaxAttempts     = 5
          BackoffRate     = 2
        }]
        End = true
      }
    }
  })

  logging_configuration {
    log_destination        = "${aws_cloudwatch_log_group.redeploy[0].arn}:*"
    include_execution_data = true
    level                  = "ALL"
  }

  tracing_configuration {
    enabled = true
  }

  tags = var.tags
}

data "aws_iam_policy_document" "states_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["states.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "redeploy" {
  count = var.redeploy_on_secret_rotation ? 1 : 0

  name               = "${var.name}-redeploy"
  assume_role_policy = data.aws_iam_policy_document.states_assume.json

  tags = var.tags
}

data "aws_iam_policy_document" "redeploy" {
  statement {
    sid       = "ForceNewDeployment"
    actions   = ["ecs:UpdateService"]
    resources = [local.service_arn]
  }

  # Step Functions' log delivery and X-Ray APIs have no resource-level
  # permissions; AWS documents "*" for them.
  statement {
    sid = "VendedLogDelivery"
    actions = [
      "logs:CreateLogDelivery",
      "logs:GetLogDelivery",
      "logs:UpdateLogDelivery",
      "logs:DeleteLogDelivery",
      "logs:ListLogDeliveries",
      "logs:PutResourcePolicy",
      "logs:DescribeResourcePolicies",
      "logs:DescribeLogGroups",
    ]
    resources = ["*"]
  }

  statement {
    sid = "Tracing"
    actions = [
      "xray:PutTraceSegments",
      "xray:PutTelemetryRecords",
      "xray:GetSamplingRules",
      "xray:GetSamplingTargets",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "redeploy" {
  count = var.redeploy_on_secret_rotation ? 1 : 0

  name   = "force-new-deployment"
  role   = aws_iam_role.redeploy[0].id
  policy = data.aws_iam_policy_document.redeploy.json
}

data "aws_iam_policy_document" "events_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "events" {
  count = var.redeploy_on_secret_rotation ? 1 : 0

  name               = "${var.name}-rotation-events"
  assume_role_policy = data.aws_iam_policy_document.events_assume.json

  tags = var.tags
}

data "aws_iam_policy_document" "events" {
  count = var.redeploy_on_secret_rotation ? 1 : 0

  statement {
    actions   = ["states:StartExecution"]
    resources = [aws_sfn_state_machine.redeploy[0].arn]
  }
}

resource "aws_iam_role_policy" "events" {
  count = var.redeploy_on_secret_rotation ? 1 : 0

  name   = "start-redeploy"
  role   = aws_iam_role.events[0].id
  policy = data.aws_iam_policy_document.events[0].json
}

resource "aws_cloudwatch_event_target" "redeploy" {
  count = var.redeploy_on_secret_rotation ? 1 : 0

  rule     = aws_cloudwatch_event_rule.secret_rotated[0].name
  arn      = aws_sfn_state_machine.redeploy[0].arn
  role_arn = aws_iam_role.events[0].arn
}
