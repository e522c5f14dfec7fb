"""W3C trace context through nginx: a caller's traceparent reaches the API
unchanged; without one (or with a malformed one) nginx starts a trace, and
decides its sampled flag, since the API samples parent-based."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import CannedUpstream, forwarded_headers, free_port, request, start_api, start_nginx

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]"
STARTED = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])")


@pytest.fixture
def traced(workdir, request):
    """nginx in front of a stand-in API that records what it receives; TRACE_SAMPLE_PERCENT from the test's param."""
    upstream = CannedUpstream(reply=OK)
    values = {"TRACE_SAMPLE_PERCENT": request.param} if hasattr(request, "param") else {}
    # a plain name: nginx's include reads a prefix with brackets as a glob pattern
    ngx = start_nginx(workdir, f"127.0.0.1:{upstream.port}", name=f"nginx-trace-{uuid.uuid4().hex[:8]}", **values)
    yield ngx, upstream
    ngx.stop()
    upstream.close()


def sent_to_api(ngx, upstream, headers: dict[str, str], source: str = "127.0.0.70") -> dict[str, str]:
    before = len(upstream.requests)
    resp = request(ngx.port, "GET", "/users?limit=1", headers=headers, source=source)
    assert resp.status == 200, resp.body
    assert len(upstream.requests) == before + 1
    return forwarded_headers(upstream.requests[-1]) | {":request-id": resp.header("X-Request-Id")}


def test_a_callers_trace_context_reaches_the_api_unchanged(traced):
    ngx, upstream = traced
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    got = sent_to_api(ngx, upstream, {"traceparent": parent, "tracestate": "congo=t61rcWkgMzE"})
    assert got["traceparent"] == parent
    assert got["tracestate"] == "congo=t61rcWkgMzE"
    assert ngx.log_entry(got[":request-id"])["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"

    # a later version with more fields is passed on for the API to read its prefix
    future = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next"
    assert sent_to_api(ngx, upstream, {"traceparent": future})["traceparent"] == future


def test_without_a_traceparent_nginx_starts_a_trace_tied_to_the_request_id(traced):
    ngx, upstream = traced
    got = sent_to_api(ngx, upstream, {})
    started = STARTED.fullmatch(got["traceparent"])
    assert started, got["traceparent"]
    trace_id, parent_id, _ = started.groups()
    assert set(trace_id) != {"0"} and set(parent_id) != {"0"}
    # nginx's request id is the trace id: one id finds the request in both logs and the trace
    assert got["x-request-id"] == got[":request-id"] == trace_id
    assert ngx.log_entry(trace_id)["trace_id"] == trace_id
    assert "tracestate" not in got

    again = STARTED.fullmatch(sent_to_api(ngx, upstream, {})["traceparent"])
    assert again and again.group(1) != trace_id, "each request starts its own trace"


@pytest.mark.parametrize("bad", [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",  # upper case
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has four fields
    "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
    "garbage",
])
def test_a_malformed_traceparent_is_replaced_and_its_tracestate_dropped(traced, bad):
    ngx, upstream = traced
    got = sent_to_api(ngx, upstream, {"traceparent": bad, "tracestate": "congo=t61rcWkgMzE"})
    started = STARTED.fullmatch(got["traceparent"])
    assert started, got["traceparent"]
    assert started.group(1) == got[":request-id"]
    assert "tracestate" not in got


def sampled_share(ngx, upstream, n: int) -> float:
    flags = []
    for i in range(n):  # spread over source addresses: the read rate limit is per client
        got = sent_to_api(ngx, upstream, {}, source=f"127.0.1.{i % 200 + 1}")
        flags.append(STARTED.fullmatch(got["traceparent"]).group(3))
    return flags.count("01") / n


@pytest.mark.parametrize("traced", ["0"], indirect=True)
def test_a_sample_percent_of_0_marks_no_started_trace_sampled(traced):
    assert sampled_share(*traced, 60) == 0.0


@pytest.mark.parametrize("traced", ["100"], indirect=True)
def test_a_sample_percent_of_100_marks_every_started_trace_sampled(traced):
    assert sampled_share(*traced, 60) == 1.0


def test_by_default_about_a_tenth_of_started_traces_are_sampled(traced):
    # 300 draws at 10 %: mean 30, standard deviation 5.2; the bounds are 3.8 sd away
    share = sampled_share(*traced, 300)
    assert 0.035 <= share <= 0.165, share


def test_a_callers_sampling_decision_is_kept(traced):
    ngx, upstream = traced
    for flags in ("00", "01"):
        parent = f"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"
        assert sent_to_api(ngx, upstream, {"traceparent": parent})["traceparent"] == parent


class OtlpReceiver:
    """Accepts OTLP/HTTP exports and keeps their bodies (protobuf: a trace id appears as its 16 raw bytes)."""

    def __init__(self):
        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def exported(self, trace_id: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(bytes.fromhex(trace_id) in body for body in self.bodies):
                return True
            time.sleep(0.1)
        return False

    def close(self):
        self.server.shutdown()


def api_log_entry(api, request_id: str) -> dict:
    line = api.wait_for_log(f'"request_id":"{request_id}"')
    return json.loads(line)


def test_the_api_continues_the_trace_nginx_passes_on_or_starts(workdir):
    receiver = OtlpReceiver()
    api = start_api(workdir, name="traced-api", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                    OTEL_SERVICE_NAME="users-api", OTEL_BSP_SCHEDULE_DELAY="200")
    ngx = start_nginx(workdir, f"127.0.0.1:{api.port}", name="nginx-traced-api", TRACE_SAMPLE_PERCENT="100")
    try:
        # started by nginx: one id for both logs and the exported spans
        started = request(ngx.port, "GET", "/users?limit=1", source="127.0.0.71")
        assert started.status == 200
        trace_id = started.header("X-Request-Id")
        assert ngx.log_entry(trace_id)["trace_id"] == trace_id
        assert api_log_entry(api, trace_id).get("trace_id") == trace_id, api.log_text()[-2000:]
        assert receiver.exported(trace_id), "the API exported no span of the trace nginx started"

        # the caller's: continued through nginx into the API
        callers = "0af7651916cd43dd8448eb211c80319c"
        rid = "traced-" + uuid.uuid4().hex
        created = request(ngx.port, "POST", "/user", source="127.0.0.71",
                          body={"name": "Ada Lovelace", "email": f"{rid}@example.com"},
                          headers={"traceparent": f"00-{callers}-b7ad6b7169203331-01", "X-Request-Id": rid})
        assert created.status == 201
        assert ngx.log_entry(rid)["trace_id"] == callers
        assert api_log_entry(api, rid).get("trace_id") == callers
        assert receiver.exported(callers)
    finally:
        ngx.stop()
        api.stop()
        receiver.close()
