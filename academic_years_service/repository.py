"""SQL for `academic_years`; every statement starts from the caller's tenant scope."""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import replace
from functools import cache, lru_cache
from typing import Any, TypeAlias

import asyncpg
from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Date,
    Row,
    Select,
    Table,
    Text,
    Update,
    Uuid,
    and_,
    bindparam,
    cast,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from academic_years_service.domain import (
    AcademicYear,
    AcademicYearFilter,
    AcademicYearValues,
    Bounds,
    Ordering,
    Reference,
    Suggestion,
)
from academic_years_service.tables import academic_years as t
from academic_years_service.tables import classes, organizations, timetables
from common.auth import Principal
from common.csvstream import formula_safe
from common.csvstream.staging import (
    drop_staging,
    random_uuid,
    row_timestamp,
    stage,
)
from common.db import (
    UUID_TYPE,
    Connection,
    driver_fetch,
    driver_statement,
    upsert_insert,
    utcnow,
)
from common.errors import AlreadyExistsError, ValidationError
from common.pagination import PageRequest
from common.tenancy import get_organization_id_or_global

_COLUMNS = (
    t.c.id,
    t.c.name,
    t.c.start_date,
    t.c.end_date,
    t.c.current,
    t.c.organizationId,
    t.c.createdById,
    t.c.updatedById,
    t.c.createdAt,
    t.c.updatedAt,
    t.c.deletedAt,
)
# API field names a caller may order by, and the columns they stand for.
SORT_COLUMNS = {
    "id": t.c.id,
    "name": t.c.name,
    "start_date": t.c.start_date,
    "end_date": t.c.end_date,
    "current": t.c.current,
    "createdAt": t.c.createdAt,
    "updatedAt": t.c.updatedAt,
}
_NULLABLE_SORT = frozenset({"name", "start_date", "end_date"})
# Fields an update writes when present (organization has its own rule).
_WRITABLE = ("name", "start_date", "end_date", "current")


def _to_domain(row: Row[Any] | Sequence[Any]) -> AcademicYear:
    return AcademicYear(*row[: len(_COLUMNS)])


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _from_record(r: Sequence[Any]) -> AcademicYear:
    """An asyncpg record of `_COLUMNS` (UUIDs as uuid.UUID) as the domain row."""
    return AcademicYear(
        str(r[0]), r[1], r[2], r[3], r[4], _str(r[5]), _str(r[6]), _str(r[7]), r[8], r[9], r[10]
    )


