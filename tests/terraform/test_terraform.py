"""Parse-level tests of deploy/terraform (no terraform binary, no cloud).

The first group runs the checker in tfcheck.py over the real tree; the second
feeds it small broken snippets to show that each rule does fail when it should.
"""

from __future__ import annotations

import math
import pathlib
import re
import textwrap

import hcl2
import pytest
import yaml

import tfcheck

REPO = pathlib.Path(__file__).resolve().parents[2]
TF = REPO / "deploy" / "terraform"
TFVARS_EXAMPLE = TF / "terraform.tfvars.example"
EXPECTED_MODULES = {"network", "alb", "service", "database", "registry", "pipeline", "observability"}


# ------------------------------------------------------------ the real tree

def test_terraform_tree_has_no_problems():
    problems = tfcheck.check_tree(TF, TFVARS_EXAMPLE)
    assert problems == [], "\n".join(problems)


def test_root_calls_every_module_and_only_local_ones():
    tree = tfcheck.module_tree(TF)
    called = {m.dir_name for m, parent, _ in tree if parent is not None}
    assert called == EXPECTED_MODULES
    root = tree[0][0]
    for name, body in root.calls.items():
        assert tfcheck.literal(body["source"]).startswith("./modules/"), name


def test_every_resource_is_in_a_local_module_the_scanner_can_read():
    # checkov silently skips registry modules it cannot download; there are none.
    for module, _, _ in tfcheck.module_tree(TF):
        for body in module.calls.values():
            assert tfcheck.literal(body["source"]).startswith("./")


def test_checkov_config_skips_nothing_and_inline_skips_have_reasons():
    config = yaml.safe_load((TF / ".checkov.yaml").read_text())
    assert not {"skip-check", "soft-fail", "soft-fail-on", "skip-path"} & set(config), config
    skips = []
    for tf in TF.rglob("*.tf"):
        for line in tf.read_text().splitlines():
            if "checkov:skip" in line:
                m = re.search(r"#checkov:skip=(CKV2?_[A-Z]+_\d+):(.{20,})$", line.strip())
                assert m, f"{tf}: skip without an id and a reason: {line.strip()}"
                skips.append(m.group(1))
    # A skip is a decision: keep them few.
    assert len(skips) <= 20, skips


def _module_args(name: str) -> dict:
    root = tfcheck.load_module(TF, ".")
    return {k: tfcheck.literal(v) for k, v in root.calls[name].items()}


ARITHMETIC = re.compile(r"(?:[\d\s()+*/-]|local\.\w+)+")


def _evaluate_locals(module_dir: pathlib.Path) -> dict[str, int]:
    """The numeric locals of a module, each arithmetic over numbers and other locals.

    Read from the source text: the HCL parser drops parentheses from expressions."""
    exprs = {}
    for tf in sorted(module_dir.glob("*.tf")):
        inside = False
        for line in tf.read_text().splitlines():
            if re.match(r"^locals\s*\{", line):
                inside = True
            elif inside and line.startswith("}"):
                inside = False
            elif inside:
                m = re.match(r"^\s*(\w+)\s*=\s*(.+?)\s*(?:#.*)?$", line)
                if m and ARITHMETIC.fullmatch(m.group(2)):
                    exprs[m.group(1)] = m.group(2)
    values: dict[str, int] = {}
    progress = True
    while progress:
        progress = False
        for name, expr in exprs.items():
            refs = re.findall(r"local\.(\w+)", expr)
            if name not in values and all(r in values for r in refs):
                arithmetic = re.sub(r"local\.(\w+)", lambda m: str(values[m.group(1)]), expr)
                assert re.fullmatch(r"[\d\s()+*/-]+", arithmetic), (name, expr)
                values[name] = eval(arithmetic)  # digits and operators only (asserted above)
                progress = True
    return values


TIMING_ARGS = {
    "alb": {
        "deregistration_delay": "deregistration_delay",
        "health_check_interval": "health_check_interval",
        "health_check_timeout": "health_check_timeout",
        "health_check_healthy_threshold": "health_check_healthy_threshold",
        "health_check_unhealthy_threshold": "health_check_unhealthy_threshold",
    },
    "service": {
        "api_request_timeout_secs": "request_timeout_secs",
        "api_shutdown_grace_secs": "shutdown_grace_secs",
        "stop_timeout": "stop_timeout",
        "health_check_grace_period": "health_check_grace_period",
        "deployment_maximum_percent": "deployment_maximum_percent",
    },
}


