"""A real HTTP server on 127.0.0.1 that records ingest requests and can misbehave.

Used by the tests as a stand-in for OpenMeter's ingest endpoint where the test needs
control over the answers (faults, rejections, hangs).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    received: float = 0.0

    def events(self) -> list[dict[str, Any]]:
        parsed = json.loads(self.body)
        return parsed if isinstance(parsed, list) else [parsed]


def problem(status: int, title: str, detail: str) -> Answer:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": "/api/v1/events",
    }
    return status, {"Content-Type": "application/problem+json"}, json.dumps(body).encode()


@dataclass
class RecordingServer:
    """Answers 204 by default; set ``respond`` to change that."""

    respond: Callable[[Recorded], Answer] | None = None
    port_wanted: int = 0
    meters: list[dict[str, Any]] = field(default_factory=list)
    """What ``GET /api/v1/meters`` answers."""
    requests: list[Recorded] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        recorder = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                found = self.path.split("?")[0] == "/api/v1/meters"
                payload = json.dumps(recorder.meters).encode() if found else b""
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                item = Recorded(
                    "POST",
                    self.path,
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                    received=time.monotonic(),
                )
                answer = recorder.respond(item) if recorder.respond else (204, {}, b"")
                status, headers, payload = answer
                item.status = status
                with recorder._lock:
                    recorder.requests.append(item)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port_wanted), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def accepted_ids(self) -> set[str]:
        return {event["id"] for event in self.accepted_events()}

    def accepted_events(self) -> list[dict[str, Any]]:
        """Events of requests answered 2xx (a batch counts whole)."""
        with self._lock:
            done = [r for r in self.requests if 200 <= r.status < 300]
        return [event for request in done for event in request.events()]

    def all_posted_events(self) -> list[dict[str, Any]]:
        with self._lock:
            done = list(self.requests)
        return [event for request in done for event in request.events()]

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
