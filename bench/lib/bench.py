#!/usr/bin/env python3
"""Runs the benchmark scenarios and writes BENCHMARKS.md. Called by bench/run, which first
installs the tools, builds the release binaries and creates the peer's virtualenv.

Standard library only. Every server it starts is its own process group, stopped by id; every
loop is bounded in count and time; every target is on the loopback interface.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
LIB = BENCH / "lib"
PEER_DIR = BENCH / "peers" / "fastapi"
NODE_PEER_DIR = BENCH / "peers" / "node"
BIN_DIR = Path(os.environ.get("BENCH_BIN_DIR") or ROOT / "target" / "release")
SERVICE_BIN = BIN_DIR / "users-api"
HELLO_BIN = BIN_DIR / "examples" / "hello"
PG_POOL = 10  # the service's PostgreSQL pool in every PostgreSQL scenario: its default, set explicitly
NODE_PG_POOL = 10  # the Node.js peer's pool per worker: node-postgres' default, set explicitly
ALL_SCENARIOS = ("health", "list", "post_sqlite", "post_pg", "list_pg", "full", "cold", "tracing_health",
                 "tracing_post")

# Variables of the service that must not leak in from the caller's environment.
SERVICE_VARS = re.compile(
    r"^(BIND_ADDR|DATABASE_\w+|METRICS_ADDR|LOG_FORMAT|LOG_LEVEL|AUTH_\w+|RATE_LIMIT_\w+|"
    r"TRUST_FORWARDED_FOR|REQUEST_TIMEOUT_SECS|SHUTDOWN_GRACE_SECS|MAX_IN_FLIGHT|SKIP_MIGRATIONS)$"
)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.removesuffix("s"))
    except ValueError:
        sys.exit(f"{name} must be an integer, got {raw!r}")
    if value < 1:
        sys.exit(f"{name} must be at least 1, got {value}")
    return value


@dataclass
class Settings:
    mode: str
    duration: int
    connections: int
    threads: int
    repeats: int
    list_rows: int
    full_rows: int
    full_runs: int
    full_concurrency: int
    cold_runs: int
    peer_workers: int
    pg_url: str
    skip_pg: bool
    scenarios: tuple[str, ...]
    out: Path
    run_dir: Path
    venv: Path
    command: str
    node: str | None  # the node binary for the Node.js peer; None when it cannot run
    node_missing: str  # why the Node.js peer is not run

    @classmethod
    def from_env(cls, args: argparse.Namespace) -> "Settings":
        smoke = args.smoke
        scenarios = tuple(s.strip() for s in args.only.split(",")) if args.only else ALL_SCENARIOS
        unknown = [s for s in scenarios if s not in ALL_SCENARIOS]
        if unknown:
            sys.exit(f"unknown scenario(s) {unknown}; choose from {', '.join(ALL_SCENARIOS)}")
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        mode = "smoke" if smoke else "full"
        run_dir = BENCH / "results" / f"{stamp}-{mode}"
        # Only a complete full run replaces bench/BENCHMARKS.md; smoke and partial runs report in their folder.
        partial = smoke or bool(args.only)
        out = Path(args.out) if args.out else (run_dir / "BENCHMARKS.md" if partial else BENCH / "BENCHMARKS.md")
        node, node_missing = find_node_peer()
        return cls(
            mode=mode,
            duration=env_int("BENCH_DURATION", 2 if smoke else 10),
            connections=env_int("BENCH_CONNECTIONS", 64),
            threads=env_int("BENCH_THREADS", 2),
            repeats=env_int("BENCH_REPEATS", 1 if smoke else 3),
            list_rows=env_int("BENCH_LIST_ROWS", 10_000),
            full_rows=env_int("BENCH_FULL_ROWS", 10_000 if smoke else 1_000_000),
            full_runs=env_int("BENCH_FULL_RUNS", 1 if smoke else 3),
            full_concurrency=env_int("BENCH_FULL_CONCURRENCY", 4 if smoke else 64),
            cold_runs=env_int("BENCH_COLD_RUNS", 3 if smoke else 15),
            peer_workers=env_int("BENCH_PEER_WORKERS", os.cpu_count() or 1),
            pg_url=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test"),
            skip_pg=os.environ.get("BENCH_SKIP_PG", "") == "1",
            scenarios=scenarios,
            out=out,
            run_dir=run_dir,
            venv=Path(args.venv),
            command=args.command,
            node=node,
            node_missing=node_missing,
        )


def find_node_peer() -> tuple[str | None, str]:
    """The node binary when the Node.js peer can run (bench/run installs its packages), else why not."""
    node = shutil.which("node")
    if node is None:
        return None, "Node.js is not installed on this machine (no `node` on PATH)"
    if not (NODE_PEER_DIR / "node_modules" / "fastify").is_dir():
        return None, "its packages are not installed (bench/run runs `npm ci` in bench/peers/node)"
    return node, ""


# --- processes and probes ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status code of GET path on 127.0.0.1:port, or None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
    except OSError:
        return None
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return int(m.group(1)) if m else None


def children_of(pid: int) -> list[int]:
    """Descendants of pid (uvicorn's workers), read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents[int(entry.name)] = ppid
    found, frontier = [], [pid]
    while frontier and len(found) < 256:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    """A server process in its own process group, stopped by its id."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], port: int, probe: str,
                 log_path: Path, cwd: Path | None = None) -> None:
        self.name, self.argv, self.env, self.port, self.probe = name, argv, env, port, probe
        self.log_path, self.cwd = log_path, cwd
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def wait_ready(self, timeout: float, interval: float = 0.0005) -> float:
        """Seconds from now until the probe answers 200 (busy polling, bounded by timeout)."""
        assert self.proc is not None
        start = time.perf_counter()
        deadline = start + timeout
        while time.perf_counter() < deadline:
            if http_status(self.port, self.probe, timeout=timeout) == 200:
                return time.perf_counter() - start
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            time.sleep(interval)
        raise RuntimeError(f"{self.name} not ready within {timeout:.0f}s; see {self.log_path}")

    def start(self, timeout: float = 60.0) -> "Server":
        self.spawn()
        self.wait_ready(timeout, interval=0.01)
        # A server run with --workers 1 serves from its own process: there are no workers to wait for.
        if "--workers" in self.argv and self.argv[self.argv.index("--workers") + 1] != "1":
            self.wait_workers()
        return self

    def wait_workers(self) -> None:
        """The first worker (uvicorn's, or Node's cluster) answers before the others are up: wait for all."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # --workers N: the supervisor, N workers and multiprocessing's helper process.
            if len(children_of(self.pid)) >= int(self.argv[self.argv.index("--workers") + 1]):
                time.sleep(1.0)  # let every worker finish its start-up
                return
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        return [self.pid, *children_of(self.pid)]

    def rss_kb(self) -> int:
        return sum(status_kb(p, "VmRSS") for p in self.pids())

    def hwm_kb(self) -> int:
        """Peak RSS: VmHWM of the process (summed over its workers for a process tree)."""
        return sum(status_kb(p, "VmHWM") for p in self.pids())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not SERVICE_VARS.match(k)}
    env.update(extra)
    return env


