"""A slow reader of the full list costs nginx bounded memory and no temporary
file: nginx reads ahead into its in-memory buffers only, and the rest of the
list waits for the client (the decision measured in bench/proxy-buffering.md)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import start_api, start_nginx

USERS = 100_000  # about 10 MiB of JSON: far more than the socket buffers hold

SEED_SQL = """
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
INSERT INTO users (id, name, email, email_key, created_at)
SELECT i, 'Listed User', 'user' || i || '@example.com', 'user' || i || '@example.com',
       '2026-01-01T00:00:00.' || printf('%06d', i % 1000000) || 'Z'
FROM n
"""


@pytest.fixture(scope="module")
def big_list(workdir):
    """nginx in front of an API whose table holds USERS users (written straight into its SQLite file)."""
    api = start_api(workdir, name="big-list")  # creates and migrates the file
    api.stop()
    conn = sqlite3.connect(workdir / "big-list.db")
    with conn:
        conn.execute(SEED_SQL, (USERS,))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    api = start_api(workdir, name="big-list", port=api.port)
    ngx = start_nginx(workdir, f"127.0.0.1:{api.port}", name="nginx-big-list")
    yield ngx
    ngx.stop()
    api.stop()


def open_temp_file_bytes(ngx) -> int:
    """Bytes in the files nginx's processes hold open under its proxy temp path (unlinked at once: du misses them)."""
    temp_dir = str(ngx.prefix / "tmp")
    pids = [ngx.proc.pid, *map(int, Path(f"/proc/{ngx.proc.pid}/task/{ngx.proc.pid}/children").read_text().split())]
    total = 0
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd).startswith(temp_dir):
                    total += os.stat(fd).st_size
            except OSError:
                pass
    return total


def test_a_stalled_reader_of_the_full_list_makes_nginx_write_no_temporary_file(big_list):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.bind(("127.0.0.100", 0))
    s.connect(("127.0.0.1", big_list.port))
    s.settimeout(30)
    s.sendall(b"GET /users HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    data = b""
    while len(data) < 64 * 1024:
        data += s.recv(4096)

    # stalled for 5 s, within send_timeout: with disk buffering nginx would now
    # be writing the API's whole response to a temporary file
    deadline = time.monotonic() + 5
    peak = 0
    while time.monotonic() < deadline:
        peak = max(peak, open_temp_file_bytes(big_list))
        time.sleep(0.2)

    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # and now the rest, quickly
    while part := s.recv(1 << 20):
        data += part
    s.close()

    assert peak == 0, f"nginx spilled {peak} bytes of the response to a temporary file"
    assert "buffered to a temporary file" not in big_list.error_log_path.read_text()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert b"chunked" in head.lower()
    chunks, raw = [], body
    while True:  # undo the chunked coding
        size_line, _, raw = raw.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        chunks.append(raw[:size])
        raw = raw[size + 2:]
    users = json.loads(b"".join(chunks))
    assert len(users) == USERS and [u["id"] for u in users[:3]] == [1, 2, 3] and users[-1]["id"] == USERS
