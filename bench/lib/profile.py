#!/usr/bin/env python3
"""Profiles the service beside the hello ceiling on one load scenario (called by bench/profile).

- callgrind: instructions per request in user space (service vs hello) and the functions they go
  to, from a short run under valgrind (startup subtracted with a run that serves nothing).
- perf: where wall-clock CPU goes under full load (kernel vs user, hottest symbols), sampled with
  the cpu-clock software event (works in VMs without hardware counters).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

SCENARIOS = {
    "health": ("/health", "report.lua"),
    "list": ("/users?limit=100", "report.lua"),
    "post_sqlite": ("", "post_user.lua"),
    "post_pg": ("", "post_user.lua"),
    "full": ("/users", ""),  # one client downloads the whole table (FULL_ROWS users) with curl
}
FULL_ROWS = int(os.environ.get("BENCH_PROFILE_FULL_ROWS", "200000"))


def load(url: str, seconds: int, script: str, threads: int, conns: int, out: Path) -> int:
    """Requests served: wrk for the load scenarios, one full download for `full`."""
    if not script:
        r = bench.curl_full(int(url.split(":")[2].split("/")[0]), "/dev/null", 900)
        out.write_text(json.dumps(r))
        return 1
    return wrk(url, seconds, script, threads, conns, out)["requests"]


def wrk(url: str, seconds: int, script: str, threads: int, conns: int, out: Path) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "30s", "-s", str(bench.LIB / script), url,
           "--", f"prof{os.getpid()}{time.time_ns()}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    out.write_text(shlex.join(cmd) + "\n" + proc.stdout + proc.stderr)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {proc.stderr}")
    return json.loads(line.removeprefix("WRK_JSON "))


def total_ir(callgrind_out: Path) -> int:
    for line in callgrind_out.read_text(errors="replace").splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {callgrind_out}")


def target_server(name: str, bin_dir: Path, port: int, db_url: str, out_dir: Path, wrapper: list[str],
                  overrides: dict[str, str] | None = None) -> bench.Server:
    if name == "hello":
        argv, env, probe = [str(bin_dir / "examples" / "hello")], bench.clean_env(BIND_ADDR=f"127.0.0.1:{port}"), "/health"
    else:
        argv = [str(bin_dir / "users-api"), "serve"]
        env = bench.clean_env(BIND_ADDR=f"127.0.0.1:{port}", DATABASE_URL=db_url, LOG_FORMAT="json", LOG_LEVEL="info",
                              METRICS_ADDR=f"127.0.0.1:{bench.free_port()}")
        env.update(overrides or {})
        probe = "/ready"
    return bench.Server(name, wrapper + argv, env, port, probe, out_dir / f"{name}-{len(wrapper)}.log")


# Configurations of the service, each switching one cost off; name -> environment overrides.
VARIANTS = {
    "health": {"default": {}, "LOG_LEVEL=warn (no access log)": {"LOG_LEVEL": "warn"},
               "LOG_LEVEL=warn METRICS_ADDR=off (no access log, no metrics)": {"LOG_LEVEL": "warn", "METRICS_ADDR": "off"}},
    "list": {"default": {}, "LOG_LEVEL=warn (no access log)": {"LOG_LEVEL": "warn"},
             "DATABASE_MAX_CONNECTIONS=2": {"DATABASE_MAX_CONNECTIONS": "2"}},
    "post_sqlite": {"default": {}, "LOG_LEVEL=warn (no access log)": {"LOG_LEVEL": "warn"}},
    "post_pg": {"default (pool 10)": {}, "DATABASE_MAX_CONNECTIONS=32": {"DATABASE_MAX_CONNECTIONS": "32"},
                "DATABASE_MAX_CONNECTIONS=64": {"DATABASE_MAX_CONNECTIONS": "64"}},
}


def variants(args, out_dir: Path, db_url: str, path: str, script: str) -> dict:
    """Each configuration (and hello, for /health) under the benchmark's load, interleaved, median of runs."""
    servers = {}
    if args.scenario == "health":
        servers["hello"] = target_server("hello", args.bin_dir, bench.free_port(), db_url, out_dir, [])
    for i, (label, overrides) in enumerate(VARIANTS[args.scenario].items()):
        server = target_server("users-api", args.bin_dir, bench.free_port(), db_url, out_dir, [], overrides)
        server.log_path = out_dir / f"variant-{i}.log"
        servers[label] = server
    runs: dict[str, list] = {k: [] for k in servers}
    try:
        for server in servers.values():
            server.start()
        for label, server in servers.items():
            wrk(f"http://127.0.0.1:{server.port}{path}", 1, script, 2, 64, out_dir / "wrk-warm.txt")
        for rep in range(args.repeats):
            for label, server in servers.items():
                r = wrk(f"http://127.0.0.1:{server.port}{path}", args.seconds, script, 2, 64,
                        out_dir / f"wrk-variant-{rep}-{list(servers).index(label)}.txt")
                rps = r["requests"] / (r["duration_us"] / 1e6)
                runs[label].append({"rps": rps, "p99_ms": r["latency_us"]["p99"] / 1000, "status_errors": r["errors"]["status"]})
                bench.log(f"  variant {label} #{rep + 1}: {rps:,.0f} req/s, p99 {r['latency_us']['p99'] / 1000:.1f} ms")
    finally:
        for server in servers.values():
            server.stop()
        bench.trim_logs(out_dir)
    return {label: {"rps": statistics.median(x["rps"] for x in rs), "p99_ms": statistics.median(x["p99_ms"] for x in rs),
                    "runs": rs} for label, rs in runs.items()}