# --- load generators -------------------------------------------------------------------------


def run_wrk(s: Settings, url: str, duration: int, script: str = "report.lua",
            args: list[str] | None = None, tag: str = "") -> dict[str, Any]:
    cmd = ["wrk", f"-t{s.threads}", f"-c{s.connections}", f"-d{duration}s", "--timeout", "10s",
           "-s", str(LIB / script), url]
    if args:
        cmd += ["--", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if tag:
        (s.run_dir / f"wrk-{tag}.txt").write_text(shlex.join(cmd) + "\n" + proc.stdout + proc.stderr)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout[-500:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    seconds = data["duration_us"] / 1e6
    errors = data["errors"]
    return {
        "rps": data["requests"] / seconds if seconds else 0.0,
        "requests": data["requests"],
        "p50_ms": data["latency_us"]["p50"] / 1000,
        "p90_ms": data["latency_us"]["p90"] / 1000,
        "p99_ms": data["latency_us"]["p99"] / 1000,
        "max_ms": data["latency_us"]["max"] / 1000,
        "non_2xx": errors["status"],
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
    }


@dataclass
class PgTarget:
    url: str
    host: str
    port: str
    user: str
    database: str

    @classmethod
    def parse(cls, url: str) -> "PgTarget":
        u = urllib.parse.urlsplit(url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            sys.exit(f"BENCH_PG_URL must point at the loopback interface, got {u.hostname!r}")
        return cls(url, u.hostname or "127.0.0.1", str(u.port or 5432), urllib.parse.unquote(u.username or "postgres"),
                   u.path.lstrip("/") or "postgres")

    def psql(self, sql: str) -> str:
        proc = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", self.port,
                               "-U", self.user, "-d", self.database, "-c", sql],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def schema_url(self, schema: str) -> str:
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}options=-csearch_path%3D{schema}"


def run_pgbench(s: Settings, pg: PgTarget, schema: str, duration: int, tag: str) -> dict[str, Any]:
    log_dir = s.run_dir / f"pgbench-{tag}"
    log_dir.mkdir(exist_ok=True)
    cmd = ["pgbench", "-n", "-M", "prepared", "-c", str(s.connections), "-j", str(s.threads), "-T", str(duration),
           "-f", str(LIB / "pg_insert.sql"), "-l", "--log-prefix", str(log_dir / "tx"),
           "-h", pg.host, "-p", pg.port, "-U", pg.user, pg.database]
    env = dict(os.environ, PGOPTIONS=f"-c search_path={schema}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120, env=env)
    (s.run_dir / f"pgbench-{tag}.txt").write_text(shlex.join(cmd) + "\n" + proc.stdout + proc.stderr)
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"pgbench failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    latencies = []
    for f in log_dir.iterdir():
        with f.open() as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    latencies.append(int(parts[2]))
        f.unlink()
    latencies.sort()
    failed = re.search(r"number of failed transactions: (\d+)", proc.stdout)

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] / 1000 if latencies else float("nan")

    return {"rps": float(m.group(1)), "requests": len(latencies), "p50_ms": pct(50), "p90_ms": pct(90),
            "p99_ms": pct(99), "max_ms": latencies[-1] / 1000 if latencies else float("nan"),
            "non_2xx": int(failed.group(1)) if failed else 0, "socket_errors": 0}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        return {}
    out = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms")}
    out["rps_min"] = min(r["rps"] for r in runs)
    out["rps_max"] = max(r["rps"] for r in runs)
    out["non_2xx"] = sum(r["non_2xx"] for r in runs)
    out["socket_errors"] = sum(r["socket_errors"] for r in runs)
    out["requests"] = sum(r["requests"] for r in runs)
    out["runs"] = runs
    return out


# --- data ------------------------------------------------------------------------------------

SEED_SQL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO users (id, name, email, email_key, created_at)
SELECT i, 'Bench User', 'User' || i || '@example.com', 'user' || i || '@example.com',
       '2026-01-01T00:00:00.' || printf('%06d', i % 1000000) || 'Z'
FROM n
"""


def migrate_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    proc = subprocess.run([str(SERVICE_BIN), "migrate"], env=clean_env(DATABASE_URL=f"sqlite://{path}"),
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"users-api migrate failed: {proc.stdout}{proc.stderr}")


def seeded_sqlite(s: Settings, name: str, rows: int) -> Path:
    """A migrated SQLite database with `rows` users, written straight into the service's schema."""
    path = s.run_dir / f"{name}.db"
    migrate_sqlite(path)
    if rows:
        t0 = time.perf_counter()
        conn = sqlite3.connect(path)
        with conn:
            conn.execute(SEED_SQL, (rows,))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        log(f"seeded {rows:,} users into {path.name} in {time.perf_counter() - t0:.1f}s")
    return path


def copy_db(src: Path, dst: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(src, dst)
    return dst


# --- targets ---------------------------------------------------------------------------------


class Targets:
    def __init__(self, s: Settings) -> None:
        self.s = s

    def service(self, tag: str, database_url: str) -> Server:
        port = free_port()
        env = clean_env(BIND_ADDR=f"127.0.0.1:{port}", DATABASE_URL=database_url,
                        METRICS_ADDR=f"127.0.0.1:{free_port()}", LOG_FORMAT="json", LOG_LEVEL="info")
        if database_url.startswith("postgres"):
            env["DATABASE_MAX_CONNECTIONS"] = str(PG_POOL)
        return Server("users-api", [str(SERVICE_BIN), "serve"], env, port, "/ready",
                      self.s.run_dir / f"{tag}-users-api.log")

    def traced_service(self, tag: str, database_url: str, sink: Server) -> Server:
        """The service exporting traces at a 10 % ratio to `sink`, otherwise as `service`."""
        server = self.service(tag, database_url)
        server.name = "users-api-traced"
        server.env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.port}",
                       "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
        server.log_path = self.s.run_dir / f"{tag}-users-api-traced.log"
        return server

    def otlp_sink(self, tag: str) -> Server:
        port = free_port()
        return Server("otlp-sink", [sys.executable, str(LIB / "otlp_sink.py"), str(port)], clean_env(), port, "/",
                      self.s.run_dir / f"{tag}-otlp-sink.log")

    def hello(self, tag: str) -> Server:
        port = free_port()
        return Server("hello", [str(HELLO_BIN)], clean_env(BIND_ADDR=f"127.0.0.1:{port}"), port, "/health",
                      self.s.run_dir / f"{tag}-hello.log")

    def peer(self, tag: str, db_path: Path) -> Server:
        """The tuned FastAPI peer: one uvicorn worker per core, uvloop and httptools."""
        port = free_port()
        argv = [str(self.s.venv / "bin" / "uvicorn"), "app:app", "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(self.s.peer_workers)]
        return Server("fastapi", argv, clean_env(DATABASE_PATH=str(db_path)), port, "/ready",
                      self.s.run_dir / f"{tag}-fastapi.log", cwd=PEER_DIR)

    def seed_peer(self, tag: str, db_path: Path) -> Server:
        """The seed's shape as it shipped: FastAPI + SQLite under one uvicorn worker on asyncio and h11."""
        port = free_port()
        argv = [str(self.s.venv / "bin" / "uvicorn"), "app:app", "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--loop", "asyncio", "--http", "h11"]
        return Server("fastapi-seed", argv, clean_env(DATABASE_PATH=str(db_path)), port, "/ready",
                      self.s.run_dir / f"{tag}-fastapi-seed.log", cwd=PEER_DIR)

    def node_peer(self, tag: str, db_path: Path | None = None, pg_url: str = "") -> Server:
        """The Node.js peer, one cluster worker per core: Fastify + better-sqlite3 on db_path, or
        node-postgres on pg_url (a pool of NODE_PG_POOL per worker)."""
        assert self.s.node is not None
        port = free_port()
        argv = [self.s.node, "app.js", "--workers", str(self.s.peer_workers)]
        store = {"DATABASE_URL": pg_url, "PG_POOL_SIZE": str(NODE_PG_POOL)} if pg_url else {"DATABASE_PATH": str(db_path)}
        env = clean_env(HOST="127.0.0.1", PORT=str(port), NODE_ENV="production", **store)
        return Server("fastify", argv, env, port, "/ready", self.s.run_dir / f"{tag}-fastify.log", cwd=NODE_PEER_DIR)

    def pg_peers(self, tag: str, schema_url: str) -> dict[str, Server]:
        """The peers with a PostgreSQL store (the Node.js peer; the FastAPI peers have none)."""
        return {"fastify": self.node_peer(tag, pg_url=schema_url)} if self.s.node else {}

    def peers(self, tag: str, db: Path) -> dict[str, Server]:
        """Every peer that can run here, each on its own copy of db, so none sees another's writes."""
        peers = {"fastapi": self.peer(tag, copy_db(db, self.s.run_dir / f"{tag}-fastapi.db")),
                 "fastapi-seed": self.seed_peer(tag, copy_db(db, self.s.run_dir / f"{tag}-fastapi-seed.db"))}
        if self.s.node:
            peers["fastify"] = self.node_peer(tag, copy_db(db, self.s.run_dir / f"{tag}-fastify.db"))
        return peers


def trim_logs(run_dir: Path, keep_lines: int = 200) -> None:
    """Access logs of a load run are large: keep their tail only."""
    for f in run_dir.glob("*.log"):
        if f.stat().st_size > 1_000_000:
            proc = subprocess.run(["tail", "-n", str(keep_lines), str(f)], capture_output=True)
            f.write_bytes(proc.stdout)


# --- scenarios -------------------------------------------------------------------------------


def load_scenario(s: Settings, tag: str, servers: dict[str, Server], path: str, script: str = "report.lua",
                  pgbench: tuple[PgTarget, str] | None = None,
                  requests: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    """Runs wrk (or pgbench) against every target, interleaved, `repeats` times; medians per target.
    `requests` gives a target its own (path, script) instead of the scenario's."""
    requests = requests or {}
    runs: dict[str, list] = {name: [] for name in servers}
    if pgbench:
        runs["pgbench"] = []
    result: dict[str, Any] = {}
    try:
        for server in servers.values():
            server.start()
        loads: dict[str, tuple[str, str]] = {}  # each target's URL and wrk script
        for name, server in servers.items():
            own_path, own_script = requests.get(name, (path, script))
            loads[name] = (f"http://127.0.0.1:{server.port}{own_path}", own_script)
        for name, (url, own_script) in loads.items():  # warm-up: connections, caches, lazy pools
            run_wrk(s, url, 1, own_script, [f"w{tag}{name}{os.getpid()}"])
        for rep in range(s.repeats):
            for name, (url, own_script) in loads.items():
                # The last server's writes are flushed before this one's run, not during it.
                os.sync()
                prefix = f"r{rep}{name}{os.getpid()}{int(time.time())}"
                r = run_wrk(s, url, s.duration, own_script, [prefix], tag=f"{tag}-{name}-{rep}")
                runs[name].append(r)
                log(f"  {tag} {name} #{rep + 1}: {r['rps']:,.0f} req/s p50 {r['p50_ms']:.2f} ms "
                    f"p99 {r['p99_ms']:.2f} ms non-2xx {r['non_2xx']} socket errors {r['socket_errors']}")
            if pgbench:
                pg, schema = pgbench
                os.sync()
                r = run_pgbench(s, pg, schema, s.duration, tag=f"{tag}-{rep}")
                runs["pgbench"].append(r)
                log(f"  {tag} pgbench #{rep + 1}: {r['rps']:,.0f} tx/s p50 {r['p50_ms']:.2f} ms "
                    f"p99 {r['p99_ms']:.2f} ms failed {r['non_2xx']}")
        for name, server in servers.items():
            result[name] = median_of(runs[name]) | {"peak_rss_kb": server.hwm_kb(), "processes": len(server.pids())}
        if pgbench:
            result["pgbench"] = median_of(runs["pgbench"])
    finally:
        for server in servers.values():
            server.stop()
        trim_logs(s.run_dir)
    return result


def scenario_health(s: Settings, t: Targets) -> dict[str, Any]:
    db = s.run_dir / "health.db"
    migrate_sqlite(db)
    return load_scenario(s, "health", {"users-api": t.service("health", f"sqlite://{db}"), "hello": t.hello("health"),
                                       **t.peers("health", db)}, "/health")


def scenario_list(s: Settings, t: Targets) -> dict[str, Any]:
    db = seeded_sqlite(s, "list", s.list_rows)
    # hello here is the list's ceiling: the same page serialised from memory.
    res = load_scenario(s, "list", {"users-api": t.service("list", f"sqlite://{db}"), "hello": t.hello("list"),
                                    **t.peers("list", db)}, "/users?limit=100")
    res["rows"] = s.list_rows
    return res


def scenario_tracing(s: Settings, t: Targets, tag: str, path: str, script: str) -> dict[str, Any]:
    """The same service with traces off and exporting at 10 %, interleaved in one run."""
    off_db, traced_db = s.run_dir / f"{tag}.db", s.run_dir / f"{tag}-traced.db"
    migrate_sqlite(off_db)
    copy_db(off_db, traced_db)
    sink = t.otlp_sink(tag)
    sink.start()
    try:
        res = load_scenario(s, tag, {"users-api": t.service(tag, f"sqlite://{off_db}"),
                                     "users-api-traced": t.traced_service(tag, f"sqlite://{traced_db}", sink)},
                            path, script=script)
        with urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/", timeout=5) as r:
            res["sink"] = r.read().decode().strip()
    finally:
        sink.stop()
    return res


def scenario_tracing_health(s: Settings, t: Targets) -> dict[str, Any]:
    return scenario_tracing(s, t, "tracing_health", "/health", "report.lua")


def scenario_tracing_post(s: Settings, t: Targets) -> dict[str, Any]:
    return scenario_tracing(s, t, "tracing_post", "", "post_user.lua")


def count_users(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT count(*) FROM users").fetchone()[0]
    finally:
        conn.close()


def scenario_post_sqlite(s: Settings, t: Targets) -> dict[str, Any]:
    db = s.run_dir / "post.db"
    migrate_sqlite(db)
    peers = t.peers("post_sqlite", db)
    # hello answers the same script from memory: the ceiling of a create. hello-health is the target's
    # ceiling, GET /health, run in the same rounds: the machine's speed drifts between scenarios minutes
    # apart, and a ratio of two figures taken at different times carries that drift.
    res = load_scenario(s, "post_sqlite", {"users-api": t.service("post_sqlite", f"sqlite://{db}"),
                                           "hello-health": t.hello("post_sqlite-health"),
                                           "hello": t.hello("post_sqlite"), **peers}, "", script="post_user.lua",
                        requests={"hello-health": ("/health", "report.lua")})
    # Every acknowledged 201 must be a row: the counts prove the load really wrote.
    res["users-api"]["rows_after"] = count_users(db)
    for name, server in peers.items():
        res[name]["rows_after"] = count_users(Path(server.env["DATABASE_PATH"]))
    return res


def scenario_post_pg(s: Settings, t: Targets) -> dict[str, Any]:
    pg = PgTarget.parse(s.pg_url)
    stamp = f"{os.getpid()}_{int(time.time())}"
    svc_schema, bench_schema, node_schema = f"bench_svc_{stamp}", f"bench_pgb_{stamp}", f"bench_node_{stamp}"
    schemas = (svc_schema, bench_schema, node_schema)
    try:
        for schema in schemas:
            pg.psql(f"CREATE SCHEMA {schema}")
            proc = subprocess.run([str(SERVICE_BIN), "migrate"], env=clean_env(DATABASE_URL=pg.schema_url(schema)),
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"users-api migrate on PostgreSQL failed: {proc.stdout}{proc.stderr}")
        peers = t.pg_peers("post_pg", pg.schema_url(node_schema))
        res = load_scenario(s, "post_pg", {"users-api": t.service("post_pg", pg.schema_url(svc_schema)), **peers}, "",
                            script="post_user.lua", pgbench=(pg, bench_schema))
        for name, schema in (("users-api", svc_schema), ("pgbench", bench_schema), ("fastify", node_schema)):
            if name in res:
                res[name]["rows_after"] = int(pg.psql(f"SELECT count(*) FROM {schema}.users"))
        for name in peers:
            res[name]["pool"] = f"{s.peer_workers} workers × {NODE_PG_POOL}"
        res["server_version"] = pg.psql("SHOW server_version")
        res["pool_size"] = PG_POOL
        return res
    finally:
        for schema in schemas:
            try:
                pg.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            except RuntimeError as e:
                log(f"could not drop schema {schema}: {e}")


PG_SEED_SQL = """
INSERT INTO {schema}.users (name, email, email_key, created_at)
SELECT 'Bench User', 'User' || i || '@example.com', 'user' || i || '@example.com',
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 microsecond'
FROM generate_series(1, {rows}) AS i
"""


def scenario_list_pg(s: Settings, t: Targets) -> dict[str, Any]:
    """GET /users?limit=100 under load and the full list, on PostgreSQL with a pool of PG_POOL."""
    pg = PgTarget.parse(s.pg_url)
    schema = f"bench_list_{os.getpid()}_{int(time.time())}"
    try:
        pg.psql(f"CREATE SCHEMA {schema}")
        proc = subprocess.run([str(SERVICE_BIN), "migrate"], env=clean_env(DATABASE_URL=pg.schema_url(schema)),
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"users-api migrate on PostgreSQL failed: {proc.stdout}{proc.stderr}")
        t0 = time.perf_counter()
        pg.psql(PG_SEED_SQL.format(schema=schema, rows=s.full_rows) + f"; ANALYZE {schema}.users")
        log(f"seeded {s.full_rows:,} users into PostgreSQL schema {schema} in {time.perf_counter() - t0:.1f}s")
        # The peers read the same rows (nothing writes here).
        peers = t.pg_peers("list_pg", pg.schema_url(schema))
        res = load_scenario(s, "list_pg", {"users-api": t.service("list_pg", pg.schema_url(schema)), **peers},
                            "/users?limit=100")
        for name in peers:
            res[name]["pool"] = f"{s.peer_workers} workers × {NODE_PG_POOL}"
        server = t.service("full_pg", pg.schema_url(schema))
        try:
            server.start()
            body = s.run_dir / "full-pg.json"
            first = curl_full(server.port, str(body), 900)
            check_full_body(body, s.full_rows)
            body.unlink()
            runs = [first] + [curl_full(server.port, "/dev/null", 900) for _ in range(s.full_runs - 1)]
            res["full"] = {"bytes": first["bytes"], "seconds": statistics.median(r["seconds"] for r in runs),
                           "ttfb_s": statistics.median(r["ttfb_s"] for r in runs), "runs": runs,
                           "peak_rss_kb": server.hwm_kb()}
            log(f"  full list on PostgreSQL: {s.full_rows:,} users, {first['bytes'] / 1e6:.1f} MB in "
                f"{res['full']['seconds']:.2f}s (median of {len(runs)})")
        finally:
            server.stop()
        res["rows"] = s.full_rows
        res["pool_size"] = PG_POOL
        res["server_version"] = pg.psql("SHOW server_version")
        return res
    finally:
        try:
            pg.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        except RuntimeError as e:
            log(f"could not drop schema {schema}: {e}")


def curl_full(port: int, out: str, max_time: int) -> dict[str, Any]:
    proc = subprocess.run(["curl", "-sS", "--max-time", str(max_time), "-o", out, "-w",
                           "%{http_code} %{size_download} %{time_starttransfer} %{time_total}",
                           f"http://127.0.0.1:{port}/users"], capture_output=True, text=True, timeout=max_time + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"curl failed: {proc.stderr.strip()}")
    code, size, ttfb, total = proc.stdout.split()
    return {"status": int(code), "bytes": int(size), "ttfb_s": float(ttfb), "seconds": float(total)}


def check_full_body(path: Path, rows: int) -> None:
    """The body is one JSON array holding every row (counted without parsing 100 MB in Python)."""
    with path.open("rb") as f:
        data = f.read()
    ids = data.count(b'{"id":')
    if not (data.startswith(b"[{") and data.endswith(b"}]") and ids == rows):
        raise RuntimeError(f"full list body is wrong: {ids} users (want {rows}), {len(data)} bytes")


def scenario_full(s: Settings, t: Targets) -> dict[str, Any]:
    db = seeded_sqlite(s, "full", s.full_rows)
    max_time = 900
    result: dict[str, Any] = {"rows": s.full_rows, "concurrency": s.full_concurrency}
    for name, server in {"users-api": t.service("full", f"sqlite://{db}"), **t.peers("full", db)}.items():
        try:
            server.start()
            time.sleep(0.5)
            idle = server.rss_kb()
            body = s.run_dir / f"full-{name}.json"
            first = curl_full(server.port, str(body), max_time)
            check_full_body(body, s.full_rows)
            body.unlink()
            runs = [first] + [curl_full(server.port, "/dev/null", max_time) for _ in range(s.full_runs - 1)]
            if any(r["status"] != 200 for r in runs):
                raise RuntimeError(f"{name}: full list answered {[r['status'] for r in runs]}")
            peak_single = server.hwm_kb()
            seconds = statistics.median(r["seconds"] for r in runs)
            log(f"  full {name}: {s.full_rows:,} users, {runs[0]['bytes'] / 1e6:.1f} MB in {seconds:.2f}s "
                f"(median of {len(runs)}), RSS idle {idle / 1024:.1f} MB peak {peak_single / 1024:.1f} MB")
            result[name] = {"bytes": runs[0]["bytes"], "seconds": seconds, "ttfb_s": statistics.median(
                r["ttfb_s"] for r in runs), "runs": runs, "idle_rss_kb": idle, "peak_rss_kb": peak_single,
                "growth_kb": peak_single - idle}
            if name == "users-api":
                # The same download by many clients at once: memory must stay bounded per stream. (Not for
                # the peer: 64 Python streams of 1M rows take minutes and its memory is not a target.)
                conc = concurrent_full(server.port, s.full_concurrency, max_time)
                peak_conc = server.hwm_kb()
                log(f"  full {name} x{s.full_concurrency}: {conc['ok']}/{s.full_concurrency} complete in "
                    f"{conc['wall_s']:.1f}s, peak RSS {peak_conc / 1024:.1f} MB")
                result[name] |= {"concurrent": conc, "peak_rss_concurrent_kb": peak_conc,
                                 "growth_concurrent_kb": peak_conc - idle}
        finally:
            server.stop()
            trim_logs(s.run_dir)
    return result


def concurrent_full(port: int, n: int, max_time: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["curl", "-sS", "--max-time", str(max_time), "-o", "/dev/null", "-w",
                               "%{http_code} %{size_download} %{time_total}", f"http://127.0.0.1:{port}/users"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    ok, sizes, times = 0, [], []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max_time + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        parts = out.split()
        if p.returncode == 0 and len(parts) == 3 and parts[0] == "200":
            ok += 1
            sizes.append(int(parts[1]))
            times.append(float(parts[2]))
    wall = time.perf_counter() - t0
    return {"clients": n, "ok": ok, "wall_s": wall, "bytes_total": sum(sizes),
            "median_client_s": statistics.median(times) if times else float("nan")}


def cold_starts(server: Server, runs: int) -> dict[str, Any]:
    """Process spawn to the first 200 on the probe, polled in a tight loop; fresh process each run."""
    times = []
    for _ in range(runs):
        # Earlier scenarios' writes (the million-row table, logs) are flushed first, as before every
        # load run: right after the full-list scenario a start took 26 ms (median), alone 7 ms.
        os.sync()
        try:
            t0 = time.perf_counter()
            server.spawn()
            server.wait_ready(30.0, interval=0.001)
            times.append((time.perf_counter() - t0) * 1000)
        finally:
            server.stop()
        time.sleep(0.2)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": times}


def scenario_cold(s: Settings, t: Targets) -> dict[str, Any]:
    db = seeded_sqlite(s, "cold", s.list_rows)
    result: dict[str, Any] = {"rows": s.list_rows}
    targets = [("users-api", t.service("cold", f"sqlite://{db}")), ("hello", t.hello("cold")),
               *t.peers("cold", db).items()]
    schema = None
    pg = None
    if not s.skip_pg:
        pg = PgTarget.parse(s.pg_url)
        schema = f"bench_cold_{os.getpid()}_{int(time.time())}"
        pg.psql(f"CREATE SCHEMA {schema}")
        targets.insert(1, ("users-api-pg", t.service("cold-pg", pg.schema_url(schema))))
    try:
        for name, server in targets:
            server.start()  # first start: creates/migrates, fills the page cache; not counted
            server.stop()
            r = cold_starts(server, s.cold_runs)
            log(f"  cold start {name}: median {r['median_ms']:.1f} ms (min {r['min_ms']:.1f}, max "
                f"{r['max_ms']:.1f}, {s.cold_runs} runs)")
            result[name] = r
    finally:
        if pg and schema:
            pg.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return result


def load_seconds(s: Settings) -> int:
    """Seconds of wrk/pgbench load the chosen scenarios take (1 s warm-up per server on top)."""
    node = 1 if s.node else 0
    peers = 2 + node
    servers = {"health": 2 + peers, "list": 2 + peers, "post_sqlite": 3 + peers, "post_pg": 2 + node, "list_pg": 1 + node,
               "tracing_health": 2, "tracing_post": 2}
    return sum(n * (s.repeats * s.duration + 1) for name, n in servers.items() if name in s.scenarios)


# --- machine facts ---------------------------------------------------------------------------


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def machine_facts() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = status_kb_meminfo("MemTotal")
    return {
        "nproc": sh(["nproc"]),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "kernel": platform.release(),
        "autogroup": autogroup(),
        "os": sh(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "rustc": sh(["rustc", "--version"]),
        "wrk": sh(["sh", "-c", "wrk -v 2>&1 | head -1"]).split(" Copyright")[0],
        "pgbench": sh(["pgbench", "--version"]),
        "python": sh(["sh", "-c", "python3 --version"]),
        "node": sh(["node", "--version"]) if shutil.which("node") else "not installed",
        "source": source_revision(),
    }


def autogroup() -> str:
    """Whether the scheduler shares the cores between sessions (each server is started in its own)
    rather than between threads: it moves POST on SQLite by about a tenth (bench/analysis.md, round 17)."""
    try:
        return {"1": "on", "0": "off"}.get(Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip(), "?")
    except OSError:
        return "not available"


def source_revision() -> str:
    """The commit the binaries were built from, and whether the service's sources had local changes."""
    head = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock", "examples"])
    where = "" if BIN_DIR == ROOT / "target" / "release" else f"; binaries from {BIN_DIR}"
    return f"{head}{' with uncommitted changes in src/' if dirty else ''}{where}"


def status_kb_meminfo(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def fsync_probe(directory: Path, count: int = 200, max_seconds: float = 10.0) -> dict[str, float]:
    """Latency of a 4 KiB write + fsync on the disk holding the databases: the floor of every durable
    commit, so a group-committing writer at concurrency C can do at most about C / fsync commits a second."""
    path = directory / "fsync-probe.bin"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\0" * 4096
        deadline = time.perf_counter() + max_seconds
        for i in range(count):
            os.pwrite(fd, block, (i % 64) * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - t0) * 1000)
            if time.perf_counter() > deadline:
                break
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    times.sort()
    return {"median_ms": statistics.median(times), "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))],
            "samples": len(times)}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- main ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--venv", required=True)
    ap.add_argument("--command", default="bench/run")
    args = ap.parse_args()
    s = Settings.from_env(args)
    if s.skip_pg:
        s.scenarios = tuple(x for x in s.scenarios if x not in ("post_pg", "list_pg"))
    s.run_dir.mkdir(parents=True, exist_ok=True)
    latest = BENCH / "results" / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(s.run_dir.name)
    for binary in (SERVICE_BIN, HELLO_BIN):
        if not binary.exists():
            sys.exit(f"{binary} is missing: build it first (bench/run does)")

    results: dict[str, Any] = {
        "mode": s.mode, "command": s.command, "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"), "settings": {k: v for k, v in vars(s).items() if k not in ("out", "run_dir", "venv")}
        | {"scenarios": list(s.scenarios)}, "machine": machine_facts(), "load_before": loadavg(), "scenarios": {},
        "errors": {}, "peers_not_run": {} if s.node else {"fastify": s.node_missing}}
    log(f"{s.mode} run: {s.duration}s per load run x {s.repeats}, c{s.connections} t{s.threads}, "
        f"results in {s.run_dir.relative_to(ROOT)}; load average {results['load_before']}")
    log(f"expected load time alone: about {load_seconds(s) / 60:.0f} min (seeding, full downloads and cold starts "
        f"come on top)")
    if not s.node:
        log(f"the Node.js peer will NOT be run: {s.node_missing}; the report says so")
    results["fsync"] = fsync_probe(s.run_dir)
    log(f"fsync of 4 KiB on the database disk: median {results['fsync']['median_ms']:.2f} ms, "
        f"p99 {results['fsync']['p99_ms']:.2f} ms")
    t = Targets(s)
    t_start = time.perf_counter()
    runners = {"health": scenario_health, "list": scenario_list, "post_sqlite": scenario_post_sqlite,
               "post_pg": scenario_post_pg, "list_pg": scenario_list_pg, "full": scenario_full, "cold": scenario_cold,
               "tracing_health": scenario_tracing_health, "tracing_post": scenario_tracing_post}
    for name in s.scenarios:
        log(f"scenario {name}")
        t_scenario = time.perf_counter()
        try:
            results["scenarios"][name] = runners[name](s, t)
        except Exception as e:  # noqa: BLE001 - one failing scenario must not hide the others
            log(f"scenario {name} FAILED: {e}")
            results["errors"][name] = str(e)
        results.setdefault("scenario_seconds", {})[name] = round(time.perf_counter() - t_scenario, 1)
        log(f"scenario {name} took {results['scenario_seconds'][name]:.0f}s")
        (s.run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    results["load_after"] = loadavg()
    results["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    results["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    (s.run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    for f in s.run_dir.glob("*.db*"):
        f.unlink()

    sys.path.insert(0, str(LIB))
    import report  # noqa: PLC0415

    markdown = report.render(results, analysis=BENCH / "analysis.md")
    s.out.parent.mkdir(parents=True, exist_ok=True)
    s.out.write_text(markdown)
    if s.out.resolve() != (s.run_dir / "BENCHMARKS.md").resolve():
        (s.run_dir / "BENCHMARKS.md").write_text(markdown)
    log(f"wrote {s.out.relative_to(ROOT) if s.out.is_relative_to(ROOT) else s.out} in {results['elapsed_s']:.0f}s; "
        f"load average {results['load_after']}")
    print(report.summary(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
