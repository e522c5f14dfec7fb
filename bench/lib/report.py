"""Renders results.json (written by bench.py) as BENCHMARKS.md: the ratio chart first, then the
targets, the tables, the method, the machine and the command."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1_000_000  # the "MB": decimal megabytes


@dataclass
class Target:
    label: str  # table row
    short: str  # chart label
    measured: float | None
    required: float
    higher_is_better: bool
    unit: str  # "x", "ms", "MB"
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.measured is None or math.isnan(self.measured):
            return None
        return self.measured >= self.required if self.higher_is_better else self.measured <= self.required

    @property
    def score(self) -> float | None:
        """Measured over required, turned so that 1.0 is the target and more is better."""
        if self.met is None:
            return None
        if self.higher_is_better:
            return self.measured / self.required
        return self.required / self.measured if self.measured > 0 else float("inf")

    def fmt(self, value: float, extra_digits: int = 0) -> str:
        e = extra_digits
        if self.unit == "x":
            return f"{value:.{2 + e}f}×" if value < 10 else f"{value:.{e}f}×"
        if self.unit == "ms":
            return f"{value:.{1 + e}f} ms" if value < 100 else f"{value:.{e}f} ms"
        return f"{value:.{1 + e}f} {self.unit}"

    @property
    def measured_text(self) -> str:
        """The measurement, with one more digit when rounding would make a miss read as the target."""
        text = self.fmt(self.measured)
        if self.met is False and text == self.fmt(self.required):
            return self.fmt(self.measured, extra_digits=1)
        return text

    @property
    def requirement(self) -> str:
        return ("≥ " if self.higher_is_better else "≤ ") + self.fmt(self.required)

    @property
    def margin(self) -> str:
        if self.met is None:
            return "not measured"
        m = self.measured
        if self.higher_is_better:
            pct = (m / self.required - 1) * 100
            if pct >= 0:
                return f"{pct:+.0f}% over the target"
            digits = 0 if pct <= -1 else 1  # short by under 1 %: a whole percent would read "0 %"
            return f"short by {-pct:.{digits}f}% ({m / self.required:.{digits + 2}f} of the target)"
        if m <= self.required:
            return f"{(1 - m / self.required) * 100:.0f}% under the limit"
        over = (m / self.required - 1) * 100
        digits = 0 if over >= 1 else 1  # over by under 1 %: a whole percent would read "0 %"
        return f"over by {over:.{digits}f}% ({m / self.required:.{1 + 2 * digits}f}× the limit)"


def g(d: dict | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def post_ceiling(sc: dict[str, Any]) -> float | None:
    """hello's GET /health run in the POST scenario's own rounds; runs that predate it: the health scenario's."""
    return g(sc, "post_sqlite", "hello-health", "rps") or g(sc, "health", "hello", "rps")


