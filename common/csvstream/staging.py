"""A temporary staging table for an import: COPY on PostgreSQL, batched inserts on SQLite."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterable, Awaitable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    MetaData,
    Table,
    func,
    literal,
    literal_column,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from common.csvstream.pgcopy import copy_in
from common.db import UtcDateTime

SORT_MEMORY = "128MB"  # for this transaction only


async def stage(
    conn: AsyncConnection,
    batches: AsyncIterable[Sequence[tuple[Any, ...]]],
    *columns: Column[Any],
) -> Table:
    """A temporary table of `row_index`, `line`, then `columns` (the shape of
    `CsvReader.rows()` tuples), created and filled from `batches` inside the caller's
    transaction. Its name is unique per import; PostgreSQL drops it at commit, `drop_staging`
    elsewhere."""
    table = Table(
        f"csv_stage_{uuid.uuid4().hex[:12]}",
        MetaData(),
        Column("row_index", BigInteger, nullable=False),
        Column("line", BigInteger, nullable=False),
        *columns,
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )
    await conn.run_sync(table.create)
    if conn.dialect.name == "postgresql":
        # Services read staged rows back in file order: let that sort stay in memory.
        await conn.exec_driver_sql(f"SET LOCAL work_mem = '{SORT_MEMORY}'")
        await copy_in(conn, table.name, [c.name for c in table.columns], batches)
        return table
    marks = ", ".join("?" for _ in table.columns)
    sql = f"INSERT INTO temp.{table.name} VALUES ({marks})"  # noqa: S608  # our own name
    async for batch in batches:
        await _uninterrupted(conn.exec_driver_sql(sql, list(batch)))
    return table


async def _uninterrupted(statement: Awaitable[Any]) -> None:
    """Lets a statement finish when the RPC is cancelled meanwhile: SQLAlchemy would invalidate
    the interrupted connection, and aiosqlite would then keep SQLite's write lock forever."""
    task = asyncio.ensure_future(statement)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


async def drop_staging(conn: AsyncConnection, table: Table) -> None:
    if conn.dialect.name != "postgresql":
        await conn.run_sync(table.drop)


def random_uuid(conn: AsyncConnection) -> ColumnElement[Any]:
    """A new random (version 4) UUID per row, in the dialect's storage form for `Uuid`."""
    if conn.dialect.name == "postgresql":
        return func.gen_random_uuid()
    # SQLite stores Uuid as 32 hex digits; set the version and variant bits like uuid4.
    return literal_column(
        "lower(hex(randomblob(6)) || '4' || substr(hex(randomblob(2)), 2) || "
        "substr('89ab', 1 + (abs(random()) % 4), 1) || substr(hex(randomblob(8)), 2))"
    )


def row_timestamp(
    conn: AsyncConnection, start: dt.datetime, row_index: ColumnElement[Any]
) -> ColumnElement[Any]:
    """`start` plus `row_index` microseconds, so rows sort in file order by time: JavaScript's
    millisecond steps would put a million-row import 17 minutes into the future."""
    if conn.dialect.name == "postgresql":
        return literal(start, UtcDateTime) + row_index * literal_column("interval '1 microsecond'")
    # SQLite keeps UtcDateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' text in UTC.
    start = start.astimezone(dt.UTC)
    seconds = int(start.replace(microsecond=0).timestamp())
    micros = literal(start.microsecond) + row_index
    whole = func.strftime("%Y-%m-%d %H:%M:%S", literal(seconds) + micros // 1_000_000, "unixepoch")
    return whole.op("||")(func.printf(".%06d", micros % 1_000_000))
