"""The one executor: SQLAlchemy Core statements compiled once to PostgreSQL SQL, run on asyncpg."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias

import asyncpg
from sqlalchemy import Executable
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql.elements import ClauseElement

# asyncpg ships no type information: a record is a tuple-like row with named fields.
Record: TypeAlias = Any
NO_PARAMS: Mapping[str, Any] = {}

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]
_DONE = object()
QUEUED_PIECES = 8  # COPY OUT pieces held while the consumer is slow; each is one socket read


@dataclass(frozen=True, slots=True)
class Compiled:
    """A statement as asyncpg SQL ($n placeholders), its parameter order and the values the
    statement carries itself (literals, bind parameters built with a value)."""

    sql: str
    names: tuple[str, ...]
    fixed: Mapping[str, Any]

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        if not self.fixed:
            return [params[name] for name in self.names]
        return [params[name] if name in params else self.fixed[name] for name in self.names]


@lru_cache(maxsize=4096)  # bounded: List's statements are built per filter shape and order
def compile_statement(statement: Executable) -> Compiled:
    """`statement`, built once with bind parameters, as SQL for asyncpg. Values are passed to
    asyncpg as they are: the connection's codecs (see `engine.py`) encode ids and JSON, so no
    SQLAlchemy bind processing runs per call."""
    compiled: Any = ClauseElement.compile(statement, dialect=_DIALECT)  # type: ignore[arg-type]
    if "POSTCOMPILE" in compiled.string:
        raise TypeError("expanding IN (…) cannot be compiled once: bind an array, = ANY(:ids)")
    names = tuple(getattr(compiled, "positiontup", None) or ())  # DDL has no parameters
    binds = getattr(compiled, "binds", {})
    fixed = {n: b.value for n, b in binds.items() if not b.required and n in names}
    return Compiled(compiled.string, names, fixed)


def _rowcount(status: str) -> int:
    """The row count of a command tag such as "UPDATE 3" or "INSERT 0 5"."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class Executor:
    """Runs statements on the connection a unit of work holds, inside its transaction."""

    __slots__ = ("broken", "conn", "copied")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        # Set when an operation was interrupted mid-protocol: the connection must not be reused.
        self.broken = False
        # Rows the last COPY moved, once it has ended.
        self.copied: int | None = None

    async def rows(
        self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS
    ) -> list[Record]:
        c = compile_statement(statement)
        result: list[Record] = await self.conn.fetch(c.sql, *c.args(params))
        return result

    async def row(
        self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS
    ) -> Record | None:
        c = compile_statement(statement)
        result: Record | None = await self.conn.fetchrow(c.sql, *c.args(params))
        return result

    async def scalar(self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS) -> Any:
        c = compile_statement(statement)
        return await self.conn.fetchval(c.sql, *c.args(params))

    async def execute(self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS) -> int:
        """Runs a statement that returns no rows; the number of rows it touched."""
        c = compile_statement(statement)
        status: str = await self.conn.execute(c.sql, *c.args(params))
        return _rowcount(status)

    async def copy_in(
        self,
        table: str,
        columns: Sequence[str],
        batches: AsyncIterable[Sequence[tuple[Any, ...]]],
    ) -> int:
        """Binary COPY of every record of `batches` into `table`, streamed as they arrive;
        the number of rows copied."""

        async def records() -> AsyncIterator[tuple[Any, ...]]:
            async for batch in batches:
                for record in batch:
                    yield record

        self.copied = None
        status: str = await self.conn.copy_records_to_table(
            table, records=records(), columns=list(columns)
        )
        self.copied = _rowcount(status)
        return self.copied

    @asynccontextmanager
    async def copy_out(
        self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """`COPY (statement) TO STDOUT` as CSV without a header, piece by piece as the server
        sends it; a bounded queue holds the COPY back while the consumer is slow. Leaving the
        block early stops the COPY and marks the connection broken (asyncpg cannot reuse a
        connection whose COPY was interrupted)."""
        c = compile_statement(statement)
        queue: asyncio.Queue[Any] = asyncio.Queue(QUEUED_PIECES)

        async def produce() -> None:
            try:
                status: str = await self.conn.copy_from_query(
                    c.sql, *c.args(params), output=queue.put, format="csv"
                )
            except Exception as exc:
                await queue.put(exc)
            else:
                self.copied = _rowcount(status)
                await queue.put(_DONE)

        self.copied = None

        async def pieces() -> AsyncIterator[bytes]:
            while (piece := await queue.get()) is not _DONE:
                if isinstance(piece, Exception):
                    raise piece
                yield piece

        task = asyncio.create_task(produce())
        try:
            yield pieces()
        finally:
            if not task.done():
                self.broken = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
