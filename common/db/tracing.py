"""Spans of the database work a call does: the transaction (from the wait for a connection
on), every statement and COPY, each a child of the call's span. Only inside a span that
records: a call the sampler dropped, and the work outside any call (start-up, migrations),
cost nothing more."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import asyncpg
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from sqlalchemy import Executable

from common.db.executor import NO_PARAMS, Executor, Record, compile_statement
from common.db.uow import R, RepositoryFactory, UnitOfWork
from common.tenancy import TenantScope

if TYPE_CHECKING:
    from common.db.engine import Database

# The table a statement is about, for its span's name (`SELECT user_progress`).
_TARGET = re.compile(r'\b(?:FROM|INTO|UPDATE|TABLE)\s+("[^"]+"|[\w.]+)', re.IGNORECASE)


@lru_cache(maxsize=4096)  # as many as the executor compiles
def _statement(sql: str) -> tuple[str, str]:
    """A statement's operation (its first word) and its table, when one is found."""
    words = sql.split(None, 1)
    target = _TARGET.search(sql)
    return (words[0].upper() if words else "SQL"), (target.group(1).strip('"') if target else "")


class DbSpans:
    """Makes the spans of one database's work; their fixed attributes are built once."""

    def __init__(self, tracer: Tracer, dsn: str) -> None:
        self._tracer = tracer
        parts = urlsplit(dsn)
        base: dict[str, str | int] = {"db.system": "postgresql"}
        if parts.path.strip("/"):
            base["db.name"] = parts.path.strip("/")
        if parts.hostname:
            base["server.address"] = parts.hostname
            base["server.port"] = parts.port or 5432
        self._base = base

    @staticmethod
    def parent() -> otel_context.Context | None:
        """The current context when its span records (else no database spans are made)."""
        current = otel_context.get_current()
        return current if trace.get_current_span(current).is_recording() else None

    def start(self, parent: otel_context.Context, name: str, **attributes: str) -> Span:
        return self._tracer.start_span(
            name, parent, kind=SpanKind.CLIENT, attributes={**self._base, **attributes}
        )

    def statement(self, parent: otel_context.Context, sql: str) -> Span:
        """A statement's span: its text has $n placeholders, never a value."""
        operation, table = _statement(sql)
        name = f"{operation} {table}" if table else operation
        return self.start(parent, name, **{"db.operation": operation, "db.statement": sql})


@contextmanager
def ended(span: Span) -> Iterator[Span]:
    """Ends `span` when the block does; an error marks it by its type and SQLSTATE only (an
    error's message may quote the values the statement was given)."""
    try:
        yield span
    except BaseException as exc:
        attributes: dict[str, str] = {"error.type": type(exc).__qualname__}
        sqlstate = getattr(exc, "sqlstate", None)
        if isinstance(sqlstate, str):
            attributes["db.response.status_code"] = sqlstate
        span.set_attributes(attributes)
        span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
        raise
    finally:
        span.end()


class TracedExecutor(Executor):
    """The executor with a child span around each statement and COPY."""

    __slots__ = ("_parent", "_spans")

    def __init__(
        self, conn: asyncpg.Connection, spans: DbSpans, parent: otel_context.Context
    ) -> None:
        super().__init__(conn)
        self._spans, self._parent = spans, parent

    def _span(self, statement: Executable) -> Span:
        return self._spans.statement(self._parent, compile_statement(statement).sql)

    async def rows(
        self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS
    ) -> list[Record]:
        with ended(self._span(statement)) as span:
            result = await super().rows(statement, params)
            span.set_attribute("db.response.returned_rows", len(result))
            return result

    async def row(
        self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS
    ) -> Record | None:
        with ended(self._span(statement)):
            return await super().row(statement, params)

    async def scalar(self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS) -> Any:
        with ended(self._span(statement)):
            return await super().scalar(statement, params)

    async def execute(self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS) -> int:
        with ended(self._span(statement)) as span:
            count = await super().execute(statement, params)
            span.set_attribute("db.response.affected_rows", count)
            return count

    async def copy_in(
        self,
        table: str,
        columns: Sequence[str],
        batches: AsyncIterable[Sequence[tuple[Any, ...]]],
    ) -> int:
        sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT binary)"
        span = self._spans.start(
            self._parent, f"COPY {table}", **{"db.operation": "COPY", "db.statement": sql}
        )
        with ended(span):
            count = await super().copy_in(table, columns, batches)
            span.set_attribute("db.copy.rows", count)
            return count

    @asynccontextmanager
    async def copy_out(
        self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        query = compile_statement(statement).sql
        table = _statement(query)[1]
        span = self._spans.start(
            self._parent,
            f"COPY {table}" if table else "COPY",
            **{"db.operation": "COPY", "db.statement": f"COPY ({query}) TO STDOUT (FORMAT csv)"},
        )
        sent = [0]
        with ended(span):
            try:
                async with super().copy_out(statement, params) as pieces:
                    yield _counted(pieces, sent)
            finally:
                span.set_attribute("db.copy.bytes", sent[0])
                if self.copied is not None:
                    span.set_attribute("db.copy.rows", self.copied)


async def _counted(pieces: AsyncIterator[bytes], sent: list[int]) -> AsyncIterator[bytes]:
    async for piece in pieces:
        sent[0] += len(piece)
        yield piece


class TracedUnitOfWork(UnitOfWork[R]):
    """The unit of work with spans for BEGIN (from the wait for a pooled connection on),
    COMMIT and ROLLBACK. BEGIN's span has no statement: its text names the caller's tenant."""

    __slots__ = ("_begin", "_parent", "_spans")

    def __init__(
        self,
        db: Database,
        scope: TenantScope | None,
        factory: RepositoryFactory[R],
        spans: DbSpans,
        parent: otel_context.Context,
        *,
        snapshot: bool = False,
    ) -> None:
        super().__init__(db, scope, factory, snapshot=snapshot)
        self._spans, self._parent = spans, parent
        self._begin: Span | None = None

    async def _acquire(self, pool: asyncpg.Pool) -> asyncpg.Connection:
        # The wait for a connection is the start of the BEGIN span (a span of its own would
        # cost as much again as a statement's): an event marks when the connection came.
        self._begin = self._spans.start(self._parent, "BEGIN", **{"db.operation": "BEGIN"})
        try:
            conn = await super()._acquire(pool)
        except BaseException:
            with ended(self._begin):
                raise
        self._begin.add_event("connection acquired")
        return conn

    def _executor(self, conn: asyncpg.Connection) -> Executor:
        return TracedExecutor(conn, self._spans, self._parent)

    async def _control(self, conn: asyncpg.Connection, sql: str, name: str) -> str:
        span = self._begin if name == "BEGIN" and self._begin is not None else None
        span = span or self._spans.start(self._parent, name, **{"db.operation": name})
        with ended(span):
            return await super()._control(conn, sql, name)


def traced_unit_of_work(
    db: Database,
    scope: TenantScope | None,
    factory: RepositoryFactory[R],
    spans: DbSpans,
    *,
    snapshot: bool = False,
) -> UnitOfWork[R]:
    """A traced unit of work inside a recording span, else the plain one."""
    parent = spans.parent()
    if parent is None:
        return UnitOfWork(db, scope, factory, snapshot=snapshot)
    return TracedUnitOfWork(db, scope, factory, spans, parent, snapshot=snapshot)
