"""A query's result as CSV chunks, straight from `COPY (query) TO STDOUT`: in one COPY, or
a COPY per keyset page of an index-ordered walk (`stream_csv_pages`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Executable

from common import keyset
from common.csvstream.writer import CHUNK_BYTES, header_line, rechunk
from common.db.executor import Executor

# Rows per COPY of an export that spans organizations: large enough that a COPY's start (its
# boundary query, the literal rendering asyncpg does in two round trips, planning) is noise,
# small enough that each one is an index-ordered LIMIT query each shard answers with its first
# rows on Citus. Memory does not depend on it: a COPY streams. 10,000 cost about 2.4 ms a batch,
# a quarter of the export's time.
EXPORT_BATCH_ROWS = 100_000


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


async def _pages(executor: Executor, walk: keyset.Walk, batch_rows: int) -> AsyncIterator[bytes]:
    """Every page of `walk`, each one COPY; the key of a full page's last row (read after
    it, on the same snapshot) is where the next page starts. A page the COPY did not fill is
    the last one: no boundary query scans it a second time.

    A walk within one organization is one page (LIMIT NULL): its index orders it on one node
    (on Citus the organization's shard), and pages would only add a boundary query and a COPY
    start per batch (a fifth of a 1M-row export's time)."""
    limit = batch_rows if walk.across_organizations else None
    after: str | None = None
    position: dict[str, Any] = {}
    while True:
        params = {**walk.params, **position, "limit": limit, "skip": batch_rows - 1}
        async with executor.copy_out(walk.page(after), params) as pieces:
            async for piece in pieces:
                yield piece
        if limit is None or (executor.copied is not None and executor.copied < limit):
            return
        last = await executor.row(walk.boundary(after), params)
        if last is None:
            return
        after, position = keyset.resume_from_record(last, walk.key)


async def stream_csv_pages(
    executor: Executor,
    walk: keyset.Walk,
    header: Sequence[str],
    *,
    label: str,
    batch_rows: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> AsyncIterator[bytes]:
    """CSV with `header` of every row `walk` reads. Across organizations, a keyset page per
    COPY: each is a LIMIT query an index orders (on Citus, per shard), where one ORDER BY over
    a whole distributed table would be gathered and sorted on the coordinator; within one, a
    single COPY. Run it on one snapshot (`unit_of_work(..., snapshot=True)`), so the boundary
    reads and the COPYs see the same rows. Memory stays at about one chunk."""
    pages = _pages(executor, walk, batch_rows or EXPORT_BATCH_ROWS)
    async for chunk in rechunk(_with_header(header, pages), label=label, chunk_bytes=chunk_bytes):
        yield chunk
