"""Keyset paging (AIP-158): a page is "the rows after the last one I saw" in a fixed order, which
an index reads directly, so the ten-thousandth page costs what the first does.

An order is one column and the table's id after it (ties never leave a row between two pages).
A column that holds NULLs sorts them last in either direction, as List always has: such a
page is two index-ordered branches, the non-NULL values and then the NULLs by id, glued by
UNION ALL, because one row comparison cannot say "after (v, id), then every NULL" in a form an
index range serves. A position is [region, value, id]: region "v" (a value) or "n" (a NULL).

Statements are built here once per (table, filter, order, region) by the caller's cached
builders; the position travels as the bind parameters `k_value` and `k_id`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    Table,
    bindparam,
    select,
    tuple_,
    union_all,
)

from common.db.executor import Record
from common.pagetoken import invalid

VALUE, NULL = "v", "n"
_ABSENT = object()
Cells = Callable[[FromClause], Sequence[ColumnElement[Any]]]
# Builds a statement for the rows after a position in a region (None: from the start).
Builder = Callable[[str | None], Select[Any]]


@dataclass(frozen=True, slots=True)
class SortKey:
    """An order a List offers: `column` (NULLs last when `nulls`), then `id` the same way."""

    column: str
    descending: bool = False
    nulls: bool = False
    id: str = "id"

    @property
    def by_id(self) -> bool:
        return self.column == self.id


@dataclass(frozen=True, slots=True)
class Walk:
    """A query to read a page at a time in `key`'s order (an export): `page` selects a page's
    cells, `boundary` the key of its last row when the page is full, both binding `params`,
    `limit`, `skip` (limit − 1) and the position. `across_organizations`: its rows may be in
    more than one organization (a global-access caller's), so more than one shard on Citus."""

    key: SortKey
    params: Mapping[str, Any]
    page: Builder
    boundary: Builder
    across_organizations: bool = True


def order_by(
    source: FromClause, key: SortKey, *, values_only: bool = False
) -> list[ColumnElement[Any]]:
    """The ORDER BY of `key` over `source` (a table, or a subquery with the same columns).
    `values_only`: for rows known to hold a value, in the index's own NULL placement (a
    backward scan gives DESC NULLS FIRST), so the index serves it without a sort."""
    ident = source.c[key.id]
    ident_order = ident.desc() if key.descending else ident.asc()
    if key.by_id:
        return [ident_order]
    column = source.c[key.column]
    first = column.desc() if key.descending else column.asc()
    if key.nulls and not values_only:
        first = first.nulls_last()
    return [first, ident_order]


def _beyond(table: Table, key: SortKey, region: str) -> ColumnElement[bool]:
    """Rows after the bound position (`k_value`, `k_id`) within its region."""
    ident = table.c[key.id]
    after_id = bindparam("k_id", type_=ident.type)
    if key.by_id or region == NULL:
        return ident < after_id if key.descending else ident > after_id
    column = table.c[key.column]
    pair = tuple_(column, ident)
    bound = tuple_(bindparam("k_value", type_=column.type), after_id)
    return pair < bound if key.descending else pair > bound


def _branch(
    table: Table, where: Sequence[ColumnElement[bool]], key: SortKey, region: str, after: bool
) -> Select[Any]:
    column = table.c[key.column]
    clauses = [*where, column.is_(None) if region == NULL else column.is_not(None)]
    if after:
        clauses.append(_beyond(table, key, region))
    order = order_by(table, key, values_only=True)
    return (
        select(*table.c)
        .where(*clauses)
        .order_by(*(order[1:] if region == NULL else order))
        .limit(bindparam("limit"))
    )


def page(
    table: Table,
    where: Sequence[ColumnElement[bool]],
    key: SortKey,
    after: str | None,
    cells: Cells,
    *,
    nth: bool = False,
    parts: Sequence[ColumnElement[bool]] = (),
) -> Select[Any]:
    """`cells` of the first `:limit` rows of `where` in `key`'s order, after the position bound
    in `k_value`/`k_id` whose region is `after` (None: from the start). With `nth`, only the
    row at 0-based `:skip` of that page (an export's batch boundary).

    `parts` (a key without NULLs only) splits the rows into branches an index orders each,
    say one per value of a column the index leads with, merged like the NULL branch is."""
    if parts:
        assert not key.nulls, "parts are for keys without NULLs"
        branches = [
            select(*table.c)
            .where(*where, part, *([_beyond(table, key, VALUE)] if after is not None else []))
            .order_by(*order_by(table, key))
            .limit(bindparam("limit"))
            for part in parts
        ]
        merged = union_all(*branches).subquery("page")
        statement = select(*cells(merged)).order_by(*order_by(merged, key))
    elif not key.nulls or key.by_id:
        clauses = list(where)
        if after is not None:
            clauses.append(_beyond(table, key, VALUE))
        statement = select(*cells(table)).where(*clauses).order_by(*order_by(table, key))
    elif after == NULL:  # past every value: only NULLs are left
        branch = _branch(table, where, key, NULL, after=True).subquery("page")
        statement = select(*cells(branch)).order_by(*order_by(branch, key))
    else:
        values = _branch(table, where, key, VALUE, after=after == VALUE)
        nulls = _branch(table, where, key, NULL, after=False)
        both = union_all(values, nulls).subquery("page")
        statement = select(*cells(both)).order_by(*order_by(both, key))
    if nth:
        return statement.offset(bindparam("skip")).limit(1)
    return statement.limit(bindparam("limit"))


def _encode(value: Any) -> Any:
    if isinstance(value, dt.date):  # datetimes too
        return value.isoformat()
    return value


def position(record: Record, key: SortKey, value_label: str | None = None) -> list[Any]:
    """Where a page that ended with `record` (a row holding both key columns) ended. The sort
    value is read under `value_label` when the row has one: its column may be read cut."""
    value = record.get(value_label, _ABSENT) if value_label else _ABSENT
    if value is _ABSENT:
        value = record[key.column]
    region = NULL if key.nulls and value is None else VALUE
    return [region, None if key.by_id else _encode(value), record[key.id]]


def _decode(value: Any, python_type: type) -> Any:
    if python_type is dt.datetime and isinstance(value, str):
        moment = dt.datetime.fromisoformat(value)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        return moment
    if python_type is dt.date and isinstance(value, str):
        return dt.date.fromisoformat(value)
    if isinstance(value, python_type) and not (python_type is int and isinstance(value, bool)):
        return value
    raise ValueError(f"not a {python_type.__name__}")


def resume(table: Table, key: SortKey, position: Sequence[Any]) -> tuple[str, dict[str, Any]]:
    """The region and bind values to continue after `position` (read from a verified token,
    so a malformed one means a key or code change: INVALID_ARGUMENT all the same)."""
    try:
        region, value, ident = position
        if region not in (VALUE, NULL) or (region == NULL and not key.nulls):
            raise ValueError("bad region")
        if not isinstance(ident, str):
            raise ValueError("bad id")
        binds: dict[str, Any] = {"k_id": ident}
        if region == VALUE and not key.by_id:
            if value is None:
                raise ValueError("missing value")
            binds["k_value"] = _decode(value, table.c[key.column].type.python_type)
        return region, binds
    except (ValueError, TypeError):
        raise invalid() from None


def resume_from_record(record: Record, key: SortKey) -> tuple[str, dict[str, Any]]:
    """The region and bind values to continue after `record` (an export's batch boundary)."""
    value = record[key.column]
    region = NULL if key.nulls and value is None else VALUE
    return region, {"k_id": record[key.id], "k_value": value}
