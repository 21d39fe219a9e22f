"""Engines, column types and transactions for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeAlias, cast

import asyncpg
from sqlalchemy import JSON, DateTime, Executable, Table, TypeDecorator, Uuid, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import ClauseElement

from common.auth import Principal
from common.errors import UnavailableError

SQLITE_BUSY_TIMEOUT_MS = 15_000

# Columns shared by every table of both services.
UUID_TYPE = Uuid(as_uuid=False)
# Python None is SQL NULL (not JSON null), as the original stored an absent value.
JSON_TYPE = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timestamp with time zone on PostgreSQL; UTC text on SQLite. Always aware UTC in Python."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def upsert_insert(conn: AsyncConnection, table: Table) -> PgInsert | SqliteInsert:
    """An INSERT that supports ON CONFLICT on the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, a busy timeout, and BEGIN IMMEDIATE for writes so concurrent writers queue, not fail."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


# Read by the row-level security policies (see docs/security.md); local to the transaction.
# Driver SQL (asyncpg placeholders): about half the cost of a compiled text() statement.
_SET_TENANT = (
    "SELECT set_config('app.organization_id', $1, true),"
    " set_config('app.user_id', $2, true), set_config('app.global_access', $3, true)"
)


def tenant_settings(principal: Principal) -> tuple[str, str, str]:
    """(organization id or '', user id, 'on'/'off') for the row-level security settings."""
    organization = principal.organization_id or ""
    return organization, principal.user_id, "on" if principal.global_access else "off"


# SQLSTATEs of a server that cannot serve right now: connection exceptions (08…), too many
# connections (53300), shutting down or crashed (57P01, 57P02), starting up (57P03).
_UNAVAILABLE_SQLSTATES = ("08", "53300", "57P01", "57P02", "57P03")


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or dropped the connection (retryable)."""
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        return (
            exc.connection_invalidated
            or isinstance(exc, OperationalError | InterfaceError)
            or sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
        )
    if isinstance(exc, asyncpg.PostgresError):  # raised straight by asyncpg (hot paths, COPY)
        return (getattr(exc, "sqlstate", None) or "").startswith(_UNAVAILABLE_SQLSTATES)
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return True  # the connection's protocol state was broken by a lost or aborted operation
    if isinstance(exc, asyncpg.InterfaceError):  # also raised for an argument it cannot encode
        return "connection is closed" in str(exc) or "connection was closed" in str(exc)
    return isinstance(exc, OSError | TimeoutError)


# What a repository's hot paths run on: SQLAlchemy's connection, or asyncpg's on PostgreSQL.
Connection: TypeAlias = AsyncConnection | asyncpg.Connection

# How long `transaction()` waits for a pooled connection before the call is UNAVAILABLE (the
# same as SQLAlchemy's default), and how long closing asyncpg's pool waits for lent ones.
POOL_TIMEOUT_SECONDS = 30.0


def _json_codecs() -> tuple[dict[str, Any], dict[str, Any]]:
    """asyncpg codecs for json and jsonb, as SQLAlchemy's dialect installs them, so a bound
    parameter and a fetched value look the same on either pool."""

    def jsonb_encode(text: str) -> bytes:
        return b"\x01" + text.encode()

    def jsonb_decode(data: bytes) -> Any:
        return json.loads(data[1:].decode())

    def json_decode(data: bytes) -> Any:
        return json.loads(data.decode())

    common = {"schema": "pg_catalog", "format": "binary"}
    return (
        {"typename": "json", "encoder": str.encode, "decoder": json_decode, **common},
        {"typename": "jsonb", "encoder": jsonb_encode, "decoder": jsonb_decode, **common},
    )


async def _init_driver_connection(conn: asyncpg.Connection) -> None:
    for codec in _json_codecs():
        await conn.set_type_codec(**codec)


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Nothing to reset on release: units of work set only transaction-local settings, and
    asyncpg itself rolls back a connection returned inside a transaction."""


def _terminate(driver: asyncpg.Connection) -> None:
    """Close a lent connection at once, unless the pool has already taken it back closed."""
    with contextlib.suppress(asyncpg.InterfaceError):  # released when it closed
        driver.terminate()


