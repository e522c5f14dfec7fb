# The service's own signals: the collector sidecar's log groups, the alarms on
# what the API measures (shed 503s, pool use, latency by route, write batches)
# and a dashboard of them. Replica lag has its alarm in main.tf (RDS's ReplicaLag).
#
# Two sources: the ADOT sidecar scrapes /metrics into CloudWatch (embedded
# metric format, namespace var.metrics_namespace); latency percentiles come
# from the API's access log instead, through a metric filter, because the EMF
# exporter turns Prometheus histograms into min/max/sum/count, from which
# CloudWatch cannot compute a p99.

locals {
  ns = var.metrics_namespace

  # The router's templates: the "route" label of the metrics and logs.
  routes = ["/health", "/ready", "/users", "/users/{id}", "/user", "unmatched"]

  # The users endpoints, where a 503 means a client was turned away (an alarm
  # takes at most 10 metrics; /health is never shed, /ready is 503 by design
  # while a task drains).
  shed_routes = ["/users", "/users/{id}", "/user"]

  # Metric-math ids must start with a lowercase letter and hold [a-zA-Z0-9_].
  route_ids = { for r in local.routes : r => replace(replace(replace(trimprefix(r, "/"), "/", "_"), "{", ""), "}", "") }
}

# The collector container's own output.
resource "aws_cloudwatch_log_group" "collector" {
  name              = "/ecs/${var.name}/collector"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

# EMF events the collector writes; CloudWatch extracts the metrics from them.
resource "aws_cloudwatch_log_group" "emf" {
  #checkov:skip=CKV_AWS_338:The events only carry metrics that CloudWatch extracts on arrival and keeps for 15 months; a year of the raw events would cost storage for nothing (metrics_log_retention_days).
  name              = "/ecs/${var.name}/metrics"
  retention_in_days = var.metrics_log_retention_days
  kms_key_id        = var.kms_key_arn

  tags = var.tags
}

resource "aws_cloudwatch_log_metric_filter" "request_latency" {
  name           = "${var.name}-request-latency"
  log_group_name = aws_cloudwatch_log_group.this["api"].name
  pattern        = "{ $.target = \"users_api::access\" }"

  metric_transformation {
    name       = "request_latency_ms"
    namespace  = local.ns
    value      = "$.latency_ms"
    unit       = "Milliseconds"
    dimensions = { route = "$.route" }
  }
}

# ---------------------------------------------------------------- alarms

resource "aws_cloudwatch_metric_alarm" "shed_requests" {
  alarm_name          = "${var.name}-shed-503-rate"
  alarm_description   = "More than ${var.shed_503_percent}% of the users endpoints' answers were 503 (load shed, database unavailable, write queue full) in 3 of 5 minutes. Runbook: docs/OPERATIONS.md, \"503 rate\"."
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  threshold           = var.shed_503_percent
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.actions
  ok_actions          = local.actions

  metric_query {
    id          = "rate"
    expression  = "100 * SUM([${join(", ", [for r in local.shed_routes : "s_${local.route_ids[r]}"])}]) / SUM([${join(", ", [for r in local.shed_routes : "t_${local.route_ids[r]}"])}])"
    label       = "503 answers (%)"
    return_data = true
  }

  dynamic "metric_query" {
    for_each = local.shed_routes
    content {
      id = "s_${local.route_ids[metric_query.value]}"
      metric {
        namespace   = local.ns
        metric_name = "http_requests_total"
        dimensions  = { route = metric_query.value, status = "503" }
        stat        = "Sum"
        period      = 60
      }
    }
  }

  dynamic "metric_query" {
    for_each = local.shed_routes
    content {
      id = "t_${local.route_ids[metric_query.value]}"
      metric {
        namespace   = local.ns
        metric_name = "http_requests_total"
        dimensions  = { route = metric_query.value }
        stat        = "Sum"
        period      = 60
      }
    }
  }

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "pool_saturated" {
  alarm_name          = "${var.name}-db-pool-saturated"
  alarm_description   = "A task had more than ${var.pool_in_use_percent}% of its database pool in use for 5 minutes: requests are about to wait for connections. Runbook: docs/OPERATIONS.md, \"pool saturated\"."
  evaluation_periods  = 5
  threshold           = var.pool_in_use_percent
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.actions
  ok_actions          = local.actions

  metric_query {
    id          = "in_use_percent"
    expression  = "100 * in_use / pool_max"
    label       = "pool in use (%)"
    return_data = true
  }

  metric_query {
    id = "in_use"
    metric {
      namespace   = local.ns
      metric_name = "db_pool_connections"
      dimensions  = { state = "in_use" }
      stat        = "Maximum"
      period      = 60
    }
  }

  metric_query {
    id = "pool_max"
    metric {
      namespace   = local.ns
      metric_name = "db_pool_max_connections"
      stat        = "Maximum"
      period      = 60
    }
  }

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "route_latency" {
  for_each = var.latency_p99_ms_by_route

  alarm_name          = "${var.name}-p99-${local.route_ids[each.key]}"
  alarm_description   = "p99 latency of ${each.key} above ${each.value} ms in 3 of 5 minutes (measured in the API, proxy excluded). Runbook: docs/OPERATIONS.md, \"route p99\"."
  namespace           = local.ns
  metric_name         = "request_latency_ms"
  dimensions          = { route = each.key }
  extended_statistic  = "p99"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  threshold           = each.value
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.actions
  ok_actions          = local.actions

  tags = var.tags
}

resource "aws_cloudwatch_metric_alarm" "write_batch_latency" {
  alarm_name          = "${var.name}-write-batch-slow"
  alarm_description   = "Write batches (connection, multi-row INSERT, commit) took ${var.write_batch_seconds} s or more on average for 3 of 5 minutes. Runbook: docs/OPERATIONS.md, \"write batches slow\"."
  namespace           = local.ns
  metric_name         = "db_write_batch_duration_seconds"
  statistic           = "Average"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  threshold           = var.write_batch_seconds
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.actions
  ok_actions          = local.actions

  tags = var.tags
}

# ------------------------------------------------------------- dashboard

resource "aws_cloudwatch_dashboard" "service_signals" {
  dashboard_name = "${var.name}-service"

  dashboard_body = jsonencode({
    widgets = [
      {
        type   = "metric"
        x      = 0
        y      = 0
        width  = 12
        height = 6
        properties = {
          title  = "503 answers of the users endpoints (%): shed, database unavailable, write queue full"
          region = local.region
          period = 60
          metrics = concat(
            [[{ expression = "100 * SUM(METRICS(\"s\")) / SUM(METRICS(\"t\"))", label = "503 (%)", id = "rate" }]],
            [for r in local.shed_routes : [local.ns, "http_requests_total", "route", r, "status", "503", { id = "s${local.route_ids[r]}", stat = "Sum", visible = false }]],
            [for r in local.shed_routes : [local.ns, "http_requests_total", "route", r, { id = "t${local.route_ids[r]}", stat = "Sum", visible = false }]],
          )
        }
      },
      {
        type   = "metric"
        x      = 12
        y      = 0
        width  = 12
        height = 6
        properties = {
          title  = "Database pool: in use vs size (busiest task)"
          region = local.region
          stat   = "Maximum"
          period = 60
          metrics = [
            [local.ns, "db_pool_connections", "state", "in_use"],
            [local.ns, "db_pool_max_connections"],
            [local.ns, "http_requests_in_flight"],
          ]
        }
      },
      {
        type   = "metric"
        x      = 0
        y      = 6
        width  = 12
        height = 6
        properties = {
          title   = "p99 latency by route (ms, in the API)"
          region  = local.region
          stat    = "p99"
          period  = 60
          metrics = [for r in local.routes : [local.ns, "request_latency_ms", "route", r]]
        }
      },
      {
        type   = "metric"
        x      = 12
        y      = 6
        width  = 12
        height = 6
        properties = {
          title  = "Write batches: duration (s, average) and size"
          region = local.region
          stat   = "Average"
          period = 60
          metrics = [
            [local.ns, "db_write_batch_duration_seconds"],
            [local.ns, "db_write_batch_size", { yAxis = "right" }],
          ]
        }
      },
      {
        type   = "metric"
        x      = 0
        y      = 12
        width  = 12
        height = 4
        properties = {
          title   = "Trace spans dropped (export queue full)"
          region  = local.region
          stat    = "Sum"
          period  = 300
          metrics = [[local.ns, "otel_spans_dropped_total"]]
        }
      },
      {
        type   = "text"
        x      = 12
        y      = 12
        width  = 12
        height = 4
        properties = {
          markdown = "Replica lag: the alarm <name>-db-replica-lag-high (RDS ReplicaLag) when a read replica exists; the API's own gauge is db_replica_lag_seconds. Runbook lines for every alarm here: docs/OPERATIONS.md."
        }
      },
      {
        type   = "alarm"
        x      = 0
        y      = 16
        width  = 24
        height = 3
        properties = {
          title = "Service alarms"
          alarms = concat(
            [aws_cloudwatch_metric_alarm.shed_requests.arn, aws_cloudwatch_metric_alarm.pool_saturated.arn,
            aws_cloudwatch_metric_alarm.write_batch_latency.arn],
            [for a in aws_cloudwatch_metric_alarm.route_latency : a.arn],
          )
        }
      },
    ]
  })
}
