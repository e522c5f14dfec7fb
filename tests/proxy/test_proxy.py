"""The real nginx, with the project's rendered config, in front of the real
users-api binary on loopback. See conftest.py for how both are started."""

from __future__ import annotations

import json
import os
import pwd
import re
import socket
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import (ALB_IDLE_TIMEOUT_S, API_REQUEST_TIMEOUT_S, BODY_LIMIT, NGINX_USER, TRUSTED_LB,
                      CannedUpstream, assert_problem, forwarded_headers, new_user, request, seconds,
                      start_api, start_nginx, unique_email)

# ---------------------------------------------------------------- the config


def test_rendered_config_is_clean_for_nginx_t_as_an_unprivileged_user(proxy, tmp_path):
    user = pwd.getpwnam(NGINX_USER)
    out_path = tmp_path / "nginx-t.out"
    with open(out_path, "wb") as out:  # nginx -t opens /dev/stdout (the access log) as that user
        os.fchown(out.fileno(), user.pw_uid, user.pw_gid)
        rc = subprocess.run(
            ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "nginx", "-t",
             "-p", f"{proxy.prefix}/", "-c", str(proxy.prefix / "nginx.conf"), "-e", "stderr"],
            stdout=out, stderr=out).returncode
    report = out_path.read_text()
    assert rc == 0, report
    assert "syntax is ok" in report and "test is successful" in report
    assert not re.search(r"\[(warn|error|crit|alert|emerg)\]", report), report
    # and nginx said nothing worrying when it started
    assert not re.search(r"\[(warn|error|crit|alert|emerg)\]", proxy.error_log_path.read_text())


def test_timeouts_keep_the_documented_budget(proxy):
    conf = proxy.rendered
    assert seconds(conf, "keepalive_timeout") > ALB_IDLE_TIMEOUT_S
    assert seconds(conf, "proxy_read_timeout") > API_REQUEST_TIMEOUT_S
    assert seconds(conf, "proxy_send_timeout") > API_REQUEST_TIMEOUT_S
    assert seconds(conf, "proxy_connect_timeout") <= 5
    assert seconds(conf, "worker_shutdown_timeout") < 30  # ECS stopTimeout
    assert re.search(r"^\s*client_max_body_size 64k;", conf, re.M)
    code = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    assert "${" not in code, "an unrendered template variable is left"


def test_render_refuses_bad_values(tmp_path):
    from conftest import PROXY_DIR
    for name, value in [("UPSTREAM", "api"), ("UPSTREAM", "api:8000; evil"), ("REAL_IP_FROM", "10.0.0.0/16 1;"),
                        ("LISTEN_PORT", "80a"), ("WRITE_RATE", "10"), ("WRITE_BURST", "x"), ("READ_RATE", "50"),
                        ("READ_BURST", "1 2"), ("CONN_LIMIT", "0"), ("LIST_CONN_LIMIT", "-1"),
                        ("TRACE_SAMPLE_PERCENT", "101"), ("TRACE_SAMPLE_PERCENT", "10%")]:
        out = subprocess.run([str(PROXY_DIR / "render-config"), str(tmp_path / name)],
                             env={"PATH": "/usr/bin:/bin", "NGINX_TEMPLATE_DIR": str(PROXY_DIR), name: value},
                             capture_output=True, text=True)
        assert out.returncode != 0 and name in out.stderr, (name, value, out.stderr)


# ---------------------------------------------------------------- pass-through


def test_reads_and_writes_pass_through(proxy):
    user = new_user("pass")
    created = request(proxy.port, "POST", "/user", body=user)
    assert created.status == 201, created.body
    body = created.json()
    assert body["email"] == user["email"] and isinstance(body["id"], int)
    assert created.header("Location") == f"/users/{body['id']}"

    listed = request(proxy.port, "GET", "/users")
    assert listed.status == 200
    assert listed.header("Content-Type").startswith("application/json")
    assert any(u["email"] == user["email"] for u in listed.json())

    one = request(proxy.port, "GET", created.header("Location"))
    assert one.status == 200 and one.json() == body