def test_rolling_deploy_timing_is_derived_from_one_set_of_locals():
    root = tfcheck.load_module(TF, ".")
    # Each timing argument is the local of that name, never a number set on its own.
    for module, args in TIMING_ARGS.items():
        for arg, local_name in args.items():
            assert tfcheck.first(root.calls[module][arg]) == f"${{local.{local_name}}}", (module, arg)
    t = _evaluate_locals(TF)
    # Results follow from the inputs: no result is a bare literal.
    for derived in ("deregistration_delay", "shutdown_grace_secs", "stop_timeout", "health_check_grace_period"):
        assert "local." in tfcheck.first(root.locals[derived]), derived
    nginx_proxy_timeout, nginx_keepalive = 15, 75
    template = (REPO / "proxy" / "nginx.conf.template").read_text()
    assert re.search(rf"proxy_read_timeout\s+{t['proxy_timeout_secs']}s", template), "proxy_timeout_secs mirrors nginx"
    assert t["proxy_timeout_secs"] == nginx_proxy_timeout
    assert t["request_timeout_secs"] < t["proxy_timeout_secs"]  # the API answers before nginx gives up
    assert t["proxy_timeout_secs"] < t["deregistration_delay"]  # the drain outlasts any request
    assert t["request_timeout_secs"] < t["shutdown_grace_secs"] < t["stop_timeout"] <= 120  # Fargate's maximum
    assert t["health_check_timeout"] < t["health_check_interval"]
    started = t["api_start_secs"] + t["health_check_healthy_threshold"] * t["health_check_interval"]
    assert t["health_check_grace_period"] > started  # a starting task is not replaced for being slow
    alb = _module_args("alb")
    assert alb["idle_timeout"] < nginx_keepalive  # the ALB closes idle connections first
    # Today's figures, as docs/DEPLOY.md states them.
    got = {k: t[k] for k in ("deregistration_delay", "shutdown_grace_secs", "stop_timeout", "health_check_grace_period")}
    assert got == {"deregistration_delay": 30, "shutdown_grace_secs": 20, "stop_timeout": 30,
                   "health_check_grace_period": 65}, got
    doc = (REPO / "docs" / "DEPLOY.md").read_text()
    for needle in ("deregistration delay", "stopTimeout", "health check grace period", "idle timeout",
                   "SHUTDOWN_GRACE_SECS", "REQUEST_TIMEOUT_SECS", "keepalive_timeout", "local.deregistration_delay",
                   "local.health_check_grace_period"):
        assert needle.lower() in doc.lower(), needle


def test_the_timing_evaluator_follows_references(tmp_path):
    (tmp_path / "main.tf").write_text(
        'locals {\n  a = 10 # ten\n  b = 2 * local.a\n  c = local.b + (1 + local.a) * 3\n  d = data.x.y.z\n}\n'
        'module "m" {\n  a = 99\n}\n'
    )
    assert _evaluate_locals(tmp_path) == {"a": 10, "b": 20, "c": 53}


def test_https_is_required_unless_plaintext_is_opted_into():
    root = tfcheck.load_module(TF, ".")
    plaintext = root.variables["allow_plaintext_http"]
    assert tfcheck.first(plaintext["default"]) is False
    condition = tfcheck.first(tfcheck.first(plaintext["validation"])["condition"])
    for needle in ("var.allow_plaintext_http", "var.certificate_arn", "var.route53_zone_id"):
        assert needle in condition, needle
    alb = tfcheck.load_module(TF / "modules" / "alb", "alb")
    listeners = {name for (rtype, name) in alb.resources if rtype == "aws_lb_listener"}
    assert listeners == {"http", "https"}, listeners
    http = alb.resources[("aws_lb_listener", "http")]
    assert "count" not in http and tfcheck.literal(http["port"]) == 80  # always one port-80 listener
    text = re.sub(r"\s+", " ", (TF / "modules" / "alb" / "main.tf").read_text())
    assert 'type = local.https ? "redirect" : "forward"' in text
    assert "condition = local.https || var.allow_plaintext_http" in text
    assert 'resource "aws_acm_certificate_validation" "this"' in text
    example = (TF / "terraform.tfvars.example").read_text()
    assert not re.search(r"^\s*allow_plaintext_http\s*=\s*true", example, re.M)


def test_alb_access_logs_work_in_every_region():
    alb = tfcheck.load_module(TF / "modules" / "alb", "alb")
    assert ("aws_elb_service_account", "current") not in alb.data
    text = (TF / "modules" / "alb" / "main.tf").read_text()
    assert '"logdelivery.elasticloadbalancing.amazonaws.com"' in text


def test_build_and_pipeline_use_the_stack_key_only_through_s3():
    text = (TF / "modules" / "pipeline" / "main.tf").read_text()
    for match in re.finditer(r'actions\s*=\s*\[[^\]]*"kms:[^\]]*\][\s\S]*?\n  }\n', text):
        assert 'variable = "kms:ViaService"' in match.group(0), match.group(0)
    assert text.count('variable = "kms:ViaService"') >= 2