def escape_like(text: str) -> str:
    """`text` as a LIKE pattern that matches itself literally (escape character `\\`)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains(column: Any, text: str) -> ColumnElement[bool]:
    """Case-insensitive literal substring match, on PostgreSQL and SQLite alike."""
    result: ColumnElement[bool] = column.ilike(f"%{escape_like(text)}%", escape="\\")
    return result


# List, Count and Export statements are built once per filter shape (which filters are given,
# which bounds each range has, how many organizations) with bind parameters, and reused with
# the values of each call: building and compiling them per call cost more CPU than running them.
BoundsShape: TypeAlias = tuple[bool, bool, bool] | None  # (lower, upper, upper exclusive)
FilterShape: TypeAlias = tuple[
    bool, bool, BoundsShape, BoundsShape, BoundsShape, BoundsShape, bool, int | None
]


def _bounds(prefix: str, bounds: Bounds[Any] | None, params: dict[str, Any]) -> BoundsShape:
    if bounds is None:
        return None
    if bounds.lower is not None:
        params[f"{prefix}_lower"] = bounds.lower
    if bounds.upper is not None:
        params[f"{prefix}_upper"] = bounds.upper
    return bounds.lower is not None, bounds.upper is not None, bounds.upper_exclusive


def filter_binds(f: AcademicYearFilter) -> tuple[FilterShape, dict[str, Any]]:
    """The filter's shape (`filter_clauses` builds one statement per shape) and the values of
    its bind parameters."""
    params: dict[str, Any] = {}
    if f.id is not None:
        params["f_id"] = f.id
    if f.name is not None:
        params["f_name"] = f"%{escape_like(f.name)}%"
    if f.current is not None:
        params["f_current"] = f.current
    for i, organization in enumerate(f.organizations or ()):
        params[f"f_org_{i}"] = organization
    shape: FilterShape = (
        f.id is not None,
        f.name is not None,
        _bounds("f_calendar", f.calendar, params),
        _bounds("f_start", f.start_date, params),
        _bounds("f_end", f.end_date, params),
        _bounds("f_created", f.created_at, params),
        f.current is not None,
        None if f.organizations is None else len(f.organizations),
    )
    return shape, params


def _bind(name: str, values: Mapping[str, Any] | None, type_: Any = None) -> Any:
    """A bind parameter, holding its value when `values` are given (a statement used once)."""
    if values is None:
        return bindparam(name, type_=type_)
    return bindparam(name, values[name], type_=type_)


def within(
    column: Any, prefix: str, shape: BoundsShape, values: Mapping[str, Any] | None
) -> list[ColumnElement[bool]]:
    """`column` inside the bounds bound as `<prefix>_lower` and `<prefix>_upper`."""
    clauses: list[ColumnElement[bool]] = []
    if shape is None:
        return clauses
    lower, upper, upper_exclusive = shape
    if lower:
        clauses.append(column >= _bind(f"{prefix}_lower", values))
    if upper:
        bound = _bind(f"{prefix}_upper", values)
        clauses.append(column < bound if upper_exclusive else column <= bound)
    return clauses


def filter_clauses(
    shape: FilterShape, values: Mapping[str, Any] | None = None
) -> list[ColumnElement[bool]]:
    """The filter as WHERE clauses, all ANDed; `active` has no column and is not among them.

    Without `values` the clauses take the bind values of `filter_binds` at execution."""
    has_id, has_name, calendar, start, end, created, has_current, organizations = shape
    clauses: list[ColumnElement[bool]] = []
    if has_id:
        clauses.append(t.c.id == _bind("f_id", values))
    if has_name:
        clauses.append(t.c.name.ilike(_bind("f_name", values), escape="\\"))
    if calendar is not None:
        clauses.append(
            or_(
                and_(*within(t.c.start_date, "f_calendar", calendar, values)),
                and_(*within(t.c.end_date, "f_calendar", calendar, values)),
            )
        )
    clauses += within(t.c.start_date, "f_start", start, values)
    clauses += within(t.c.end_date, "f_end", end, values)
    clauses += within(t.c.createdAt, "f_created", created, values)
    if has_current:
        clauses.append(t.c.current == _bind("f_current", values))
    if organizations == 0:
        clauses.append(false())  # an empty list matches nothing
    elif organizations is not None:
        # Typed: a bind parameter inside IN (…) does not take the column's type by itself.
        orgs = [_bind(f"f_org_{i}", values, UUID_TYPE) for i in range(organizations)]
        clauses.append(t.c.organizationId.in_(orgs))
    return clauses


def order_by(ordering: Ordering) -> list[Any]:
    """The requested order plus `id` in the same direction, so pages never overlap."""
    column = SORT_COLUMNS[ordering.field]
    key = column.desc() if ordering.descending else column.asc()
    if ordering.field in _NULLABLE_SORT:
        key = key.nulls_last()  # the same place for NULL on both dialects
    if ordering.field == "id":
        return [key]
    return [key, t.c.id.desc() if ordering.descending else t.c.id.asc()]


def tenant_scope(organization_id: Any) -> ColumnElement[bool]:
    """Live rows of one organization; all organizations when `organization_id` is None."""
    clauses: list[ColumnElement[bool]] = [t.c.deletedAt.is_(None)]
    if organization_id is not None:
        clauses.append(t.c.organizationId == organization_id)
    return and_(*clauses)


def _listed(global_access: bool, shape: FilterShape) -> list[ColumnElement[bool]]:
    """The tenant scope (binding `scope_org` unless global) and the filter's clauses."""
    scope = tenant_scope(None if global_access else bindparam("scope_org"))
    return [scope, *filter_clauses(shape)]


