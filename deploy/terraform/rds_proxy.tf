# Optional RDS Proxy between the API and the primary (use_rds_proxy). The
# database then holds the proxy's pool (rds_proxy_max_connections_percent of
# max_connections) however many tasks run, and a Multi-AZ failover reaches
# the tasks as a short wait instead of broken connections. The migrate
# container still connects to the instance itself (DDL and advisory locks).
#
# The proxy authenticates the API's own role with the credentials the service
# module keeps in the JSON form the proxy reads. It sits in the database's
# security group, so the service reaches it through the existing rules; the
# two rules below let it reach the instance.

data "aws_iam_policy_document" "rds_proxy_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "rds_proxy" {
  count = var.use_rds_proxy ? 1 : 0

  name               = "${var.name}-rds-proxy"
  assume_role_policy = data.aws_iam_policy_document.rds_proxy_assume.json

  tags = local.tags
}

data "aws_iam_policy_document" "rds_proxy" {
  count = var.use_rds_proxy ? 1 : 0

  statement {
    sid       = "ReadTheApiRoleCredentials"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [module.service.db_app_proxy_secret_arn]
  }

  statement {
    sid       = "DecryptThem"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "rds_proxy" {
  count = var.use_rds_proxy ? 1 : 0

  name   = "read-api-role-credentials"
  role   = aws_iam_role.rds_proxy[0].id
  policy = data.aws_iam_policy_document.rds_proxy[0].json
}

resource "aws_db_proxy" "this" {
  count = var.use_rds_proxy ? 1 : 0

  name                   = var.name
  engine_family          = "POSTGRESQL"
  role_arn               = aws_iam_role.rds_proxy[0].arn
  vpc_subnet_ids         = module.network.intra_subnet_ids
  vpc_security_group_ids = [module.database.security_group_id]
  require_tls            = true
  # Longer than the API pool keeps an idle connection (it keeps them).
  idle_client_timeout = 1800
  debug_logging       = false

  # Clients authenticate with SCRAM-SHA-256, the proxy's default for PostgreSQL.
  auth {
    auth_scheme = "SECRETS"
    iam_auth    = "DISABLED"
    secret_arn  = module.service.db_app_proxy_secret_arn
  }

  tags = local.tags

  depends_on = [aws_iam_role_policy.rds_proxy]
}

resource "aws_db_proxy_default_target_group" "this" {
  count = var.use_rds_proxy ? 1 : 0

  db_proxy_name = aws_db_proxy.this[0].name

  connection_pool_config {
    max_connections_percent = var.rds_proxy_max_connections_percent
    # A borrow waits at most about the API's DATABASE_TIMEOUT_SECS (3 s): past
    # it the API has answered 503 anyway.
    connection_borrow_timeout = 5
  }
}

resource "aws_db_proxy_target" "this" {
  count = var.use_rds_proxy ? 1 : 0

  db_proxy_name          = aws_db_proxy.this[0].name
  target_group_name      = aws_db_proxy_default_target_group.this[0].name
  db_instance_identifier = module.database.identifier
}

resource "aws_vpc_security_group_ingress_rule" "database_from_proxy" {
  count = var.use_rds_proxy ? 1 : 0

  security_group_id            = module.database.security_group_id
  description                  = "PostgreSQL from RDS Proxy (in the same group)"
  ip_protocol                  = "tcp"
  from_port                    = module.database.port
  to_port                      = module.database.port
  referenced_security_group_id = module.database.security_group_id

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "proxy_to_database" {
  count = var.use_rds_proxy ? 1 : 0

  security_group_id            = module.database.security_group_id
  description                  = "RDS Proxy to PostgreSQL (in the same group)"
  ip_protocol                  = "tcp"
  from_port                    = module.database.port
  to_port                      = module.database.port
  referenced_security_group_id = module.database.security_group_id

  tags = local.tags
}
