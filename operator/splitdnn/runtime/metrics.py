"""Prometheus metrics of the runtime processes and the small HTTP server that exposes them.

Every process (worker or gateway) serves ``/metrics``, ``/healthz`` (alive) and ``/readyz``
(loaded, warmed up and serving). Names carry the ``splitdnn_`` prefix and base units.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class RuntimeMetrics:
    """The metric families shared by workers and the gateway, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("splitdnn_requests", "Requests handled, by stage and outcome",
                                ["stage", "outcome"], registry=r)
        self.latency = Histogram("splitdnn_stage_latency_seconds",
                                 "Time from receiving a request to sending it on, per stage",
                                 ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("splitdnn_queue_depth",
                                 "Requests received and not yet answered or forwarded",
                                 ["stage"], registry=r)
        self.batch_size = Histogram("splitdnn_batch_size", "Requests per ONNX Runtime run",
                                    ["stage"], buckets=BATCH_BUCKETS, registry=r)
        self.sent_bytes = Counter("splitdnn_sent_bytes", "Tensor bytes sent, per stage",
                                  ["stage"], registry=r)
        self.exits = Counter("splitdnn_exits", "Early exits taken", ["stage", "exit"],
                             registry=r)
        self.dropped = Counter("splitdnn_dropped_messages",
                               "Messages dropped without an answer, by reason",
                               ["stage", "reason"], registry=r)


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsHTTPServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            ready = self.server.ready()
            self._reply(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
        else:
            self._reply(404, b"not found\n")

    def _reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the logs."""


class _MetricsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 ready: Callable[[], bool]) -> None:
        super().__init__(address, _Handler)
        self.registry = registry
        self.ready = ready


def serve_metrics(port: int, registry: CollectorRegistry, ready: Callable[[], bool],
                  host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz from a daemon thread; returns the server."""
    server = _MetricsHTTPServer((host, port), registry, ready)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
