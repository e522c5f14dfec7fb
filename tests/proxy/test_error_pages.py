"""nginx's own refusals are application/problem+json (RFC 9457) in the API's
shape, with the request id that the response header and the access log
carry: every status nginx can produce goes through error_page."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import PROBLEM, CannedUpstream, assert_problem, new_user, request, start_nginx

# Every status nginx itself can answer with (494: its "header too large").
NGINX_OWN_STATUSES = [400, 405, 408, 413, 414, 429, 431, 494, 500, 501, 502, 503, 504, 505]


def error_pages(conf: str) -> dict[int, tuple[int, str]]:
    """status -> (status sent, internal URI) from the error_page directives."""
    pages = {}
    for line in re.findall(r"^\s*error_page\s+([^;]+);", conf, re.M):
        words = line.split()
        uri = words[-1]
        if uri.startswith("@"):
            continue  # a hand-over to a named location (418 -> @keyed_write), not an error page
        sent = int(words[-2][1:]) if words[-2].startswith("=") else None
        for code in words[:-2] if sent else words[:-1]:
            pages[int(code)] = (sent or int(code), uri)
    return pages


def problem_bodies(conf: str, uri: str) -> tuple[int, list[str]]:
    """The status and the possible bodies (a map's values when the body is a variable) of an internal location."""
    block = re.search(rf"location = {re.escape(uri)} \{{(.*?)\n        \}}", conf, re.S)
    assert block, f"no location for {uri}"
    assert "internal;" in block.group(1), f"{uri} must be internal"
    ret = re.search(r"return (\d+) '(.*)';", block.group(1))
    assert ret, f"{uri} returns no body"
    status, body = int(ret.group(1)), ret.group(2)
    var = re.fullmatch(r"\$(\w+)\\n", body)
    if not var:
        return status, [body]
    mapping = re.search(rf"map \S+ \${var.group(1)} \{{(.*?)\n    \}}", conf, re.S)
    assert mapping, f"no map defines ${var.group(1)}"
    return status, re.findall(r"'(\{.*\})'", mapping.group(1))


def test_every_status_nginx_produces_has_a_problem_page(proxy):
    pages = error_pages(proxy.rendered)
    missing = [code for code in NGINX_OWN_STATUSES if code not in pages]
    assert not missing, f"no error_page for {missing}"
    for code in NGINX_OWN_STATUSES:
        sent, uri = pages[code]
        assert sent == (431 if code == 494 else code), (code, sent)
        status, bodies = problem_bodies(proxy.rendered, uri)
        assert status == sent
        for body in bodies:
            doc = json.loads(body.replace("$req_id", "rid-1").replace("\\n", "\n"))
            assert doc["status"] == sent and doc["request_id"] == "rid-1", body
            assert doc["type"] == "/problems/" + doc["code"].replace("_", "-"), body
            assert doc["title"] and doc["detail"], body
    assert re.search(r"location = /__problem/\d+ \{\s*internal;", proxy.rendered)


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends raw bytes, reads until nginx closes or the body is complete; returns (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
            head, sep, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if sep and length and len(body) >= int(length.group(1)):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


# A request line nginx refuses is answered before the headers are read: the
# client's X-Request-Id is unknown then, and nginx makes one.
@pytest.mark.parametrize("status,raw,client_id_read", [
    (405, b"TRACE /users HTTP/1.1\r\nHost: t\r\nX-Request-Id: {rid}\r\n\r\n", True),
    (501, b"POST /user HTTP/1.1\r\nHost: t\r\nX-Request-Id: {rid}\r\nTransfer-Encoding: gzip\r\n\r\n", True),
    (400, b"GET /users HTTP/1.1\r\nX-Request-Id: {rid}\r\nHost: t\r\nHost: u\r\n\r\n", True),
    (505, b"GET /users HTTP/2.0\r\nHost: t\r\nX-Request-Id: {rid}\r\n\r\n", False),
    (400, b"GET /us ers HTTP/1.1\r\nHost: t\r\nX-Request-Id: {rid}\r\n\r\n", False),
    # raw bytes above 0x7F in the target: nginx takes them, the API's parser would not
    (400, b"GET /us\xc3\xa9rs?x=\xf0 HTTP/1.1\r\nHost: t\r\nX-Request-Id: {rid}\r\n\r\n", True),
])
def test_nginx_refusals_are_problem_json_with_the_logged_request_id(proxy, status, raw, client_id_read):
    sent_id = f"refusal-{status}-" + uuid.uuid4().hex
    got, headers, body = exchange(proxy.port, raw.replace(b"{rid}", sent_id.encode()))
    assert got == status, (got, body[:200])
    assert headers["content-type"] == PROBLEM, headers
    doc = json.loads(body)
    assert doc["status"] == status and doc["code"] and doc["title"] and doc["detail"]
    rid = doc["request_id"]
    assert rid == headers["x-request-id"]
    assert rid == sent_id if client_id_read else re.fullmatch(r"[0-9a-f]{32}", rid)
    assert headers["x-content-type-options"] == "nosniff"
    entry = proxy.log_entry(rid)
    assert entry["status"] == status and entry["upstream_addr"] == "", "refused by nginx, never forwarded"


def test_a_request_id_is_made_for_refusals_that_carry_none(proxy):
    got, headers, body = exchange(proxy.port, b"TRACE / HTTP/1.1\r\nHost: t\r\n\r\n")
    assert got == 405
    rid = json.loads(body)["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid) and headers["x-request-id"] == rid
    assert proxy.log_entry(rid)["status"] == 405


def test_a_write_cut_off_after_reaching_the_api_is_not_called_retryable(workdir):
    # The stand-in API reads each request and closes the connection unanswered.
    hangup = CannedUpstream(reply=b"")
    ngx = start_nginx(workdir, f"127.0.0.1:{hangup.port}", name="nginx-hangup")
    try:
        write = request(ngx.port, "POST", "/user", body=new_user())
        doc = assert_problem(write, 502)
        assert doc["code"] == "outcome_unknown" and doc["type"] == "/problems/outcome-unknown"
        assert write.header("Retry-After") is None
        assert "may or may not" in doc["detail"]

        read = request(ngx.port, "GET", "/users")
        assert assert_problem(read, 502)["code"] == "upstream_unavailable"
        assert read.header("Retry-After") == "5"
        assert len(hangup.requests) >= 2, "both requests reached the stand-in API"
    finally:
        ngx.stop()
        hangup.close()


def mutated_requests(seed: int, n: int) -> list[bytes]:
    """Valid requests with bytes flipped, inserted, dropped or cut, plus header lines of random bytes."""
    rng = random.Random(seed)
    valid = [b"GET /users?limit=2 HTTP/1.1\r\nHost: t\r\n\r\n",
             b"GET /users/1 HTTP/1.1\r\nHost: t\r\nAccept: application/json\r\n\r\n",
             b'POST /user HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 44\r\n\r\n'
             b'{"name":"Ada Lovelace","email":"a@ex.co.uk"}']
    out = []
    for _ in range(n):
        raw = bytearray(rng.choice(valid))
        kind = rng.randrange(4)
        if kind == 0:
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        elif kind == 1:
            at = rng.randrange(len(raw))
            raw[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 2:
            del raw[rng.randrange(len(raw))]
        else:
            line = bytes(rng.randrange(32, 256) for _ in range(rng.randint(1, 40)))
            at = raw.index(b"\r\n") + 2
            raw[at:at] = line + b"\r\n"
        out.append(bytes(raw))
    return out


def answer_to(port: int, raw: bytes, source: str) -> bytes:
    """What nginx sends back within 1 s (a request it still waits on gets no answer: b"")."""
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(1.0)
        s.connect(("127.0.0.1", port))
        s.sendall(raw)
        data = b""
        try:
            while part := s.recv(65536):
                data += part
                head, sep, body = data.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break
        except (socket.timeout, ConnectionResetError):
            pass
    return data


def test_malformed_requests_through_nginx_never_get_html_or_a_5xx(proxy):
    # PROXY_FUZZ_SEED / PROXY_FUZZ_CASES vary the run
    inputs = mutated_requests(seed=int(os.environ.get("PROXY_FUZZ_SEED", 11)),
                              n=int(os.environ.get("PROXY_FUZZ_CASES", 400)))
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: answer_to(proxy.port, inputs[i], f"127.0.4.{i % 200 + 1}"),
                                range(len(inputs))))
    statuses = Counter()
    for raw, data in zip(inputs, answers):
        if not data:
            statuses["none"] += 1
            continue
        if not data.startswith(b"HTTP/1."):
            # nginx read a request line without a version as HTTP/0.9: the answer is a bare body
            assert b"<html" not in data.lower(), (raw, data[:200])
            statuses["0.9"] += 1
            continue
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b"\r\n", 1)[0].split()[1])
        statuses[status] += 1
        assert status < 500 or status == 505, (raw, data[:300])  # 505: a version nginx does not speak
        if status >= 400:
            assert re.search(rb"(?im)^content-type: application/problem\+json", head), (raw, data[:300])
            length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
            doc = json.loads(body[:length])  # a mutated body may have made a second request
            assert doc["status"] == status and doc["code"], (raw, body[:200])
    assert statuses[400] > 50, statuses  # the mutations did reach nginx's parser
    print("RELIABILITY malformed requests through nginx:", dict(sorted(statuses.items(), key=str)))
