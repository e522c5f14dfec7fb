"""The peer: the same users contract (DESIGN.md section 1) on FastAPI + uvicorn + SQLite.

Written from the contract as a Python team would write it for production, so the benchmark
compares the Rust service with what users would otherwise pick, not with a straw man:
Pydantic for the body shape, the standard library's sqlite3 in WAL mode with durable commits
(synchronous=FULL, like the service), a unique index for case-insensitive email uniqueness,
keyset paging and a streamed full list.

Run (one worker per core; this machine has 2):
    DATABASE_PATH=users.db uvicorn app:app --host 127.0.0.1 --port 8100 --workers 2
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import threading
import unicodedata
from contextlib import asynccontextmanager
from typing import Any, Iterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

DB_PATH = os.environ.get("DATABASE_PATH", "users.db")
MAX_BODY_BYTES = 64 * 1024
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
STREAM_CHUNK_ROWS = 1000
PROBLEM_JSON = "application/problem+json"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    email      TEXT    NOT NULL,
    email_key  TEXT    NOT NULL,
    created_at TEXT    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (email_key);
"""
SELECT_USER = "SELECT id, name, email, created_at FROM users"


# --- storage -------------------------------------------------------------------------------

_local = threading.local()


def _connect() -> sqlite3.Connection:
    conn = sqlite3.connect(DB_PATH, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")  # an acknowledged 201 survives a crash
    return conn


def db() -> sqlite3.Connection:
    """One connection per thread of the worker's thread pool."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = _connect()
    return conn


class EmailTaken(Exception):
    pass


def _user(row: tuple) -> dict[str, Any]:
    return {"id": row[0], "name": row[1], "email": row[2], "created_at": row[3]}


def insert_user(name: str, email: str) -> dict[str, Any]:
    created_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        cur = db().execute(
            "INSERT INTO users (name, email, email_key, created_at) VALUES (?, ?, ?, ?)",
            (name, email, email.lower(), created_at),
        )
    except sqlite3.IntegrityError as e:
        if "users.email_key" in str(e):
            raise EmailTaken from e
        raise
    return {"id": cur.lastrowid, "name": name, "email": email, "created_at": created_at}


def get_user_row(user_id: int) -> dict[str, Any] | None:
    row = db().execute(f"{SELECT_USER} WHERE id = ?", (user_id,)).fetchone()
    return _user(row) if row else None


def page_rows(after: int, limit: int) -> list[dict[str, Any]]:
    rows = db().execute(f"{SELECT_USER} WHERE id > ? ORDER BY id LIMIT ?", (after, limit)).fetchall()
    return [_user(r) for r in rows]


def stream_rows() -> Iterator[bytes]:
    """The whole table as one JSON array, read from a cursor in chunks."""
    conn = _connect()
    try:
        cur = conn.execute(f"{SELECT_USER} ORDER BY id")
        yield b"["
        first = True
        while rows := cur.fetchmany(STREAM_CHUNK_ROWS):
            body = ",".join(json.dumps(_user(r), ensure_ascii=False) for r in rows)
            yield (body if first else "," + body).encode()
            first = False
        yield b"]"
    finally:
        conn.close()


# --- domain rules ----------------------------------------------------------------------------

ATEXT = set("!#$%&'*+/=?^_`{|}~-")


def parse_name(raw: str) -> str:
    name = " ".join(part for part in unicodedata.normalize("NFC", raw).strip().split(" ") if part)
    if not 3 <= len(name) <= 50:
        raise ValueError("must be 3 to 50 characters")
    for ch in name:
        if ch != " " and unicodedata.category(ch)[0] not in "LM":
            raise ValueError("may contain only letters and spaces")
    return name


def _is_atext(ch: str) -> bool:
    return (ch.isascii() and ch.isalnum()) or ch in ATEXT or (not ch.isascii() and ch.isalnum())


def parse_email(raw: str) -> str:
    email = unicodedata.normalize("NFC", raw.strip())
    if not email:
        raise ValueError("must not be empty")
    if len(email) > 254:
        raise ValueError("must be at most 254 characters")
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain:
        raise ValueError("must contain exactly one '@' between a local part and a domain")
    if len(local) > 64:
        raise ValueError("local part must be at most 64 characters")
    if any(not atom or not all(_is_atext(c) for c in atom) for atom in local.split(".")):
        raise ValueError("local part is not valid")
    domain = domain.lower()
    labels = domain.split(".")
    if len(labels) < 2:
        raise ValueError("domain must have at least two labels separated by dots")
    for label in labels:
        if (
            not label
            or len(label) > 63
            or label.startswith("-")
            or label.endswith("-")
            or not all(c.isalnum() or c == "-" for c in label)
        ):
            raise ValueError(f"domain label {label!r} is not valid")
    if labels[-1].isdigit():
        raise ValueError("top-level domain must not be all digits")
    return f"{local}@{domain}"


class NewUser(BaseModel):
    """The body's shape; unknown fields are ignored (Pydantic's default)."""

    name: str
    email: str


# --- HTTP ------------------------------------------------------------------------------------


def problem(status: int, code: str, title: str, detail: str, errors=None, headers=None) -> Response:
    body: dict[str, Any] = {
        "type": f"/problems/{code.replace('_', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if errors is not None:
        body["errors"] = errors
    return Response(json.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def invalid(errors: list[dict[str, str]]) -> Response:
    return problem(400, "invalid_field", "Invalid request body", "one or more fields are invalid", errors)


def unavailable() -> Response:
    return problem(
        503,
        "service_unavailable",
        "Service unavailable",
        "the service is temporarily unavailable; retry shortly",
        headers={"Retry-After": "1"},
    )


def json_response(value: Any, status: int = 200, headers=None) -> Response:
    return Response(json.dumps(value, ensure_ascii=False), status_code=status, media_type="application/json", headers=headers)


@asynccontextmanager
async def lifespan(_app: FastAPI):
    conn = _connect()
    conn.executescript(SCHEMA)
    conn.close()
    yield


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@app.exception_handler(StarletteHTTPException)
async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 405:
        return problem(405, "method_not_allowed", "Method not allowed", "this method is not allowed on this resource", headers=exc.headers)
    if exc.status_code == 404:
        return problem(404, "not_found", "Not found", "no resource at this path")
    return problem(exc.status_code, "error", "Error", str(exc.detail))


@app.exception_handler(RequestValidationError)
async def validation_error(_request: Request, exc: RequestValidationError) -> Response:
    errors = [{"field": ".".join(str(p) for p in e["loc"][1:]) or "query", "message": e["msg"]} for e in exc.errors()]
    return problem(400, "invalid_query", "Invalid query parameter", "invalid query parameter", errors)


@app.exception_handler(sqlite3.OperationalError)
async def db_unavailable(_request: Request, _exc: sqlite3.OperationalError) -> Response:
    return unavailable()


@app.exception_handler(Exception)
async def internal_error(_request: Request, exc: Exception) -> Response:
    import logging

    logging.getLogger("peer").exception("internal error", exc_info=exc)
    return problem(500, "internal_error", "Internal server error", "an unexpected error occurred")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/ready")
def ready() -> Response:
    try:
        db().execute("SELECT 1").fetchone()
    except sqlite3.Error:
        return unavailable()
    return json_response({"status": "ok"})


@app.get("/users")
def list_users(limit: str | None = None, after: str | None = None) -> Response:
    if limit is None and after is None:
        return StreamingResponse(stream_rows(), media_type="application/json")
    n = DEFAULT_PAGE_SIZE
    if limit is not None:
        if not (limit.isascii() and limit.isdigit() and 1 <= int(limit) <= MAX_PAGE_SIZE):
            return problem(400, "invalid_query", "Invalid query parameter", "invalid query parameter",
                           [{"field": "limit", "message": f"must be an integer from 1 to {MAX_PAGE_SIZE}"}])
        n = int(limit)
    start = 0
    if after is not None:
        if not (after.isascii() and after.isdigit()):
            return problem(400, "invalid_query", "Invalid query parameter", "invalid query parameter",
                           [{"field": "after", "message": "must be a non-negative integer (a user id)"}])
        start = int(after)
    users = page_rows(start, n + 1)
    headers = None
    if len(users) > n:
        users = users[:n]
        headers = {"Link": f'</users?limit={n}&after={users[-1]["id"]}>; rel="next"'}
    return json_response(users, headers=headers)


@app.get("/users/{user_id}")
def get_user(user_id: str) -> Response:
    user = get_user_row(int(user_id)) if user_id.isascii() and user_id.isdigit() and int(user_id) > 0 else None
    if user is None:
        return problem(404, "not_found", "Not found", "no user with this id")
    return json_response(user)


@app.post("/user")
@app.post("/users")
async def create_user(request: Request) -> Response:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        return problem(413, "payload_too_large", "Payload too large", f"the request body exceeds {MAX_BODY_BYTES} bytes")
    essence = request.headers.get("content-type", "").split(";")[0].strip().lower()
    kind, _, subtype = essence.partition("/")
    if kind != "application" or not (subtype == "json" or subtype.endswith("+json")):
        return problem(415, "unsupported_media_type", "Unsupported media type", "the request body must be sent as application/json")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return problem(413, "payload_too_large", "Payload too large", f"the request body exceeds {MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(body)
    except ValueError as e:
        return problem(400, "malformed_json", "Malformed JSON", f"the request body is not valid JSON: {e}")
    if not isinstance(value, dict):
        return invalid([{"field": "body", "message": "must be a JSON object"}])
    try:
        shape = NewUser.model_validate(value, strict=True)
    except ValidationError as e:
        return invalid([{"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]} for err in e.errors()])
    errors = []
    name = email = ""
    try:
        name = parse_name(shape.name)
    except ValueError as e:
        errors.append({"field": "name", "message": str(e)})
    try:
        email = parse_email(shape.email)
    except ValueError as e:
        errors.append({"field": "email", "message": str(e)})
    if errors:
        return invalid(errors)
    try:
        user = await run_in_threadpool(insert_user, name, email)
    except EmailTaken:
        return problem(400, "email_taken", "Email already registered", "a user with this email already exists")
    return json_response(user, status=201, headers={"Location": f"/users/{user['id']}"})
