"""CSV import and export of academic years: columns, staging and their statements."""

from __future__ import annotations

from functools import cache, partial
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    Executable,
    Select,
    Text,
    and_,
    bindparam,
    cast,
    exists,
    false,
    func,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import insert

from academic_years_service.domain import MAX_NAME_LENGTH, AcademicYearFilter, Ordering
from academic_years_service.repository import AcademicYearsRepository
from academic_years_service.statements import (
    export_boundary_statement,
    export_statement,
    filter_binds,
    sort_key,
)
from academic_years_service.tables import academic_years as t
from common import keyset
from common.csvstream import CellError, CsvColumn, boolean, date, uuid_text
from common.csvstream.staging import Staging, row_timestamp, staging
from common.db import UUID_TYPE, UtcDateTime, utcnow

MAX_IMPORT_HASH_LENGTH = 255  # the column's width


def _import_hash(value: str) -> str:
    if len(value) > MAX_IMPORT_HASH_LENGTH:
        raise CellError(f"must be at most {MAX_IMPORT_HASH_LENGTH} characters")
    return value


def _csv_name(value: str) -> str:
    if len(value) > MAX_NAME_LENGTH:
        raise CellError(f"must be at most {MAX_NAME_LENGTH} characters")
    return value


CSV_COLUMNS = (
    CsvColumn("id", uuid_text),
    CsvColumn("name", _csv_name),
    CsvColumn("start_date", date),
    CsvColumn("end_date", date),
    CsvColumn("current", boolean),
    CsvColumn("importHash", _import_hash),
)

STAGING: Staging = staging(
    "academic_years",
    Column("id", Text),
    Column("name", Text),
    Column("start_date", Date),
    Column("end_date", Date),
    Column("current", Boolean),
    Column("importHash", Text),
)
_s = STAGING.table.c


@cache
def _repeats() -> Any:
    """(line, first line) of staged rows repeating an earlier row's id."""
    first = func.min(_s.line).over(partition_by=_s.id).label("first_line")
    numbered = select(_s.line, first).where(_s.id.is_not(None)).subquery()
    return select(numbered.c.line, numbered.c.first_line).where(
        numbered.c.line > numbered.c.first_line
    )


@cache
def _repeats_count() -> Select[Any]:
    return select(func.count()).select_from(_repeats().subquery())


@cache
def _repeats_first() -> Select[Any]:
    repeats = _repeats().subquery()
    return select(repeats).order_by(repeats.c.line).limit(bindparam("limit"))


@cache
def _taken_statement() -> Select[Any]:
    """Lines whose id the caller's organization holds already (even deleted), among the rows
    that will be inserted (their importHash is new to the organization). Ids are keyed within
    the organization: another organization's id is as free as an unused one, so the answer
    tells nothing about other organizations."""
    organization = bindparam("organization", type_=UUID_TYPE)
    other = t.alias("other")
    hash_taken = exists().where(
        other.c.organizationId == organization, other.c.importHash == _s.importHash
    )
    return (
        select(_s.line)
        .join_from(
            STAGING.table,
            t,
            and_(t.c.organizationId == organization, t.c.id == cast(_s.id, UUID_TYPE)),
        )
        .where(or_(_s.importHash.is_(None), ~hash_taken))
        .order_by(_s.line)
        .limit(bindparam("limit"))
    )


@cache
def _insert_statement() -> Executable:
    """The staged rows in file order, skipping every row whose importHash the organization
    holds (the key is unique per organization, so earlier rows of the file take it too)."""
    stamp = row_timestamp(bindparam("now", type_=UtcDateTime), _s.row_index)
    user = bindparam("user", type_=UUID_TYPE)
    source = select(
        func.coalesce(cast(_s.id, UUID_TYPE), func.gen_random_uuid()),
        _s.name,
        _s.start_date,
        _s.end_date,
        func.coalesce(_s.current, false()),
        _s.importHash,
        bindparam("organization", type_=UUID_TYPE),
        user,
        user,
        stamp,
        stamp,
    ).order_by(_s.row_index)
    columns = [
        "id", "name", "start_date", "end_date", "current", "importHash",
        "organizationId", "createdById", "updatedById", "createdAt", "updatedAt",
    ]  # fmt: skip
    return (
        insert(t)
        .from_select(columns, source)
        .on_conflict_do_nothing(index_elements=[t.c.organizationId, t.c.importHash])
    )


class AcademicYearsCsvRepository(AcademicYearsRepository):
    """The caller's years as a CSV import writes and an export reads them."""

    async def repeated_ids(self, limit: int) -> tuple[list[tuple[int, int]], int]:
        """(line, first line) of staged rows repeating an earlier row's id: the first
        `limit`, and how many there are."""
        total = int(await self.db.scalar(_repeats_count()))
        rows = await self.db.rows(_repeats_first(), {"limit": limit})
        return [(int(a), int(b)) for a, b in rows], total

    async def taken_ids(self, limit: int) -> list[int]:
        params = {"limit": limit, "organization": self.owner(None)}
        return [int(r[0]) for r in await self.db.rows(_taken_statement(), params)]

    async def apply_import(self) -> int:
        """Inserts the staged rows into the caller's organization; returns rows created."""
        params = {"now": utcnow(), "user": self.scope.user_id, "organization": self.owner(None)}
        return await self.db.execute(_insert_statement(), params)

    def export(
        self, f: AcademicYearFilter, ordering: Ordering, columns: tuple[str, ...]
    ) -> keyset.Walk:
        """Every row List would return, in its order, as `columns`, a keyset page at a time."""
        shape, params = filter_binds(f)
        params.update(self.scope_binds)
        scope = (self.global_access, shape, ordering)
        return keyset.Walk(
            sort_key(ordering),
            params,
            partial(_export_page, scope, columns),
            partial(export_boundary_statement, *scope),
            across_organizations=self.global_access,
        )


def _export_page(scope: tuple[Any, ...], columns: tuple[str, ...], after: str | None) -> Any:
    return export_statement(*scope, after, columns)