def syscalls(name: str, args, out_dir: Path, db_url: str, path: str, script: str) -> dict:
    """System calls per request under strace -f -c (slow, so the counts matter, not the rate)."""
    port = bench.free_port()
    server = target_server(name, args.bin_dir, port, db_url, out_dir, [])
    trace = out_dir / f"strace-{name}.txt"
    try:
        server.start()
        tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(trace), "-p", str(server.pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        r = wrk(f"http://127.0.0.1:{port}{path}", args.seconds, script, 2, 64, out_dir / f"wrk-strace-{name}.txt")
        time.sleep(0.5)
        tracer.send_signal(2)
        tracer.wait(timeout=60)
    finally:
        server.stop()
    counts = {}
    for line in trace.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1].isidentifier() and parts[-1] != "total" and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    n = max(1, r["requests"])
    per_request = {k: round(v / n, 2) for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v / n >= 0.01}
    return {"requests": r["requests"], "per_request": per_request, "total_per_request": round(sum(counts.values()) / n, 2)}


def callgrind(name: str, args, out_dir: Path, db_url: str, path: str, script: str) -> dict:
    """Ir of a run serving nothing (startup, probes) and of a loaded run: the difference per request."""
    runs = {}
    for label, seconds in (("idle", 0), ("load", args.seconds)):
        port = bench.free_port()
        cg_out = out_dir / f"callgrind.{name}.{label}.out"
        wrapper = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg_out}", "--dump-instr=no",
                   "--separate-threads=no"]
        server = target_server(name, args.bin_dir, port, db_url, out_dir, wrapper)
        requests = 0
        try:
            server.spawn()
            server.wait_ready(180, interval=0.05)
            if seconds:
                requests = load(f"http://127.0.0.1:{port}{path}", seconds, script, 1, 8, out_dir / f"wrk-callgrind-{name}.txt")
        finally:
            server.stop()
        runs[label] = {"ir": total_ir(cg_out), "requests": requests}
    per_request = (runs["load"]["ir"] - runs["idle"]["ir"]) / max(1, runs["load"]["requests"])
    annotate = subprocess.run(["callgrind_annotate", "--inclusive=no", str(out_dir / f"callgrind.{name}.load.out")],
                              capture_output=True, text=True, timeout=300).stdout
    (out_dir / f"callgrind-{name}-self.txt").write_text(annotate)
    annotate_incl = subprocess.run(["callgrind_annotate", "--inclusive=yes", str(out_dir / f"callgrind.{name}.load.out")],
                                   capture_output=True, text=True, timeout=300).stdout
    (out_dir / f"callgrind-{name}-inclusive.txt").write_text(annotate_incl)
    return {"ir_per_request": per_request, **runs}


