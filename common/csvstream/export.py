"""One query's result as CSV chunks, straight from `COPY (query) TO STDOUT`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Executable

from common.csvstream.writer import CHUNK_BYTES, header_line, rechunk
from common.db.executor import Executor


async def _with_header(header: Sequence[str], pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield header_line(header)
    async for piece in pieces:
        yield piece


@asynccontextmanager
async def stream_csv(
    executor: Executor,
    statement: Executable,
    params: Mapping[str, Any],
    header: Sequence[str],
    *,
    label: str,
    chunk_bytes: int = CHUNK_BYTES,
) -> AsyncIterator[AsyncIterator[bytes]]:
    """CSV with `header` of every row `statement` selects; text cells must already be escaped
    (`formula_safe`). Memory stays at about one chunk whatever the row count. The query stops
    when the block is left, so a consumer that goes away never outlives the transaction."""
    async with executor.copy_out(statement, params) as pieces:
        yield rechunk(_with_header(header, pieces), label=label, chunk_bytes=chunk_bytes)
