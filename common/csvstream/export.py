"""One query's result as CSV chunks: COPY TO on PostgreSQL, a streamed cursor elsewhere."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncResult

from common.csvstream.pgcopy import copy_out
from common.csvstream.writer import CHUNK_BYTES, encode_rows, header_line, rechunk

YIELD_PER = 2000


async def _with_header(header: Sequence[str], pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield header_line(header, "\n")  # COPY ends its records with LF
    async for piece in pieces:
        yield piece


async def _partitions(result: AsyncResult[Any]) -> AsyncIterator[list[Any]]:
    async for partition in result.partitions():
        yield list(partition)


@asynccontextmanager
async def stream_csv(
    conn: AsyncConnection,
    statement: Select[Any],
    header: Sequence[str],
    *,
    label: str,
    chunk_bytes: int = CHUNK_BYTES,
) -> AsyncIterator[AsyncIterator[bytes]]:
    """CSV with `header` of every row `statement` selects; text cells must already be escaped
    (`formula_safe`). Memory stays at about one chunk whatever the row count. The query stops
    when the block is left, so a consumer that goes away never outlives the transaction."""
    if conn.dialect.name == "postgresql":
        async with copy_out(conn, statement) as pieces:
            yield rechunk(_with_header(header, pieces), label=label, chunk_bytes=chunk_bytes)
        return
    async with conn.stream(statement.execution_options(yield_per=YIELD_PER)) as result:
        yield encode_rows(header, _partitions(result), label=label, chunk_bytes=chunk_bytes)
