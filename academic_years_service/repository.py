"""SQL for `academic_years`: create, read, update and delete within the caller's scope."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import cache
from typing import Any

import asyncpg
from sqlalchemy import ARRAY, Executable, bindparam, delete, func, insert, select, update

from academic_years_service.domain import (
    AcademicYear,
    AcademicYearFilter,
    AcademicYearValues,
    Ordering,
    Reference,
    Suggestion,
)
from academic_years_service.statements import (
    COLUMNS,
    SORT_VALUE,
    autocomplete_statement,
    count_statement,
    escape_like,
    filter_binds,
    get_statement,
    keyset_statement,
    page_statement,
    references_statement,
    sort_key,
)
from academic_years_service.tables import academic_years as t
from academic_years_service.tables import classes, request_ids, timetables
from common import etags, keyset
from common.db import UUID_TYPE, Record, utcnow
from common.errors import AlreadyExistsError, FailedPreconditionError
from common.idempotency import RequestIds
from common.pagination import PageRequest
from common.repository import TenantRepository

IMPORT_HASH_KEY = "academic_years_org_import_hash_key"
# Answers kept under request ids, written in the same transactions as these rows.
REQUEST_IDS = RequestIds(request_ids)
# Fields an update writes when present (organization has its own rule).
_WRITABLE = ("name", "start_date", "end_date", "current")


def to_domain(record: Record) -> AcademicYear:
    """The one row mapper: a record starting with `COLUMNS` (ids arrive as text)."""
    return AcademicYear(*record[: len(COLUMNS)])


def taken() -> AlreadyExistsError:
    return AlreadyExistsError(
        "an academic year with this id exists already", metadata={"field": "data.id"}
    )


def ambiguous(ids: Sequence[str]) -> FailedPreconditionError:
    """Ids are keyed within an organization, so two organizations may each hold one; a
    global-access caller naming such an id by itself does not say which year it means."""
    listed = sorted(set(ids))
    return FailedPreconditionError(
        f"id {listed[0]} names academic years of more than one organization; act on it with "
        "a token of the organization it belongs to",
        reason="AMBIGUOUS_ID",
        metadata={"ids": ",".join(listed[:20])},
    )


def only_one(records: list[Record]) -> Record | None:
    """The one year a by-id statement reached; for a global-access caller an id that two
    organizations hold reaches two, and the call fails (rolling back what it wrote)."""
    if len(records) > 1:
        raise ambiguous([records[0][0]])
    return records[0] if records else None


@cache
def _insert_statement() -> Executable:
    names = (
        "id", "name", "start_date", "end_date", "current", "organizationId",
        "createdById", "updatedById", "createdAt", "updatedAt",
    )  # fmt: skip
    values = {name: bindparam(name, type_=t.c[name].type) for name in names}
    return insert(t).values(values).returning(*COLUMNS)


def _one_year(global_access: bool, checked: bool) -> list[Any]:
    """The year `year_id` in scope; when `checked`, only at version `expected` (an etag's)."""
    where = [
        AcademicYearsRepository.readable(global_access),
        t.c.id == bindparam("year_id", type_=UUID_TYPE),
    ]
    if checked:
        where.append(t.c.version == bindparam("expected", type_=t.c.version.type))
    return where


@cache
def _soft_delete_statement(global_access: bool, many: bool, checked: bool = False) -> Executable:
    """Soft deletes one year (`year_id`, at version `expected` when `checked`) or several
    (`year_ids`, an array) in scope."""
    where = (
        [
            AcademicYearsRepository.readable(global_access),
            t.c.id == func.any(bindparam("year_ids", type_=ARRAY(UUID_TYPE))),
        ]
        if many
        else _one_year(global_access, checked)
    )
    statement = (
        update(t)
        .where(*where)
        .values(deletedAt=bindparam("now"), updatedAt=bindparam("now"), version=t.c.version + 1)
        .values(updatedById=bindparam("user", type_=UUID_TYPE))
    )
    return statement.returning(t.c.id) if many else statement.returning(*COLUMNS)


@cache
def _exists_statement(global_access: bool) -> Executable:
    return select(t.c.id).where(*_one_year(global_access, checked=False)).limit(1)


@cache
def _move_statement() -> Executable:
    """Moves a year (`year_id` of `from_org`) to `to_org` by deleting and inserting it: Citus
    cannot update a row's distribution column, since the row changes shard."""
    moved = (
        delete(t)
        .where(
            t.c.organizationId == bindparam("from_org", type_=UUID_TYPE),
            t.c.id == bindparam("year_id", type_=UUID_TYPE),
        )
        .returning(*t.c)
        .cte("moved")
    )
    values = [
        bindparam("to_org", type_=UUID_TYPE) if c.name == "organizationId" else moved.c[c.name]
        for c in t.c
    ]
    return (
        insert(t)
        .add_cte(moved)
        .from_select([c.name for c in t.c], select(*values))
        .returning(*COLUMNS)
    )


class AcademicYearsRepository(TenantRepository):
    """Only the live rows of the caller's organization (all organizations for global access)."""

    table = t

    def owner(self, requested: str | None) -> str:
        """The organization a new row belongs to: the token's, or any a global-access caller
        names; PERMISSION_DENIED for a caller with neither."""
        if self.scope.principal.global_access and requested is not None:
            return requested
        return self.scope.writable_organization()

    async def create(self, year_id: str, values: AcademicYearValues) -> AcademicYear:
        now, user = utcnow(), self.scope.user_id
        params = {
            "id": year_id,
            "name": values.name,
            "start_date": values.start_date,
            "end_date": values.end_date,
            "current": bool(values.current),
            "organizationId": self.owner(values.organization_id),
            "createdById": user,
            "updatedById": user,
            "createdAt": now,
            "updatedAt": now,
        }
        # The key is (organization, id): only the organization's own years can clash, so an id
        # another organization holds is as free, for this caller, as one nobody holds.
        try:
            record = await self.db.row(_insert_statement(), params)
        except asyncpg.UniqueViolationError:
            raise taken() from None
        assert record is not None
        return to_domain(record)

    async def _written(
        self, records: list[Record], year_id: str, etag: etags.Etag | None
    ) -> AcademicYear | None:
        """The year a by-id write reached. With an `etag`: ABORTED when the year in scope
        exists but is not the one the tag was read from (written since, or another row's tag),
        so the caller hears its tag is stale; the unit of work then rolls the write back."""
        record = only_one(records)
        year = None if record is None else to_domain(record)
        if etag is None:
            return year
        if year is not None:
            if etag.issued_for(year.organization_id, year.id):
                return year
            raise etags.mismatch("academic year")
        statement = _exists_statement(self.global_access)
        if await self.db.scalar(statement, self.binds(year_id=year_id)) is not None:
            raise etags.mismatch("academic year")
        return None

    async def update(
        self, year_id: str, values: AcademicYearValues, etag: etags.Etag | None = None
    ) -> AcademicYear | None:
        """Writes the fields present; with an `etag`, only to the year as it was read."""
        changes: dict[str, Any] = {
            name: getattr(values, name) for name in _WRITABLE if name in values.fields
        }
        changes.update(updatedAt=utcnow(), updatedById=self.scope.user_id)
        statement = _update_statement(self.global_access, tuple(sorted(changes)), bool(etag))
        params = self.binds(
            year_id=year_id, expected=None if etag is None else etag.version, **changes
        )
        year = await self._written(await self.db.rows(statement, params), year_id, etag)
        if year is None:
            return None
        target = values.organization_id if self.scope.principal.global_access else None
        if target is None or target == year.organization_id:
            return year
        move = {"from_org": year.organization_id, "to_org": target, "year_id": year_id}
        try:
            moved = await self.db.row(_move_statement(), move)
        except asyncpg.UniqueViolationError as exc:
            # The target organization holds this id, or this import hash, already.
            if exc.constraint_name == IMPORT_HASH_KEY:
                raise AlreadyExistsError(
                    "the organization holds a year with this year's importHash already",
                    metadata={"field": "data.organizationId"},
                ) from None
            raise taken() from None
        assert moved is not None
        return to_domain(moved)

    async def soft_delete(
        self, year_id: str, etag: etags.Etag | None = None
    ) -> AcademicYear | None:
        statement = _soft_delete_statement(self.global_access, False, bool(etag))
        params = self.binds(
            year_id=year_id,
            expected=None if etag is None else etag.version,
            now=utcnow(),
            user=self.scope.user_id,
        )
        return await self._written(await self.db.rows(statement, params), year_id, etag)

    async def soft_delete_many(self, year_ids: Sequence[str]) -> int:
        if not year_ids:
            return 0
        statement = _soft_delete_statement(self.global_access, many=True)
        params = self.binds(year_ids=list(year_ids), now=utcnow(), user=self.scope.user_id)
        deleted = [r[0] for r in await self.db.rows(statement, params)]
        if len(set(deleted)) < len(deleted):
            raise ambiguous([i for i in deleted if deleted.count(i) > 1])
        return len(deleted)

    async def get(self, year_id: str, max_references: int) -> AcademicYear | None:
        """The year with its organization (one joined query) and each association (one each):
        its first `max_references` by name, and one more when there are more."""
        records = await self.db.rows(get_statement(self.global_access), self.binds(year_id=year_id))
        record = only_one(records)
        if record is None:
            return None
        year = to_domain(record)
        org_id, org_name = record[len(COLUMNS) :]
        references = []
        for table in (classes, timetables):
            statement = references_statement(table, max_references)
            params = {"year_id": year.id, "org": year.organization_id}
            references.append([Reference(*r) for r in await self.db.rows(statement, params)])
        return replace(
            year,
            organization=Reference(org_id, org_name) if org_id is not None else None,
            classes=references[0],
            timetables=references[1],
        )

    async def page(
        self,
        f: AcademicYearFilter,
        ordering: Ordering,
        paging: PageRequest,
        position: list[Any] | None,
        *,
        counted: bool = True,
    ) -> tuple[list[AcademicYear], int | None, list[Any] | None]:
        """One page, by `page` number (OFFSET) or after `position` (keyset; the first page when
        neither is given); the count before paging unless not `counted`; and where the next
        page starts, unless this is the last one (a row more than the page is read to tell)."""
        shape, params = filter_binds(f)
        params.update(self.scope_binds)
        count = None
        if counted:
            count = int(await self.db.scalar(count_statement(self.global_access, shape), params))
        key = sort_key(ordering)
        if paging.offset:
            statement = page_statement(self.global_access, shape, ordering)
            params["offset"] = paging.offset
        else:
            after = None
            if position is not None:
                after, binds = keyset.resume(t, key, position)
                params.update(binds)
            statement = keyset_statement(self.global_access, shape, ordering, after)
        params["limit"] = paging.limit + 1
        records = await self.db.rows(statement, params)
        more = len(records) > paging.limit
        records = records[: paging.limit]
        last = keyset.position(records[-1], key, SORT_VALUE) if more else None
        return [to_domain(r) for r in records], count, last

    async def count(self, f: AcademicYearFilter) -> int:
        shape, params = filter_binds(f)
        params.update(self.scope_binds)
        return int(await self.db.scalar(count_statement(self.global_access, shape), params))

    async def autocomplete(
        self, query: str, query_id: str | None, limit: int, offset: int
    ) -> list[Suggestion]:
        statement = autocomplete_statement(self.global_access, bool(query), query_id is not None)
        params = self.binds(
            q_name=f"%{escape_like(query)}%", q_id=query_id, limit=limit, offset=offset
        )
        return [Suggestion(*r) for r in await self.db.rows(statement, params)]


@cache
def _update_statement(global_access: bool, fields: tuple[str, ...], checked: bool) -> Executable:
    """An update of `fields` (bound by their column names) of the year `year_id` in scope, at
    version `expected` when `checked`."""
    return (
        update(t)
        .where(*_one_year(global_access, checked))
        .values({name: bindparam(name, type_=t.c[name].type) for name in fields})
        .values(version=t.c.version + 1)
        .returning(*COLUMNS)
    )
