"""SQL for `academic_years`: create, read, update and delete within the caller's scope."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import cache
from typing import Any

import asyncpg
from sqlalchemy import ARRAY, Executable, bindparam, func, insert, update

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
    autocomplete_statement,
    count_statement,
    escape_like,
    filter_binds,
    get_statement,
    page_statement,
    references_statement,
)
from academic_years_service.tables import academic_years as t
from academic_years_service.tables import classes, timetables
from common.db import UUID_TYPE, Record, utcnow
from common.errors import AlreadyExistsError
from common.pagination import PageRequest
from common.repository import TenantRepository

# Fields an update writes when present (organization has its own rule).
_WRITABLE = ("name", "start_date", "end_date", "current")


def to_domain(record: Record) -> AcademicYear:
    """The one row mapper: a record starting with `COLUMNS` (ids arrive as text)."""
    return AcademicYear(*record[: len(COLUMNS)])


@cache
def _insert_statement() -> Executable:
    names = (
        "id", "name", "start_date", "end_date", "current", "organizationId",
        "createdById", "updatedById", "createdAt", "updatedAt",
    )  # fmt: skip
    values = {name: bindparam(name, type_=t.c[name].type) for name in names}
    return insert(t).values(values).returning(*COLUMNS)


@cache
def _soft_delete_statement(global_access: bool, many: bool) -> Executable:
    """Soft deletes one year (`year_id`) or several (`year_ids`, an array) in scope."""
    target = (
        t.c.id == func.any(bindparam("year_ids", type_=ARRAY(UUID_TYPE)))
        if many
        else t.c.id == bindparam("year_id", type_=UUID_TYPE)
    )
    statement = (
        update(t)
        .where(AcademicYearsRepository.readable(global_access), target)
        .values(deletedAt=bindparam("now"), updatedAt=bindparam("now"))
        .values(updatedById=bindparam("user", type_=UUID_TYPE))
    )
    return statement if many else statement.returning(*COLUMNS)


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
        try:
            record = await self.db.row(_insert_statement(), params)
        except asyncpg.UniqueViolationError:
            raise AlreadyExistsError(
                "an academic year with this id exists already",
                metadata={"field": "data.id"},
            ) from None
        assert record is not None
        return to_domain(record)

    async def update(self, year_id: str, values: AcademicYearValues) -> AcademicYear | None:
        """Writes the fields present; built per call, since which fields are present varies."""
        changes: dict[str, Any] = {
            name: getattr(values, name) for name in _WRITABLE if name in values.fields
        }
        if self.scope.principal.global_access and values.organization_id is not None:
            changes["organizationId"] = values.organization_id
        changes.update(updatedAt=utcnow(), updatedById=self.scope.user_id)
        statement = _update_statement(self.global_access, tuple(sorted(changes)))
        record = await self.db.row(statement, self.binds(year_id=year_id, **changes))
        return None if record is None else to_domain(record)

    async def soft_delete(self, year_id: str) -> AcademicYear | None:
        statement = _soft_delete_statement(self.global_access, many=False)
        params = self.binds(year_id=year_id, now=utcnow(), user=self.scope.user_id)
        record = await self.db.row(statement, params)
        return None if record is None else to_domain(record)

    async def soft_delete_many(self, year_ids: Sequence[str]) -> int:
        if not year_ids:
            return 0
        statement = _soft_delete_statement(self.global_access, many=True)
        params = self.binds(year_ids=list(year_ids), now=utcnow(), user=self.scope.user_id)
        return await self.db.execute(statement, params)

    async def get(self, year_id: str, max_references: int) -> AcademicYear | None:
        """The year with its organization (one joined query) and each association (one each):
        its first `max_references` by name, and one more when there are more."""
        record = await self.db.row(get_statement(self.global_access), self.binds(year_id=year_id))
        if record is None:
            return None
        year = to_domain(record)
        org_id, org_name = record[len(COLUMNS) :]
        references = []
        for table in (classes, timetables):
            statement = references_statement(table, year.organization_id is None, max_references)
            params = {"year_id": year.id, "org": year.organization_id}
            references.append([Reference(*r) for r in await self.db.rows(statement, params)])
        return replace(
            year,
            organization=Reference(org_id, org_name) if org_id is not None else None,
            classes=references[0],
            timetables=references[1],
        )

    async def page(
        self, f: AcademicYearFilter, ordering: Ordering, page: PageRequest
    ) -> tuple[list[AcademicYear], int]:
        shape, params = filter_binds(f)
        params.update(self.scope_binds)
        count = int(await self.db.scalar(count_statement(self.global_access, shape), params))
        statement = page_statement(self.global_access, shape, ordering)
        paged = {**params, "limit": page.limit, "offset": page.offset}
        return [to_domain(r) for r in await self.db.rows(statement, paged)], count

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
def _update_statement(global_access: bool, fields: tuple[str, ...]) -> Executable:
    """An update of `fields` (bound by their column names) of the year `year_id` in scope."""
    return (
        update(t)
        .where(
            AcademicYearsRepository.readable(global_access),
            t.c.id == bindparam("year_id", type_=UUID_TYPE),
        )
        .values({name: bindparam(name, type_=t.c[name].type) for name in fields})
        .returning(*COLUMNS)
    )