def targets(res: dict[str, Any]) -> list[Target]:
    sc = res["scenarios"]
    ceiling = g(sc, "health", "hello", "rps")
    t = [
        Target("GET /health vs the hello ceiling", "health/hello", ratio(g(sc, "health", "users-api", "rps"), ceiling),
               0.85, True, "x"),
        Target("GET /users?limit=100 vs bare axum serialising 100 in-memory users", "list/ceiling",
               ratio(g(sc, "list", "users-api", "rps"), g(sc, "list", "hello", "rps")), 0.35, True, "x"),
        Target("POST /user (SQLite) vs the hello ceiling", "POST-sqlite/hello",
               ratio(g(sc, "post_sqlite", "users-api", "rps"), post_ceiling(sc)), 0.45, True, "x"),
        Target("POST /user (SQLite) p99 latency", "POST-sqlite p99", g(sc, "post_sqlite", "users-api", "p99_ms"),
               10.0, False, "ms"),
        Target("POST /user (PostgreSQL) vs pgbench's single-row INSERT", "POST-pg/pgbench",
               ratio(g(sc, "post_pg", "users-api", "rps"), g(sc, "post_pg", "pgbench", "rps")), 1.3, True, "x"),
        Target("GET /health vs FastAPI", "health/FastAPI",
               ratio(g(sc, "health", "users-api", "rps"), g(sc, "health", "fastapi", "rps")), 30, True, "x"),
        Target("GET /users?limit=100 vs FastAPI", "list/FastAPI",
               ratio(g(sc, "list", "users-api", "rps"), g(sc, "list", "fastapi", "rps")), 30, True, "x"),
        Target("POST /user (SQLite) vs FastAPI", "POST/FastAPI",
               ratio(g(sc, "post_sqlite", "users-api", "rps"), g(sc, "post_sqlite", "fastapi", "rps")), 30, True, "x"),
        Target("full GET /users: FastAPI's time over the service's", "full/FastAPI",
               ratio(g(sc, "full", "fastapi", "seconds"), g(sc, "full", "users-api", "seconds")), 30, True, "x"),
        Target("cold start to /ready: FastAPI's time over the service's", "cold/FastAPI",
               ratio(g(sc, "cold", "fastapi", "median_ms"), g(sc, "cold", "users-api", "median_ms")), 30, True, "x"),
    ]
    load_rss = [g(sc, k, "users-api", "peak_rss_kb") for k in ("health", "list", "post_sqlite", "post_pg")]
    load_rss = [v for v in load_rss if v]
    t.append(Target("peak RSS under load (largest of the load scenarios)", "peak RSS",
                    max(load_rss) * 1024 / MB if load_rss else None, 30, False, "MB"))
    conc = g(sc, "full", "users-api", "peak_rss_concurrent_kb")
    if conc is not None:
        t.append(Target(f"peak RSS while {g(sc, 'full', 'concurrency')} clients download the full list at once",
                        "full x64 RSS", conc * 1024 / MB, 30, False, "MB"))
    growth = g(sc, "full", "users-api", "growth_kb")
    t.append(Target(f"full GET /users of {g(sc, 'full', 'rows') or 0:,} users: peak RSS over idle", "full RSS growth",
                    growth * 1024 / MB if growth is not None else None, 20, False, "MB"))
    t.append(Target("cold start to first /ready 200 (SQLite)", "cold start", g(sc, "cold", "users-api", "median_ms"),
                    100, False, "ms"))
    if g(sc, "cold", "users-api-pg") is not None:
        t.append(Target("cold start to first /ready 200 (PostgreSQL)", "cold start pg",
                        g(sc, "cold", "users-api-pg", "median_ms"), 100, False, "ms"))
    return t


def chart(ts: list[Target]) -> str:
    shown = [x for x in ts if x.score is not None]
    if not shown:
        return "_No target could be measured in this run._\n"
    cap = 5.0
    scores = [min(x.score, cap) for x in shown]
    top = max(2.0, math.ceil(max(scores) * 2) / 2)
    labels = ", ".join(f'"{x.short}"' for x in shown)
    capped = any(x.score > cap for x in shown)
    out = ["```mermaid", "xychart-beta",
           '    title "Measured against target (1.0 = target; above the line meets it)"',
           f"    x-axis [{labels}]", f'    y-axis "measured / target" 0 --> {top:g}',
           f"    bar [{', '.join(f'{v:.2f}' for v in scores)}]",
           f"    line [{', '.join('1' for _ in shown)}]", "```", ""]
    out.append("Each bar is the measured ratio divided by its target (for latency, memory and start-up, "
               "the limit divided by the measurement), so every target sits at 1.0"
               + (f"; bars are cut at {cap:g}." if capped else "."))
    return "\n".join(out) + "\n"


