"""The one asyncpg pool per process, on the embedded PostgreSQL or a server named by URL."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from opentelemetry.trace import Tracer

from common.config import ConfigError
from common.db.errors import is_unavailable, unavailable
from common.db.outage import Outage
from common.db.tracing import DbSpans, traced_unit_of_work
from common.db.uow import R, RepositoryFactory, UnitOfWork
from common.tenancy import TenantScope

# How long closing the pool waits for connections still lent out.
CLOSE_TIMEOUT_SECONDS = 30.0
_SCHEMES = {"postgresql", "postgres", "postgresql+asyncpg"}


def asyncpg_dsn(url: str) -> str:
    """`url` (`postgresql://`, `postgres://` or `postgresql+asyncpg://`) as asyncpg reads it."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ConfigError(
            f"DATABASE_URL must be a PostgreSQL URL (postgresql://user@host:port/db), "
            f"not {parts.scheme or url!r}"
        )
    return urlunsplit(parts._replace(scheme="postgresql"))


def sqlalchemy_url(url: str) -> str:
    """The same database for SQLAlchemy (Alembic), on the asyncpg driver."""
    return urlunsplit(urlsplit(asyncpg_dsn(url))._replace(scheme="postgresql+asyncpg"))


def database_name(url: str) -> str:
    return urlsplit(asyncpg_dsn(url)).path.lstrip("/") or "postgres"


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Ids as text both ways and JSON as Python values both ways, so statements take and give
    the same values the domain uses, with no per-call conversion in Python."""
    await conn.set_type_codec("uuid", encoder=str, decoder=str, schema="pg_catalog", format="text")
    await conn.set_type_codec(
        "json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog", format="text"
    )
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + json.dumps(value).encode(),
        decoder=lambda data: json.loads(data[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Nothing to reset on release: units of work set only transaction-local settings and end
    their transaction themselves (asyncpg still rolls back one left open)."""


class Database:
    """The process's pool of at most `pool_size` connections, opened on demand. A unit of work
    that cannot begin because the database is unreachable waits up to `wait_seconds` for it
    (less when its call's deadline is nearer; see common.db.outage)."""

    # What an untraced `unit_of_work` hands out; a subclass may name its own (bench.plans).
    unit_class: type[UnitOfWork[Any]] = UnitOfWork

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        application_name: str | None = None,
        wait_seconds: float = 10.0,
    ) -> None:
        self.url = url
        self.dsn = asyncpg_dsn(url)
        self.pool_size = pool_size
        # Shown in pg_stat_activity, so an operator sees which process holds a connection.
        self._settings = {"application_name": application_name} if application_name else {}
        self.pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self.outage = Outage(self.ping, max_wait=wait_seconds)
        # Set when tracing is on (common.tracing): units of work then make database spans.
        self.spans: DbSpans | None = None

    async def open(self) -> asyncpg.Pool:
        async with self._opening:
            if self.pool is None:
                self.pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=0,
                    max_size=self.pool_size,
                    init=_init_connection,
                    reset=_keep_session,
                    server_settings=self._settings,
                )
            return self.pool

    def unit_of_work(
        self,
        scope: TenantScope | None,
        repository: RepositoryFactory[R],
        *,
        snapshot: bool = False,
        opening: str = "",
    ) -> UnitOfWork[R]:
        """One transaction for `scope` (its tenant set for row-level security) with
        `repository(executor, scope)` as `uow.repo`; see `UnitOfWork`. `snapshot`: read only,
        every statement on the same snapshot (REPEATABLE READ). `opening`: a statement sent
        in BEGIN's message (its command tag is `uow.opened`)."""
        if self.spans is not None:
            unit = traced_unit_of_work(self, scope, repository, self.spans, snapshot=snapshot)
        else:
            unit = self.unit_class(self, scope, repository, snapshot=snapshot)
        unit.opening = opening
        return unit

    def trace(self, tracer: Tracer) -> None:
        """Make a span of each statement, COPY and transaction step inside a recording span."""
        self.spans = DbSpans(tracer, self.dsn)

    async def ping(self) -> None:
        """One round trip; a database that is not there names itself in the error."""
        try:
            pool = self.pool or await self.open()
            async with pool.acquire() as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable(exc) from exc
            raise

    def pool_stats(self) -> dict[str, int]:
        """Connections in use, idle and allowed; zeros before the pool opens."""
        pool = self.pool
        if pool is None:
            return {"checked_out": 0, "idle": 0, "size": self.pool_size}
        idle = pool.get_idle_size()
        return {"checked_out": pool.get_size() - idle, "idle": idle, "size": self.pool_size}

    async def dispose(self, grace: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Close the pool, waiting up to `grace` seconds for connections still lent out;
        then (or at once, with 0) close them regardless: their transactions roll back."""
        await self.outage.close()
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            if grace <= 0:
                raise TimeoutError
            await asyncio.wait_for(pool.close(), grace)
        except TimeoutError:
            pool.terminate()

    def describe(self) -> dict[str, Any]:
        """Where the pool points, without credentials, for the start-up log line."""
        parts = urlsplit(self.dsn)
        return {
            "database": database_name(self.url),
            "host": parts.hostname or "socket",
            "user": parts.username,
        }