@lru_cache(maxsize=256)
def _count_statement(global_access: bool, shape: FilterShape) -> Select[Any]:
    return select(func.count()).select_from(t).where(*_listed(global_access, shape))


@lru_cache(maxsize=512)
def _page_statement(global_access: bool, shape: FilterShape, ordering: Ordering) -> Select[Any]:
    """One page in `ordering`; binds `limit` and `offset` besides the filter's values."""
    return (
        select(*_COLUMNS)
        .where(*_listed(global_access, shape))
        .order_by(*order_by(ordering))
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )


# Get serves every detail view: its statements are built once, with bind parameters, since
# building them per call cost about as much as running them.
@cache
def _get_statement(global_access: bool) -> Select[Any]:
    o = organizations
    scope = tenant_scope(None if global_access else bindparam("scope_org"))
    return (
        select(*_COLUMNS, o.c.id, o.c.name)
        .select_from(t)
        .outerjoin(o, o.c.id == t.c.organizationId)
        .where(scope, t.c.id == bindparam("year_id"))
    )


@cache
def _references_statement(table: Table, without_org: bool) -> Select[Any]:
    """Live rows of `table` for a year, in the year's organization, by name."""
    org = table.c.organizationId
    same_org = org.is_(None) if without_org else org == bindparam("org")
    return (
        select(table.c.id, table.c.name)
        .where(
            table.c.academic_yearId == bindparam("year_id"), same_org, table.c.deletedAt.is_(None)
        )
        .order_by(table.c.name.asc().nulls_last(), table.c.id)
    )


