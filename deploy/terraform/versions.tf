terraform {
  # 1.10: S3-native state locking (use_lockfile). 1.9: validations that refer
  # to other variables.
  required_version = ">= 1.10.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    time = {
      source  = "hashicorp/time"
      version = "~> 0.12"
    }
  }

  # Partial configuration: bucket, key, region and locking come from
  # `terraform init -backend-config=backend.hcl` (see backend.hcl.example and
  # docs/DEPLOY.md), so no account-specific name is written in the code.
  backend "s3" {}
}

provider "aws" {
  region = var.region

  # Every resource carries the project's tags, including those a module forgets.
  default_tags {
    tags = local.tags
  }
}
