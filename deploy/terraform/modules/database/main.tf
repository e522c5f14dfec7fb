# RDS PostgreSQL in the intra subnets: encrypted with the project key, TLS
# enforced, automated backups, master password generated and rotated by RDS in
# Secrets Manager (Terraform never sees it), reachable only from the service.

data "aws_partition" "current" {}

resource "aws_db_subnet_group" "this" {
  name        = var.name
  description = "Intra subnets of ${var.name}"
  subnet_ids  = var.subnet_ids

  tags = var.tags
}

resource "aws_security_group" "this" {
  name_prefix = "${var.name}-db-"
  description = "PostgreSQL, reachable only from the service's security group"
  vpc_id      = var.vpc_id

  # No egress rules: Terraform removes AWS's default allow-all egress, and the
  # database initiates no connections. No ingress rule here either: the caller
  # admits its clients (the root module admits the service's group only), so
  # this module does not depend on the service module that depends on it.

  tags = merge(var.tags, { Name = "${var.name}-db" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_db_parameter_group" "this" {
  name_prefix = "${var.name}-"
  family      = var.parameter_group_family
  description = "TLS-only connections and slow/DDL statement logging for ${var.name}"

  # Refuse every non-TLS connection (the API connects with sslmode=require).
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = tostring(var.slow_query_ms)
  }

  parameter {
    name  = "log_statement"
    value = "ddl"
  }

  parameter {
    name  = "log_connections"
    value = "1"
  }

  parameter {
    name  = "log_disconnections"
    value = "1"
  }

  parameter {
    name  = "log_lock_waits"
    value = "1"
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

# RDS would create these on first export with "never expire" and no key;
# creating them first gives them retention and encryption.
resource "aws_cloudwatch_log_group" "this" {
  for_each = toset(["postgresql", "upgrade"])

  name              = "/aws/rds/instance/${var.name}/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

data "aws_iam_policy_document" "monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "monitoring" {
  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.monitoring_assume.json

  tags = var.tags
}

# AWS's managed policy for Enhanced Monitoring; it only writes to the
# RDSOSMetrics log group.
resource "aws_iam_role_policy_attachment" "monitoring" {
  role       = aws_iam_role.monitoring.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "this" {
  identifier = var.name

  engine                     = "postgres"
  engine_version             = var.engine_version
  auto_minor_version_upgrade = true
  instance_class             = var.instance_class
  parameter_group_name       = aws_db_parameter_group.this.name
  ca_cert_identifier         = "rds-ca-rsa2048-g1"

  db_name  = var.db_name
  username = var.username
  port     = 5432

  # RDS generates the password, stores it in Secrets Manager (encrypted with
  # the project key) and rotates it (every 7 days by default). The service
  # receives it through ECS `secrets`; see docs/DEPLOY.md for rotation.
  manage_master_user_password   = true
  master_user_secret_kms_key_id = var.kms_key_arn

  iam_database_authentication_enabled = true

  allocated_storage     = var.allocated_storage
  max_allocated_storage = var.max_allocated_storage
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = var.kms_key_arn

  multi_az               = var.multi_az
  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.this.id]
  publicly_accessible    = false

  backup_retention_period   = var.backup_retention_days
  backup_window             = var.backup_window
  maintenance_window        = var.maintenance_window
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-final"

  performance_insights_enabled          = var.performance_insights_enabled
  performance_insights_kms_key_id       = var.performance_insights_enabled ? var.kms_key_arn : null
  performance_insights_retention_period = var.performance_insights_enabled ? 7 : null

  monitoring_interval = 60
  monitoring_role_arn = aws_iam_role.monitoring.arn

  enabled_cloudwatch_logs_exports = ["postgresql", "upgrade"]

  apply_immediately = false

  tags = var.tags

  depends_on = [aws_cloudwatch_log_group.this]
}

# ------------------------------------------------------------ read replica
#
# Optional streaming replica for reads (the API's DATABASE_READ_URL). Same
# key, parameter group (TLS only), security group, monitoring and
# Performance Insights as the primary. Roles and passwords replicate, so the
# API's own role works there unchanged. Subnets come from the source.

resource "aws_cloudwatch_log_group" "replica" {
  for_each = var.read_replica_enabled ? toset(["postgresql", "upgrade"]) : toset([])

  name              = "/aws/rds/instance/${var.name}-replica/${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

resource "aws_db_instance" "replica" {
  count = var.read_replica_enabled ? 1 : 0

  identifier          = "${var.name}-replica"
  replicate_source_db = aws_db_instance.this.identifier

  instance_class             = coalesce(var.read_replica_instance_class, var.instance_class)
  auto_minor_version_upgrade = true
  parameter_group_name       = aws_db_parameter_group.this.name
  ca_cert_identifier         = "rds-ca-rsa2048-g1"

  iam_database_authentication_enabled = true

  max_allocated_storage = var.max_allocated_storage
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = var.kms_key_arn

  # A replica is a copy: losing it costs reads, not data (the primary keeps
  # its Multi-AZ standby and backups). A final snapshot of a replica is not
  # possible.
  multi_az                 = false
  vpc_security_group_ids   = [aws_security_group.this.id]
  publicly_accessible      = false
  backup_retention_period  = 1
  copy_tags_to_snapshot    = true
  delete_automated_backups = true
  deletion_protection      = var.deletion_protection
  skip_final_snapshot      = true

  performance_insights_enabled          = var.performance_insights_enabled
  performance_insights_kms_key_id       = var.performance_insights_enabled ? var.kms_key_arn : null
  performance_insights_retention_period = var.performance_insights_enabled ? 7 : null

  monitoring_interval = 60
  monitoring_role_arn = aws_iam_role.monitoring.arn

  enabled_cloudwatch_logs_exports = ["postgresql", "upgrade"]

  apply_immediately = false

  tags = var.tags

  depends_on = [aws_cloudwatch_log_group.replica]
}
