"""The staging table of an import: rows COPied in as they stream, then one INSERT … SELECT."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    MetaData,
    Table,
    literal,
    literal_column,
    text,
)
from sqlalchemy.schema import CreateTable

from common.db.executor import Executor
from common.db.types import UtcDateTime

# Services read staged rows back in file order: let that sort stay in memory.
SORT_MEMORY = text("SET LOCAL work_mem = '128MB'")


@dataclass(frozen=True)
class Staging:
    """A temporary table of `row_index`, `line`, then a service's columns (the shape of
    `CsvReader.rows()` tuples). Its name is fixed per service: a temporary table belongs to
    the session, and PostgreSQL drops it when the import's transaction ends, so statements
    built on it once serve every import."""

    table: Table
    create: CreateTable = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "create", CreateTable(self.table))


def staging(name: str, *columns: Column[Any]) -> Staging:
    table = Table(
        f"csv_stage_{name}",
        MetaData(),
        Column("row_index", BigInteger, nullable=False),
        Column("line", BigInteger, nullable=False),
        *columns,
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )
    return Staging(table)


async def stage(
    executor: Executor, staging: Staging, batches: AsyncIterable[Sequence[tuple[Any, ...]]]
) -> None:
    """Creates the staging table in the unit of work's transaction and COPies `batches` in."""
    await executor.execute(staging.create)
    await executor.execute(SORT_MEMORY)
    columns = [c.name for c in staging.table.columns]
    await executor.copy_in(staging.table.name, columns, batches)


def row_timestamp(start: Any, row_index: ColumnElement[Any]) -> ColumnElement[Any]:
    """`start` plus `row_index` microseconds, so rows sort in file order by time: JavaScript's
    millisecond steps would put a million-row import 17 minutes into the future."""
    stamp: ColumnElement[Any] = start + row_index * literal_column("interval '1 microsecond'")
    return stamp


def timestamp_param(value: dt.datetime) -> ColumnElement[Any]:
    """A timestamp bound as a value (for statements built per import)."""
    return literal(value, UtcDateTime)
