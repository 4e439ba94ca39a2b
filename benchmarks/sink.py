"""A minimal ingest endpoint for benchmarks: answers every POST with 204, after an
optional delay. Run as its own process so it does not share the measured process's GIL.

usage: python benchmarks/sink.py PORT [DELAY_SECONDS]
Prints READY when listening; counts events in the bodies and prints the total on exit.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

received = 0
lock = threading.Lock()


def main() -> None:
    port = int(sys.argv[1])
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            global received
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parsed = json.loads(body)
            with lock:
                received += len(parsed) if isinstance(parsed, list) else 1
            if delay:
                time.sleep(delay)
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