def test_the_apis_own_errors_pass_unchanged(proxy):
    rid = "api-own-404-" + uuid.uuid4().hex
    resp = request(proxy.port, "GET", "/users/987654321", headers={"X-Request-Id": rid})
    assert_problem(resp, 404)
    assert proxy.log_entry(rid)["upstream_status"] == "404"

    bad = request(proxy.port, "POST", "/user", body={"name": "x", "email": "nope"})
    assert_problem(bad, 400)


def test_health_for_the_load_balancer_goes_through_to_the_api(proxy, api):
    resp = request(proxy.port, "GET", "/health")
    assert resp.status == 200 and resp.json() == {"status": "ok"}
    local = request(proxy.port, "GET", "/nginx-health")
    assert local.status == 200 and local.json() == {"status": "ok"}


def test_security_headers_on_proxied_and_nginx_responses(proxy):
    for resp in [request(proxy.port, "GET", "/users"),
                 request(proxy.port, "GET", "/users/987654321"),
                 request(proxy.port, "POST", "/user", body=b"x" * (BODY_LIMIT + 1),
                         headers={"Content-Type": "application/json"}, source="127.0.0.20")]:
        assert resp.header("Server") == "nginx", "server_tokens off: no version"
        assert resp.header("X-Content-Type-Options") == "nosniff"
        assert resp.header("X-Frame-Options") == "DENY"
        assert resp.header("Referrer-Policy") == "no-referrer"
        assert "default-src 'none'" in resp.header("Content-Security-Policy")
        assert resp.header("Strict-Transport-Security") is None, "no HSTS over plain http"
        assert resp.header("X-Request-Id")
        assert len(resp.headers.get_all("X-Request-Id")) == 1


def test_hsts_only_when_the_load_balancer_says_https(proxy):
    via_lb = request(proxy.port, "GET", "/health", source=TRUSTED_LB, headers={"X-Forwarded-Proto": "https"})
    assert "max-age=" in (via_lb.header("Strict-Transport-Security") or "")
    spoofed = request(proxy.port, "GET", "/health", headers={"X-Forwarded-Proto": "https"})
    assert spoofed.header("Strict-Transport-Security") is None


# ---------------------------------------------------------------- request ids


def test_a_client_request_id_reaches_the_api_and_the_logs(proxy, api):
    rid = "client-" + uuid.uuid4().hex
    resp = request(proxy.port, "GET", "/users", headers={"X-Request-Id": rid})
    assert resp.status == 200
    assert resp.header("X-Request-Id") == rid
    api.wait_for_log(rid)
    entry = proxy.log_entry(rid)
    assert entry["status"] == 200 and entry["upstream_status"] == "200"


def test_a_request_id_is_generated_when_absent_and_reaches_the_api(proxy, api):
    resp = request(proxy.port, "POST", "/user", body=new_user("rid"))
    assert resp.status == 201
    rid = resp.header("X-Request-Id")
    assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
    api.wait_for_log(rid)
    proxy.log_entry(rid)


def test_an_unsafe_request_id_is_replaced(proxy, api):
    for bad in ["has space", "x" * 200, 'quote"and{brace}']:
        resp = request(proxy.port, "GET", "/health", headers={"X-Request-Id": bad})
        assert resp.status == 200
        assert re.fullmatch(r"[0-9a-f]{32}", resp.header("X-Request-Id"))


# ---------------------------------------------------------------- limits


def test_an_oversized_body_is_refused_with_413_problem_before_the_api(proxy, api):
    rid = "big-" + uuid.uuid4().hex
    resp = request(proxy.port, "POST", "/user", body=b"{" + b" " * BODY_LIMIT + b"}",
                   headers={"Content-Type": "application/json", "X-Request-Id": rid}, source="127.0.0.21")
    assert_problem(resp, 413)
    entry = proxy.log_entry(rid)
    assert entry["upstream_addr"] == "", "the API must not see an oversized body"
    assert rid not in api.log_text()


