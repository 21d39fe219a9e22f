"""PostgreSQL COPY through the SQLAlchemy connection's own asyncpg connection and transaction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncConnection

_DONE = object()
QUEUED_PIECES = 64


async def driver_connection(conn: AsyncConnection) -> Any:
    """The asyncpg connection under `conn`. The caller must already have executed a statement
    through `conn`, so that SQLAlchemy's transaction has begun on it."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


async def copy_in(
    conn: AsyncConnection,
    table: str,
    columns: Sequence[str],
    batches: AsyncIterable[Sequence[tuple[Any, ...]]],
) -> None:
    """Binary COPY of every row of `batches` into `table`, streamed as the batches arrive."""

    async def records() -> AsyncIterator[tuple[Any, ...]]:
        async for batch in batches:
            for record in batch:
                yield record

    driver = await driver_connection(conn)
    await driver.copy_records_to_table(table, records=records(), columns=list(columns))


def compile_positional(conn: AsyncConnection, statement: Select[Any]) -> tuple[str, list[Any]]:
    """SQL text with $n placeholders and its arguments, bind processors applied."""
    compiled = statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    processors = compiled._bind_processors
    args = []
    for name in compiled.positiontup or ():
        value = params[name]
        processor: Any = processors.get(name)
        args.append(processor(value) if processor is not None else value)
    return compiled.string, args


@asynccontextmanager
async def copy_out(
    conn: AsyncConnection, statement: Select[Any]
) -> AsyncIterator[AsyncIterator[bytes]]:
    """`COPY (statement) TO STDOUT` as CSV without a header, piece by piece as the server sends
    it; a bounded queue holds the COPY back while the consumer is slow. Leaving the block stops
    the COPY before the caller's transaction ends, however the consumer stopped."""
    sql, args = compile_positional(conn, statement)
    await conn.exec_driver_sql("SELECT 1")  # begins SQLAlchemy's transaction on the driver
    driver = await driver_connection(conn)
    queue: asyncio.Queue[Any] = asyncio.Queue(QUEUED_PIECES)

    async def produce() -> None:
        try:
            await driver.copy_from_query(sql, *args, output=queue.put, format="csv")
        except Exception as exc:
            await queue.put(exc)
        else:
            await queue.put(_DONE)

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
            # asyncpg cannot reuse a connection whose COPY was interrupted: close it (the
            # server then ends the query) and let the pool open a fresh one.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await conn.invalidate()
            await conn.rollback()
