#!/usr/bin/env python3
"""1, 2 and 3 instances of the release binary behind a real nginx (the project's own template,
rendered by proxy/render-config with one upstream server per instance) on one PostgreSQL.

Shows the method of scaling out: the same load through the same proxy at each instance count,
the aggregate rate and its p99, and that nothing fails. On a 2-core machine the instances,
nginx, PostgreSQL and wrk share the cores, so the total cannot grow with instances here.

Called by bench/multi-instance. Standard library only; every process is stopped by its id;
every target is on the loopback interface.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the suite's process, wrk and PostgreSQL helpers)

# The proxy's production limits protect the service from clients; here one client is the load.
UNLIMITED = {"WRITE_RATE": "1000000r/s", "WRITE_BURST": "1000000", "READ_RATE": "1000000r/s",
             "READ_BURST": "1000000", "CONN_LIMIT": "60000", "LIST_CONN_LIMIT": "60000",
             "TRACE_SAMPLE_PERCENT": "0"}
SCENARIOS = (("POST /user", "", "post_user.lua"), ("GET /users?limit=100", "/users?limit=100", "report.lua"))


def nginx_for(run_dir: Path, count: int, upstreams: list[int]) -> bench.Server:
    prefix = run_dir / f"nginx-{count}"
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    port = bench.free_port()
    env = bench.clean_env(NGINX_TEMPLATE_DIR=str(bench.ROOT / "proxy"), LISTEN_ADDR="127.0.0.1",
                          LISTEN_PORT=str(port), UPSTREAM=",".join(f"127.0.0.1:{p}" for p in upstreams), **UNLIMITED)
    subprocess.run(["sh", str(bench.ROOT / "proxy" / "render-config"), str(prefix)], env=env, check=True, timeout=30)
    argv = ["nginx", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
    return bench.Server(f"nginx-{count}", argv, env, port, "/ready", run_dir / f"nginx-{count}.log")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", default="1,2,3")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    counts = [int(c) for c in args.instances.split(",")]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = bench.BENCH / "results" / f"{stamp}-multi-instance"
    run_dir.mkdir(parents=True)
    s = SimpleNamespace(threads=bench.env_int("BENCH_THREADS", 2), connections=bench.env_int("BENCH_CONNECTIONS", 64),
                        run_dir=run_dir)
    duration = bench.env_int("BENCH_DURATION", 2 if args.smoke else 10)
    pool = bench.env_int("BENCH_POOL_SIZE", 10)
    pg = bench.PgTarget.parse(os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test"))
    schema = f"bench_multi_{os.getpid()}_{int(time.time())}"
    pg.psql(f"CREATE SCHEMA {schema}")
    url = pg.schema_url(schema)
    results: dict[str, Any] = {"duration_s": duration, "connections": s.connections, "pool_per_instance": pool,
                               "server_version": pg.psql("SHOW server_version"), "runs": []}
    try:
        proc = subprocess.run([str(bench.SERVICE_BIN), "migrate"], env=bench.clean_env(DATABASE_URL=url),
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"migrate failed: {proc.stdout}{proc.stderr}")
        t = bench.Targets(SimpleNamespace(run_dir=run_dir))
        for count in counts:
            instances = [t.service(f"multi{count}-{i}", url) for i in range(count)]
            for server in instances:
                server.env["DATABASE_MAX_CONNECTIONS"] = str(pool)
            proxy = nginx_for(run_dir, count, [server.port for server in instances])
            try:
                for server in instances:
                    server.start()
                proxy.start()
                for title, path, script in SCENARIOS:
                    target = f"http://127.0.0.1:{proxy.port}{path}"
                    bench.run_wrk(s, target, 1, script, [f"w{count}{os.getpid()}{int(time.time())}"])
                    r = bench.run_wrk(s, target, duration, script, [f"m{count}{os.getpid()}{int(time.time())}"],
                                      tag=f"multi-{count}-{'post' if script == 'post_user.lua' else 'list'}")
                    r |= {"instances": count, "scenario": title}
                    results["runs"].append(r)
                    bench.log(f"{count} instance(s) {title}: {r['rps']:,.0f} req/s p99 {r['p99_ms']:.2f} ms "
                              f"non-2xx {r['non_2xx']} socket errors {r['socket_errors']}")
            finally:
                proxy.stop()
                for server in instances:
                    server.stop()
                bench.trim_logs(run_dir)
        results["rows_after"] = int(pg.psql(f"SELECT count(*) FROM {schema}.users"))
    finally:
        pg.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    report = render(results)
    (run_dir / "MULTI-INSTANCE.md").write_text(report)
    print(report)
    failed = sum(r["non_2xx"] + r["socket_errors"] for r in results["runs"])
    return 1 if failed else 0


def render(res: dict[str, Any]) -> str:
    rows = [f"`wrk -c{res['connections']}` for {res['duration_s']} s per run through nginx (the project's template, "
            f"one `server` line per instance, keep-alive upstream), each instance with a pool of "
            f"{res['pool_per_instance']} connections to one PostgreSQL {res['server_version']}; "
            f"{res['rows_after']:,} rows written in all.", "",
            "| instances | scenario | req/s | p50 ms | p99 ms | failed |", "|---:|---|---:|---:|---:|---:|"]
    for r in res["runs"]:
        rows.append(f"| {r['instances']} | {r['scenario']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                    f"{r['non_2xx'] + r['socket_errors']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
