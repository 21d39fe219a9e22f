"""Server bootstrap both services use: interceptors, health, reflection, TLS, graceful drain."""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.accesslog import AccessLog, RpcObserver
from common.auth import MAX_TOKEN_BYTES, TokenVerifier
from common.authn import AuthInterceptor
from common.config import Limits, Settings
from common.db import Database, embedded
from common.db.engine import CLOSE_TIMEOUT_SECONDS
from common.db.roles import RoleError, serving_risks
from common.drain import Admission, DrainingHealth
from common.errormap import ErrorInterceptor
from common.errors import UnavailableError
from common.idempotency import APP_PRIVILEGES, Purger, RequestIds
from common.limits import ResponseBound, check_responses
from common.metrics import ServerMetrics, metrics_port_for
from common.tracing import Tracing, from_env

log = logging.getLogger("server")

MAX_METADATA_BYTES = 2 * MAX_TOKEN_BYTES

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# After the drain, how long the last answers get to leave the host before the process exits
# (closing a socket with requests unread in it drops what it has not sent yet).
LINGER_SECONDS = 0.2
# In-process stops: how long gRPC's stop waits for refusals and health answers under way.
STOP_SECONDS = 1.0
# Logged once when a second stop signal cuts the drain short; the exit code is 128 + signal.
FORCED_EXIT = "second signal while draining: exiting now"

# Adds a service's servicers to the server, built on the database and the settings' limits.
Register = Callable[[aio.Server, Database, Settings], None]
Interceptor: TypeAlias = "aio.ServerInterceptor[Any, Any]"


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
    # The largest responses the service can send under a set of limits (see common.limits).
    response_bounds: Callable[[Limits], Sequence[ResponseBound]]
    # The tables its app role is granted, with the privileges (see common.db.roles).
    app_grants: Mapping[str, str] = field(default_factory=dict)
    # Its stores of answers under request ids (common.idempotency), purged while it serves.
    request_ids: Sequence[RequestIds] = ()

    def grants(self) -> dict[str, str]:
        """Every table the app role is granted, with the privileges: `app_grants`, the
        request-id stores and the version table (read by `serve`)."""
        stores = {store.table.name: APP_PRIVILEGES for store in self.request_ids}
        return {**self.app_grants, **stores, self.version_table: "SELECT"}

    def functions(self) -> list[str]:
        """The functions the app role may run: the stores' purges."""
        return [store.function for store in self.request_ids]

    def check_limits(self, settings: Settings) -> None:
        """ConfigError when a response might outgrow the message limit under `settings`."""
        check_responses(self.response_bounds(settings.limits), settings.max_message_bytes)


@dataclass
class RunningServer:
    server: aio.Server
    port: int
    health: DrainingHealth
    db: Database
    access_log: AccessLog
    admission: Admission
    extra_shutdown: list[Callable[[], object]] = field(default_factory=list)
    metrics: ServerMetrics | None = None
    metrics_port: int | None = None

    async def drain(self, grace: float, delay: float = 0.0) -> bool:
        """The drain (common.drain says why in this order); True if no call was left running:
        1. health NOT_SERVING, at once;
        2. calls still served for `delay` seconds, while clients and load balancers that
           watch health (or drop the endpoint) move away;
        3. new calls refused with UNAVAILABLE; the calls in flight finish within `grace`;
        4. health watches ended (with OK)."""
        await self.health.enter_graceful_shutdown()
        if delay > 0:
            await asyncio.sleep(delay)
        self.admission.refuse()
        in_flight, started = self.admission.in_flight, time.monotonic()
        log.info("refusing new calls", extra={"in_flight": in_flight, "grace_seconds": grace})
        try:
            async with asyncio.timeout(grace):
                await self.admission.idle()
        except TimeoutError:
            log.warning(
                "grace period over: cutting off the calls still in flight",
                extra={"in_flight": self.admission.in_flight, "grace_seconds": grace},
            )
            self.health.close_watches()
            return False
        if in_flight:
            log.info(
                "calls in flight finished",
                extra={"calls": in_flight, "seconds": round(time.monotonic() - started, 3)},
            )
        self.health.close_watches()
        return True

    async def shutdown(self, grace: float, delay: float = 0.0) -> None:
        """The drain, then gRPC's own stop: for a server run inside another program (tests).
        A process that serves ends as `serve` does, without gRPC's stop."""
        await self.shutdown_after_drain(await self.drain(grace, delay))

    async def shutdown_after_drain(self, finished: bool) -> None:
        """gRPC's stop, then `release`. After a finished drain what remains is refusals and
        health answers on their way out; after an overrun the calls still running are cut."""
        await self.server.stop(STOP_SECONDS if finished else 0)
        await self.release(finished)

    async def release(self, finished: bool) -> None:
        """Flush the last access lines and metrics, stop the hooks, close the pool (at once
        when calls were cut off: their transactions roll back)."""
        self.access_log.report()
        for hook in self.extra_shutdown:
            hook()
        await self.db.dispose(CLOSE_TIMEOUT_SECONDS if finished else 0)


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
    return Database(
        settings.database_url,
        pool_size=settings.db_pool_size,
        application_name=f"{settings.service}/{os.getpid()}",
        wait_seconds=settings.db_wait_seconds,
    )


