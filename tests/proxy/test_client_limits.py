"""Per-client limits in nginx beside the write rate: a read rate, requests in
flight, open full-list downloads; and room enough that a flood of unfinished
request heads from one address does not shut other clients out."""

from __future__ import annotations

import resource
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import CannedUpstream, assert_problem, new_user, request, start_nginx

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]"


@pytest.fixture
def slow_api(workdir):
    """nginx with small limits in front of a stand-in API that answers each request 5 s after it arrives."""
    upstream = CannedUpstream(reply=OK, delay=5.0)
    ngx = start_nginx(workdir, f"127.0.0.1:{upstream.port}", name=f"nginx-limits-{uuid.uuid4().hex[:8]}",
                      CONN_LIMIT="4", LIST_CONN_LIMIT="2")
    yield ngx, upstream
    ngx.stop()
    upstream.close()


def arrived(upstream, count: int, timeout: float = 10.0) -> None:
    """Waits until the stand-in API holds `count` requests (so they are in flight in nginx)."""
    deadline = time.monotonic() + timeout
    while len(upstream.requests) < count:
        assert time.monotonic() < deadline, f"only {len(upstream.requests)} of {count} requests reached the API"
        time.sleep(0.02)


def test_reads_have_their_own_per_client_rate(workdir, api):
    ngx = start_nginx(workdir, f"127.0.0.1:{api.port}", name="nginx-read-rate", READ_RATE="2r/s", READ_BURST="5")
    try:
        t0 = time.monotonic()
        statuses, limited = [], None
        for _ in range(30):
            r = request(ngx.port, "GET", "/users?limit=1", source="127.0.0.80")
            statuses.append(r.status)
            if r.status == 429:
                limited = r
        elapsed = time.monotonic() - t0
        assert set(statuses) == {200, 429}, statuses
        # the burst, plus what the rate refilled meanwhile (one token of slack)
        assert statuses.count(200) <= 5 + 1 + 2 * elapsed + 1, (statuses, elapsed)
        doc = assert_problem(limited, 429)
        assert doc["code"] == "rate_limited" and limited.header("Retry-After") == "1"

        # the same client's writes, its health checks, and other clients' reads are not held back
        assert request(ngx.port, "POST", "/user", body=new_user("rr"), source="127.0.0.80").status == 201
        assert request(ngx.port, "GET", "/health", source="127.0.0.80").status == 200
        assert request(ngx.port, "GET", "/users?limit=1", source="127.0.0.81").status == 200
    finally:
        ngx.stop()


def test_requests_in_flight_are_capped_per_client(slow_api):
    ngx, upstream = slow_api
    with ThreadPoolExecutor(6) as pool:
        held = [pool.submit(request, ngx.port, "GET", "/users?limit=1", source="127.0.0.82") for _ in range(4)]
        arrived(upstream, 4)
        refused = request(ngx.port, "GET", "/users?limit=1", source="127.0.0.82")
        other = pool.submit(request, ngx.port, "GET", "/users?limit=1", source="127.0.0.83")
        assert [f.result().status for f in held] == [200] * 4
        assert other.result().status == 200, "another client is not held back"
    doc = assert_problem(refused, 429)
    assert doc["code"] == "concurrency_limited" and refused.header("Retry-After") == "1"
    assert refused.elapsed < 1.5, "refused at once, not queued"
    # once they finished, the client gets in again
    assert request(ngx.port, "GET", "/users?limit=1", source="127.0.0.82").status == 200


def test_full_list_downloads_are_capped_per_client_apart_from_pages(slow_api):
    ngx, upstream = slow_api
    with ThreadPoolExecutor(4) as pool:
        lists = [pool.submit(request, ngx.port, "GET", "/users", source="127.0.0.84") for _ in range(2)]
        arrived(upstream, 2)
        third = request(ngx.port, "GET", "/users", source="127.0.0.84")
        pages = [pool.submit(request, ngx.port, "GET", path, source="127.0.0.84")
                 for path in ("/users?limit=5", "/users?after=3")]
        assert [f.result().status for f in lists] == [200, 200]
        assert [f.result().status for f in pages] == [200, 200], "paged reads are not full lists"
    assert assert_problem(third, 429)["code"] == "concurrency_limited"


def established_from(source: str, port: int) -> int:
    """Established TCP connections from source to 127.0.0.1:port."""
    want_local = f"{socket.htonl(int.from_bytes(socket.inet_aton(source), 'big')):08X}"
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if local.startswith(want_local) and int(remote.split(":")[1], 16) == port and state == "01":
                count += 1
    return count


# The client served meanwhile comes from another address, and from the flood's
# own: unfinished heads are not counted against its per-client limits.
@pytest.mark.parametrize("victim", ["127.0.0.91", "127.0.0.90"])
def test_thousands_of_unfinished_heads_from_one_address_do_not_shut_others_out(proxy, victim):
    flood = 3000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= flood + 200, f"this test needs {flood + 200} descriptors; the hard limit is {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, flood + 200), hard))
    socks = []
    try:
        for _ in range(flood):
            s = socket.socket()
            s.bind(("127.0.0.90", 0))
            s.connect(("127.0.0.1", proxy.port))
            s.sendall(b"GET /users HTTP/1.1\r\nHost: t\r\n")  # and never the end of the head
            socks.append(s)
        held_before = established_from("127.0.0.90", proxy.port)

        served = [request(proxy.port, "GET", "/users?limit=1", source=victim, timeout=5),
                  request(proxy.port, "POST", "/user", body=new_user("flood"), source=victim, timeout=5),
                  request(proxy.port, "GET", "/health", source=victim, timeout=5)]
        held_after = established_from("127.0.0.90", proxy.port)
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    assert held_before >= flood * 0.95 and held_after >= flood * 0.9, (held_before, held_after)
    assert [r.status for r in served] == [200, 201, 200], [(r.status, r.body[:200]) for r in served]
    assert all(r.elapsed < 3 for r in served), [r.elapsed for r in served]
    assert "worker_connections are not enough" not in proxy.error_log_path.read_text()
    print(f"RELIABILITY unfinished-head flood: {held_before} held ({held_after} after), {victim} served in "
          + ", ".join(f"{r.elapsed * 1000:.0f} ms" for r in served))