def test_an_oversized_chunked_body_is_refused_with_413(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(b"POST /user HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * 8192
        try:
            for _ in range(10):  # 80 KiB in 8 KiB chunks
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            s.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # nginx may stop reading and close early
        data = b""
        while b"\r\n\r\n" not in data:
            part = s.recv(65536)
            if not part:
                break
            data += part
    assert data.startswith(b"HTTP/1.1 413"), data[:200]
    assert b"application/problem+json" in data


def test_a_body_under_the_limit_reaches_the_api(proxy):
    rid = "under-" + uuid.uuid4().hex
    big_name = "a" * (60 * 1024)
    resp = request(proxy.port, "POST", "/user", body={"name": big_name, "email": unique_email()},
                   headers={"X-Request-Id": rid}, source="127.0.0.22")
    assert resp.status == 400, resp.status  # the API's validation, not nginx's limit
    assert proxy.log_entry(rid)["upstream_status"] == "400"


def test_an_oversized_uri_or_header_is_refused_with_problem_json(proxy):
    assert_problem(request(proxy.port, "GET", "/users?x=" + "a" * 9000), 414)
    assert_problem(request(proxy.port, "GET", "/users", headers={"X-Big": "b" * 9000}), 431)
    many = {f"X-H{i}": "c" * 4000 for i in range(12)}  # each fits, together over 4 x 8 KiB
    assert_problem(request(proxy.port, "GET", "/users", headers=many), 431)


def test_internal_error_locations_are_not_reachable_from_outside(proxy):
    doc = assert_problem(request(proxy.port, "GET", "/__problem/502"), 404)
    assert doc["code"] == "not_found"


def test_a_malformed_request_is_400_problem_json(proxy):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(b"GET /users HTTP/1.1\r\nHost: t\r\nBroken header line\r\n\r\n")
        data = s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), data[:200]
    assert b"Content-Type: application/problem+json" in head
    assert json.loads(body)["status"] == 400


def post_burst(port: int, n: int, source: str, headers: dict | None = None, vary_xff: bool = False):
    statuses, last_429 = [], None
    for i in range(n):
        h = dict(headers or {})
        if vary_xff:
            h["X-Forwarded-For"] = f"198.51.100.{i % 250 + 1}"
        r = request(port, "POST", "/user", body=new_user("burst"), headers=h, source=source)
        statuses.append(r.status)
        if r.status == 429:
            last_429 = r
    return statuses, last_429


def test_a_burst_of_writes_is_limited_per_client_with_429_problem(proxy):
    statuses, limited = post_burst(proxy.port, 45, source="127.0.0.30")
    assert statuses[0] == 201
    assert statuses.count(201) >= 21, statuses  # rate + burst of 20 pass
    assert limited is not None, f"no 429 in {statuses}"
    assert_problem(limited, 429)
    assert limited.header("Retry-After") == "1"
    assert limited.header("X-Content-Type-Options") == "nosniff"
    # reads from the same client are not limited
    reads = [request(proxy.port, "GET", "/health", source="127.0.0.30").status for _ in range(40)]
    assert set(reads) == {200}
    # and another client can still write
    assert request(proxy.port, "POST", "/user", body=new_user(), source="127.0.0.31").status == 201


def test_forwarded_for_is_believed_only_from_the_load_balancer(proxy):
    rid = "lb-" + uuid.uuid4().hex
    request(proxy.port, "GET", "/users?limit=1", source=TRUSTED_LB,
            headers={"X-Forwarded-For": "203.0.113.9, 203.0.113.7", "X-Request-Id": rid})
    entry = proxy.log_entry(rid)
    assert entry["remote_addr"] == "203.0.113.7"  # the address the ALB appended
    assert entry["peer_addr"] == TRUSTED_LB

    rid = "spoof-" + uuid.uuid4().hex
    request(proxy.port, "GET", "/users?limit=1", source="127.0.0.40",
            headers={"X-Forwarded-For": "203.0.113.8", "X-Request-Id": rid})
    entry = proxy.log_entry(rid)
    assert entry["remote_addr"] == "127.0.0.40"


def test_spoofed_forwarded_for_does_not_escape_the_rate_limit(proxy):
    statuses, _ = post_burst(proxy.port, 45, source="127.0.0.41", vary_xff=True)
    assert 429 in statuses, statuses


def test_behind_the_load_balancer_each_client_has_its_own_bucket(proxy):
    statuses, _ = post_burst(proxy.port, 45, source=TRUSTED_LB, headers={"X-Forwarded-For": "203.0.113.20"})
    assert 429 in statuses, "clients behind the ALB are limited"
    other = request(proxy.port, "POST", "/user", body=new_user(), source=TRUSTED_LB,
                    headers={"X-Forwarded-For": "203.0.113.21"})
    assert other.status == 201, "one client's limit must not throttle the ALB as a whole"


# ---------------------------------------------------------------- not exposed


@pytest.mark.parametrize("path", ["/metrics", "/METRICS", "/metrics/", "//metrics", "/%6Detrics",
                                  "/./metrics", "/users/../metrics", "/metrics?x=1", "/admin",
                                  "/admin/users", "/debug/pprof", "/internal/x", "/server-status"])
def test_operational_paths_are_not_reachable(proxy, path):
    rid = "ops-" + uuid.uuid4().hex
    resp = request(proxy.port, "GET", path, headers={"X-Request-Id": rid})
    assert_problem(resp, 404)
    assert proxy.log_entry(rid)["upstream_addr"] == "", f"{path} must not reach the API"


# ---------------------------------------------------------------- upstream


def tcp_ports_talking_to(port: int) -> set[int]:
    """Client-side ports of loopback TCP connections (any state) with `port`."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, remote = line.split()[1:3]
            lport, rport = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
            if rport == port:
                ports.add(lport)
            elif lport == port and rport != 0:
                ports.add(rport)
    return ports


def test_connections_to_the_api_are_kept_alive(proxy, api):
    before = tcp_ports_talking_to(api.port)
    for _ in range(40):
        assert request(proxy.port, "GET", "/users?limit=1").status == 200
    new = tcp_ports_talking_to(api.port) - before
    assert len(new) <= 4, f"{len(new)} new upstream connections for 40 requests: keepalive is not working"


def test_the_api_being_down_gives_a_quick_problem_response(workdir):
    api2 = start_api(workdir, name="api-down")
    ngx = start_nginx(workdir, f"127.0.0.1:{api2.port}", name="nginx-down")
    try:
        assert request(ngx.port, "GET", "/health").status == 200
        api2.stop()
        for method, body in [("GET", None), ("POST", new_user())]:
            resp = request(ngx.port, method, "/users" if method == "GET" else "/user", body=body, timeout=10)
            doc = assert_problem(resp, 502)
            assert doc["code"] == "upstream_unavailable"
            assert resp.header("Retry-After")
            assert resp.elapsed < 3, f"{method} took {resp.elapsed:.1f}s with the API down"
    finally:
        ngx.stop()
        api2.stop()


def test_a_stuck_api_gives_504_problem_within_the_proxy_timeout(workdir, proxy):
    stuck = CannedUpstream(reply=None)
    ngx = start_nginx(workdir, f"127.0.0.1:{stuck.port}", name="nginx-stuck")
    try:
        with ThreadPoolExecutor(2) as pool:
            read = pool.submit(request, ngx.port, "GET", "/users", timeout=30)
            write = pool.submit(request, ngx.port, "POST", "/user", body=new_user(), timeout=30)
            read, write = read.result(), write.result()
        limit = seconds(proxy.rendered, "proxy_read_timeout")
        for resp in (read, write):
            assert limit - 1 <= resp.elapsed <= limit + 3, resp.elapsed
        assert assert_problem(read, 504)["code"] == "upstream_timeout"
        assert read.header("Retry-After") == "5"
        # the API had the POST: whether it was stored is unknown, so no "retry"
        assert assert_problem(write, 504)["code"] == "outcome_unknown"
        assert write.header("Retry-After") is None
    finally:
        ngx.stop()
        stuck.close()


def test_the_apis_own_503_is_not_rewritten(workdir):
    body = b'{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"db","code":"db_unavailable"}'
    canned = CannedUpstream(reply=b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
                            b"Retry-After: 7\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    ngx = start_nginx(workdir, f"127.0.0.1:{canned.port}", name="nginx-canned")
    try:
        resp = request(ngx.port, "GET", "/ready")
        assert resp.status == 503 and resp.body == body
        assert resp.headers.get_all("Retry-After") == ["7"]
    finally:
        ngx.stop()
        canned.close()


# ---------------------------------------------------------------- slow clients


def _closed_after(port: int, send, limit: float) -> tuple[float, bytes]:
    """Runs send(sock) on a fresh connection, then waits for nginx to close it; returns (seconds, bytes read)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=limit)
    t0 = time.monotonic()
    data = b""
    try:
        send(s)
        while True:
            part = s.recv(65536)
            if not part:
                break
            data += part
    except (ConnectionResetError, BrokenPipeError):
        pass
    except socket.timeout:
        return float("inf"), data
    finally:
        s.close()
    return time.monotonic() - t0, data


