"""A real HTTP endpoint on loopback for tests of push and SMS gateways: records every
request and answers with a chosen status and JSON body."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Request:
    """One request the endpoint received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpEndpoint:
    """A loopback HTTP server that records requests and answers ``status``/``reply``."""

    port: int
    status: int = 200
    reply: dict[str, Any] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    # While set, each request is recorded and then held until `release` is set (10 s at most).
    hold: bool = False
    release: threading.Event = field(default_factory=threading.Event)


@contextlib.contextmanager
def running_endpoint() -> Iterator[HttpEndpoint]:
    """An `HttpEndpoint` serving on an ephemeral port of 127.0.0.1 until the block ends."""
    state = HttpEndpoint(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            state.requests.append(
                Request("POST", self.path, dict(self.headers.items()), self.rfile.read(length))
            )
            if state.hold:
                state.release.wait(timeout=10)
            payload = json.dumps(state.reply).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
