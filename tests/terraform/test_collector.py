"""The ADOT collector configurations parse, and each has what the service and
the alarms rely on: the scrape of the private metrics listener, an OTLP/HTTP
receiver, both pipelines wired to existing components, and (ECS) metrics to
CloudWatch EMF in the service's namespace and traces to X-Ray."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ECS = ROOT / "deploy/otel/collector-ecs.yaml"
LOCAL = ROOT / "deploy/otel/collector-local.yaml"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def component_type(name: str) -> str:
    return name.split("/", 1)[0]


def pipeline_problems(config: dict) -> list[str]:
    """Every component a pipeline names is defined, and every defined one is used."""
    problems = []
    service = config.get("service", {})
    pipelines = service.get("pipelines", {})
    used = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in pipelines.items():
        for kind in used:
            for component in pipeline.get(kind, []):
                used[kind].add(component)
                if component not in (config.get(kind) or {}):
                    problems.append(f"pipeline {name} names undefined {kind[:-1]} {component}")
    for kind, names in used.items():
        for defined in config.get(kind) or {}:
            if defined not in names:
                problems.append(f"{kind[:-1]} {defined} is defined but in no pipeline")
    for extension in service.get("extensions", []):
        if extension not in (config.get("extensions") or {}):
            problems.append(f"undefined extension {extension}")
    return problems


def scrape_targets(config: dict) -> list[str]:
    scrapes = config["receivers"]["prometheus"]["config"]["scrape_configs"]
    return [t for scrape in scrapes for group in scrape["static_configs"] for t in group["targets"]]


@pytest.mark.parametrize("path", [ECS, LOCAL], ids=["ecs", "local"])
def test_collector_config_pipelines_are_complete(path):
    config = load(path)
    assert set(config["service"]["pipelines"]) == {"metrics", "traces"}
    assert pipeline_problems(config) == []
    assert config["service"]["pipelines"]["metrics"]["receivers"] == ["prometheus"]
    assert config["service"]["pipelines"]["traces"]["receivers"] == ["otlp"]
    assert "http" in config["receivers"]["otlp"]["protocols"], "the service exports OTLP over HTTP"
    assert "grpc" not in config["receivers"]["otlp"]["protocols"], "no listener nobody sends to"
    for pipeline in config["service"]["pipelines"].values():
        assert pipeline["processors"][0] == "memory_limiter", "the memory limiter must see data first"
    assert "health_check" in config["service"]["extensions"], "the image's /healthcheck asks it"


def test_ecs_collector_scrapes_the_private_metrics_listener_inside_the_task():
    config = load(ECS)
    assert scrape_targets(config) == ["127.0.0.1:9100"]
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "127.0.0.1:4318"
    assert config["extensions"]["health_check"]["endpoint"].startswith("127.0.0.1:")


def test_ecs_collector_sends_metrics_as_emf_in_the_services_namespace_and_traces_to_xray():
    config = load(ECS)
    assert config["service"]["pipelines"]["metrics"]["exporters"] == ["awsemf"]
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["awsxray"]
    emf = config["exporters"]["awsemf"]
    assert emf["namespace"] == "${env:METRICS_NAMESPACE}"
    assert emf["log_group_name"] == "${env:METRICS_LOG_GROUP}"


SIGNALS_TF = ROOT / "deploy/terraform/modules/observability/service_signals.tf"


def alarm_metrics() -> set[str]:
    """The service's own metric names the alarms and the dashboard read (alarm metric_name
    arguments and dashboard rows in the service's namespace)."""
    text = SIGNALS_TF.read_text()
    names = re.findall(r'metric_name\s*=\s*"(\w+)"', text) + re.findall(r'local\.ns,\s*"(\w+)"', text)
    return set(names)


def filter_metrics() -> set[str]:
    """Metrics made from the API's access log by a metric filter, not by the collector."""
    return set(re.findall(r'metric_transformation\s*\{\s*name\s*=\s*"(\w+)"', SIGNALS_TF.read_text()))


