"""Fixtures for the proxy tests: the real users-api binary and the real nginx
binary started with the project's own config (proxy/nginx.conf.template
rendered by proxy/render-config, exactly as the proxy image does at start),
both on loopback ports, nginx as an unprivileged user.

Loopback addresses stand in for the network: 127.0.0.1 is an ordinary
client; TRUSTED_LB (127.0.0.2) plays the load balancer, the only peer whose
X-Forwarded-For nginx believes (REAL_IP_FROM). Other 127.0.0.x addresses are
further clients, so each test gets its own rate-limit bucket.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROXY_DIR = ROOT / "proxy"
TRUSTED_LB = "127.0.0.2"
NGINX_USER = "nobody"


def free_port() -> int:
    # Bound on the wildcard address: a port no loopback address uses either
    # (the tests' clients bind 127.0.0.x source addresses).
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    elapsed: float

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self):
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes | str | dict | None = None,
    headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
    timeout: float = 20.0,
) -> Response:
    """One HTTP/1.1 request on a fresh connection from the given loopback source address."""
    hdrs = dict(headers or {})
    if isinstance(body, dict):
        body = json.dumps(body)
        hdrs.setdefault("Content-Type", "application/json")
    if isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.headers, data, time.monotonic() - t0)
    finally:
        conn.close()


@dataclass
class Api:
    port: int
    log_path: Path
    proc: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 5.0) -> str:
        """The first API log line containing needle (the log is written asynchronously)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text().splitlines():
                if needle in line:
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in the API log:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_api(workdir: Path, name: str = "api", port: int | None = None, **extra_env: str) -> Api:
    """The real binary on SQLite (workdir/name.db); on `port` when given (a restart in place)."""
    binary = os.environ.get("USERS_API_BIN", str(ROOT / "target" / "debug" / "users-api"))
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"users-api binary not found at {binary} (scripts/test-proxy builds it)")
    port = port or free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BIND_ADDR": f"127.0.0.1:{port}",
        "DATABASE_URL": f"sqlite://{workdir / (name + '.db')}",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "METRICS_ADDR": f"127.0.0.1:{free_port()}",
        "TRUST_FORWARDED_FOR": "true",
        **extra_env,
    }
    log_path = workdir / f"{name}.log"
    log = open(log_path, "ab")
    proc = subprocess.Popen([binary, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    log.close()
    api = Api(port, log_path, proc, env)
    try:
        wait_for_port(port, 30, proc)
    except Exception:
        api.stop()
        raise RuntimeError(f"API did not start:\n{api.log_text()[-3000:]}")
    return api


@dataclass
class Nginx:
    port: int
    prefix: Path
    access_log_path: Path
    error_log_path: Path
    proc: subprocess.Popen
    rendered: str

    def access_log(self) -> list[dict]:
        """The JSON access log, one dict per request."""
        entries = []
        for line in self.access_log_path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                entries.append(json.loads(line))
        return entries

    def log_entry(self, request_id: str, timeout: float = 3.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.access_log():
                if e.get("request_id") == request_id:
                    return e
            if time.monotonic() > deadline:
                raise AssertionError(f"no access log entry with request_id {request_id!r}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def render(prefix: Path, **values: str) -> str:
    """Renders the project's template into prefix with proxy/render-config; returns nginx.conf."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NGINX_TEMPLATE_DIR": str(PROXY_DIR)}
    env.update(values)
    subprocess.run([str(PROXY_DIR / "render-config"), str(prefix)], env=env, check=True,
                   capture_output=True, text=True)
    return (prefix / "nginx.conf").read_text()


def start_nginx(workdir: Path, upstream: str, name: str = "nginx", **values: str) -> Nginx:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = workdir / name
    prefix.mkdir()
    port = free_port()
    rendered = render(prefix, LISTEN_PORT=str(port), LISTEN_ADDR="127.0.0.1", UPSTREAM=upstream, REAL_IP_FROM=TRUSTED_LB + "/32", **values)
    # nginx runs as an unprivileged user, as in the image: it owns only its prefix.
    user = pwd.getpwnam(NGINX_USER)
    for p in [prefix, *prefix.rglob("*")]:
        os.chown(p, user.pw_uid, user.pw_gid)
    access_log_path = workdir / f"{name}.access.log"
    error_log_path = workdir / f"{name}.error.log"
    # Same command line as proxy/docker-entrypoint.
    cmd = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
           nginx, "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-e", "stderr", "-g", "daemon off;"]
    with open(access_log_path, "wb") as out, open(error_log_path, "wb") as err:
        # nginx reopens /dev/stdout: the file behind it must be the nginx user's
        os.fchown(out.fileno(), user.pw_uid, user.pw_gid)
        os.fchown(err.fileno(), user.pw_uid, user.pw_gid)
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=prefix)
    ngx = Nginx(port, prefix, access_log_path, error_log_path, proc, rendered)
    try:
        wait_for_port(port, 10, proc)
    except Exception:
        ngx.stop()
        raise RuntimeError(f"nginx did not start:\n{error_log_path.read_text()}")
    return ngx


@pytest.fixture(scope="session")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="users-api-proxy-test."))
    os.chmod(d, 0o755)
    yield d
    if os.environ.get("KEEP_TEST_DIR"):
        print(f"test files kept in {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def api(workdir):
    a = start_api(workdir)
    yield a
    a.stop()


@pytest.fixture(scope="session")
def proxy(workdir, api):
    n = start_nginx(workdir, f"127.0.0.1:{api.port}")
    yield n
    n.stop()


# ---------------------------------------------------------------- helpers shared by the test files

PROBLEM = "application/problem+json"
ALB_IDLE_TIMEOUT_S = 60
API_REQUEST_TIMEOUT_S = 10
BODY_LIMIT = 64 * 1024


def unique_email(tag: str = "u") -> str:
    return f"{tag}.{uuid.uuid4().hex[:12]}@example.com"


def new_user(tag: str = "u") -> dict:
    return {"name": "Ada Lovelace", "email": unique_email(tag)}


def assert_problem(resp, status: int) -> dict:
    assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.header("Content-Type").split(";")[0].strip() == PROBLEM, resp.headers
    doc = resp.json()
    assert doc["status"] == status
    assert doc["title"] and doc["detail"] and doc["type"] and doc["code"]
    if resp.header("X-Request-Id"):
        assert doc.get("request_id", resp.header("X-Request-Id")) == resp.header("X-Request-Id")
    return doc


def seconds(conf: str, directive: str) -> int:
    m = re.search(rf"^\s*{directive}\s+(\d+)s;", conf, re.M)
    assert m, f"{directive} not set in the rendered config"
    return int(m.group(1))


class CannedUpstream:
    """A loopback TCP server standing in for the API. Each connection is read up
    to the end of its request head, then, after `delay` seconds, answered with
    `reply` and closed; reply=None never answers, reply=b"" closes unanswered
    (a request that reached the API and got no response)."""

    def __init__(self, reply: bytes | None, delay: float = 0.0):
        self.reply = reply
        self.delay = delay
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.requests: list[bytes] = []
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            if self.reply is not None:
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket):
        try:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                part = conn.recv(65536)
                if not part:
                    break
                data += part
            self.requests.append(data)
            if self.stopped.wait(self.delay):
                return
            conn.sendall(self.reply)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stopped.set()
        for c in self.conns:
            c.close()
        self.sock.close()


def forwarded_headers(raw: bytes) -> dict[str, str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    headers[":request-line"] = lines[0]
    return headers


