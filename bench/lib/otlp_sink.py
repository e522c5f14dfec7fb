"""A stand-in OTLP/HTTP collector for the tracing-cost scenarios: accepts every
export (reads the body, answers 200) and counts what it was sent. GET answers
200 too, as the readiness probe of the bench's Server."""

from __future__ import annotations

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink(BaseHTTPRequestHandler):
    exports = 0
    bytes_received = 0

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Sink.exports += 1
        Sink.bytes_received += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        text = f"exports {Sink.exports} bytes {Sink.bytes_received}\n".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    port = int(os.environ.get("PORT", sys.argv[1] if len(sys.argv) > 1 else "4318"))
    ThreadingHTTPServer(("127.0.0.1", port), Sink).serve_forever()