def test_task_egress_goes_to_endpoints_s3_and_the_database_only():
    service = tfcheck.load_module(TF / "modules" / "service", "service")
    egress = {name: body for (rtype, name), body in service.resources.items()
              if rtype == "aws_vpc_security_group_egress_rule"}
    assert set(egress) == {"endpoints", "s3", "postgres", "jwks"}, set(egress)
    world = [name for name, body in egress.items() if tfcheck.literal(body.get("cidr_ipv4")) == "0.0.0.0/0"]
    assert world == ["jwks"]
    assert tfcheck.first(egress["jwks"]["count"]) == "${local.use_jwks ? 1 : 0}"
    network = tfcheck.load_module(TF / "modules" / "network", "network")
    endpoints = tfcheck.first(network.variables["interface_endpoints"]["default"])
    # logs: container logs and the collector's EMF metrics; xray: the collector's traces
    assert {"ecr.api", "ecr.dkr", "logs", "secretsmanager", "xray"} <= set(endpoints)


def test_production_defaults():
    root = tfcheck.load_module(TF, ".")
    assert tfcheck.first(root.variables["min_tasks"]["default"]) >= 2
    with (TF / "versions.tf").open() as fh:
        provider = hcl2.load(fh)["provider"][0]["aws"]
    assert tfcheck.first(tfcheck.first(provider["default_tags"])["tags"]) == "${local.tags}"
    registry = tfcheck.load_module(TF / "modules" / "registry", "registry")
    scanning = registry.resources[("aws_ecr_registry_scanning_configuration", "this")]
    assert tfcheck.literal(scanning["scan_type"]) == "ENHANCED"
    assert tfcheck.first(registry.variables["enhanced_scanning"]["default"]) is True
    # The connections alarm counts the deployment surge (old and new tasks side by side).
    threshold = tfcheck.first(root.calls["observability"]["db_connections_threshold"])
    assert threshold == "${local.primary_service_connections}"
    root_locals = {name: tfcheck.first(root.locals[name]) for name in ("surge_tasks", "fleet_db_connections")}
    assert "local.deployment_maximum_percent" in root_locals["surge_tasks"] and "var.max_tasks" in root_locals["surge_tasks"]
    assert "local.surge_tasks" in root_locals["fleet_db_connections"]


def test_task_definition_matches_the_contract():
    service = tfcheck.load_module(TF / "modules" / "service", "service")
    # whitespace-insensitive: compare with runs of blanks collapsed
    text = re.sub(r"\s+", " ", (TF / "modules" / "service" / "main.tf").read_text())
    task = service.resources[("aws_ecs_task_definition", "this")]
    assert tfcheck.literal(task["requires_compatibilities"]) == "FARGATE"
    for needle in (
        'name = "api"', 'name = "proxy"',
        '"CMD", "/usr/local/bin/users-api", "healthcheck"',
        'condition = "HEALTHY"', '"UPSTREAM", value = "127.0.0.1:8000"',
        '"BIND_ADDR", value = "127.0.0.1:8000"', '"LOG_FORMAT", value = "json"',
        '"TRUST_FORWARDED_FOR", value = "true"', '"AUTH_JWT_SECRET", valueFrom', "sslmode=require",
        "stopTimeout = var.stop_timeout", '"SKIP_MIGRATIONS", value = "true"',
        '"DATABASE_CA_FILE", value = local.database_ca_file',
        'database_ca_file = "/etc/ssl/certs/rds-global-bundle.pem"',
        'dependsOn = [{ containerName = "migrate", condition = "SUCCESS" }]',
    ):
        assert needle in text, needle
    assert text.count("essential = true") == 2 and text.count("essential = false") == 2  # migrate, collector
    # the collector sidecar: never essential, bounded, pinned, its own logs
    for needle in ('name = "collector"', "essential = false", "memory = var.collector_memory",
                   "cpu = var.collector_cpu", "image = var.collector_image",
                   '"AOT_CONFIG_CONTENT", value = var.collector_config',
                   '"OTEL_EXPORTER_OTLP_ENDPOINT", value = "http://127.0.0.1:4318"',
                   'awslogs-group = var.collector_log_group_name'):
        assert needle in text, needle
    assert text.count("readonlyRootFilesystem = true") == 4  # migrate, api, proxy, collector
    # secrets never travel as plain environment values
    assert not re.search(r'name = "(DATABASE_PASSWORD|DATABASE_APP_PASSWORD|AUTH_JWT_SECRET)", value =', text)
    # no URL carries a password; the API's is its own role's, the master's is the migrate container's
    assert re.search(r'database_url = "postgres://\$\{var\.db_app_role\}@', text)
    assert re.search(r'master_database_url = "postgres://\$\{var\.db_username\}@', text)


