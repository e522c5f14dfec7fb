output "identifier" {
  description = "Identifier of the DB instance (the DBInstanceIdentifier dimension of its metrics)."
  value       = aws_db_instance.this.identifier
}

output "arn" {
  description = "ARN of the DB instance."
  value       = aws_db_instance.this.arn
}

output "address" {
  description = "Host name of the database endpoint."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "Port of the database endpoint."
  value       = aws_db_instance.this.port
}

output "db_name" {
  description = "Name of the application database."
  value       = aws_db_instance.this.db_name
}

output "username" {
  description = "Master user name (its password lives in master_user_secret_arn)."
  value       = aws_db_instance.this.username
}

output "master_user_secret_arn" {
  description = "ARN of the RDS-managed Secrets Manager secret holding the master credentials (JSON keys username, password)."
  value       = aws_db_instance.this.master_user_secret[0].secret_arn
}

output "security_group_id" {
  description = "ID of the database's security group."
  value       = aws_security_group.this.id
}

output "allocated_storage_bytes" {
  description = "Allocated storage in bytes, for free-space alarms."
  value       = aws_db_instance.this.allocated_storage * 1073741824
}

output "replica_address" {
  description = "Host name of the read replica's endpoint (empty without a replica)."
  value       = try(aws_db_instance.replica[0].address, "")
}

output "replica_identifier" {
  description = "Identifier of the read replica (empty without a replica)."
  value       = try(aws_db_instance.replica[0].identifier, "")
}
