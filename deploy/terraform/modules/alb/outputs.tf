output "arn" {
  description = "ARN of the load balancer."
  value       = aws_lb.this.arn
}

output "arn_suffix" {
  description = "ARN suffix of the load balancer (the LoadBalancer dimension of its CloudWatch metrics)."
  value       = aws_lb.this.arn_suffix
}

output "dns_name" {
  description = "DNS name of the load balancer (point a CNAME or alias record of your domain at it)."
  value       = aws_lb.this.dns_name
}

output "zone_id" {
  description = "Route 53 hosted zone ID of the load balancer, for alias records."
  value       = aws_lb.this.zone_id
}

output "https_enabled" {
  description = "Whether the load balancer terminates HTTPS (a certificate was given or created)."
  value       = local.https
}

output "url" {
  description = "Base URL of the service through the load balancer."
  value       = "${local.https ? "https" : "http"}://${var.domain_name != "" ? var.domain_name : aws_lb.this.dns_name}"
}

output "security_group_id" {
  description = "ID of the load balancer's security group (the only source the service accepts traffic from)."
  value       = aws_security_group.this.id
}

output "target_group_arn" {
  description = "ARN of the target group the ECS service registers its proxy containers in."
  value       = aws_lb_target_group.this.arn
}

output "target_group_arn_suffix" {
  description = "ARN suffix of the target group (the TargetGroup dimension of its CloudWatch metrics)."
  value       = aws_lb_target_group.this.arn_suffix
}

output "listener_arn" {
  description = "ARN of the listener that forwards to the target group (HTTPS, or HTTP in the opted-in plaintext mode)."
  value       = local.https ? aws_lb_listener.https[0].arn : aws_lb_listener.http.arn
}

output "log_bucket_id" {
  description = "Name of the S3 bucket holding ALB access logs; other buckets send their S3 server access logs here under s3-access/."
  value       = aws_s3_bucket.logs.id
}

output "web_acl_arn" {
  description = "ARN of the WAF web ACL, or null when WAF is disabled."
  value       = var.enable_waf ? aws_wafv2_web_acl.this[0].arn : null
}
