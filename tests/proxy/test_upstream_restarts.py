"""Restarting API instances behind the project's nginx costs no request:
a refused connect goes to the next instance, a reused keep-alive connection
found closed is retried on a fresh one, and a POST is never sent twice unless
it carries an Idempotency-Key (then the API answers a repeat from its store)."""

from __future__ import annotations

import threading
import time

import uuid

from conftest import CannedUpstream, assert_problem, new_user, request, start_api, start_nginx


def restart_in_place(workdir, api, name: str):
    api.stop()  # SIGTERM, then wait for the exit
    return start_api(workdir, name=name, port=api.port)


def went_to_a_second_instance(ngx) -> list[dict]:
    return [e for e in ngx.access_log() if "," in e["upstream_addr"]]


def restart_once_met(workdir, api, name: str, ngx, within: float = 5.0):
    """Restart in place, keeping the instance down until a request has met it and gone on to
    the next one: a debug build restarts in tens of milliseconds, a gap the load may miss."""
    met_before = len(went_to_a_second_instance(ngx))
    api.stop()
    deadline = time.monotonic() + within
    while len(went_to_a_second_instance(ngx)) == met_before:
        assert time.monotonic() < deadline, f"no request met the stopped {name} within {within} s"
        time.sleep(0.02)
    return start_api(workdir, name=name, port=api.port)


class Load:
    """Clients from their own addresses mixing GET pages and POSTs through nginx until stopped."""

    def __init__(self, port: int, clients: int = 4):
        self.port = port
        self.results: list[tuple[str, int, bytes]] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        for t in self.threads:
            t.start()

    def _run(self, i: int):
        source = f"127.0.2.{i + 1}"
        n = 0
        while not self.stopping.is_set():
            method, path, body = ("POST", "/user", new_user("roll")) if n % 3 == 0 else ("GET", "/users?limit=2", None)
            try:
                r = request(self.port, method, path, body=body, source=source, timeout=10)
                self.results.append((method, r.status, r.body[:200]))
            except OSError as e:
                self.results.append((method, 0, repr(e).encode()))
            n += 1
            time.sleep(0.12)  # under the per-client write rate (10 r/s)

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(15)


def test_rolling_restarts_of_two_instances_under_load_cost_no_request(workdir):
    a = start_api(workdir, name="roll-a")
    b = start_api(workdir, name="roll-b")
    ngx = start_nginx(workdir, f"127.0.0.1:{a.port} 127.0.0.1:{b.port}", name="nginx-roll")
    load = Load(ngx.port)
    try:
        time.sleep(1.5)
        for _round in range(2):
            b = restart_once_met(workdir, b, "roll-b", ngx)
            time.sleep(1.0)
            a = restart_once_met(workdir, a, "roll-a", ngx)
            time.sleep(1.0)
    finally:
        load.stop()
        ngx.stop()
        a.stop()
        b.stop()

    failed = [r for r in load.results if not 200 <= r[1] < 300]
    posts = sum(1 for r in load.results if r[0] == "POST")
    assert posts >= 20 and len(load.results) >= 60, f"too little load to show anything: {len(load.results)}"
    assert not failed, f"{len(failed)} of {len(load.results)} failed: {failed[:5]}"
    retried = went_to_a_second_instance(ngx)
    assert len(retried) >= 4, f"each of the 4 restarts was met by a request: {retried}"
    assert all(e["method"] != "POST" or e["upstream_status"].startswith("502, ") for e in retried), \
        "a POST is retried only after a connect that sent nothing"
    print(f"RELIABILITY rolling restarts behind nginx: {len(load.results)} requests ({posts} POSTs), "
          f"{len(failed)} failed, {len(retried)} went to a second instance")


def test_a_restarted_instance_behind_reused_connections_costs_no_request(workdir):
    api = start_api(workdir, name="restart-one")
    ngx = start_nginx(workdir, f"127.0.0.1:{api.port}", name="nginx-restart-one")
    try:
        for _ in range(20):  # fill nginx's pool of kept-alive connections to the API
            assert request(ngx.port, "GET", "/users?limit=1", source="127.0.2.20").status == 200
        api = restart_in_place(workdir, api, "restart-one")
        statuses = [request(ngx.port, "GET", "/users?limit=1", source="127.0.2.21").status for _ in range(10)]
        statuses += [request(ngx.port, "POST", "/user", body=new_user("after"), source="127.0.2.21").status
                     for _ in range(5)]
        assert statuses == [200] * 10 + [201] * 5, statuses
    finally:
        ngx.stop()
        api.stop()


def test_a_keyed_post_cut_off_by_one_instance_is_sent_to_the_next_and_an_unkeyed_one_is_not(workdir):
    # The stand-in reads each request and hangs up unanswered: a POST that reached an API and was lost.
    hangup = CannedUpstream(reply=b"")
    api = start_api(workdir, name="keyed-retry")
    ngx = start_nginx(workdir, f"127.0.0.1:{hangup.port} 127.0.0.1:{api.port}", name="nginx-keyed-retry")
    try:
        # Unkeyed first, then keyed, never mixed: each nginx worker keeps its own round robin,
        # and a keyed POST's retry moves it on, so alternating the two can send every unkeyed
        # one to the API. Alone, unkeyed POSTs alternate between the two on each worker, and a
        # keyed POST meets the stand-in at least once in two on a worker.
        unkeyed, keyed = [], []
        for n in range(40):
            unkeyed.append(request(ngx.port, "POST", "/user", body=new_user("unkeyed"), source=f"127.0.3.{n + 1}"))
            if unkeyed[-1].status != 201:
                break
        cut = [r for r in unkeyed if r.status != 201]
        assert cut, "an unkeyed POST met the stand-in"
        for r in cut:
            assert assert_problem(r, 502)["code"] == "outcome_unknown"  # never sent again
        seen_unkeyed = len(hangup.requests)
        for n in range(40):
            body = new_user("keyed")
            resp = request(ngx.port, "POST", "/user", body=body, source=f"127.0.4.{n + 1}",
                           headers={"Idempotency-Key": f'"{uuid.uuid4()}"'})
            keyed.append((body["email"], resp))
            if len(keyed) >= 4 and len(hangup.requests) > seen_unkeyed:
                break
        assert all(r.status == 201 for _, r in keyed), [(r.status, r.body[:200]) for _, r in keyed]
        keyed_requests = [raw for raw in hangup.requests if b"idempotency-key" in raw.lower()]
        assert keyed_requests, "a keyed POST was cut off by the stand-in"
        listed = {u["email"] for u in request(ngx.port, "GET", "/users", source="127.0.2.30").json()}
        assert {email for email, _ in keyed} <= listed, "every keyed POST created its user once"
        entries = ngx.access_log()
        retried = [e for e in entries if e["method"] == "POST" and "," in e["upstream_addr"]]
        assert retried and all(e["status"] == 201 for e in retried), retried
    finally:
        ngx.stop()
        api.stop()
        hangup.close()