def perf(name: str, args, out_dir: Path, db_url: str, path: str, script: str) -> dict:
    port = bench.free_port()
    server = target_server(name, args.bin_dir, port, db_url, out_dir, [])
    data = out_dir / f"perf-{name}.data"
    try:
        server.start()
        if script:
            wrk(f"http://127.0.0.1:{port}{path}", 1, script, 2, 64, out_dir / f"wrk-perf-warm-{name}.txt")
        rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "999", "-o", str(data), "-p",
                                ",".join(str(p) for p in server.pids())],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        t0 = time.perf_counter()
        requests = load(f"http://127.0.0.1:{port}{path}", args.seconds, script, 2, 64, out_dir / f"wrk-perf-{name}.txt")
        elapsed = time.perf_counter() - t0
        rec.send_signal(2)
        rec.wait(timeout=120)
    finally:
        server.stop()
    reports = {}
    for sort in ("dso", "dso,sym"):
        rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort,
                              "--percent-limit", "0.5"], capture_output=True, text=True, timeout=300).stdout
        reports[sort] = rep
        (out_dir / f"perf-{name}-{sort.replace(',', '-')}.txt").write_text(rep)
    kernel = 0.0
    for line in reports["dso"].splitlines():
        m = re.match(r"\s*([\d.]+)%\s+\[kernel", line)
        if m:
            kernel += float(m.group(1))
    return {"rps": requests / elapsed, "kernel_pct": kernel}


MACHINE_STATES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def by_thread_name(pid: int, file: str, counters) -> dict[str, int]:
    """Sums `counters(text)` of each of a process's threads' /proc `file` by key."""
    total: dict[str, int] = {}
    for path in Path(f"/proc/{pid}/task").glob(f"*/{file}"):
        try:
            text = path.read_text()
        except OSError:  # the thread ended between the listing and the read
            continue
        for key, value in counters(text).items():
            total[key] = total.get(key, 0) + value
    return total


def thread_ticks(pid: int) -> dict[str, int]:
    """utime + stime of a process's threads, in clock ticks, summed by thread name."""
    def ticks(stat: str) -> dict[str, int]:
        fields = stat[stat.rindex(")") + 2:].split()
        return {stat[stat.index("(") + 1:stat.rindex(")")]: int(fields[11]) + int(fields[12])}
    return by_thread_name(pid, "stat", ticks)


def thread_switches(pid: int) -> dict[str, int]:
    """Context switches of a process's threads (voluntary: it blocked; involuntary: it was
    preempted), summed by thread name: what a hand-off between threads costs shows up here."""
    def switches(status: str) -> dict[str, int]:
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        name = fields["Name"].strip()
        return {f"{name} {kind}": int(fields[f"{kind}_ctxt_switches"]) for kind in ("voluntary", "nonvoluntary")}
    return by_thread_name(pid, "status", switches)


def machine_ticks() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:1 + len(MACHINE_STATES)]]


def cpu(args, out_dir: Path, db_url: str, path: str, script: str) -> dict:
    """Where the machine's two cores go per request: the server's threads by name, wrk, the
    machine's states (idle and iowait included) and the threads' context switches, for the
    service, hello under the same load and, beside a write scenario, hello's /health (the
    ratio's ceiling). Interleaved, medians of runs."""
    loads = {"users-api": (path, script), "hello": (path, script)}
    if args.scenario != "health":
        loads["hello /health"] = SCENARIOS["health"]
    tick = os.sysconf("SC_CLK_TCK")
    runs: dict[str, list] = {k: [] for k in loads}
    for rep in range(args.repeats):
        for label, (own_path, own_script) in loads.items():
            name = label.split()[0]
            server = target_server(name, args.bin_dir, bench.free_port(), db_url, out_dir, [])
            try:
                server.start()
                url = f"http://127.0.0.1:{server.port}{own_path}"
                wrk(url, 1, own_script, 2, 64, out_dir / "wrk-cpu-warm.txt")
                os.sync()
                threads0, switches0, machine0 = thread_ticks(server.pid), thread_switches(server.pid), machine_ticks()
                wrk0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                r = wrk(url, args.seconds, own_script, 2, 64, out_dir / f"wrk-cpu-{rep}-{name}.txt")
                wrk1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                threads1, switches1, machine1 = thread_ticks(server.pid), thread_switches(server.pid), machine_ticks()
            finally:
                server.stop()
            n = max(1, r["requests"])
            per_request = {f"thread {k}": (v - threads0.get(k, 0)) / tick * 1e6 / n for k, v in threads1.items()}
            per_request["wrk"] = (wrk1.ru_utime + wrk1.ru_stime - wrk0.ru_utime - wrk0.ru_stime) * 1e6 / n
            machine = [b - a for a, b in zip(machine0, machine1)]
            per_request |= {f"machine {k}": v / tick * 1e6 / n for k, v in zip(MACHINE_STATES, machine)}
            per_request["machine total"] = sum(machine) / tick * 1e6 / n
            rps = n / (r["duration_us"] / 1e6)
            switches = {k: (v - switches0.get(k, 0)) / n for k, v in switches1.items()}
            runs[label].append({"rps": rps, "us_per_request": {k: round(v, 2) for k, v in per_request.items() if v >= 0.01},
                                "switches_per_request": {k: round(v, 3) for k, v in switches.items() if v >= 0.001}})
            bench.log(f"  cpu {label} #{rep + 1}: {rps:,.0f} req/s, the machine {per_request['machine total']:.1f} us "
                      f"a request (idle {per_request['machine idle']:.1f}, iowait {per_request['machine iowait']:.1f}), "
                      f"{sum(switches.values()):.2f} context switches a request")
    return {label: {"rps": statistics.median(x["rps"] for x in rs),
                    "us_per_request": medians([x["us_per_request"] for x in rs], 2),
                    "switches_per_request": medians([x["switches_per_request"] for x in rs], 3),
                    "runs": rs} for label, rs in runs.items()}