class Database:
    """One engine per process; `transaction()` is the unit of work (`withTransaction`).

    On PostgreSQL a process keeps two pools, each of up to `pool_size` connections opened on
    demand: SQLAlchemy's, for `transaction()`, and asyncpg's own, for `driver_transaction()`
    (the hot RPCs). asyncpg's pool lends and takes back a connection for a fraction of the CPU
    that SQLAlchemy's pool and its greenlet bridge spend (see docs/benchmarks.md).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 0,
        pool_timeout: float = POOL_TIMEOUT_SECONDS,
        echo: bool = False,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs.update(
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout,
                pool_recycle=1800,
            )
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)
        self._driver_pool: asyncpg.Pool | None = None
        self._driver_pool_lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(
        self, *, write: bool = False, principal: Principal | None = None
    ) -> AsyncIterator[AsyncConnection]:
        """Commit when the block succeeds, else roll back; an unreachable DB is UNAVAILABLE.

        With a principal, PostgreSQL's row-level security policies see the caller's tenant.
        """
        try:
            async with self.engine.connect() as conn:
                if write and self.dialect == "sqlite":  # only SQLite's BEGIN reads it
                    conn = await conn.execution_options(write=True)
                async with conn.begin():
                    if principal is not None and self.dialect == "postgresql":
                        await conn.exec_driver_sql(_SET_TENANT, tenant_settings(principal))
                    yield conn
        except Exception as exc:
            if is_unavailable(exc):
                raise UnavailableError("database unavailable") from exc
            raise

    @property
    def driver_pool(self) -> asyncpg.Pool | None:
        """asyncpg's pool once a hot-path unit of work has opened it (PostgreSQL only)."""
        return self._driver_pool

    async def _open_driver_pool(self) -> asyncpg.Pool:
        async with self._driver_pool_lock:
            if self._driver_pool is None:
                args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
                for sqlalchemy_only in (
                    "prepared_statement_cache_size",
                    "prepared_statement_name_func",
                    "async_creator_fn",
                ):
                    kwargs.pop(sqlalchemy_only, None)
                self._driver_pool = await asyncpg.create_pool(
                    *args,
                    min_size=0,
                    max_size=self.pool_size,
                    init=_init_driver_connection,
                    reset=_keep_session,
                    **kwargs,
                )
            return self._driver_pool

    @asynccontextmanager
    async def driver_transaction(
        self, *, write: bool = False, principal: Principal | None = None
    ) -> AsyncIterator[Connection]:
        """The hot paths' unit of work: on PostgreSQL, asyncpg's own transaction on a connection
        from asyncpg's pool, yielding that connection (see `driver_statement`); elsewhere
        `transaction()`. Same commit/rollback, UNAVAILABLE and row-level security rules.
        """
        if self.dialect != "postgresql":
            async with self.transaction(write=write, principal=principal) as conn:
                yield conn
            return
        try:
            pool = self._driver_pool or await self._open_driver_pool()
            # No timer on the wait for a connection: the call's deadline bounds it (gRPC cancels
            # the call when it passes), and arming one cost as much CPU as the lending itself.
            async with pool.acquire() as proxy:
                # The pool lends a proxy that forwards every call to the connection.
                driver = cast(asyncpg.Connection, proxy)
                try:
                    async with driver.transaction():
                        if principal is not None:
                            await driver.fetchrow(_SET_TENANT, *tenant_settings(principal))
                        yield driver
                except Exception as exc:
                    if is_unavailable(exc):  # the driver may be mid-protocol: never reuse it
                        _terminate(driver)
                    raise
        except Exception as exc:
            if is_unavailable(exc):
                raise UnavailableError("database unavailable") from exc
            raise

    async def ping(self) -> None:
        async with self.transaction() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        pool, self._driver_pool = self._driver_pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), POOL_TIMEOUT_SECONDS)
            except TimeoutError:
                pool.terminate()
        await self.engine.dispose()


# Hot paths on PostgreSQL: the same Core statements, sent straight through asyncpg. SQLAlchemy's
# async execution (greenlet bridge, result processing) costs about as much CPU as the statement.
_PG_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class DriverStatement:
    """A Core statement compiled once to asyncpg SQL ($n placeholders) and its bind order."""

    sql: str
    names: tuple[str, ...]
    processors: tuple[Callable[[Any], Any] | None, ...]

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The positional arguments for `params`, through the Core types' bind processors."""
        return [
            params[name] if process is None else process(params[name])
            for name, process in zip(self.names, self.processors, strict=True)
        ]


@lru_cache(maxsize=2048)  # bounded: List's statements are built per filter shape
def driver_statement(statement: Executable) -> DriverStatement:
    """`statement` (built once, with bind parameters) as PostgreSQL SQL for asyncpg."""
    compiled: Any = cast(ClauseElement, statement).compile(dialect=_PG_DIALECT)
    names = tuple(compiled.positiontup or ())
    processors = compiled._bind_processors
    return DriverStatement(compiled.string, names, tuple(processors.get(n) for n in names))


async def driver_fetch(
    driver: asyncpg.Connection, statement: Executable, params: Mapping[str, Any]
) -> list[Any]:
    """The rows of `statement` (built once, with bind parameters) run on asyncpg."""
    compiled = driver_statement(statement)
    rows: list[Any] = await driver.fetch(compiled.sql, *compiled.args(params))
    return rows