def test_ecs_collector_exports_every_metric_the_alarms_read_with_their_dimensions():
    declarations = load(ECS)["exporters"]["awsemf"]["metric_declarations"]

    def declared(metric: str) -> list[list[str]]:
        return [
            dims
            for d in declarations
            if any(re.search(selector, metric) for selector in d["metric_name_selectors"])
            for dims in d["dimensions"]
        ]

    from_collector = alarm_metrics() - filter_metrics()
    assert {"http_requests_total", "db_pool_connections", "db_pool_max_connections",
            "db_write_batch_duration_seconds"} <= from_collector, from_collector
    for metric in from_collector:
        assert declared(metric), f"{metric} is read by Terraform but not exported by the collector"
    assert ["route", "status"] in declared("http_requests_total"), "shed 503s by route"
    assert ["route"] in declared("http_requests_total"), "all answers by route"
    assert ["state"] in declared("db_pool_connections")
    # The service really exposes each of them.
    rust = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.rs"))
    for metric in from_collector:
        assert f'"{metric}"' in rust, f"the service has no metric {metric}"


def test_latency_percentiles_come_from_the_access_log_fields_the_service_writes():
    text = SIGNALS_TF.read_text()
    assert filter_metrics() == {"request_latency_ms"}
    assert '"$.latency_ms"' in text and '{ route = "$.route" }' in text
    assert 'users_api::access' in text
    # The JSON access line is written by hand in write_access_line: its keys as literal bytes.
    json_lines = (ROOT / "src/telemetry/json_lines.rs").read_text()
    start = json_lines.index("pub fn write_access_line")
    writer = json_lines[start : json_lines.index("\n}\n", start)]
    assert 'users_api::access' in writer
    for field in ("route", "latency_ms"):
        assert f'\\"{field}\\":' in writer, (field, writer)
    # The text format's access event (a tracing event): from its target to the end of the macro call.
    logs = (ROOT / "src/telemetry/logs.rs").read_text()
    start = logs.index("target: ACCESS_TARGET,")
    event = logs[start : logs.index(");", start)]
    fields = {line.strip().rstrip(",").split(" = ")[0] for line in event.splitlines()[1:]}
    for field in ("route", "latency_ms"):
        assert field in fields, (field, fields)
    assert 'pub const ACCESS_TARGET: &str = "users_api::access";' in logs


def test_local_collector_scrapes_the_api_service_and_prints_what_it_receives():
    config = load(LOCAL)
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    api = compose["services"]["api"]["environment"]
    assert scrape_targets(config) == [f"api:{api['METRICS_ADDR'].rsplit(':', 1)[1]}"]
    port = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rsplit(":", 1)[1]
    assert api["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://collector:{port}"
    for pipeline in config["service"]["pipelines"].values():
        assert pipeline["exporters"] == ["debug"]
    collector = compose["services"]["collector"]
    assert "./deploy/otel/collector-local.yaml:/etc/otel/collector.yaml:ro" in collector["volumes"]
    assert "--config=/etc/otel/collector.yaml" in collector["command"]
    assert "collector" not in compose["services"]["api"].get("depends_on", {}), "the API must not wait for it"


def test_pipeline_check_catches_an_undefined_and_an_unused_component():
    config = load(LOCAL)
    config["service"]["pipelines"]["traces"]["exporters"] = ["otlphttp"]
    problems = pipeline_problems(config)
    assert "pipeline traces names undefined exporter otlphttp" in problems
    config = load(LOCAL)
    config["processors"]["filter"] = {}
    assert pipeline_problems(config) == ["processor filter is defined but in no pipeline"]


def test_the_task_role_allows_only_emf_writes_to_its_log_group_and_trace_segments():
    text = re.sub(r"\s+", " ", (ROOT / "deploy/terraform/modules/service/main.tf").read_text())
    document = text[text.index('data "aws_iam_policy_document" "task"'):text.index('resource "aws_iam_role_policy" "task"')]
    actions = re.findall(r"actions = \[([^\]]*)\]", document)
    assert [a.replace('"', "").split(", ") for a in actions] == [
        ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
        ["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
    ]
    assert 'resources = [var.metrics_log_group_arn, "${var.metrics_log_group_arn}:log-stream:*"]' in document
    # Nothing waits for the collector: its failure never holds the API or the proxy back.
    assert 'containerName = "collector"' not in text
