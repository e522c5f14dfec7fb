output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "vpc_cidr" {
  description = "IPv4 CIDR of the VPC."
  value       = aws_vpc.this.cidr_block
}

output "azs" {
  description = "Availability zones the subnets are spread over."
  value       = local.azs
}

output "public_subnet_ids" {
  description = "IDs of the public subnets (ALB, NAT gateways)."
  value       = aws_subnet.public[*].id
}

output "private_subnet_ids" {
  description = "IDs of the private subnets (ECS tasks)."
  value       = aws_subnet.private[*].id
}

output "intra_subnet_ids" {
  description = "IDs of the intra subnets (RDS; no route to the internet)."
  value       = aws_subnet.intra[*].id
}

output "intra_subnet_cidrs" {
  description = "CIDRs of the intra subnets, for egress rules towards the database."
  value       = aws_subnet.intra[*].cidr_block
}

output "nat_public_ips" {
  description = "Public IPs of the NAT gateways (the service's egress addresses, e.g. for allow-lists)."
  value       = aws_eip.nat[*].public_ip
}

output "flow_log_group_name" {
  description = "Name of the CloudWatch log group holding the VPC flow logs."
  value       = aws_cloudwatch_log_group.flow_logs.name
}

output "endpoint_security_group_id" {
  description = "Security group of the interface endpoints (the tasks' HTTPS egress goes to it)."
  value       = aws_security_group.endpoints.id
}

output "s3_prefix_list_id" {
  description = "Prefix list of the S3 gateway endpoint (ECR image layers come from S3)."
  value       = aws_vpc_endpoint.s3.prefix_list_id
}
