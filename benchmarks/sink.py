"""A minimal ingest endpoint for benchmarks: answers every POST with 204, after an
optional delay. Run as its own process so it does not share the measured process's GIL.

usage: python benchmarks/sink.py PORT [DELAY_SECONDS] [idle]
With ``idle`` the process runs under Linux's ``SCHED_IDLE`` policy: it gets only CPU
time nothing else wants, as if it ran on another machine (OpenMeter does). Prints
READY when listening. ``GET /count`` answers ``{"events": distinct (source, id)
received, except subject "warmup"; "received": all events; "last_at": epoch seconds of
the newest}``; ``GET /api/v1/meters`` answers ``[]``, and a ``POST`` of a meter is
answered 201 and forgotten. Prints the total on exit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = 0
last_at = 0.0
distinct: set[tuple[str, str]] = set()
lock = threading.Lock()


def main() -> None:
    port = int(sys.argv[1])
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    if sys.argv[3:] == ["idle"]:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with lock:
                body = json.dumps(
                    {"events": len(distinct), "received": received, "last_at": last_at}
                ).encode()
            if self.path.startswith("/api/v1/meters"):
                body = b"[]"  # no meters: a client that creates them may (see do_POST)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            global received, last_at
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/api/v1/meters"):  # taken, not kept
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            parsed = json.loads(body)
            events = parsed if isinstance(parsed, list) else [parsed]
            if delay:
                time.sleep(delay)
            with lock:
                received += len(events)
                distinct.update(
                    (str(e.get("source")), str(e.get("id")))
                    for e in events
                    if e.get("subject") != "warmup"
                )
                last_at = time.time()
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print("READY", flush=True)
    server.serve_forever()
    print(f"RECEIVED {received}", flush=True)


if __name__ == "__main__":
    main()
