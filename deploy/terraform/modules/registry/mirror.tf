# The collector sidecar's image is AWS's own ADOT build on ECR Public. The tasks
# reach only this region's private registry (and its endpoints), so the
# registry mirrors ECR Public: the first pull of
# <registry>/<name>-ecr-public/<path>:<tag> fetches public.ecr.aws/<path>:<tag>
# into a repository of that prefix, later pulls are served from it.

data "aws_region" "current" {}

data "aws_partition" "current" {}

resource "aws_ecr_pull_through_cache_rule" "ecr_public" {
  ecr_repository_prefix = "${var.name}-ecr-public"
  upstream_registry_url = "public.ecr.aws"
}