def test_only_the_migrate_container_gets_the_master_credentials():
    text = re.sub(r"\s+", " ", (TF / "modules" / "service" / "main.tf").read_text())
    master = '"DATABASE_PASSWORD", valueFrom = "${var.db_secret_arn}:password::"'
    assert text.count(master) == 1 and text.count("local.master_database_url") == 1  # used by migrate only
    migrate = text[text.index('name = "migrate"'):text.index('name = "api"')]
    assert master in migrate and "value = local.master_database_url" in migrate
    assert '"DATABASE_APP_ROLE", value = var.db_app_role' in migrate
    api = text[text.index('name = "api"'):text.index('name = "proxy"')]
    assert "api_secrets" in api and "local.api_environment" in api
    assert 'name = "DATABASE_PASSWORD", valueFrom = aws_secretsmanager_secret.db_app.arn' in text
    # the pipeline's image definitions name every container, migrate included
    buildspec = (REPO / "deploy" / "buildspec.yml").read_text()
    assert re.search(r'"name":"api".*"name":"proxy".*"name":"migrate"', buildspec)


def test_pipeline_uses_buildspec_connection_and_ecs_deploy():
    text = (TF / "modules" / "pipeline" / "main.tf").read_text()
    for needle in ('pipeline_type  = "V2"', 'provider         = "CodeStarSourceConnection"',
                   'provider        = "ECS"', 'FileName          = "imagedefinitions.json"'):
        assert needle in text, needle
    assert _module_args("pipeline")["buildspec_path"] == "deploy/buildspec.yml"
    assert "OAuthToken" not in text  # the connection replaces the OAuth token


def test_backend_is_partial_s3_with_no_names_in_code():
    with (TF / "versions.tf").open() as fh:
        versions = hcl2.load(fh)
    backend = versions["terraform"][0]["backend"][0]
    assert list(backend) == ["s3"] and not {k for k in backend["s3"] if not k.startswith("__")}
    example = (TF / "backend.hcl.example").read_text()
    assert "use_lockfile" in example and "dynamodb_table" in example


# ----------------------------------------------- negative self-tests

