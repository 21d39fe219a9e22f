"""The statements of `academic_years`, each built once per shape and reused with bind values.

List, Count and Export are built once per filter shape (which filters are given, which bounds
each range has, how many organizations) and order; Get once per scope. Building and compiling
them per call cost more CPU than running them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any, TypeAlias

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    false,
    func,
    literal_column,
    or_,
    select,
)

from academic_years_service.domain import MAX_NAME_LENGTH, AcademicYearFilter, Bounds, Ordering
from academic_years_service.limits import DEFAULT_MAX_REFERENCES
from academic_years_service.tables import academic_years as t
from academic_years_service.tables import organizations
from common import keyset
from common.csvstream import formula_safe
from common.db import UUID_TYPE
from common.repository import readable


def capped_name(column: Any, label: str = "name") -> ColumnElement[str]:
    """A name's first MAX_NAME_LENGTH + 1 characters: enough to see a longer one (stored before
    the limit, or in another slice's table), which a read then cuts (`service.as_read`)."""
    return func.left(column, literal_column(str(MAX_NAME_LENGTH + 1))).label(label)


COLUMNS = (
    t.c.id,
    capped_name(t.c.name),
    t.c.start_date,
    t.c.end_date,
    t.c.current,
    t.c.organizationId,
    t.c.createdById,
    t.c.updatedById,
    t.c.createdAt,
    t.c.updatedAt,
    t.c.deletedAt,
    t.c.version,
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
# The cells an export may write, by the import's column names; text escaped (`formula_safe`),
# `current` as true/false, so an export of every column imports back as it is.
# Each export column as a cell of a source's row (the table, or a keyset page of its rows).
EXPORT_CELLS: dict[str, Callable[[Any], ColumnElement[Any]]] = {
    "id": lambda s: s.c.id,
    "name": lambda s: formula_safe(s.c.name),
    "start_date": lambda s: s.c.start_date,
    "end_date": lambda s: s.c.end_date,
    "current": lambda s: cast(s.c.current, Text),
    "importHash": lambda s: formula_safe(s.c.importHash),
}
EXPORT_DEFAULT = ("id", "name", "start_date", "end_date")


def escape_like(text: str) -> str:
    """`text` as a LIKE pattern that matches itself literally (escape character `\\`)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


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


def within(column: Any, prefix: str, shape: BoundsShape) -> list[ColumnElement[bool]]:
    """`column` inside the bounds bound as `<prefix>_lower` and `<prefix>_upper`."""
    clauses: list[ColumnElement[bool]] = []
    if shape is None:
        return clauses
    lower, upper, upper_exclusive = shape
    if lower:
        clauses.append(column >= bindparam(f"{prefix}_lower"))
    if upper:
        bound: Any = bindparam(f"{prefix}_upper")
        clauses.append(column < bound if upper_exclusive else column <= bound)
    return clauses


def filter_clauses(shape: FilterShape) -> list[ColumnElement[bool]]:
    """The filter as WHERE clauses, all ANDed, taking the bind values of `filter_binds`;
    `active` has no column and is not among them."""
    has_id, has_name, calendar, start, end, created, has_current, organizations = shape
    clauses: list[ColumnElement[bool]] = []
    if has_id:
        clauses.append(t.c.id == bindparam("f_id"))
    if has_name:
        clauses.append(t.c.name.ilike(bindparam("f_name"), escape="\\"))
    if calendar is not None:
        clauses.append(
            or_(
                and_(*within(t.c.start_date, "f_calendar", calendar)),
                and_(*within(t.c.end_date, "f_calendar", calendar)),
            )
        )
    clauses += within(t.c.start_date, "f_start", start)
    clauses += within(t.c.end_date, "f_end", end)
    clauses += within(t.c.createdAt, "f_created", created)
    if has_current:
        clauses.append(t.c.current == bindparam("f_current"))
    if organizations == 0:
        clauses.append(false())  # an empty list matches nothing
    elif organizations is not None:
        # Typed: a bind parameter inside IN (…) does not take the column's type by itself.
        orgs = [bindparam(f"f_org_{i}", type_=UUID_TYPE) for i in range(organizations)]
        clauses.append(t.c.organizationId.in_(orgs))
    return clauses


def sort_key(ordering: Ordering) -> keyset.SortKey:
    """The order as a keyset key: the field, NULLs last where it has them, then `id`."""
    return keyset.SortKey(ordering.field, ordering.descending, ordering.field in _NULLABLE_SORT)


def order_by(ordering: Ordering) -> list[Any]:
    """The requested order plus `id` in the same direction, so pages never overlap."""
    return keyset.order_by(t, sort_key(ordering))


def _listed(global_access: bool, shape: FilterShape) -> list[ColumnElement[bool]]:
    """The tenant scope (binding `scope_org` unless global) and the filter's clauses."""
    return [readable(t, global_access), *filter_clauses(shape)]


@lru_cache(maxsize=256)
def count_statement(global_access: bool, shape: FilterShape) -> Select[Any]:
    return select(func.count()).select_from(t).where(*_listed(global_access, shape))


# A name is read cut to its cap, so an order by name also reads it whole under this label: the
# next page starts after the whole value (see `listed`).
SORT_VALUE = "sort_value"


def listed(ordering: Ordering) -> Callable[[Any], list[Any]]:
    """`COLUMNS` over a source (the table, or a keyset page's union of its rows), and, when the
    sort field is read cut (the name), the whole value as `SORT_VALUE`."""

    def cells(source: Any) -> list[Any]:
        row = [source.c.id, capped_name(source.c.name), *[source.c[c.name] for c in COLUMNS[2:]]]
        if ordering.field == "name":
            row.append(source.c.name.label(SORT_VALUE))
        return row

    return cells


@lru_cache(maxsize=512)
def page_statement(global_access: bool, shape: FilterShape, ordering: Ordering) -> Select[Any]:
    """One page by `page` number (OFFSET, for old callers); binds `limit` and `offset` besides
    the filter's values."""
    return (
        select(*listed(ordering)(t))
        .where(*_listed(global_access, shape))
        .order_by(*order_by(ordering))
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )


@lru_cache(maxsize=1024)
def keyset_statement(
    global_access: bool, shape: FilterShape, ordering: Ordering, after: str | None
) -> Select[Any]:
    """The first page (`after` None) or the page after a position in region `after`; binds
    `limit` and the position's `k_value`/`k_id` besides the filter's values."""
    where = _listed(global_access, shape)
    return keyset.page(t, where, sort_key(ordering), after, listed(ordering))


@cache
def get_statement(global_access: bool) -> Select[Any]:
    """A year with its organization's id and name, in one joined query. Two rows at most: a
    global-access caller's id may name a year in each of several organizations, which the
    repository refuses as ambiguous."""
    o = organizations
    scope = readable(t, global_access)
    return (
        select(*COLUMNS, o.c.id, capped_name(o.c.name, "name_1"))
        .select_from(t)
        .outerjoin(o, o.c.id == t.c.organizationId)
        .where(scope, t.c.id == bindparam("year_id"))
        .limit(literal_column("2"))
    )


@cache
def references_statement(table: Table, max_rows: int = DEFAULT_MAX_REFERENCES) -> Select[Any]:
    """Live rows of `table` for a year, in the year's organization, by name: the first
    `max_rows` and one more, which shows there are more (the read keeps `max_rows`)."""
    same_org = table.c.organizationId == bindparam("org")
    return (
        select(table.c.id, capped_name(table.c.name))
        .where(
            table.c.academic_yearId == bindparam("year_id"), same_org, table.c.deletedAt.is_(None)
        )
        .order_by(table.c.name.asc().nulls_last(), table.c.id)
        .limit(literal_column(str(max_rows + 1)))
    )


@lru_cache(maxsize=512)
def export_statement(
    global_access: bool,
    shape: FilterShape,
    ordering: Ordering,
    after: str | None,
    columns: tuple[str, ...] = EXPORT_DEFAULT,
) -> Select[Any]:
    """A batch of the rows List would return, as the CSV cells of `columns` (text escaped): a
    keyset page of `limit` rows after the position bound in `k_value`/`k_id` (region
    `after`)."""

    def cells(source: Any) -> list[Any]:
        return [EXPORT_CELLS[name](source) for name in columns]

    return keyset.page(t, _listed(global_access, shape), sort_key(ordering), after, cells)


@lru_cache(maxsize=512)
def export_boundary_statement(
    global_access: bool, shape: FilterShape, ordering: Ordering, after: str | None
) -> Select[Any]:
    """The sort key of the last row of that batch (the row at `skip`), if the batch is full."""
    key = sort_key(ordering)

    def cells(source: Any) -> list[Any]:
        return [source.c[key.column], source.c[key.id]]

    return keyset.page(t, _listed(global_access, shape), key, after, cells, nth=True)


@cache
def autocomplete_statement(global_access: bool, with_query: bool, with_id: bool) -> Select[Any]:
    """Ids and names of the scope's years, matching a name substring (`q_name`) or an exact id
    (`q_id`) when a query is given, by name; binds `limit` and `offset`."""
    statement = select(t.c.id, capped_name(t.c.name)).where(readable(t, global_access))
    if with_query:
        matches: list[ColumnElement[bool]] = [t.c.name.ilike(bindparam("q_name"), escape="\\")]
        if with_id:
            matches.append(t.c.id == bindparam("q_id", type_=UUID_TYPE))
        statement = statement.where(or_(*matches))
    return (
        statement.order_by(t.c.name.asc().nulls_last(), t.c.id)
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )
