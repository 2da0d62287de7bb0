"""`/metrics`, `/healthz`, `/readyz` for processes that are not faust workers (ingest, sinks, …).

A small threaded HTTP server on loopback by default; the health answers come from a callable so
each process says what "ready" means for it. Workers serve the same paths on faust's web server
(`mdstream.ops.worker`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from mdstream.ops.health import HealthReport

HealthSource = Callable[[], HealthReport]


def _always_ok() -> HealthReport:
    return HealthReport(True, True, {})


def health_response(path: str, report: HealthReport) -> tuple[int, bytes]:
    """Status and JSON body of /healthz (liveness) or /readyz (readiness)."""
    ok = report.live if path == "/healthz" else report.ready
    return (200 if ok else 503), json.dumps(report.as_json()).encode()


class OpsServer:
    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        health: HealthSource = _always_ok,
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.health = health
        ops = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif path in ("/healthz", "/readyz"):
                    try:
                        status, body = health_response(path, ops.health())
                    except Exception as exc:  # a failing check is a failed probe, not a crash
                        status, body = 503, json.dumps({"error": repr(exc)}).encode()
                    ctype = "application/json"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not news
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="mdstream-ops-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
