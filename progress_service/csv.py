"""CSV import and export of the caller's progress: columns, staging and their statements."""

from __future__ import annotations

from functools import cache, partial
from typing import Any

from sqlalchemy import (
    Column,
    Executable,
    Integer,
    Select,
    Text,
    and_,
    bindparam,
    cast,
    func,
    literal,
    select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB, insert

from common import keyset
from common.config import Limits
from common.csvstream import (
    CellError,
    CsvColumn,
    bounded_json,
    bounded_text,
    formula_safe,
    int32,
)
from common.csvstream.staging import Staging, row_timestamp, staging
from common.db import UUID_TYPE, UtcDateTime, utcnow
from common.errors import FieldViolation
from common.repository import TenantRepository
from progress_service.domain import PROGRESS_TYPE_VALUES
from progress_service.repository import on_conflict_update
from progress_service.tables import user_progress as t
from progress_service.validation import check_progress_type, clean_item_id


def _csv_progress_type(value: str) -> str:
    if violations := check_progress_type(value, ""):
        raise CellError(violations[0].description)
    return value


def _csv_item_id(value: str) -> str:
    violations: list[FieldViolation] = []
    item_id = clean_item_id(value, "", violations)
    if violations:
        raise CellError(violations[0].description)
    return item_id


def csv_columns(limits: Limits) -> tuple[CsvColumn, ...]:
    """The import's columns, each held to the limits a write through the API is held to."""
    metadata = bounded_json(limits.progress_metadata_max_bytes, limits.progress_metadata_max_depth)
    return (
        CsvColumn("progress_type", _csv_progress_type, required=True, nullable=False),
        CsvColumn("item_id", _csv_item_id, required=True, nullable=False),
        CsvColumn("value", bounded_text(limits.progress_value_max_chars)),
        CsvColumn("score", int32),
        CsvColumn("metadata", metadata),
    )


CSV_HEADER = ("progress_type", "item_id", "value", "score", "metadata")

STAGING: Staging = staging(
    "user_progress",
    Column("progress_type", Text),
    Column("item_id", Text),
    Column("value", Text),
    Column("score", Integer),
    Column("metadata", Text),
)


@cache
def _latest() -> Any:
    """The last staged row of each (type, item): a file may repeat a key, the last row wins."""
    s = STAGING.table.c
    ranked = select(
        s.row_index,
        cast(s.progress_type, t.c.progress_type.type).label("progress_type"),
        s.item_id,
        s.value,
        s.score,
        cast(s["metadata"], JSONB).label("metadata"),
        func.row_number()
        .over(partition_by=(s.progress_type, s.item_id), order_by=s.row_index.desc())
        .label("rank"),
    ).subquery("ranked")
    return select(ranked).where(ranked.c.rank == 1).subquery("latest")


def _owner(name: str) -> Any:
    return bindparam(name, type_=UUID_TYPE)


@cache
def _existing_statement() -> Select[Any]:
    """How many of the file's keys the caller has already (those will be updated)."""
    latest = _latest()
    return (
        select(func.count())
        .select_from(latest)
        .join(
            t,
            and_(
                t.c.organizationId == _owner("b_org"),
                t.c.userId == _owner("scope_user"),
                t.c.deletedAt.is_(None),
                t.c.progress_type == latest.c.progress_type,
                t.c.item_id == latest.c.item_id,
            ),
        )
    )


@cache
def _upsert_statement() -> Executable:
    latest = _latest()
    stamp = row_timestamp(bindparam("b_now", type_=UtcDateTime), latest.c.row_index)
    source = select(
        func.gen_random_uuid(),
        latest.c.progress_type,
        latest.c.item_id,
        latest.c.value,
        latest.c.score,
        latest.c["metadata"],
        _owner("b_org"),
        _owner("b_campus"),
        _owner("scope_user"),
        _owner("scope_user"),
        _owner("scope_user"),
        stamp,
        stamp,
    )
    columns = [
        "id", "progress_type", "item_id", "value", "score", "metadata",
        "organizationId", "campusId", "userId", "createdById", "updatedById",
        "createdAt", "updatedAt",
    ]  # fmt: skip
    return on_conflict_update(insert(t).from_select(columns, source))


class ProgressCsvRepository(TenantRepository):
    """The caller's rows as a CSV import writes and an export reads them."""

    table = t
    owned_by_user = True

    async def apply_import(self) -> tuple[int, int]:
        """Upserts the last staged row of each (type, item) in one statement; (created, updated)."""
        params = self.binds(
            b_org=self.scope.writable_organization(),
            b_campus=self.scope.campus_id,
            b_now=utcnow(),
            scope_user=self.scope.user_id,
        )
        updated = int(await self.db.scalar(_existing_statement(), params))
        written = await self.db.execute(_upsert_statement(), params)
        return written - updated, updated

    def export(self, progress_type: str | None) -> keyset.Walk:
        """The caller's rows (of one type, when given) as CSV cells, oldest first, a keyset
        page at a time."""
        with_type = progress_type is not None
        return keyset.Walk(
            EXPORT_ORDER,
            self.binds(b_type=progress_type),
            partial(_export_statement, self.global_access, with_type),
            partial(_export_boundary, self.global_access, with_type),
            across_organizations=self.global_access,
        )


# Oldest first: the order a re-import keeps.
EXPORT_ORDER = keyset.SortKey("createdAt")


def _export_cells(source: Any) -> list[Any]:
    return [
        type_coerce(source.c.progress_type, Text),
        formula_safe(source.c.item_id),
        formula_safe(source.c.value),
        source.c.score,
        type_coerce(source.c["metadata"], Text),
    ]


def _export_where(global_access: bool, with_type: bool) -> list[Any]:
    where = [ProgressCsvRepository.readable(global_access)]
    if with_type:
        where.append(t.c.progress_type == bindparam("b_type"))
    return where


def _types(with_type: bool) -> list[Any]:
    """Every type, one branch each, when the export is not of one type: the list index leads
    with (user, type), so each branch reads in creation order and the page merges them."""
    if with_type:
        return []
    return [
        t.c.progress_type == literal(value, t.c.progress_type.type)
        for value in PROGRESS_TYPE_VALUES
    ]


@cache
def _export_statement(global_access: bool, with_type: bool, after: str | None) -> Select[Any]:
    where = _export_where(global_access, with_type)
    return keyset.page(t, where, EXPORT_ORDER, after, _export_cells, parts=_types(with_type))


@cache
def _export_boundary(global_access: bool, with_type: bool, after: str | None) -> Select[Any]:
    def cells(source: Any) -> list[Any]:
        return [source.c.createdAt, source.c.id]

    where = _export_where(global_access, with_type)
    return keyset.page(t, where, EXPORT_ORDER, after, cells, nth=True, parts=_types(with_type))