def make_tree(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    for module_dir in {p.parent for p in tmp_path.rglob("*.tf")}:
        for required in tfcheck.MODULE_FILES:
            target = module_dir / required
            if not target.exists():
                target.write_text("" if required.endswith(".tf") else "# module\n")
    return tmp_path


CLEAN_CHILD = {
    "modules/app/variables.tf": """
        variable "name" {
          description = "Name."
          type        = string
        }
    """,
    "modules/app/main.tf": """
        resource "aws_s3_bucket" "this" {
          bucket = var.name
        }
    """,
    "modules/app/outputs.tf": """
        output "bucket" {
          description = "Bucket."
          value       = aws_s3_bucket.this.id
        }
    """,
}


def problems_for(tmp_path, files, tfvars=None):
    root = make_tree(tmp_path, files)
    tfvars_path = None
    if tfvars is not None:
        tfvars_path = root / "terraform.tfvars.example"
        tfvars_path.write_text(textwrap.dedent(tfvars))
    return tfcheck.check_tree(root, tfvars_path)


def assert_caught(problems, fragment):
    assert any(fragment in p for p in problems), f"expected {fragment!r} in {problems}"


def test_clean_snippet_passes(tmp_path):
    files = dict(CLEAN_CHILD)
    files["main.tf"] = """
        module "app" {
          source = "./modules/app"
          name   = "x"
        }
        output "bucket" {
          description = "b"
          value       = module.app.bucket
        }
    """
    assert problems_for(tmp_path, files) == []


def test_catches_undeclared_variable(tmp_path):
    files = {"main.tf": 'resource "aws_s3_bucket" "b" { bucket = var.missing }\n'}
    assert_caught(problems_for(tmp_path, files), "var.missing is used but not declared")


def test_catches_unused_variable_even_if_its_own_validation_mentions_it(tmp_path):
    files = {"variables.tf": """
        variable "lonely" {
          description = "Unused."
          type        = string
          validation {
            condition     = length(var.lonely) > 0
            error_message = "x"
          }
        }
    """}
    assert_caught(problems_for(tmp_path, files), "variable 'lonely' is declared but never used")


def test_catches_reference_to_missing_resource_data_and_local(tmp_path):
    files = {"main.tf": """
        locals { used = "x" }
        resource "aws_s3_bucket" "b" {
          bucket = "${local.used}-${local.nope}-${aws_kms_key.gone.arn}-${data.aws_region.absent.name}"
        }
    """}
    problems = problems_for(tmp_path, files)
    assert_caught(problems, "local.nope is referenced but not defined")
    assert_caught(problems, "aws_kms_key.gone is referenced but not declared")
    assert_caught(problems, "data.aws_region.absent is referenced but not declared")


def test_catches_missing_module_output_and_missing_module(tmp_path):
    files = dict(CLEAN_CHILD)
    files["main.tf"] = """
        module "app" {
          source = "./modules/app"
          name   = "x"
        }
        output "o" {
          description = "o"
          value       = [module.app.no_such_output, module.ghost.id]
        }
    """
    problems = problems_for(tmp_path, files)
    assert_caught(problems, "module.app.no_such_output is referenced but the module has no such output")
    assert_caught(problems, "module.ghost is referenced but not called")


def test_catches_unknown_and_missing_module_arguments(tmp_path):
    files = dict(CLEAN_CHILD)
    files["main.tf"] = """
        module "app" {
          source  = "./modules/app"
          colour  = "blue"
        }
    """
    problems = problems_for(tmp_path, files)
    assert_caught(problems, "is passed 'colour', which module.app does not declare")
    assert_caught(problems, "does not pass required variable 'name'")


def test_catches_modules_that_depend_on_each_other(tmp_path):
    files = dict(CLEAN_CHILD)
    files["main.tf"] = """
        module "a" {
          source = "./modules/app"
          name   = module.b.bucket
        }
        module "b" {
          source = "./modules/app"
          name   = module.c.bucket
        }
        module "c" {
          source = "./modules/app"
          name   = module.a.bucket
        }
    """
    assert_caught(problems_for(tmp_path, files), "modules 'a' and 'b' depend on each other")


def test_catches_registry_module(tmp_path):
    files = {"main.tf": """
        module "vpc" {
          source  = "terraform-aws-modules/vpc/aws"
          version = "~> 5.0"
        }
    """}
    assert_caught(problems_for(tmp_path, files), "is not a local module")


def test_catches_world_open_ingress_outside_the_alb(tmp_path):
    files = {
        "main.tf": """
            module "service" {
              source = "./modules/service"
            }
        """,
        "modules/service/main.tf": """
            resource "aws_security_group" "inline" {
              ingress {
                from_port   = 8000
                to_port     = 8000
                protocol    = "tcp"
                cidr_blocks = ["10.0.0.0/8", "0.0.0.0/0"]
              }
            }
            resource "aws_vpc_security_group_ingress_rule" "v6" {
              security_group_id = aws_security_group.inline.id
              ip_protocol       = "tcp"
              from_port         = 80
              to_port           = 80
              cidr_ipv6         = "::/0"
            }
            resource "aws_security_group_rule" "legacy" {
              type              = "ingress"
              security_group_id = aws_security_group.inline.id
              protocol          = "tcp"
              from_port         = 22
              to_port           = 22
              cidr_blocks       = ["0.0.0.0/0"]
            }
            resource "aws_security_group" "dyn" {
              dynamic "ingress" {
                for_each = [80]
                content {
                  from_port   = ingress.value
                  to_port     = ingress.value
                  protocol    = "tcp"
                  cidr_blocks = ["0.0.0.0/0"]
                }
              }
            }
        """,
    }
    problems = problems_for(tmp_path, files)
    for address in ("aws_security_group.inline", "aws_vpc_security_group_ingress_rule.v6",
                    "aws_security_group_rule.legacy", "aws_security_group.dyn"):
        assert_caught(problems, f"{address} opens ingress to the internet")


def test_catches_world_open_ingress_hidden_in_a_variable_default_or_caller(tmp_path):
    files = {
        "main.tf": """
            module "service" {
              source       = "./modules/service"
              allowed_cidr = "0.0.0.0/0"
            }
        """,
        "modules/service/variables.tf": """
            variable "allowed_cidr" {
              description = "CIDR."
              type        = string
              default     = "10.0.0.0/8"
            }
            variable "other_cidr" {
              description = "CIDR."
              type        = string
              default     = "::/0"
            }
        """,
        "modules/service/main.tf": """
            resource "aws_vpc_security_group_ingress_rule" "from_caller" {
              security_group_id = "sg-1"
              ip_protocol       = "tcp"
              from_port         = 80
              to_port           = 80
              cidr_ipv4         = var.allowed_cidr
            }
            resource "aws_vpc_security_group_ingress_rule" "from_default" {
              security_group_id = "sg-1"
              ip_protocol       = "tcp"
              from_port         = 80
              to_port           = 80
              cidr_ipv6         = var.other_cidr
            }
        """,
    }
    problems = problems_for(tmp_path, files)
    assert_caught(problems, "aws_vpc_security_group_ingress_rule.from_caller opens ingress to the internet")
    assert_caught(problems, "aws_vpc_security_group_ingress_rule.from_default opens ingress to the internet")


def test_alb_may_open_80_and_443_but_nothing_else(tmp_path):
    files = {
        "main.tf": 'module "alb" {\n  source = "./modules/alb"\n}\n',
        "modules/alb/main.tf": """
            resource "aws_security_group" "this" {}
            resource "aws_vpc_security_group_ingress_rule" "https" {
              security_group_id = aws_security_group.this.id
              ip_protocol       = "tcp"
              from_port         = 443
              to_port           = 443
              cidr_ipv4         = "0.0.0.0/0"
            }
            resource "aws_vpc_security_group_ingress_rule" "ssh" {
              security_group_id = aws_security_group.this.id
              ip_protocol       = "tcp"
              from_port         = 22
              to_port           = 22
              cidr_ipv4         = "0.0.0.0/0"
            }
        """,
    }
    problems = problems_for(tmp_path, files)
    assert_caught(problems, "aws_vpc_security_group_ingress_rule.ssh opens ports other than 80/443")
    assert not any(".https" in p for p in problems), problems


def test_security_group_source_is_not_world_open(tmp_path):
    files = {
        "main.tf": 'module "svc" {\n  source = "./modules/svc"\n}\n',
        "modules/svc/main.tf": """
            resource "aws_security_group" "this" {}
            resource "aws_vpc_security_group_ingress_rule" "from_alb" {
              security_group_id            = aws_security_group.this.id
              ip_protocol                  = "tcp"
              from_port                    = 80
              to_port                      = 80
              referenced_security_group_id = "sg-alb"
            }
        """,
    }
    assert problems_for(tmp_path, files) == []


def test_catches_latest_image_tags(tmp_path):
    files = {
        "variables.tf": """
            variable "image_tag" {
              description = "Tag."
              type        = string
              default     = "latest"
            }
            variable "proxy_image_tag" {
              description = "Tag without a guard."
              type        = string
              default     = "abc1234"
            }
        """,
        "main.tf": """
            resource "aws_ecs_task_definition" "t" {
              family                = "${var.image_tag}-${var.proxy_image_tag}"
              container_definitions = jsonencode([{ name = "x", image = "nginx:latest" }])
            }
        """,
    }
    problems = problems_for(tmp_path, files, tfvars='image_tag = "latest"\n')
    assert_caught(problems, "variable 'image_tag' defaults to 'latest'")
    assert_caught(problems, "variable 'proxy_image_tag' has no validation refusing 'latest'")
    assert_caught(problems, "image reference 'nginx:latest' uses the moving tag latest")
    assert_caught(problems, "tfvars: image_tag = 'latest'")


def test_catches_latest_passed_to_a_module(tmp_path):
    files = {
        "main.tf": 'module "svc" {\n  source    = "./modules/svc"\n  image_tag = "latest"\n}\n',
        "modules/svc/variables.tf": """
            variable "image_tag" {
              description = "Tag."
              type        = string
              validation {
                condition     = var.image_tag != "latest"
                error_message = "no latest"
              }
            }
        """,
        "modules/svc/main.tf": 'resource "aws_ecs_service" "s" {\n  name = var.image_tag\n}\n',
    }
    assert_caught(problems_for(tmp_path, files), "module 'svc' is passed image_tag = 'latest'")


def test_catches_missing_module_files(tmp_path):
    root = tmp_path
    (root / "modules" / "bare").mkdir(parents=True)
    (root / "modules" / "bare" / "main.tf").write_text("")
    (root / "main.tf").write_text('module "bare" {\n  source = "./modules/bare"\n}\n')
    for f in ("variables.tf", "outputs.tf", "versions.tf"):
        (root / f).write_text("")
    problems = tfcheck.check_tree(root)
    assert_caught(problems, "module.bare: missing README.md")
    assert_caught(problems, "module.bare: missing variables.tf")


@pytest.mark.parametrize("text", ["prefix ${var.a} and ${jsonencode({k = \"${var.b}\"})}"])
def test_expression_spans_are_balanced(text):
    spans = list(tfcheck.expression_spans(text))
    assert spans[0] == "var.a"
    assert "var.b" in spans[1]


def test_the_pipeline_alone_owns_the_deployed_image():
    service = tfcheck.load_module(TF / "modules" / "service", "service")
    parameter = service.resources[("aws_ssm_parameter", "image_tag")]
    assert tfcheck.first(parameter["value"]) == "${var.image_tag}"  # seeds it, once
    lifecycle = tfcheck.first(parameter["lifecycle"])
    assert "value" in str(lifecycle["ignore_changes"])
    text = re.sub(r"\s+", " ", (TF / "modules" / "service" / "main.tf").read_text())
    # The task definition's images come from the parameter, never from the variable.
    assert 'deployed_tag = nonsensitive(aws_ssm_parameter.image_tag.value)' in text
    assert "${var.image_tag}" not in text.replace('value = var.image_tag', "")
    assert 'api_image = "${var.api_repository_url}:${local.deployed_tag}"' in text
    # The build writes it (and may write nothing else in SSM).
    buildspec = (REPO / "deploy" / "buildspec.yml").read_text()
    assert re.search(r'aws ssm put-parameter --name "\$IMAGE_TAG_PARAMETER".*--value "\$IMAGE_TAG" --overwrite',
                     re.sub(r"\\\n\s*", "", buildspec))
    pipeline = re.sub(r"\s+", " ", (TF / "modules" / "pipeline" / "main.tf").read_text())
    assert 'actions = ["ssm:PutParameter"] resources = [var.deployed_tag_parameter_arn]' in pipeline
    assert "deployed-image-tag" in (REPO / "docs" / "DEPLOY.md").read_text()


# ------------------------------------------------ read replica and connection budget

def test_read_replica_is_optional_encrypted_and_like_the_primary():
    root = tfcheck.load_module(TF, ".")
    assert tfcheck.first(root.variables["read_replica_enabled"]["default"]) is False
    assert tfcheck.first(root.calls["database"]["read_replica_enabled"]) == "${var.read_replica_enabled}"
    db = tfcheck.load_module(TF / "modules" / "database", "database")
    replica = {k: tfcheck.first(v) for k, v in db.resources[("aws_db_instance", "replica")].items()}
    primary = {k: tfcheck.first(v) for k, v in db.resources[("aws_db_instance", "this")].items()}
    assert replica["count"] == "${var.read_replica_enabled ? 1 : 0}"
    assert replica["replicate_source_db"] == "${aws_db_instance.this.identifier}"
    assert replica["storage_encrypted"] is True and replica["publicly_accessible"] is False
    # The primary's key, TLS-only parameter group, security group, CA, monitoring and insights.
    for same in ("kms_key_id", "parameter_group_name", "vpc_security_group_ids", "ca_cert_identifier",
                 "monitoring_interval", "monitoring_role_arn", "performance_insights_enabled",
                 "performance_insights_kms_key_id", "iam_database_authentication_enabled",
                 "enabled_cloudwatch_logs_exports"):
        assert replica[same] == primary[same], same
    # No credentials of its own: roles replicate.
    assert not {"username", "password", "manage_master_user_password"} & set(replica)


def test_the_replica_reaches_the_api_as_database_read_url_without_a_secret_in_it():
    root = tfcheck.load_module(TF, ".")
    assert tfcheck.first(root.calls["service"]["db_read_address"]) == "${module.database.replica_address}"
    service = tfcheck.load_module(TF / "modules" / "service", "service")
    url = tfcheck.first(service.locals["database_read_url"])
    assert url == "postgres://${var.db_app_role}@${var.db_read_address}:${var.db_port}/${var.db_name}?sslmode=require"
    environment = tfcheck.first(service.locals["api_environment"])
    assert "var.db_read_address == \"\" ? [] : [{'name': 'DATABASE_READ_URL', 'value': '${local.database_read_url}'}" \
        in environment
    # DATABASE_PASSWORD (a secret) serves both pools; nothing new in plain text.
    secrets = str(tfcheck.first(service.locals["api_secrets"]))
    assert "DATABASE_PASSWORD" in secrets and "DATABASE_READ" not in secrets
    assert tfcheck.first(root.calls["observability"]["db_replica_identifier"]) == "${module.database.replica_identifier}"
    obs = tfcheck.load_module(TF / "modules" / "observability", "observability")
    lag = {k: tfcheck.first(v) for k, v in obs.resources[("aws_cloudwatch_metric_alarm", "db_replica_lag")].items()}
    assert lag["metric_name"] == "ReplicaLag" and lag["count"] == '${var.db_replica_identifier == "" ? 0 : 1}'


def _estimated_max_connections(instance_class: str) -> int | None:
    """RDS's default LEAST(DBInstanceClassMemory / 9531392, 5000) from 90 % of the class's memory,
    as connection_budget.tf estimates it."""
    family, size = instance_class.split(".")[1:]
    burstable = {"micro": 1, "small": 2, "medium": 4, "large": 8, "xlarge": 16, "2xlarge": 32}
    vcpus = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "12xlarge": 48, "16xlarge": 64,
             "24xlarge": 96}
    per_vcpu = {"m": 4, "r": 8}
    if family[0] == "t":
        gib = burstable.get(size)
    elif family[0] in per_vcpu and size in vcpus:
        gib = vcpus[size] * per_vcpu[family[0]]
    else:
        gib = None
    return None if gib is None else min(int(0.9 * 1073741824 * gib // 9531392), 5000)


def test_the_connection_budget_is_a_plan_time_precondition_over_the_surge_and_the_pool():
    root = tfcheck.load_module(TF, ".")
    assert tfcheck.first(root.locals["surge_tasks"]) == "${ceil(var.max_tasks * local.deployment_maximum_percent / 100)}"
    assert tfcheck.first(root.locals["fleet_db_connections"]) == "${local.surge_tasks * var.database_max_connections}"
    # With RDS Proxy the database holds the proxy's share, whatever the fleet.
    assert tfcheck.first(root.locals["primary_service_connections"]) == (
        "${var.use_rds_proxy ? floor(local.db_max_connections.primary * var.rds_proxy_max_connections_percent / 100)"
        " : local.fleet_db_connections}")
    lifecycle = tfcheck.first(root.resources[("terraform_data", "connection_budget")]["lifecycle"])
    conditions = [tfcheck.first(p["condition"]) for p in lifecycle["precondition"]]
    assert "${local.primary_service_connections + var.db_connections_reserve <= local.db_max_connections.primary}" \
        in conditions
    assert ("${!var.read_replica_enabled || local.fleet_db_connections + var.db_connections_reserve"
            " <= local.db_max_connections.replica}") in conditions
    # An unknown class is a failed plan, not a silently passed check.
    assert any("local.db_max_connections.primary > 0" in c for c in conditions)
    text = (TF / "connection_budget.tf").read_text()
    assert "LEAST(DBInstanceClassMemory / 9531392, 5000)" in text and "/ 9531392), 5000)" in text
    # The connections alarm uses the same budget.
    assert tfcheck.first(root.calls["observability"]["db_connections_threshold"]) == "${local.primary_service_connections}"
    # Today's defaults fit: 4 tasks x 200 % x pool 10 + reserve 20 on db.t4g.medium.
    defaults = {name: tfcheck.first(root.variables[name]["default"])
                for name in ("max_tasks", "database_max_connections", "db_connections_reserve", "db_instance_class")}
    surge = math.ceil(defaults["max_tasks"] * _evaluate_locals(TF)["deployment_maximum_percent"] / 100)
    limit = _estimated_max_connections(defaults["db_instance_class"])
    assert (surge, limit) == (8, 405)
    assert surge * defaults["database_max_connections"] + defaults["db_connections_reserve"] <= limit
    # The largest fleet the variables allow does not fit that class: the check has something to refuse.
    assert math.ceil(100 * 200 / 100) * 100 + 20 > limit
    assert _estimated_max_connections("db.r6g.2xlarge") == 5000 and _estimated_max_connections("db.x2g.large") is None


def test_rds_proxy_is_optional_tls_only_and_carries_the_api_but_not_the_migrations():
    root = tfcheck.load_module(TF, ".")
    assert tfcheck.first(root.variables["use_rds_proxy"]["default"]) is False
    proxy = {k: tfcheck.first(v) for k, v in root.resources[("aws_db_proxy", "this")].items()}
    assert proxy["count"] == "${var.use_rds_proxy ? 1 : 0}"
    assert proxy["require_tls"] is True and proxy["engine_family"] == "POSTGRESQL"
    assert proxy["vpc_security_group_ids"] == "${module.database.security_group_id}"  # first of the list
    assert tfcheck.first(tfcheck.first(proxy["auth"])["secret_arn"]) == "${module.service.db_app_proxy_secret_arn}"
    group = tfcheck.first(root.resources[("aws_db_proxy_default_target_group", "this")]["connection_pool_config"])
    assert tfcheck.first(group["max_connections_percent"]) == "${var.rds_proxy_max_connections_percent}"
    assert tfcheck.first(root.calls["service"]["api_db_address"]) == '${var.use_rds_proxy ? aws_db_proxy.this[0].endpoint : ""}'
    service = tfcheck.load_module(TF / "modules" / "service", "service")
    assert "local.api_db_address" in tfcheck.first(service.locals["database_url"])
    # The migrate container keeps the instance itself (DDL, advisory locks).
    assert "var.db_address" in tfcheck.first(service.locals["master_database_url"])
    # The proxy's certificate is ACM's: the API verifies it against the system roots.
    assert tfcheck.first(service.locals["api_database_ca_file"]) == (
        '${var.api_db_address == "" ? local.database_ca_file : "/etc/ssl/certs/ca-certificates.crt"}')
    secret = tfcheck.first(service.resources[("aws_secretsmanager_secret_version", "db_app_proxy")]["secret_string"])
    assert secret == "${jsonencode({'username': '${var.db_app_role}', 'password': '${random_password.db_app.result}'})}"
