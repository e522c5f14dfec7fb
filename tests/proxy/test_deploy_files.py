"""The files that wire the images together agree with each other: compose,
the Dockerfiles, the proxy template, the CodeBuild buildspec and the GitHub
workflow. (Docker itself is not available here; the images are built and run
by scripts/test-images, and the stack by the GitHub workflow.)"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load(path: str):
    return yaml.safe_load((ROOT / path).read_text())


def dockerfile(path: str) -> str:
    # join continuation lines
    return re.sub(r"\\\n\s*", " ", (ROOT / path).read_text())


def instruction(text: str, name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", text, re.M)]


COMPOSE = load("compose.yaml")
SERVICES = COMPOSE["services"]
API_DF = dockerfile("Dockerfile")
PROXY_DF = dockerfile("proxy/Dockerfile")


def test_compose_has_the_four_services_each_with_a_health_check():
    assert set(SERVICES) == {"api", "proxy", "postgres", "collector"}
    for name, svc in SERVICES.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_compose_starts_each_service_after_its_dependency_is_healthy():
    assert SERVICES["api"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert SERVICES["proxy"]["depends_on"] == {"api": {"condition": "service_healthy"}}


def test_compose_publishes_only_the_proxy_on_80_to_its_listen_port():
    listen = SERVICES["proxy"]["environment"]["LISTEN_PORT"]
    assert SERVICES["proxy"]["ports"] == [f"80:{listen}"]
    assert "ports" not in SERVICES["api"] and "ports" not in SERVICES["postgres"]
    assert f"EXPOSE {listen}" in PROXY_DF
    assert f"LISTEN_PORT={listen}" in PROXY_DF


def test_compose_points_the_proxy_at_the_api_and_the_api_at_postgres():
    api_env = SERVICES["api"]["environment"]
    api_port = api_env["BIND_ADDR"].rsplit(":", 1)[1]
    assert SERVICES["proxy"]["environment"]["UPSTREAM"] == f"api:{api_port}"
    assert f"EXPOSE {api_port}" in API_DF
    pg = SERVICES["postgres"]["environment"]
    assert api_env["DATABASE_URL"] == f"postgres://{pg['POSTGRES_USER']}@postgres:5432/{pg['POSTGRES_DB']}"
    assert api_env["DATABASE_PASSWORD"] == pg["POSTGRES_PASSWORD"]
    assert api_env["TRUST_FORWARDED_FOR"] == "true"


def test_compose_samples_as_many_traces_at_the_proxy_as_the_api_would():
    # nginx decides the sampled flag of the traces it starts; the API follows it.
    api_env = SERVICES["api"]["environment"]
    sampler = api_env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on")  # the API's default
    api_ratio = float(api_env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")) if sampler.endswith("traceidratio") else 1.0
    assert float(SERVICES["proxy"]["environment"]["TRACE_SAMPLE_PERCENT"]) == api_ratio * 100


def test_compose_api_health_check_is_the_images_own():
    test = SERVICES["api"]["healthcheck"]["test"]
    assert test == ["CMD", "/usr/local/bin/users-api", "healthcheck"]
    assert 'HEALTHCHECK' in API_DF and 'CMD ["/usr/local/bin/users-api", "healthcheck"]' in API_DF
    assert SERVICES["proxy"]["healthcheck"]["test"] == ["CMD", "/usr/local/bin/healthcheck"]


def test_compose_runs_api_and_proxy_read_only_with_a_tmpfs_and_keeps_data_in_a_volume():
    for name in ("api", "proxy"):
        assert SERVICES[name]["read_only"] is True
        assert "/tmp" in SERVICES[name]["tmpfs"]
        assert SERVICES[name]["cap_drop"] == ["ALL"]
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    assert "pgdata" in COMPOSE["volumes"]
    assert SERVICES["api"]["build"]["context"] == "." and SERVICES["proxy"]["build"]["context"] == "./proxy"


def test_no_image_is_taken_as_latest():
    for name, svc in SERVICES.items():
        if "image" in svc:
            assert ":" in svc["image"] and not svc["image"].endswith(":latest"), name
    for df in (API_DF, PROXY_DF):
        stages = {ref.split()[-1] for ref in instruction(df, "FROM") if " AS " in ref.upper()}
        for ref in instruction(df, "FROM"):
            image = ref.split()[0]
            if image in stages or image == "scratch":
                continue  # an earlier stage of the same file, or the empty image (nothing to pin)
            assert ":" in image and not image.endswith(":latest"), image


def test_api_dockerfile_shape():
    stages = instruction(API_DF, "FROM")
    # Built on the Rust image; the runtime is the empty image plus what the build copies in.
    assert stages[0].startswith("rust:") and stages[-1] == "scratch AS runtime"
    assert any("cargo chef cook --release" in r for r in instruction(API_DF, "RUN"))
    assert instruction(API_DF, "ENTRYPOINT") == ['["/usr/local/bin/users-api"]']
    assert instruction(API_DF, "CMD") == ['["serve"]']
    assert instruction(API_DF, "USER") == ["10001:10001"]
    env = " ".join(instruction(API_DF, "ENV"))
    assert "BIND_ADDR=0.0.0.0:8000" in env and "LOG_FORMAT=json" in env


def test_proxy_dockerfile_shape():
    assert instruction(PROXY_DF, "FROM") == ["debian:bookworm-slim"]
    assert instruction(PROXY_DF, "USER") == ["10101:10101"]
    assert instruction(PROXY_DF, "ENTRYPOINT") == ['["/usr/local/bin/docker-entrypoint"]']
    assert instruction(PROXY_DF, "STOPSIGNAL") == ["SIGQUIT"]
    assert instruction(PROXY_DF, "VOLUME") == ['["/tmp"]']  # the only writable path (NGINX_PREFIX)
    assert "NGINX_PREFIX=/tmp/nginx" in PROXY_DF
    # every variable the template uses has a default in the image and in render-config
    template = (ROOT / "proxy/nginx.conf.template").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in template.splitlines())
    used = set(re.findall(r"\$\{([A-Z_]+)\}", code))
    render = (ROOT / "proxy/render-config").read_text()
    # render-config computes these from the settings named beside them
    derived = {"TRACE_SAMPLE_SPLIT": "TRACE_SAMPLE_PERCENT", "UPSTREAM_SERVERS": "UPSTREAM"}
    settings = {"LISTEN_PORT", "LISTEN_ADDR", "UPSTREAM", "REAL_IP_FROM", "WRITE_RATE", "WRITE_BURST",
                "READ_RATE", "READ_BURST", "CONN_LIMIT", "LIST_CONN_LIMIT", "TRACE_SAMPLE_PERCENT"}
    assert used == (settings - set(derived.values())) | set(derived)
    for var in used:
        assert "${" + var + "}" in render.split("envsubst", 1)[1], var
    for var in settings:
        assert f": \"${{{var}:=" in render, var
    for var in settings - {"LISTEN_ADDR"}:
        assert f"{var}=" in PROXY_DF, var


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in ("target", ".git", ".venv", "**/*.db"):
        assert entry in ignored, entry
    for needed in ("src", "Cargo.toml", "Cargo.lock"):
        assert needed not in ignored


def test_buildspec_tags_with_the_commit_pushes_both_and_writes_image_definitions():
    spec = load("deploy/buildspec.yml")
    text = (ROOT / "deploy/buildspec.yml").read_text()
    assert spec["version"] == 0.2
    commands = "\n".join(c for phase in spec["phases"].values() for c in phase["commands"])
    assert 'IMAGE_TAG="${CODEBUILD_RESOLVED_SOURCE_VERSION:0:12}"' in commands
    assert "latest" not in commands
    assert "aws ecr get-login-password" in commands
    for repo in ("API_REPOSITORY_URI", "PROXY_REPOSITORY_URI"):
        assert f'docker push "${repo}:$IMAGE_TAG"' in commands
    assert "--file Dockerfile" in commands and "--file proxy/Dockerfile" in commands
    assert re.search(r'"name":"api".*"name":"proxy"', commands)
    assert spec["artifacts"]["files"] == ["imagedefinitions.json"]
    assert "AWS_REGION" in text


def test_github_workflow_runs_the_test_command_and_builds_both_images():
    wf = load(".github/workflows/ci.yml")
    jobs = wf["jobs"]
    runs = {name: "\n".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    assert "scripts/test" in runs["test"]
    assert "docker compose build" in runs["images"]
    assert "hadolint Dockerfile proxy/Dockerfile" in runs["images"]
    assert wf["permissions"] == {"contents": "read"}
