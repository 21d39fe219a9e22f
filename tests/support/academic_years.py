"""Helpers the academic-years tests share: callers, calls and rows seeded straight into the db."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from academic_years.v1 import academic_years_pb2 as pb
from academic_years.v1 import academic_years_pb2_grpc
from sqlalchemy import Table, select

from academic_years_service.tables import academic_years
from common.db import Database
from tests.conftest import Harness
from tests.support.callers import Caller, new_uuid

READ, CREATE, UPDATE, DELETE = (
    f"{verb}_ACADEMIC_YEARS" for verb in ("READ", "CREATE", "UPDATE", "DELETE")
)
ALL = [READ, CREATE, UPDATE, DELETE]


def staff(org: str | None = None, **kw: Any) -> Caller:
    """A caller with every academic-years permission in `org` (a new one by default)."""
    return Caller(org=org or new_uuid(), permissions=list(ALL), **kw)


def admin(org: str | None = None) -> Caller:
    """A global-access caller with every permission."""
    return Caller(org=org, global_access=True, permissions=list(ALL))


def stub(h: Harness) -> academic_years_pb2_grpc.AcademicYearsServiceStub:
    return academic_years_pb2_grpc.AcademicYearsServiceStub(h.channel)


async def create(h: Harness, caller: Caller, **fields: Any) -> pb.AcademicYear:
    data = pb.AcademicYearInput(**fields)
    return await stub(h).CreateAcademicYear(
        pb.CreateAcademicYearRequest(data=data), metadata=caller.md
    )


async def listing(h: Harness, caller: Caller, **kw: Any) -> pb.ListAcademicYearsResponse:
    return await stub(h).ListAcademicYears(pb.ListAcademicYearsRequest(**kw), metadata=caller.md)


async def count(h: Harness, caller: Caller, **kw: Any) -> int:
    response = await stub(h).CountAcademicYears(
        pb.ListAcademicYearsRequest(**kw), metadata=caller.md
    )
    return response.count


async def get(h: Harness, caller: Caller, year_id: str) -> pb.AcademicYear:
    return await stub(h).GetAcademicYear(pb.GetAcademicYearRequest(id=year_id), metadata=caller.md)


async def autocomplete(h: Harness, caller: Caller, **kw: Any) -> list[tuple[str, str]]:
    response = await stub(h).AutocompleteAcademicYears(
        pb.AutocompleteAcademicYearsRequest(**kw), metadata=caller.md
    )
    return [(item.id, item.label) for item in response.items]


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def _year_row(row: dict[str, Any], stamp: dt.datetime) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": new_uuid(),
        "name": None,
        "start_date": None,
        "end_date": None,
        "current": False,
        "organizationId": None,
        "createdById": None,
        "updatedById": None,
        "createdAt": stamp,
        "updatedAt": stamp,
        "deletedAt": None,
    }
    for key in ("start_date", "end_date"):
        if isinstance(row.get(key), str):
            row = {**row, key: dt.date.fromisoformat(row[key])}
    values.update(row)
    return values


async def seed_years(h: Harness, *rows: dict[str, Any]) -> list[str]:
    """Insert years directly (createdAt one second apart in the given order); returns ids."""
    base = utc("2025-01-01T00:00:00")
    values = [_year_row(row, base + dt.timedelta(seconds=i)) for i, row in enumerate(rows)]
    for value in values:
        await h.execute(academic_years.insert().values(value))
    return [v["id"] for v in values]


async def seed(h: Harness, table: Table, *rows: dict[str, Any]) -> list[str]:
    """Insert reference rows (organizations, classes, timetables); returns their ids."""
    blank = dict.fromkeys(table.c.keys())
    values = [{**blank, "id": new_uuid(), **row} for row in rows]
    for value in values:
        await h.execute(table.insert().values(value))
    return [v["id"] for v in values]


async def stored(h: Harness, year_id: str) -> dict[str, Any]:
    [row] = await h.rows(select(academic_years).where(academic_years.c.id == year_id))
    return dict(row)


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """Every SQL statement the services' units of work send while the block runs."""
    seen: list[str] = []
    open_unit = db.unit_of_work

    def logged(query: Any) -> None:
        seen.append(query.query)

    class LoggingUnit:
        def __init__(self, unit: Any) -> None:
            self.unit = unit

        async def __aenter__(self) -> Any:
            entered = await self.unit.__aenter__()
            entered.executor.conn.add_query_logger(logged)
            return entered

        async def __aexit__(self, *exc: Any) -> Any:
            self.unit.executor.conn.remove_query_logger(logged)
            return await self.unit.__aexit__(*exc)

    db.unit_of_work = lambda *a: LoggingUnit(open_unit(*a))  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del db.unit_of_work
