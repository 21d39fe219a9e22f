"""Academic-years CSV import and export through a real server, on each backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb
from google.api import httpbody_pb2
from sqlalchemy import select

from academic_years_service.tables import academic_years as years
from tests.conftest import Harness, stop_harness
from tests.support.academic_years import CREATE, READ, admin, create, staff, stub
from tests.support.callers import Caller, expect_error, new_uuid
from tests.support.csv import Finished, bodies, collect, csv_bytes, parse_csv, start_observed

pytestmark = pytest.mark.asyncio

HEADER = ["id", "name", "start_date", "end_date", "current", "importHash"]
EXPORT_HEADER = ["id", "name", "start_date", "end_date"]


async def import_csv(h: Harness, caller: Caller, data: bytes, chunk: int = 64 * 1024):
    return await stub(h).ImportAcademicYearsCsv(bodies(data, chunk), metadata=caller.md)


async def export_csv(h: Harness, caller: Caller, **request) -> bytes:
    call = stub(h).ExportAcademicYearsCsv(
        pb.ListAcademicYearsRequest(**request), metadata=caller.md
    )
    return await collect(call)


async def stored(h: Harness) -> list[dict]:
    return [dict(r) for r in await h.rows(select(years).order_by(years.c.createdAt, years.c.id))]


def names(data: bytes) -> list[str]:
    return [row[1] for row in parse_csv(data)[1:]]


async def test_import_creates_years_in_file_order_with_owner_and_audit(
    academic_years: Harness,
) -> None:
    caller = staff()
    given = new_uuid()
    rows = [
        ["name", "start_date", "end_date", "current"],
        ["2024/25", "2024-09-01", "2025-07-31", "TRUE"],
        ["2025/26", "2025-09-01", "", "0"],
        ["", "", "", ""],
    ]
    summary = await import_csv(academic_years, caller, csv_bytes(rows))
    assert (summary.rows_read, summary.created, summary.skipped) == (3, 3, 0)
    first, second, third = await stored(academic_years)
    assert [first["name"], second["name"], third["name"]] == ["2024/25", "2025/26", None]
    assert str(first["start_date"]) == "2024-09-01" and first["current"] is True
    assert second["end_date"] is None and second["current"] is False and third["current"] is False
    assert first["createdAt"] < second["createdAt"] < third["createdAt"]
    for row in (first, second, third):
        assert row["organizationId"] == caller.org
        assert row["createdById"] == caller.sub == row["updatedById"]
        assert row["deletedAt"] is None and row["importHash"] is None
    with_id = await import_csv(academic_years, caller, csv_bytes([["id", "name"], [given, "x"]]))
    assert with_id.created == 1
    assert (await stored(academic_years))[-1]["id"] == given


async def test_import_hash_skips_rows_seen_in_the_file_or_the_table(
    academic_years: Harness,
) -> None:
    caller = staff()
    first = csv_bytes(
        [["name", "importHash"], ["a", "h1"], ["b", "h2"], ["a again", "h1"], ["c", ""]]
    )
    summary = await import_csv(academic_years, caller, first)
    assert (summary.rows_read, summary.created, summary.skipped) == (4, 3, 1)
    again = csv_bytes([["name", "importHash"], ["b2", "h2"], ["d", "h3"], ["e", ""]])
    summary = await import_csv(academic_years, caller, again)
    assert (summary.rows_read, summary.created, summary.skipped) == (3, 2, 1)
    assert [r["name"] for r in await stored(academic_years)] == ["a", "b", "c", "d", "e"]
    summary = await import_csv(academic_years, caller, first)
    assert (summary.created, summary.skipped) == (1, 3)  # only the row without a hash


async def test_a_hash_taken_in_another_organization_is_free(academic_years: Harness) -> None:
    # importHash is unique per organization (migration 0003; before, it was unique table-wide
    # and the second import skipped the row, telling that another organization held the hash).
    file = csv_bytes([["name", "importHash"], ["a", "h"]])
    await import_csv(academic_years, staff(), file)
    summary = await import_csv(academic_years, staff(), file)
    assert (summary.created, summary.skipped) == (1, 0)


async def test_repeated_ids_in_the_file_name_their_lines(academic_years: Harness) -> None:
    a, b = new_uuid(), new_uuid()
    rows = [["id", "name"], [a, "x"], [b, "y"], [a.upper(), "z"], [b, "w"]]
    error = await expect_error(
        import_csv(academic_years, staff(), csv_bytes(rows)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error.violations == [
        ("line 4: id", "repeats the id of line 2"),
        ("line 5: id", "repeats the id of line 3"),
    ]
    assert await stored(academic_years) == []


async def test_an_id_that_exists_already_is_already_exists(academic_years: Harness) -> None:
    caller = staff()
    existing = await create(academic_years, caller, name="mine")
    rows = [["id", "name"], [new_uuid(), "fine"], [existing.id, "clash"]]
    error = await expect_error(
        import_csv(academic_years, caller, csv_bytes(rows)), grpc.StatusCode.ALREADY_EXISTS
    )
    assert error.message.startswith("line 3:") and error.metadata["lines"] == "3"
    assert [r["name"] for r in await stored(academic_years)] == ["mine"]


async def test_another_organizations_id_imports_like_a_free_one(academic_years: Harness) -> None:
    # Ids are keyed within the organization (migration 0003; before, this was ALREADY_EXISTS).
    theirs = await create(academic_years, staff(), name="theirs")
    caller = staff()
    summary = await import_csv(
        academic_years, caller, csv_bytes([["id", "name"], [theirs.id, "mine"]])
    )
    assert (summary.created, summary.skipped) == (1, 0)
    names = {(r["organizationId"], r["name"]) for r in await stored(academic_years)}
    assert names == {(theirs.organization_id, "theirs"), (caller.org, "mine")}


async def test_export_then_import_into_another_organization_reproduces_the_years(
    academic_years: Harness,
) -> None:
    source, target = staff(), staff()
    rows = [
        ["name", "start_date", "end_date"],
        ['2023, autumn "A"', "2023-09-01", "2024-01-31"],
        ["multi\nline", "", "2024-06-30"],
        ["ünï ✓", "2024-09-01", ""],
    ]
    await import_csv(academic_years, source, csv_bytes(rows))
    exported = await export_csv(academic_years, source, field="createdAt", sort="asc")
    table = parse_csv(exported)
    assert table[0] == EXPORT_HEADER and [r[1:] for r in table[1:]] == [
        ['2023, autumn "A"', "2023-09-01", "2024-01-31"],
        ["multi\nline", "", "2024-06-30"],
        ["ünï ✓", "2024-09-01", ""],
    ]
    # Ids are unique table-wide: without the id column the rows get new ones ...
    without_ids = csv_bytes([EXPORT_HEADER[1:], *[r[1:] for r in table[1:]]])
    summary = await import_csv(academic_years, target, without_ids)
    assert summary.created == 3
    copy = parse_csv(await export_csv(academic_years, target, field="createdAt", sort="asc"))
    assert [r[1:] for r in copy] == [r[1:] for r in table]
    # ... and once the originals are gone, the file as exported restores them, ids included.
    await academic_years.wipe()
    assert (await import_csv(academic_years, target, exported)).created == 3
    restored = await export_csv(academic_years, target, field="createdAt", sort="asc")
    assert restored == exported


async def test_export_applies_list_filters_and_order_without_paging(
    academic_years: Harness,
) -> None:
    caller = staff()
    rows = [["name", "start_date", "current"]] + [
        [f"year {i:02d}", f"20{10 + i}-09-01", "1" if i % 5 == 0 else "0"] for i in range(25)
    ]
    await import_csv(academic_years, caller, csv_bytes(rows))
    everything = names(await export_csv(academic_years, caller, field="name", sort="asc"))
    assert everything == [f"year {i:02d}" for i in range(25)]  # more than a page
    newest_first = names(await export_csv(academic_years, caller))
    assert newest_first == everything[::-1]
    current = names(await export_csv(academic_years, caller, current=True, field="name"))
    assert current == ["year 00", "year 05", "year 10", "year 15", "year 20"]
    ranged = await export_csv(
        academic_years, caller, start_date_range=["2030-01-01", "2032-12-31"], name="year 2"
    )
    assert sorted(names(ranged)) == ["year 20", "year 21", "year 22"]
    error = await expect_error(
        export_csv(academic_years, caller, field="password"), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error.violations[0][0] == "field"


async def test_export_is_tenant_scoped_and_skips_deleted_years(academic_years: Harness) -> None:
    caller, stranger = staff(), staff()
    await import_csv(academic_years, caller, csv_bytes([["name"], ["mine"], ["gone"]]))
    await import_csv(academic_years, stranger, csv_bytes([["name"], ["theirs"]]))
    gone = next(r for r in await stored(academic_years) if r["name"] == "gone")
    await stub(academic_years).DeleteAcademicYear(
        pb.DeleteAcademicYearRequest(id=gone["id"]), metadata=caller.md
    )
    assert names(await export_csv(academic_years, caller)) == ["mine"]
    assert names(await export_csv(academic_years, caller, organization=stranger.org)) == []
    assert sorted(names(await export_csv(academic_years, admin()))) == ["mine", "theirs"]


async def test_export_escapes_names_a_spreadsheet_would_run(academic_years: Harness) -> None:
    caller = staff()
    risky = ["=HYPERLINK(1)", "+1", "-1", "@x", "\tt", "\rr", "a=b"]
    await import_csv(academic_years, caller, csv_bytes([["name"], *[[n] for n in risky]]))
    exported = names(await export_csv(academic_years, caller, field="createdAt", sort="asc"))
    assert exported == ["'=HYPERLINK(1)", "'+1", "'-1", "'@x", "'\tt", "'\rr", "a=b"]


async def test_permissions_create_to_import_read_to_export(academic_years: Harness) -> None:
    org = new_uuid()
    reader = Caller(org=org, permissions=[READ])
    writer = Caller(org=org, custom_permissions=[CREATE])
    data = csv_bytes([["name"], ["x"]])
    await expect_error(import_csv(academic_years, reader, data), grpc.StatusCode.PERMISSION_DENIED)
    assert (await import_csv(academic_years, writer, data)).created == 1
    await expect_error(export_csv(academic_years, writer), grpc.StatusCode.PERMISSION_DENIED)
    assert names(await export_csv(academic_years, reader)) == ["x"]


async def test_bom_crlf_and_quoted_newlines_in_one_byte_chunks(academic_years: Harness) -> None:
    caller = staff()
    rows = [["name", "current"], ['a,\r\n"b"', "True"], ["c", "FALSE"]]
    data = csv_bytes(rows, newline="\r\n", bom=True)
    summary = await import_csv(academic_years, caller, data, 1)
    assert summary.created == 2
    first, second = await stored(academic_years)
    assert (first["name"], first["current"], second["name"]) == ('a,\r\n"b"', True, "c")


MALFORMED = {
    "unknown column": (b"name,colour\n", "line 1: colour"),
    "duplicate column": (b"name,start_date,name\n", "line 1: name"),
    "export-only header typo": (b"Name\n", "line 1: Name"),
    "id not a UUID": (b"id,name\nnot-a-uuid,x\n", "line 2: id"),
    "date with slashes": (b"name,start_date\na,2024-01-01\nb,2024/01/02\n", "line 3: start_date"),
    "date without padding": (b"name,end_date\na,2024-1-2\n", "line 2: end_date"),
    "date not on the calendar": (b"name,end_date\na,2023-02-29\n", "line 2: end_date"),
    "timestamp for a date": (b"name,start_date\na,2024-01-01T00:00:00Z\n", "line 2: start_date"),
    "current as yes": (b"name,current\na,yes\n", "line 2: current"),
    "hash too long": (b"name,importHash\na," + b"h" * 256 + b"\n", "line 2: importHash"),
    "invalid UTF-8 in a name": (b"name\nok\n\xc3\x28\n", "line 3"),
    "unclosed quote": (b'name\n"ok"\n"never\n', "line 3"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_files_name_the_line_and_write_nothing(
    academic_years: Harness, name: str
) -> None:
    data, field = MALFORMED[name]
    error = await expect_error(
        import_csv(academic_years, staff(), data, 5), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error.violations[0][0] == field, error.violations
    assert error.domain == "academic_years.v1"
    assert await stored(academic_years) == []


async def test_a_cancelled_upload_writes_nothing_and_the_server_serves_on(
    academic_years: Harness,
) -> None:
    from academic_years_service.app import DEFINITION

    finished = Finished()
    harness = await start_observed(
        DEFINITION, academic_years.db.url, academic_years.metadata, finished
    )
    try:
        caller = staff()
        half_sent, never = asyncio.Event(), asyncio.Event()
        rows = csv_bytes([[f"year {i}", "2024-09-01", f"hash {i}"] for i in range(20_000)])

        async def upload() -> AsyncIterator[httpbody_pb2.HttpBody]:
            yield httpbody_pb2.HttpBody(data=b"name,start_date,importHash\n")
            async for body in bodies(rows, 16 * 1024):
                yield body
            half_sent.set()
            await never.wait()

        call = stub(harness).ImportAcademicYearsCsv(upload(), metadata=caller.md)
        await half_sent.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await finished.wait("ImportAcademicYearsCsv") == grpc.StatusCode.CANCELLED
        assert await stored(harness) == []
        assert (await import_csv(harness, caller, csv_bytes([["name"], ["after"]]))).created == 1
    finally:
        await stop_harness(harness)
