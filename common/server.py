"""Server bootstrap both services use: interceptors, health, reflection, TLS, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from common.auth import MAX_TOKEN_BYTES, TokenVerifier
from common.config import Settings
from common.db import Database
from common.errors import UnavailableError
from common.interceptors import (
    AuthInterceptor,
    ErrorInterceptor,
    RpcObserver,
    ServedByInterceptor,
)
from common.metrics import ServerMetrics, metrics_port_for

log = logging.getLogger("server")

MAX_METADATA_BYTES = 2 * MAX_TOKEN_BYTES

# Adds a service's servicers to the server, built on the process's pool and settings.
Register = Callable[[aio.Server, Database, Settings], None]


@dataclass(frozen=True)
class ServiceDefinition:
    """What a service plugs into the kit: its names, its servicers and its migrations."""

    name: str
    domain: str
    default_addr: str
    service_names: tuple[str, ...]
    register: Register
    migrations_dir: Path
    version_table: str


@dataclass
class RunningServer:
    server: aio.Server
    port: int
    health: Any
    db: Database
    extra_shutdown: list[Callable[[], object]] = field(default_factory=list)
    metrics: ServerMetrics | None = None
    metrics_port: int | None = None

    async def shutdown(self, grace: float) -> None:
        """Health NOT_SERVING first, then let in-flight RPCs finish within `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for hook in self.extra_shutdown:
            hook()
        await self.db.dispose()


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    tls = settings.tls
    if tls is None:
        return None
    ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def database(settings: Settings) -> Database:
    if settings.database_url is None:
        raise ValueError("no database URL: the command line starts the embedded one first")
    return Database(settings.database_url, pool_size=settings.db_pool_size)


async def start_server(
    definition: ServiceDefinition,
    settings: Settings,
    *,
    db: Database | None = None,
    observers: Sequence[RpcObserver] = (),
) -> RunningServer:
    """Build, bind and start the server; the caller owns shutdown."""
    db = db or database(settings)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # One deterministic metadata limit above MAX_TOKEN_BYTES: between gRPC's default soft
        # (8 KiB) and hard limits a request is refused at random, before the token is looked at.
        ("grpc.max_metadata_size", MAX_METADATA_BYTES),
        ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
        # Sharing a port is only wanted with several workers; otherwise a clash must fail loudly.
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]
    metrics = ServerMetrics(db) if settings.metrics_addr else None
    errors = ErrorInterceptor(
        definition.domain, (*observers, metrics.observe) if metrics else observers
    )
    interceptors: list[aio.ServerInterceptor] = [  # type: ignore[type-arg]
        errors,
        AuthInterceptor(TokenVerifier(settings.jwt)),
    ]
    if metrics:
        interceptors.insert(0, metrics.interceptor())
    if settings.workers > 1:
        interceptors.insert(0, ServedByInterceptor(f"{socket.gethostname()}/{os.getpid()}"))
    server = aio.server(interceptors=interceptors, options=options)
    definition.register(server, db, settings)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            *definition.service_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    credentials = _credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(settings.grpc_addr)
    else:
        port = server.add_secure_port(settings.grpc_addr, credentials)
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", *definition.service_names):
        await health_servicer.set(name, serving)
    running = RunningServer(server, port, health_servicer, db, metrics=metrics)
    running.extra_shutdown.append(errors.report_finished)  # the last calls' metrics and lines
    if metrics and settings.metrics_addr:
        addr = metrics_port_for(settings.metrics_addr, settings.worker_index)
        http, running.metrics_port = metrics.serve_http(addr)
        running.extra_shutdown += [http.shutdown, http.server_close]
    return running


async def wait_for_database(db: Database, *, attempts: int = 10, delay: float = 1.0) -> None:
    """Retry with a clear message while the database is unreachable at start-up."""
    for attempt in range(1, attempts + 1):
        try:
            await db.ping()
            return
        except UnavailableError as exc:  # anything else (no such database, bad password) is final
            reason = str(exc.__cause__ or exc)
            if attempt == attempts:
                # The cause, not just "unavailable": this is the line an operator reads last.
                raise UnavailableError(
                    f"database not reachable after {attempts} attempts: {reason}"
                ) from exc
            log.warning(
                "database not reachable, retrying",
                extra={"attempt": attempt, "of": attempts, "error": reason},
            )
            await asyncio.sleep(min(delay * attempt, 5.0))


async def serve(definition: ServiceDefinition, settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then drain gracefully."""
    db = database(settings)
    await wait_for_database(db)
    running = await start_server(definition, settings, db=db)
    log.info(
        "serving",
        extra={
            "service": definition.name,
            "addr": settings.grpc_addr,
            "port": running.port,
            "tls": settings.tls is not None,
            **db.describe(),
            "metrics_port": running.metrics_port,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", extra={"grace_seconds": settings.grace_seconds})
    await running.shutdown(settings.grace_seconds)
    log.info("stopped")


def run_loop(main: Coroutine[Any, Any, None], settings: Settings) -> None:
    """Run `main` on uvloop when installed and enabled: it cuts the loop's per-RPC cost."""
    if settings.uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main)
            return
    asyncio.run(main)
