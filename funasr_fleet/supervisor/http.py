"""Health and metrics endpoints of the supervisor (stdlib threaded HTTP server).

- ``/healthz``: the supervision loop ticked recently (a liveness probe: restart the pod if not).
- ``/readyz``: at least one consumer is ready and the supervisor is not draining.
- ``/metrics``: Prometheus text, aggregated over every consumer process (multiprocess mode).
- ``/status``: JSON snapshot of the consumers (pids, states, heartbeat ages) for people and tests.

Handlers only read the arbiter's plain attributes; they never touch processes.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from funasr_fleet import metrics
from funasr_fleet.logs import get_logger

log = get_logger("supervisor.http")


class _Source(Protocol):
    def loop_alive(self) -> bool: ...
    def ready_count(self) -> int: ...
    def status(self) -> dict[str, Any]: ...
    @property
    def stopping(self) -> bool: ...


class _Handler(BaseHTTPRequestHandler):
    source: _Source  # set on the subclass made by serve()
    server_version = "funasr-fleet"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                ok = self.source.loop_alive()
                self._json(200 if ok else 503, {"ok": ok})
            elif path == "/readyz":
                ready = self.source.ready_count()
                ok = ready >= 1 and not self.source.stopping
                self._json(200 if ok else 503, {"ok": ok, "ready": ready, "stopping": self.source.stopping})
            elif path == "/metrics":
                body, content_type = metrics.render()
                self._send(200, body, content_type)
            elif path == "/status":
                self._json(200, self.source.status())
            else:
                self._json(404, {"error": "not found", "paths": ["/healthz", "/readyz", "/metrics", "/status"]})
        except Exception as exc:  # noqa: BLE001 - a scrape must never take the supervisor down
            log.warning("http handler failed", path=path, error=repr(exc))
            self._json(500, {"error": type(exc).__name__})

    def _json(self, code: int, payload: dict[str, Any]) -> None:
        self._send(code, (json.dumps(payload) + "\n").encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib signature
        pass  # probes every few seconds would flood the log


class HealthServer:
    """The HTTP server in a daemon thread; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, source: _Source, host: str, port: int) -> None:
        handler = type("Handler", (_Handler,), {"source": source})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port: int = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="supervisor-http", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        log.info("http endpoints listening", host=self.httpd.server_address[0], port=self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
