"""The academic-years export's `columns`: a file the import takes back as it is."""

from __future__ import annotations

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb
from google.api import annotations_pb2
from sqlalchemy import select

from academic_years_service.tables import academic_years as years
from tests.conftest import Harness
from tests.support.academic_years import staff, stub
from tests.support.callers import Caller, expect_error
from tests.support.csv import bodies, collect, csv_bytes, parse_csv

ALL = ["id", "name", "start_date", "end_date", "current", "importHash"]
ROWS = [
    ALL[1:],
    ["2023/24", "2023-09-01", "2024-06-30", "false", "sis-2023"],
    ['2024, "autumn"', "2024-09-01", "", "true", ""],
    ["=SUM(A1)", "", "2026-06-30", "false", "+hash"],
]


async def export(h: Harness, caller: Caller, *columns: str) -> bytes:
    request = pb.ListAcademicYearsRequest(field="createdAt", sort="asc", columns=list(columns))
    return await collect(stub(h).ExportAcademicYearsCsv(request, metadata=caller.md))


async def import_csv(h: Harness, caller: Caller, data: bytes) -> pb.ImportCsvSummary:
    return await stub(h).ImportAcademicYearsCsv(bodies(data), metadata=caller.md)


async def stored(h: Harness, org: str | None) -> list[tuple[object, ...]]:
    statement = (
        select(years.c.id, years.c.name, years.c.start_date, years.c.end_date, years.c.current)
        .add_columns(years.c.importHash)
        .where(years.c.organizationId == org)
        .order_by(years.c.createdAt)
    )
    return [tuple(r) for r in await h.rows(statement)]


@pytest.mark.asyncio
async def test_every_column_exported_imports_into_another_organization_unchanged(
    academic_years: Harness,
) -> None:
    source, target = staff(), staff()
    await import_csv(academic_years, source, csv_bytes(ROWS))
    exported = await export(academic_years, source, *ALL)
    table = parse_csv(exported)
    assert table[0] == ALL
    assert [r[1:] for r in table[1:]] == [
        ["2023/24", "2023-09-01", "2024-06-30", "false", "sis-2023"],
        ['2024, "autumn"', "2024-09-01", "", "true", ""],
        ["'=SUM(A1)", "", "2026-06-30", "false", "'+hash"],  # text cells stay escaped
    ]
    before = await stored(academic_years, source.org)
    # Ids and import hashes are unique table-wide: the file moves the years, so the
    # originals go first (as when an organization is merged into another).
    await academic_years.wipe()
    summary = await import_csv(academic_years, target, exported)
    assert (summary.rows_read, summary.created, summary.skipped) == (3, 3, 0)
    assert await export(academic_years, target, *ALL) == exported
    after = await stored(academic_years, target.org)
    escaped = {"=SUM(A1)": "'=SUM(A1)", "+hash": "'+hash"}  # the import keeps the `'`
    assert after == [tuple(escaped.get(v, v) for v in row) for row in before]


@pytest.mark.asyncio
async def test_columns_choose_and_order_the_cells_and_the_default_stays(
    academic_years: Harness,
) -> None:
    caller = staff()
    await import_csv(academic_years, caller, csv_bytes(ROWS[:2]))
    default = parse_csv(await export(academic_years, caller))
    assert default[0] == ["id", "name", "start_date", "end_date"]
    picked = parse_csv(await export(academic_years, caller, "current, name", "importHash"))
    assert picked == [["current", "name", "importHash"], ["false", "2023/24", "sis-2023"]]
    blank = parse_csv(await export(academic_years, caller, ""))
    assert blank[0] == default[0]


@pytest.mark.asyncio
async def test_an_unknown_or_repeated_column_is_invalid_argument_listing_the_columns(
    academic_years: Harness,
) -> None:
    error = await expect_error(
        export(academic_years, staff(), "id,name", "password"), grpc.StatusCode.INVALID_ARGUMENT
    )
    [(field, description)] = error.violations
    assert field == "columns[1]"
    assert description == (
        "'password' is not one of id, name, start_date, end_date, current, importHash"
    )
    error = await expect_error(
        export(academic_years, staff(), "name", "id,name"), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error.violations == [("columns[1]", "repeats name")]


def test_columns_is_a_query_parameter_of_the_rest_export() -> None:
    method = pb.DESCRIPTOR.services_by_name["AcademicYearsService"].methods_by_name[
        "ExportAcademicYearsCsv"
    ]
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    # A GET without a body: the transcoder takes every request field from the query string.
    assert rule.get == "/api/academic_years/export" and not rule.body
    field = method.input_type.fields_by_name["columns"]
    assert field.json_name == "columns"
    assert field.is_repeated
    assert field.type == field.TYPE_STRING