class AcademicYearsRepository:
    """Only the live rows of the caller's organization (all organizations for global access)."""

    def __init__(self, conn: Connection, principal: Principal) -> None:
        """`conn` from `Database.transaction`, or for `get` from `Database.driver_transaction`,
        which runs Get's Core statements on asyncpg."""
        self._any = conn
        self._principal = principal
        self._organization_id = get_organization_id_or_global(principal)

    @property
    def _conn(self) -> AsyncConnection:
        if not isinstance(self._any, AsyncConnection):
            raise TypeError("this statement runs through SQLAlchemy: use Database.transaction")
        return self._any

    def _scope(self) -> ColumnElement[bool]:
        """The one tenant rule every statement below is built on."""
        return tenant_scope(self._organization_id)

    def scoped(self, *columns: Any) -> Select[Any]:
        return select(*columns).select_from(t).where(self._scope())

    def _list_binds(self, f: AcademicYearFilter) -> tuple[FilterShape, dict[str, Any]]:
        shape, params = filter_binds(f)
        if self._organization_id is not None:
            params["scope_org"] = self._organization_id
        return shape, params

    def _owner(self, requested: str | None) -> str:
        """The organization a new row belongs to: the token's, or any for global access."""
        if self._principal.global_access and requested is not None:
            return requested
        if self._principal.organization_id is None:
            raise ValidationError.field(
                "data.organization_id", "required for a caller without an organization"
            )
        return self._principal.organization_id

    async def create(self, year_id: str, values: AcademicYearValues) -> AcademicYear:
        now, user = utcnow(), self._principal.user_id
        statement = (
            insert(t)
            .values(
                id=year_id,
                name=values.name,
                start_date=values.start_date,
                end_date=values.end_date,
                current=bool(values.current),
                organizationId=self._owner(values.organization_id),
                createdById=user,
                updatedById=user,
                createdAt=now,
                updatedAt=now,
            )
            .returning(*_COLUMNS)
        )
        try:
            row = (await self._conn.execute(statement)).one()
        except IntegrityError:
            raise AlreadyExistsError(
                "an academic year with this id exists already",
                metadata={"field": "data.id"},
            ) from None
        return _to_domain(row)

    async def update(self, year_id: str, values: AcademicYearValues) -> AcademicYear | None:
        changes: dict[str, Any] = {
            name: getattr(values, name) for name in _WRITABLE if name in values.fields
        }
        if self._principal.global_access and values.organization_id is not None:
            changes["organizationId"] = values.organization_id
        changes.update(updatedAt=utcnow(), updatedById=self._principal.user_id)
        statement = (
            update(t).where(self._scope(), t.c.id == year_id).values(changes).returning(*_COLUMNS)
        )
        row = (await self._conn.execute(statement)).one_or_none()
        return None if row is None else _to_domain(row)

    def _soft_delete(self) -> Update:
        now = utcnow()
        return (
            update(t)
            .where(self._scope())
            .values(deletedAt=now, updatedAt=now, updatedById=self._principal.user_id)
        )

    async def soft_delete(self, year_id: str) -> AcademicYear | None:
        statement = self._soft_delete().where(t.c.id == year_id).returning(*_COLUMNS)
        row = (await self._conn.execute(statement)).one_or_none()
        return None if row is None else _to_domain(row)

    async def soft_delete_many(self, year_ids: Sequence[str]) -> int:
        if not year_ids:
            return 0
        result = await self._conn.execute(self._soft_delete().where(t.c.id.in_(year_ids)))
        return int(result.rowcount)

    async def get(self, year_id: str) -> AcademicYear | None:
        """The year with its organization (one joined query) and each association (one each)."""
        if not isinstance(self._any, AsyncConnection):
            return await self._get_driver(self._any, year_id)
        params = {"year_id": year_id, "scope_org": self._organization_id}
        statement = _get_statement(self._organization_id is None)
        row = (await self._conn.execute(statement, params)).one_or_none()
        if row is None:
            return None
        year = _to_domain(row)
        org_id, org_name = row[len(_COLUMNS) :]
        return replace(
            year,
            organization=Reference(org_id, org_name) if org_id is not None else None,
            classes=await self._references(classes, year),
            timetables=await self._references(timetables, year),
        )

    async def _references(self, table: Table, year: AcademicYear) -> list[Reference]:
        statement = _references_statement(table, year.organization_id is None)
        params = {"year_id": year.id, "org": year.organization_id}
        return [Reference(*row) for row in await self._conn.execute(statement, params)]

    async def _get_driver(self, driver: asyncpg.Connection, year_id: str) -> AcademicYear | None:
        """`get` with the same Core statements, compiled once, straight on asyncpg."""
        get = driver_statement(_get_statement(self._organization_id is None))
        row = await driver.fetchrow(
            get.sql, *get.args({"year_id": year_id, "scope_org": self._organization_id})
        )
        if row is None:
            return None
        year = _from_record(row)
        org_id, org_name = row[len(_COLUMNS) :]
        associations = []
        for table in (classes, timetables):
            refs = _references_statement(table, year.organization_id is None)
            params = {"year_id": year.id, "org": year.organization_id}
            found = await driver_fetch(driver, refs, params)
            associations.append([Reference(str(r[0]), r[1]) for r in found])
        return replace(
            year,
            organization=Reference(str(org_id), org_name) if org_id is not None else None,
            classes=associations[0],
            timetables=associations[1],
        )

    async def page(
        self, f: AcademicYearFilter, ordering: Ordering, page: PageRequest
    ) -> tuple[list[AcademicYear], int]:
        shape, params = self._list_binds(f)
        count = await self._count(shape, params)
        statement = _page_statement(self._organization_id is None, shape, ordering)
        paged = {**params, "limit": page.limit, "offset": page.offset}
        if not isinstance(self._any, AsyncConnection):
            return [_from_record(r) for r in await driver_fetch(self._any, statement, paged)], count
        return [_to_domain(row) for row in await self._any.execute(statement, paged)], count

    async def count(self, f: AcademicYearFilter) -> int:
        return await self._count(*self._list_binds(f))

    async def _count(self, shape: FilterShape, params: dict[str, Any]) -> int:
        statement = _count_statement(self._organization_id is None, shape)
        if not isinstance(self._any, AsyncConnection):
            ((count,),) = await driver_fetch(self._any, statement, params)
            return int(count)
        return int(await self._any.scalar(statement, params) or 0)

    async def autocomplete(
        self, query: str, query_id: str | None, limit: int, offset: int
    ) -> list[Suggestion]:
        statement = self.scoped(t.c.id, t.c.name)
        if query:
            matches = [contains(t.c.name, query)]
            if query_id is not None:
                matches.append(t.c.id == query_id)
            statement = statement.where(or_(*matches))
        statement = (
            statement.order_by(t.c.name.asc().nulls_last(), t.c.id).limit(limit).offset(offset)
        )
        return [Suggestion(*row) for row in await self._conn.execute(statement)]

    async def stage_import(self, batches: AsyncIterable[Sequence[tuple[Any, ...]]]) -> Table:
        """A staging table holding every row of the upload, in `CSV_COLUMNS` order."""
        return await stage(
            self._conn,
            batches,
            Column("id", Text),
            Column("name", Text),
            Column("start_date", Date),
            Column("end_date", Date),
            Column("current", Boolean),
            Column("importHash", Text),
        )

    async def repeated_ids(self, staging: Table, limit: int) -> tuple[list[tuple[int, int]], int]:
        """(line, first line) of rows repeating an earlier row's id: the first `limit`, and all."""
        s = staging.c
        first = func.min(s.line).over(partition_by=s.id).label("first_line")
        numbered = select(s.line, first).where(s.id.is_not(None)).subquery()
        repeats = select(numbered.c.line, numbered.c.first_line).where(
            numbered.c.line > numbered.c.first_line
        )
        total = await self._conn.scalar(select(func.count()).select_from(repeats.subquery()))
        rows = await self._conn.execute(repeats.order_by(numbered.c.line).limit(limit))
        return [(int(a), int(b)) for a, b in rows], int(total or 0)

    async def taken_ids(self, staging: Table, limit: int) -> list[int]:
        """Lines whose id belongs to an existing year (in any organization, even deleted),
        among the rows that will be inserted (their importHash is new)."""
        s, other = staging.c, t.alias("other")
        hash_taken = exists().where(other.c.importHash == s.importHash)
        statement = (
            select(s.line)
            .join_from(staging, t, t.c.id == self._year_id(s.id))
            .where(or_(s.importHash.is_(None), ~hash_taken))
            .order_by(s.line)
            .limit(limit)
        )
        return [int(line) for line in await self._conn.scalars(statement)]

    def _year_id(self, text: Any) -> Any:
        """A staged id in the column's own type: uuid on PostgreSQL, 32 hex digits on SQLite."""
        if self._conn.dialect.name == "postgresql":
            return cast(text, Uuid(as_uuid=False))
        return func.replace(func.lower(text), "-", "")

    async def apply_import(self, staging: Table) -> int:
        """Inserts the staged rows in file order, skipping every row whose importHash is taken
        (the column is UNIQUE, so earlier rows of the file take it too); returns rows created."""
        s, now, user = staging.c, utcnow(), self._principal.user_id
        source = (
            select(
                func.coalesce(self._year_id(s.id), random_uuid(self._conn)),
                s.name,
                s.start_date,
                s.end_date,
                func.coalesce(s.current, false()),
                s.importHash,
                literal(self._owner(None), UUID_TYPE),
                literal(user, UUID_TYPE),
                literal(user, UUID_TYPE),
                row_timestamp(self._conn, now, s.row_index),
                row_timestamp(self._conn, now, s.row_index),
            )
            .where(literal(True))
            .order_by(s.row_index)
        )
        columns = [
            "id", "name", "start_date", "end_date", "current", "importHash",
            "organizationId", "createdById", "updatedById", "createdAt", "updatedAt",
        ]  # fmt: skip
        statement = (
            upsert_insert(self._conn, t)
            .from_select(columns, source)
            .on_conflict_do_nothing(index_elements=[t.c.importHash])
        )
        result = await self._conn.execute(statement)
        await drop_staging(self._conn, staging)
        return int(result.rowcount)

    def export_statement(self, f: AcademicYearFilter, ordering: Ordering) -> Select[Any]:
        shape, params = filter_binds(f)
        columns = (t.c.id, formula_safe(t.c.name), t.c.start_date, t.c.end_date)
        statement = self.scoped(*columns).where(*filter_clauses(shape, params))
        return statement.order_by(*order_by(ordering))