def medians(runs: list[dict[str, float]], digits: int) -> dict[str, float]:
    """Each key's median over runs, a run without the key counting as 0."""
    keys = sorted({k for run in runs for k in run})
    return {k: round(statistics.median(run.get(k, 0.0) for run in runs), digits) for k in keys}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenario", default="health", choices=sorted(SCENARIOS))
    ap.add_argument("--tool", default="all", choices=("callgrind", "perf", "syscalls", "variants", "cpu", "all"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--bin-dir", type=Path, required=True)
    args = ap.parse_args()
    path, script = SCENARIOS[args.scenario]
    if args.tool == "cpu" and not script:
        ap.error("--tool cpu needs a load scenario (health, list, post_sqlite, post_pg), not one download")
    bench.SERVICE_BIN = args.bin_dir / "users-api"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = bench.BENCH / "results" / f"profile-{stamp}-{args.scenario}"
    out_dir.mkdir(parents=True)
    pg = schema = None
    if args.scenario == "post_pg":
        pg = bench.PgTarget.parse(os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test"))
        schema = f"bench_prof_{os.getpid()}"
        pg.psql(f"CREATE SCHEMA {schema}")
        db_url = pg.schema_url(schema)
    else:
        db = out_dir / "prof.db"
        if args.scenario in ("list", "full"):
            s = argparse.Namespace(run_dir=out_dir)
            db = bench.seeded_sqlite(s, "prof", FULL_ROWS if args.scenario == "full" else 10_000)  # type: ignore[arg-type]
        else:
            bench.migrate_sqlite(db)
        db_url = f"sqlite://{db}"
    names = ["users-api"] + (["hello"] if args.scenario == "health" else [])
    result: dict = {"scenario": args.scenario, "bin_dir": str(args.bin_dir)}
    result["load_before"] = bench.loadavg()
    tools = ("callgrind", "perf", "syscalls", "variants") if args.tool == "all" else (args.tool,)
    try:
        for name in names:
            if "callgrind" in tools:
                result[f"callgrind-{name}"] = c = callgrind(name, args, out_dir, db_url, path, script)
                bench.log(f"callgrind {name}: {c['ir_per_request']:,.0f} instructions per request")
            if "perf" in tools:
                result[f"perf-{name}"] = p = perf(name, args, out_dir, db_url, path, script)
                bench.log(f"perf {name}: {p['rps']:,.0f} req/s, {p['kernel_pct']:.0f}% of samples in the kernel")
            if "syscalls" in tools:
                result[f"syscalls-{name}"] = sc = syscalls(name, args, out_dir, db_url, path, script)
                bench.log(f"syscalls {name}: {sc['total_per_request']} per request: {sc['per_request']}")
        if "variants" in tools:
            result["variants"] = variants(args, out_dir, db_url, path, script)
        if "cpu" in tools:
            result["cpu"] = cpu(args, out_dir, db_url, path, script)
        result["load_after"] = bench.loadavg()
    finally:
        if pg and schema:
            pg.psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        for f in out_dir.glob("*.db*"):
            f.unlink()
    (out_dir / "profile.json").write_text(json.dumps(result, indent=2))
    bench.log(f"profile written to {out_dir.relative_to(bench.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