async def start_server(
    definition: ServiceDefinition,
    settings: Settings,
    *,
    db: Database | None = None,
    observers: Sequence[RpcObserver] = (),
    interceptors: Sequence[Interceptor] = (),
    tracing: Tracing | None = None,
) -> RunningServer:
    """Build, bind and start the server; the caller owns shutdown. `interceptors` go first,
    after the tracing one (when `tracing` is given), which starts each call's span."""
    definition.check_limits(settings)
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
    access_log = AccessLog(
        (*observers, metrics.observe) if metrics else observers, traced=tracing is not None
    )
    if tracing is not None:
        db.trace(tracing.tracer)
    # Inside the error mapping, so a refused call is answered (and logged) like any other
    # UNAVAILABLE; before authentication, so a stopping server spends nothing on it.
    admission = Admission()
    server = aio.server(
        interceptors=[
            *([tracing.interceptor()] if tracing else []),
            *interceptors,
            *([metrics.interceptor()] if metrics else []),
            ErrorInterceptor(definition.domain, access_log),
            admission,
            AuthInterceptor(TokenVerifier(settings.jwt)),
        ],
        options=options,
    )
    definition.register(server, db, settings)
    health_servicer = DrainingHealth()
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
    running = RunningServer(
        server, port, health_servicer, db, access_log, admission, metrics=metrics
    )
    purger = Purger(db, definition.request_ids, settings.request_id_ttl_seconds)
    purger.start()
    running.extra_shutdown.append(purger.stop)
    if tracing is not None:
        running.extra_shutdown.append(tracing.shutdown)  # the last calls' spans go out
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


async def check_role(db: Database, definition: ServiceDefinition, settings: Settings) -> None:
    """Warns (or, with REQUIRE_RLS, refuses) when the role the service connects as is one that
    row-level security does not apply to: the database's second line of tenant isolation
    would be off without anyone knowing."""
    async with db.unit_of_work(None, lambda *_: None) as uow:
        risks = await serving_risks(uow.executor.conn, list(definition.app_grants))
    if not risks:
        return
    message = (
        f"row-level security does not apply to {definition.name}'s database role "
        f"({'; '.join(risks)}): a query that forgot its tenant filter would reach every "
        "organization. Migrate as the owner with DATABASE_APP_ROLE set and serve as that "
        "role (docs/security.md)"
    )
    if settings.require_rls:
        raise RoleError(message + "; REQUIRE_RLS is set, so the service does not start")
    log.warning(message, extra={"risks": risks})


async def serve(
    definition: ServiceDefinition, settings: Settings, interceptors: Sequence[Interceptor] = ()
) -> None:
    """Serve until SIGTERM or SIGINT, then drain gracefully."""
    db = database(settings)
    await wait_for_database(db)
    await check_role(db, definition, settings)
    running = await start_server(
        definition, settings, db=db, interceptors=interceptors, tracing=from_env(definition.name)
    )
    log.info(
        "serving",
        extra={
            "addr": settings.grpc_addr,
            "port": running.port,
            "tls": settings.tls is not None,
            **db.describe(),
            "metrics_port": running.metrics_port,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # With several workers the parent process decides when a second signal means now
    # (common.workers): a worker may get each signal twice, once from a Ctrl-C sent to the
    # whole process group and once more from the parent passing it on.
    if settings.workers == 1:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, _exit_now, sig, running.access_log)
    log.info(
        "draining",
        extra={
            "delay_seconds": settings.drain_delay_seconds,
            "grace_seconds": settings.grace_seconds,
        },
    )
    finished = await running.drain(settings.grace_seconds, settings.drain_delay_seconds)
    if embedded.in_use():
        # Its exit handler starts pg_ctl, and a fork while gRPC's threads are busy is unsafe
        # (gRPC says so on stderr): on this development default gRPC stops first.
        await running.shutdown_after_drain(finished)
        log.info("stopped")
        return
    await asyncio.sleep(LINGER_SECONDS)
    await running.release(finished)
    log.info("stopped")
    _exit_without_grpc_shutdown(0)


def _exit_without_grpc_shutdown(code: int) -> NoReturn:
    """End the process as a normal exit would (atexit handlers, such as exporters' flushes;
    logs flushed), but without gRPC's server shutdown, which also runs when the server
    object is collected at exit. That shutdown resets every call that
    reaches the server meanwhile, and each it had queued, and clients read those as
    CANCELLED. Without it the kernel closes the connections, which a client reads as
    UNAVAILABLE: safe to retry, and the drain has already answered every admitted call."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_now(signum: int, access_log: AccessLog) -> None:
    """A second signal while draining: exit at once, without waiting for the calls in flight."""
    access_log.report()  # the lines of the calls that did finish
    log.warning(FORCED_EXIT, extra={"signal": signal.Signals(signum).name})
    logging.shutdown()
    # Not SystemExit: asyncio.run would then wait for the drain's tasks to be cancelled.
    os._exit(128 + signum)


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