def fmt_rps(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def fmt_ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def fmt_mb_kb(kb: int | None) -> str:
    return "—" if kb is None else f"{kb * 1024 / MB:.1f}"


PEERS = ["fastapi", "fastapi-seed", "fastify"]
PG_SCENARIOS = ("post_pg", "list_pg")
# {pool}: the service's PostgreSQL pool, {conns}: wrk's and pgbench's connections, from the run itself.
LOAD_SCENARIOS = [
    ("health", "GET /health", ["users-api", "hello", *PEERS]),
    ("list", "GET /users?limit=100", ["users-api", "hello", *PEERS]),
    ("post_sqlite", "POST /user, SQLite, a new email per request", ["users-api", "hello", "hello-health", *PEERS]),
    ("post_pg", "POST /user, PostgreSQL (service pool {pool}; pgbench {conns} connections), a new email per request",
     ["users-api", "pgbench", *PEERS]),
    ("list_pg", "GET /users?limit=100, PostgreSQL (service pool {pool} in all, split among its connection threads)",
     ["users-api", *PEERS]),
    ("tracing_health", "GET /health, traces off vs exported at 10 %", ["users-api", "users-api-traced"]),
    ("tracing_post", "POST /user (SQLite), traces off vs exported at 10 %", ["users-api", "users-api-traced"]),
]
TARGET_NAMES = {
    "users-api": "users-api",
    "hello": "hello (axum ceiling)",
    "hello-health": "hello, GET /health in the same rounds (the target's ceiling)",
    "fastapi": "FastAPI peer (tuned: a worker per core, uvloop)",
    "fastapi-seed": "FastAPI as the seed shipped (1 worker, asyncio, h11)",
    "fastify": "Node.js peer (Fastify + better-sqlite3; pg on PostgreSQL)",
    "pgbench": "pgbench INSERT (PG ceiling)",
    "users-api-traced": "users-api, traces at 10 % (OTLP/HTTP to a local sink)",
}


def absent(res: dict[str, Any], key: str, name: str) -> str:
    """Why a peer has no figure in a scenario: every peer shows on every scenario, measured or not."""
    if name in res.get("peers_not_run", {}):
        return f"not run: {res['peers_not_run'][name]}"
    if key in PG_SCENARIOS and name in ("fastapi", "fastapi-seed"):
        return "not run: the peer has no PostgreSQL store"
    if key not in res["scenarios"]:
        err = res.get("errors", {}).get(key)
        return f"not run (scenario {'failed: ' + err[:80] if err else 'not selected'})"
    return "not measured"


def load_table(res: dict[str, Any]) -> str:
    sc = res["scenarios"]
    ceiling = g(sc, "health", "hello", "rps")
    conns = res["settings"]["connections"]
    rows = ["| scenario | server | req/s (median) | range over runs | p50 ms | p99 ms | peak RSS MB | vs ceiling | failed |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, title, names in LOAD_SCENARIOS:
        title = title.format(pool=g(sc, key, "pool_size") or "?", conns=conns)
        if key not in sc:
            err = res.get("errors", {}).get(key)
            rows.append(f"| {title} | — | not run{': ' + err[:80] if err else ''} | | | | | | |")
            continue
        # The list's and POST's ceilings are their own hello (a page serialised from memory, a create
        # answered from memory); elsewhere the HTTP hello.
        row_ceiling = g(sc, key, "hello", "rps") or ceiling
        for name in names:
            r = sc[key].get(name)
            if not r:
                if name in PEERS:
                    rows.append(f"| {title} | {TARGET_NAMES[name]} | {absent(res, key, name)} | | | | | | |")
                continue
            rss = r.get("peak_rss_kb")
            procs = r.get("processes", 1)
            rss_s = fmt_mb_kb(rss) + (f" ({procs} processes)" if procs and procs > 1 else "")
            if name == "pgbench":
                rss_s = "n/a"
            vs = ratio(r["rps"], row_ceiling) if name not in ("pgbench", "hello-health") else None
            failed = r.get("non_2xx", 0) + r.get("socket_errors", 0)
            label = TARGET_NAMES[name] + (f", pool {r['pool']}" if r.get("pool") else "")
            rows.append(f"| {title} | {label} | {fmt_rps(r['rps'])} | {fmt_rps(r['rps_min'])}–"
                        f"{fmt_rps(r['rps_max'])} | {fmt_ms(r['p50_ms'])} | {fmt_ms(r['p99_ms'])} | {rss_s} | "
                        f"{'—' if vs is None else f'{vs:.2f}×'} | {failed} |")
    return "\n".join(rows) + "\n"


def full_table(res: dict[str, Any]) -> str:
    f = res["scenarios"].get("full")
    if not f:
        return f"Not run{': ' + res['errors']['full'] if 'full' in res.get('errors', {}) else ''}.\n"
    rows = [f"One client downloads the whole table ({f['rows']:,} users) as one JSON array, "
            f"then {f['concurrency']} clients download it at once from the service (the peer's memory is not a "
            f"target, and {f['concurrency']} Python streams of the full table take minutes).", "",
            "| server | body MB | time to download (median) | first byte | throughput MB/s | idle RSS MB | "
            "peak RSS MB | growth over idle MB | "
            f"{f['concurrency']} at once: complete / wall s | {f['concurrency']} at once: peak RSS MB (growth) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("users-api", *PEERS):
        r = f.get(name)
        if not r:
            rows.append(f"| {TARGET_NAMES[name]} | {absent(res, 'full', name)} | | | | | | | | |")
            continue
        c = r.get("concurrent")
        conc = (f"{c['ok']}/{c['clients']} in {c['wall_s']:.1f} s | {fmt_mb_kb(r['peak_rss_concurrent_kb'])} "
                f"({fmt_mb_kb(r['growth_concurrent_kb'])})") if c else "not run | —"
        rows.append(f"| {TARGET_NAMES[name]} | {r['bytes'] / MB:.1f} | {r['seconds']:.2f} s | {r['ttfb_s'] * 1000:.1f} ms | "
                    f"{r['bytes'] / MB / r['seconds']:.0f} | {fmt_mb_kb(r['idle_rss_kb'])} | {fmt_mb_kb(r['peak_rss_kb'])} | "
                    f"{fmt_mb_kb(r['growth_kb'])} | {conc} |")
    return "\n".join(rows) + "\n"


def full_pg_line(res: dict[str, Any]) -> str:
    f = g(res, "scenarios", "list_pg", "full")
    if not f:
        return ""
    rows = g(res, "scenarios", "list_pg", "rows")
    return (f"\nOn PostgreSQL (pool of {g(res, 'scenarios', 'list_pg', 'pool_size')} connections, "
            f"{g(res, 'scenarios', 'list_pg', 'server_version')}), the full list of {rows:,} users: "
            f"{f['bytes'] / MB:.1f} MB in {f['seconds']:.2f} s (median of {len(f['runs'])}), first byte in "
            f"{f['ttfb_s'] * 1000:.1f} ms, peak RSS {fmt_mb_kb(f['peak_rss_kb'])} MB.\n")


def cold_table(res: dict[str, Any]) -> str:
    c = res["scenarios"].get("cold")
    if not c:
        return f"Not run{': ' + res['errors']['cold'] if 'cold' in res.get('errors', {}) else ''}.\n"
    names = {"users-api": "users-api (SQLite, migrated file)", "users-api-pg": "users-api (PostgreSQL)",
             "hello": "hello (to /health)", **{p: TARGET_NAMES[p] for p in PEERS}}
    rows = ["| server | median ms | min ms | max ms | runs |", "|---|---:|---:|---:|---:|"]
    for key, label in names.items():
        r = c.get(key)
        if r:
            rows.append(f"| {label} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {r['max_ms']:.1f} | {len(r['runs'])} |")
        elif key in PEERS:
            rows.append(f"| {label} | {absent(res, 'cold', key)} | | | |")
    return "\n".join(rows) + "\n"


# (scenario, label, figure, higher is better): the service must lead every peer on each.
LEAD_SCENARIOS = [
    ("health", "GET /health req/s", "rps", True),
    ("list", "GET /users?limit=100 req/s", "rps", True),
    ("post_sqlite", "POST /user (SQLite) req/s", "rps", True),
    ("post_pg", "POST /user (PostgreSQL) req/s", "rps", True),
    ("list_pg", "GET /users?limit=100 (PostgreSQL) req/s", "rps", True),
    ("full", "full GET /users, seconds", "seconds", False),
    ("cold", "cold start to /ready, ms", "median_ms", False),
]


@dataclass
class Lead:
    scenario: str
    peer: str
    service: float | None
    other: float | None
    higher_is_better: bool
    why_absent: str

    @property
    def factor(self) -> float | None:
        """How many times better the service is than the peer (> 1: it leads)."""
        if self.service is None or self.other is None:
            return None
        return ratio(self.service, self.other) if self.higher_is_better else ratio(self.other, self.service)

    @property
    def leads(self) -> bool | None:
        return None if self.factor is None else self.factor > 1.0


def leads(res: dict[str, Any]) -> list[Lead]:
    sc = res["scenarios"]
    out = []
    for key, label, figure, higher in LEAD_SCENARIOS:
        for peer in PEERS:
            other = g(sc, key, peer, figure)
            service = g(sc, key, "users-api", figure)
            why = absent(res, key, peer) if other is None else "users-api not measured" if service is None else ""
            out.append(Lead(label, peer, service, other, higher, why))
    return out


def lead_table(ls: list[Lead]) -> str:
    rows = ["| scenario | peer | users-api | peer | users-api's lead | status |", "|---|---|---:|---:|---:|---|"]
    for x in ls:
        if x.leads is None:
            rows.append(f"| {x.scenario} | {TARGET_NAMES[x.peer]} | {fmt_figure(x.service)} | — | — | {x.why_absent} |")
            continue
        rows.append(f"| {x.scenario} | {TARGET_NAMES[x.peer]} | {fmt_figure(x.service)} | {fmt_figure(x.other)} | "
                    f"{x.factor:.2f}× | {'**pass**' if x.leads else '**FAIL**'} |")
    return "\n".join(rows) + "\n"


def fmt_figure(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}"


def targets_table(ts: list[Target]) -> str:
    rows = ["| target | measured | required | status | margin |", "|---|---:|---:|---|---|"]
    for x in ts:
        status = {True: "**met**", False: "**missed**", None: "not measured"}[x.met]
        measured = "—" if x.met is None else x.measured_text
        rows.append(f"| {x.label} | {measured} | {x.requirement} | {status} | {x.margin} |")
    return "\n".join(rows) + "\n"


def bounds(res: dict[str, Any]) -> str:
    """Limits that follow from the same run's own measurements, whatever the service does."""
    sc = res["scenarios"]
    s = res["settings"]
    lines = []
    hello, peer = g(sc, "health", "hello", "rps"), g(sc, "health", "fastapi", "rps")
    if hello and peer:
        lines.append(f"- **The ×30-over-FastAPI targets are capped by the ceiling itself.** On these cores the bare "
                     f"hello-world serves {hello:,.0f} req/s and the FastAPI peer {peer:,.0f} req/s on GET /health: "
                     f"{hello / peer:.1f}×. No handler can be faster than an empty one sharing the same kernel, "
                     f"network stack and load generator, so no endpoint can reach 30× the peer here unless the peer "
                     f"is more than 30× slower than hello on it.")
    fs = res.get("fsync")
    post = g(sc, "post_sqlite", "users-api")
    if fs and post:
        cap = s["connections"] / (fs["median_ms"] / 1000)
        lines.append(f"- **SQLite writes wait for the disk.** A 4 KiB write + fsync on the database disk takes "
                     f"{fs['median_ms']:.2f} ms (median; p99 {fs['p99_ms']:.2f} ms). With every commit durable and at "
                     f"most {s['connections']} requests in flight, one group commit per fsync allows at most "
                     f"~{cap:,.0f} inserts/s even with every connection in every batch, before any CPU cost.")
    paired, apart = g(sc, "post_sqlite", "hello-health", "rps"), g(sc, "health", "hello", "rps")
    if post and paired and apart:
        lines.append(f"- **The POST target's ceiling is measured beside it.** hello's GET /health served "
                     f"{paired:,.0f} req/s in the POST scenario's rounds and {apart:,.0f} req/s in the health "
                     f"scenario's: POST /user is {post['rps'] / paired:.2f}× the first and {post['rps'] / apart:.2f}× "
                     f"the second. The target takes the first, measured in the same minutes.")
    if post:
        little = s["connections"] / post["rps"] * 1000
        lines.append(f"- **Latency at a fixed concurrency is throughput's mirror** (Little's law). wrk keeps "
                     f"{s['connections']} requests in flight, so the mean latency is {s['connections']} / throughput: "
                     f"{little:.1f} ms at the measured {post['rps']:,.0f} POST/s. A p99 ≤ 10 ms needs a mean well under "
                     f"10 ms, i.e. well over {s['connections'] * 100:,} req/s on this scenario.")
    return ("## What bounds the ratios (from this run's own figures)\n\n" + "\n".join(lines) + "\n") if lines else ""


def render(res: dict[str, Any], analysis: Path | None = None) -> str:
    ts = targets(res)
    s = res["settings"]
    m = res["machine"]
    met = sum(1 for x in ts if x.met)
    measured = sum(1 for x in ts if x.met is not None)
    ls = leads(res)
    led = sum(1 for x in ls if x.leads)
    compared = sum(1 for x in ls if x.leads is not None)
    smoke = res["mode"] == "smoke"
    parts = [
        "# Benchmarks",
        "",
        ("> **Smoke run** (short durations, small tables): proves the suite works; the figures are not "
         "the measurement.\n" if smoke else ""),
        f"Generated by `bench/run` on {res['started'][:10]} ({res['mode']} run, {res['elapsed_s']:.0f} s). "
        f"Every figure below comes from this one run on one machine; the service is always compared with "
        f"its ceilings and its peers measured minutes apart on the same cores. **{met} of {measured} targets met; "
        f"users-api leads in {led} of {compared} peer comparisons** ({len(ls) - compared} not run, listed below).",
        "",
        chart(ts),
        "## Targets",
        "",
        targets_table(ts),
        "## Lead over every peer",
        "",
        "The service must beat every peer on every scenario: throughput for the load scenarios, time for the full "
        "list and the cold start (the peer's figure over the service's). A comparison that could not be made says "
        "why.",
        "",
        lead_table(ls),
        "## Throughput and latency at concurrency " + str(s["connections"]),
        "",
        f"`wrk -t{s['threads']} -c{s['connections']} -d{s['duration']}s`, {s['repeats']} interleaved run(s) per "
        f"server (median shown, range beside it); each server is a fresh process per scenario, so its peak RSS "
        f"(VmHWM, summed over a server's processes: uvicorn's or Node's workers) belongs to that scenario. `failed` counts non-2xx answers, "
        f"socket errors and timeouts (pgbench: failed transactions). GET /users?limit=100 reads a table of "
        f"{s['list_rows']:,} users.",
        "",
        load_table(res),
        "## Full list: GET /users",
        "",
        full_table(res) + full_pg_line(res),
        "## Cold start to the first 200",
        "",
        "A fresh process per run, timed from spawn to the first 200 on `/ready` (hello: `/health`), polled in a "
        "tight loop; the database file is already migrated and in the page cache (a restart, not a first boot).",
        "",
        cold_table(res),
    ]
    parts += [bounds(res)]
    if analysis and analysis.exists() and not smoke:
        parts += [analysis.read_text().rstrip() + "\n"]
    parts += [
        "## How it was measured",
        "",
        "- **users-api** runs as in production: release build, `LOG_FORMAT=json LOG_LEVEL=info` (one access-log line "
        "per request, written to a file), the metrics listener on, default pool sizes "
        "(`DATABASE_MAX_CONNECTIONS=10`), auth and rate limiting off. SQLite files live on the same disk as the "
        "repository (WAL, `synchronous=FULL`: every acknowledged write is on disk).",
        "- **hello** (`examples/hello.rs`) is the HTTP ceiling: the same axum version and tokio runtime flavour, one "
        "route per ceiling, no middleware, no logging. `GET /health` is the HTTP ceiling; `GET /users?limit=100` "
        "serialises 100 users held in memory (the same field shapes as the seeded rows, and the page's `Link` "
        "header), the list's ceiling; `POST /user` reads the body as JSON and answers 201 with the user from "
        "memory (no validation, no storage), the ceiling of a create under the same load script. The *vs "
        "ceiling* column divides by the scenario's own hello where it has one, else by hello's GET /health rate. "
        "The POST target itself is taken against hello's GET /health, as the issue defines it, run interleaved "
        "with the POST runs in the same rounds, as every other ratio target is: the machine's speed drifts "
        "between scenarios minutes apart, and a ratio of figures taken at different times carries that drift.",
        "- **FastAPI as the seed shipped** (`bench/peers/fastapi/`, other flags): the same app under one uvicorn "
        "worker on the asyncio loop and h11 — no uvloop, no httptools — the shape of the service users-api replaces.",
        f"- **FastAPI peer** (`bench/peers/fastapi/`): the same contract on FastAPI + uvicorn[standard] (uvloop, "
        f"httptools) + sqlite3, WAL with `synchronous=FULL` like the service, run as production would run it: "
        f"`uvicorn app:app --workers {s['peer_workers']}` (one worker per core), default access log on.",
        f"- **Node.js peer** (`bench/peers/node/`): the same contract on Fastify 5 + better-sqlite3 12, written as a "
        f"Node team ships it: JSON schemas for bodies and responses (ajv, fast-json-stringify), pino's request log "
        f"on, prepared statements, WAL with `synchronous=FULL`. better-sqlite3 is synchronous (a commit's fsync holds "
        f"the event loop), so it runs as Node teams run it on a small box: the cluster module with "
        f"{s['peer_workers']} workers (one per core) sharing the port, `NODE_ENV=production`. Installed by `npm ci` "
        f"from its lock file; when Node.js is absent it is not run and every table says so."
        + (f" **Not run in this run: {res['peers_not_run']['fastify']}.**" if "fastify" in res.get("peers_not_run", {})
           else ""),
        "- On PostgreSQL the Node.js peer uses node-postgres (`pg`) with named prepared statements and its default "
        "pool of 10 connections per worker (so workers × 10 in all, stated in its rows); the FastAPI peers have no "
        "PostgreSQL store, and their rows there say so. The service's pool is its default "
        "(`DATABASE_MAX_CONNECTIONS=10`, set explicitly), stated in each PostgreSQL row.",
        "- **pgbench** runs the service's single-row `INSERT … RETURNING id, created_at` on the same table and unique "
        f"index (created by `users-api migrate` in its own fresh schema), `-M prepared -c {s['connections']} "
        f"-j {s['threads']}`, a unique email per transaction (`:client_id` and a 63-bit random). Schemas are "
        "dropped after the run.",
        "- Every POST carries a new email (wrk Lua: run prefix, thread id, counter), so every answer must be 201; "
        "row counts after each run are in `results.json`.",
        "- Load generator and servers share the machine's cores, as the issue prescribes: absolute figures depend on "
        "the machine and on what else runs on it; the ratios are the result.",
        "- Each server runs in a session of its own, as a service runs in a container of its own. With the kernel's "
        "autogroup on (see Machine and run), the scheduler shares the cores between wrk's session and the "
        "server's rather than between their threads. That costs POST on SQLite about a tenth: with autogroup off, "
        "or with the service started in wrk's session, it served 6–11 % more (`bench/analysis.md`, round 17).",
        "",
        "## Machine and run",
        "",
        f"- Command: `{res['command']}`",
        f"- Service source: commit {m.get('source', '?')}",
        f"- Date: {res['started']} → {res.get('finished', '?')} (UTC)",
        f"- CPU: {m['cpu']}, nproc {m['nproc']}, memory {m['memory']}; {m['os']}, kernel {m['kernel']}, "
        f"autogroup {m.get('autogroup', 'not recorded')}",
        f"- Load average (1, 5, 15 min) before: {res['load_before']}; after: {res.get('load_after', '?')}"
        + (" — other work was running on the machine during this run" if busy(res) else ""),
        (f"- Disk: 4 KiB write + fsync median {res['fsync']['median_ms']:.2f} ms, p99 {res['fsync']['p99_ms']:.2f} ms "
         f"({res['fsync']['samples']} samples)" if res.get("fsync") else "- Disk: not probed"),
        f"- Tools: {m['rustc']}; {m['wrk']}; {m['pgbench']}; {m['python']}; Node.js {m.get('node', '?')}"
        + (f"; PostgreSQL server {g(res['scenarios'], 'post_pg', 'server_version')}"
           if g(res["scenarios"], "post_pg", "server_version") else ""),
        "- Time per scenario: " + (", ".join(f"{k} {v:.0f} s" for k, v in res.get("scenario_seconds", {}).items())
                                   or "not recorded") + f"; {res['elapsed_s']:.0f} s in all (setup and build not counted)",
        f"- Settings: {s['duration']} s per load run, {s['repeats']} run(s) per server, {s['full_runs']} full "
        f"download(s), {s['cold_runs']} cold starts per server (`BENCH_DURATION`, `BENCH_REPEATS`, `BENCH_FULL_ROWS`, "
        "… in `bench/run --help`)",
    ]
    if res.get("errors"):
        parts += ["", "## Scenarios that failed", ""]
        parts += [f"- `{k}`: {v}" for k, v in res["errors"].items()]
    return "\n".join(parts).rstrip() + "\n"


def busy(res: dict[str, Any]) -> bool:
    try:
        nproc = int(res["machine"]["nproc"])
        before = float(res["load_before"].split()[0])
        return before > 0.5 * nproc
    except (KeyError, ValueError):
        return False


def summary(res: dict[str, Any]) -> str:
    lines = ["", "target summary:"]
    for x in targets(res):
        status = {True: "met   ", False: "MISSED", None: "n/a   "}[x.met]
        measured = "—" if x.met is None else x.measured_text
        lines.append(f"  {status} {x.label}: {measured} (required {x.requirement}; {x.margin})")
    lines.append("lead over the peers:")
    for x in leads(res):
        status = {True: "pass  ", False: "FAIL  ", None: "n/a   "}[x.leads]
        detail = x.why_absent if x.leads is None else f"{x.factor:.2f}x"
        lines.append(f"  {status} {x.scenario} vs {x.peer}: {detail}")
    for k, v in res.get("errors", {}).items():
        lines.append(f"  FAILED scenario {k}: {v}")
    return "\n".join(lines)


if __name__ == "__main__":
    # Re-renders a run's report, e.g. after editing bench/analysis.md:
    #   python3 bench/lib/report.py bench/results/<run>/results.json [bench/BENCHMARKS.md]
    import json
    import sys

    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__ or "usage: report.py RESULTS_JSON [OUT]")
    results = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else Path(sys.argv[1]).with_name("BENCHMARKS.md")
    out.write_text(render(results, analysis=Path(__file__).resolve().parent.parent / "analysis.md"))
    print(f"wrote {out}")
