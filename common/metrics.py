"""Prometheus metrics named as go-grpc-prometheus does, plus in-flight streams and pool usage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from grpc import aio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.db import Database
from common.handlers import Around, Context, Handler, WrappingInterceptor

# Seconds; finer at the low end where a healthy RPC lands.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LABELS = ("grpc_service", "grpc_method", "grpc_type")


def rpc_type(handler: Handler) -> str:
    h: Any = handler
    if h.unary_unary:
        return "unary"
    if h.stream_unary:
        return "client_stream"
    if h.unary_stream:
        return "server_stream"
    return "bidi_stream"


def split_method(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


class _PoolCollector(Collector):
    """Reads the process's one connection pool at scrape time, so the numbers are never stale."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._db.pool_stats()
        for name, key, doc in (
            ("db_pool_checked_out_connections", "checked_out", "Connections in use by RPCs"),
            ("db_pool_idle_connections", "idle", "Open connections waiting in the pool"),
            ("db_pool_size", "size", "Most connections the pool opens"),
        ):
            yield GaugeMetricFamily(name, doc, value=float(stats[key]))


class ServerMetrics:
    """One registry per server: an interceptor for starts and in-flight streams, and an
    `RpcObserver` (fed by the `AccessLog`) for outcomes, so codes match the access log."""

    def __init__(self, db: Database | None = None) -> None:
        self.registry = CollectorRegistry()
        self._types: dict[str, str] = {}
        self.started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            LABELS,
            registry=self.registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            (*LABELS, "grpc_code"),
            registry=self.registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time the server took to handle an RPC until its status was known.",
            LABELS,
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "grpc_server_in_flight_streams",
            "RPCs (HTTP/2 streams) being handled right now.",
            LABELS,
            registry=self.registry,
        )
        if db is not None:
            self.registry.register(_PoolCollector(db))

    def register_method(self, method: str, handler: Handler) -> tuple[str, str, str]:
        """Remember the method's RPC type (the observer hook does not see it); its labels."""
        self._types[method] = rpc_type(handler)
        return self.labels(method)

    def labels(self, method: str) -> tuple[str, str, str]:
        service, name = split_method(method)
        return service, name, self._types.get(method, "unary")

    def observe(self, method: str, code: grpc.StatusCode, elapsed: float) -> None:
        """The `RpcObserver` hook: one outcome of one RPC."""
        labels = self.labels(method)
        self.handled.labels(*labels, code.name).inc()
        self.seconds.labels(*labels).observe(elapsed)

    def interceptor(self) -> aio.ServerInterceptor:  # type: ignore[type-arg]
        return _StartInterceptor(self)

    def serve_http(self, addr: str) -> tuple[Any, int]:
        """Start the scrape endpoint on `host:port` (port 0 picks one); returns (server, port)."""
        host, _, port = addr.rpartition(":")
        server, _thread = start_http_server(int(port), host or "0.0.0.0", registry=self.registry)  # noqa: S104
        return server, int(server.server_port)


class _StartInterceptor(WrappingInterceptor):
    """Counts starts and keeps the in-flight gauge; outermost, so it sees every RPC."""

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def around(self, method: str, handler: Handler) -> Around:
        labels = self._metrics.register_method(method, handler)
        return _Tracked(
            self._metrics.started.labels(*labels), self._metrics.in_flight.labels(*labels)
        )


class _Tracked(Around):
    """One method's calls counted as they start, and in flight until they end."""

    def __init__(self, started: Counter, in_flight: Gauge) -> None:
        self._started = started
        self._in_flight = in_flight

    async def enter(self, context: Context) -> None:
        self._started.inc()
        self._in_flight.inc()

    def done(self, state: None) -> None:
        self._in_flight.dec()

    async def failed(self, state: None, context: Context, error: BaseException) -> None:
        self._in_flight.dec()


def metrics_port_for(addr: str, worker_index: int) -> str:
    """With WORKERS=N each worker serves its own endpoint: the configured port plus its index."""
    host, _, port = addr.rpartition(":")
    if worker_index == 0 or int(port) == 0:
        return addr
    return f"{host}:{int(port) + worker_index}"