def test_slow_clients_are_cut_off_by_the_timeouts(proxy):
    header_timeout = seconds(proxy.rendered, "client_header_timeout")
    body_timeout = seconds(proxy.rendered, "client_body_timeout")

    def unfinished_header(s):
        s.sendall(b"GET /users HTTP/1.1\r\nHost: t\r\n")

    def trickled_header(s):  # slowloris: one byte a second, never done
        for b in b"GET /users HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 40:
            try:
                s.sendall(bytes([b]))
            except OSError:
                return
            time.sleep(1)

    def missing_body(s):
        s.sendall(b"POST /user HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")

    cases = {"unfinished header": (unfinished_header, header_timeout),
             "trickled header": (trickled_header, header_timeout),
             "missing body": (missing_body, body_timeout)}
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {name: pool.submit(_closed_after, proxy.port, fn, limit + 10) for name, (fn, limit) in cases.items()}
        results = {name: f.result() for name, f in futures.items()}
    for name, (elapsed, data) in results.items():
        limit = cases[name][1]
        assert limit - 1 <= elapsed <= limit + 3, f"{name}: closed after {elapsed:.1f}s (timeout {limit}s)"
        assert not data.startswith(b"HTTP/1.1 2"), f"{name}: got a response {data[:80]!r}"


def test_what_the_api_receives(workdir):
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]"
    upstream = CannedUpstream(reply=ok)
    ngx = start_nginx(workdir, f"127.0.0.1:{upstream.port}", name="nginx-headers")
    try:
        # through the load balancer, over https
        request(ngx.port, "GET", "/users?limit=2", source=TRUSTED_LB,
                headers={"Host": "api.example.test", "X-Forwarded-For": "203.0.113.50",
                         "X-Forwarded-Proto": "https", "X-Request-Id": "rid-lb-1"})
        # straight from a client that lies about everything
        request(ngx.port, "GET", "/users", source="127.0.0.50",
                headers={"X-Forwarded-For": "203.0.113.51", "X-Forwarded-Proto": "https"})
        via_lb, direct = (forwarded_headers(r) for r in upstream.requests)
    finally:
        ngx.stop()
        upstream.close()

    assert via_lb[":request-line"] == "GET /users?limit=2 HTTP/1.1"
    assert via_lb["x-forwarded-for"].split(",")[-1].strip() == "203.0.113.50"
    assert via_lb["x-real-ip"] == "203.0.113.50"
    assert via_lb["x-forwarded-proto"] == "https"
    assert via_lb["host"] == via_lb["x-forwarded-host"] == "api.example.test"
    assert via_lb["x-request-id"] == "rid-lb-1"
    assert via_lb.get("connection", "") == "", "upstream keepalive needs no Connection: close"

    assert direct["x-forwarded-for"].split(",")[-1].strip() == "127.0.0.50", "last hop is the real peer"
    assert direct["x-real-ip"] == "127.0.0.50"
    assert direct["x-forwarded-proto"] == "http", "only the load balancer may claim https"
    assert re.fullmatch(r"[0-9a-f]{32}", direct["x-request-id"])


def test_nginx_drops_an_idle_api_connection_before_the_api_does(proxy, api):
    # otherwise nginx may send a request on a connection the API is closing
    upstream = re.search(r"upstream users_api \{(.*?)\n    \}", proxy.rendered, re.S).group(1)
    nginx_idle = seconds(upstream, "keepalive_timeout")
    help_text = subprocess.run([api.proc.args[0], "serve", "--help"], capture_output=True, text=True, check=True).stdout
    api_idle = re.search(r"\[env: KEEPALIVE_TIMEOUT_SECS=[^\]]*\]\s*\[default: (\d+)\]", help_text)
    assert api_idle, "the API's KEEPALIVE_TIMEOUT_SECS default not in `users-api serve --help`"
    assert nginx_idle < int(api_idle.group(1)), (nginx_idle, api_idle.group(1))
