# The connection budget: every connection the service may open fits in the
# database's max_connections less a reserve, checked at plan time.
#
# The fleet's peak is max_tasks during a deployment's surge (old and new
# tasks side by side, deployment_maximum_percent), each with a full pool. It
# goes to the primary, or, with RDS Proxy, to the proxy, which itself holds at
# most rds_proxy_max_connections_percent of max_connections. A read replica
# gets one more pool per task, against its own max_connections.

locals {
  # RDS PostgreSQL's default max_connections is
  # LEAST(DBInstanceClassMemory / 9531392, 5000). DBInstanceClassMemory is the
  # class's memory less what the OS and RDS keep; 90 % of the nominal memory
  # errs low. Classes not listed need db_max_connections.
  db_burstable_memory_gib = { micro = 1, small = 2, medium = 4, large = 8, xlarge = 16, "2xlarge" = 32 }
  db_vcpus                = { large = 2, xlarge = 4, "2xlarge" = 8, "4xlarge" = 16, "8xlarge" = 32, "12xlarge" = 48, "16xlarge" = 64, "24xlarge" = 96 }
  # GiB per vCPU: general purpose (m*) 4, memory optimised (r*) 8.
  db_memory_gib_per_vcpu = { m = 4, r = 8 }

  db_classes = {
    primary = var.db_instance_class
    replica = coalesce(var.db_read_replica_instance_class, var.db_instance_class)
  }
  db_estimated_max_connections = {
    for role, class in local.db_classes : role => try(min(floor(0.9 * 1073741824 * (
      substr(split(".", class)[1], 0, 1) == "t"
      ? local.db_burstable_memory_gib[split(".", class)[2]]
      : local.db_vcpus[split(".", class)[2]] * local.db_memory_gib_per_vcpu[substr(split(".", class)[1], 0, 1)]
    ) / 9531392), 5000), null)
  }
  # db_max_connections, when set, is the primary's and that of a replica of the same class.
  db_max_connections = {
    primary = coalesce(var.db_max_connections, local.db_estimated_max_connections.primary, -1)
    replica = local.db_classes.replica == var.db_instance_class ? coalesce(var.db_max_connections, local.db_estimated_max_connections.replica, -1) : coalesce(local.db_estimated_max_connections.replica, -1)
  }

  surge_tasks          = ceil(var.max_tasks * local.deployment_maximum_percent / 100)
  fleet_db_connections = local.surge_tasks * var.database_max_connections
  # What the primary holds for the service at most.
  primary_service_connections = (var.use_rds_proxy
    ? floor(local.db_max_connections.primary * var.rds_proxy_max_connections_percent / 100)
  : local.fleet_db_connections)
}

# Carries the checks (a plan that breaks the budget fails here, naming the
# numbers) and shows the budget in the plan.
resource "terraform_data" "connection_budget" {
  input = {
    surge_tasks                 = local.surge_tasks
    pool_size                   = var.database_max_connections
    primary_service_connections = local.primary_service_connections
    primary_max_connections     = local.db_max_connections.primary
    replica_max_connections     = var.read_replica_enabled ? local.db_max_connections.replica : null
    reserve                     = var.db_connections_reserve
  }

  lifecycle {
    precondition {
      condition     = local.db_max_connections.primary > 0 && (!var.read_replica_enabled || local.db_max_connections.replica > 0)
      error_message = "The max_connections of ${var.db_instance_class} (or of the replica's class) is not known here: set db_max_connections to what SHOW max_connections reports."
    }
    precondition {
      condition     = local.primary_service_connections + var.db_connections_reserve <= local.db_max_connections.primary
      error_message = "Connection budget exceeded on the primary: ${var.use_rds_proxy ? "RDS Proxy's share (${var.rds_proxy_max_connections_percent} %)" : "${local.surge_tasks} tasks at deployment surge (max_tasks ${var.max_tasks} x ${local.deployment_maximum_percent} %) x pool ${var.database_max_connections}"} = ${local.primary_service_connections}, + reserve ${var.db_connections_reserve} > max_connections ${local.db_max_connections.primary}. Lower max_tasks or database_max_connections, take a larger db_instance_class, or use_rds_proxy."
    }
    precondition {
      condition     = !var.read_replica_enabled || local.fleet_db_connections + var.db_connections_reserve <= local.db_max_connections.replica
      error_message = "Connection budget exceeded on the read replica: ${local.surge_tasks} tasks at deployment surge x pool ${var.database_max_connections} = ${local.fleet_db_connections}, + reserve ${var.db_connections_reserve} > its max_connections ${local.db_max_connections.replica}. Take a larger db_read_replica_instance_class or lower the pool or max_tasks."
    }
  }
}
