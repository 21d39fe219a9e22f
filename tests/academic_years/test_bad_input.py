"""Garbage in for academic years: never INTERNAL or UNKNOWN, and stored rows stay valid."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from academic_years_service.domain import MAX_NAME_LENGTH
from academic_years_service.tables import academic_years as years_table
from common.validation import NUL_MESSAGE
from tests.conftest import Harness
from tests.progress.test_bad_input import FUZZ, INT32, TEXT
from tests.support.academic_years import seed_years, staff, stub
from tests.support.callers import Caller, expect_error, new_uuid, rich_error

pytestmark = pytest.mark.asyncio

DATEISH = st.one_of(
    TEXT,
    st.dates().map(str),
    st.sampled_from(["0001-01-01", "9999-12-31", "2024-02-30", "2024-13-01", "0000-00-00"]),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.sampled_from(
        ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "2024-01-01T00:00:00Z"]
    ),
)
IDISH = st.one_of(TEXT, st.uuids().map(str), st.just("00000000-0000-0000-0000-000000000000"))
OPTIONAL_TEXT = st.none() | TEXT


async def outcome(call: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, await call
    except grpc.aio.AioRpcError as err:
        error = rich_error(err)
    assert error.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.message
    assert error.code != grpc.StatusCode.UNAVAILABLE, error.message  # the database is up
    return error.code, error


async def rows_of_org(h: Harness, org: str | None) -> list[dict[str, Any]]:
    rows = await h.rows(select(years_table).where(years_table.c.organizationId == org))
    return [dict(r) for r in rows]


def assert_valid(row: dict[str, Any], caller: Caller) -> None:
    assert row["organizationId"] == caller.org
    assert row["name"] is None or (
        "\x00" not in row["name"] and len(row["name"]) <= MAX_NAME_LENGTH
    )


def year_input(draw_values: dict[str, Any]) -> pb.AcademicYearInput:
    return pb.AcademicYearInput(**{k: v for k, v in draw_values.items() if v is not None})


INPUTS = st.fixed_dictionaries(
    {
        "id": st.none() | IDISH,
        "name": OPTIONAL_TEXT,
        "start_date": st.none() | DATEISH,
        "end_date": st.none() | DATEISH,
        "current": st.none() | st.booleans(),
        "organization_id": st.none() | IDISH,
    }
)


@FUZZ
@given(values=INPUTS)
async def test_fuzzed_create_and_update(
    academic_years_harness: Harness, values: dict[str, Any]
) -> None:
    h, caller = academic_years_harness, staff()
    code, created = await outcome(
        stub(h).CreateAcademicYear(
            pb.CreateAcademicYearRequest(data=year_input(values)), metadata=caller.md
        )
    )
    if code == grpc.StatusCode.OK:
        assert created.organization_id == caller.org
        assert created.name == (values["name"] or "") and created.current == bool(values["current"])
    target = created.id if code == grpc.StatusCode.OK else new_uuid()
    update_values = {**values, "id": None}
    await outcome(
        stub(h).UpdateAcademicYear(
            pb.UpdateAcademicYearRequest(id=target, data=year_input(update_values)),
            metadata=caller.md,
        )
    )
    for row in await rows_of_org(h, caller.org):
        assert_valid(row, caller)


FILTERS = st.fixed_dictionaries(
    {
        "id": IDISH,
        "name": TEXT,
        "calendar_start": DATEISH,
        "calendar_end": DATEISH,
        "start_date_range": st.lists(DATEISH, max_size=3),
        "end_date_range": st.lists(DATEISH, max_size=3),
        "created_at_range": st.lists(DATEISH, max_size=3),
        "organization": st.one_of(TEXT, st.lists(st.uuids().map(str), max_size=3).map("|".join)),
        "field": st.one_of(TEXT, st.sampled_from(["name", "createdAt", "id", "start_date"])),
        "sort": st.one_of(TEXT, st.sampled_from(["asc", "desc", "ASC"])),
        "limit": INT32,
        "page": INT32,
    }
)


@FUZZ
@given(filters=FILTERS, query=TEXT, limit=INT32, offset=INT32)
async def test_fuzzed_reads_never_fail_inside_or_leak(
    academic_years_harness: Harness, filters: dict[str, Any], query: str, limit: int, offset: int
) -> None:
    h, caller = academic_years_harness, staff()
    await seed_years(h, {"name": "mine", "organizationId": caller.org})
    await seed_years(h, {"name": "theirs", "organizationId": new_uuid()})
    request = pb.ListAcademicYearsRequest(**filters)
    code, listed = await outcome(stub(h).ListAcademicYears(request, metadata=caller.md))
    if code == grpc.StatusCode.OK:
        assert {r.organization_id for r in listed.rows} <= {caller.org}
    else:
        assert code == grpc.StatusCode.INVALID_ARGUMENT and listed.violations
    code, counted = await outcome(stub(h).CountAcademicYears(request, metadata=caller.md))
    if code == grpc.StatusCode.OK:
        assert counted.count <= 1
    code, suggested = await outcome(
        stub(h).AutocompleteAcademicYears(
            pb.AutocompleteAcademicYearsRequest(query=query, limit=limit, offset=offset),
            metadata=caller.md,
        )
    )
    if code == grpc.StatusCode.OK:
        assert {i.label for i in suggested.items} <= {"mine"}


@FUZZ
@given(year_id=IDISH, ids=st.lists(IDISH, max_size=5))
async def test_fuzzed_ids_never_fail_inside(
    academic_years_harness: Harness, year_id: str, ids: list[str]
) -> None:
    h, caller = academic_years_harness, staff()
    [victim] = await seed_years(h, {"name": "victim", "organizationId": new_uuid()})
    for call in (
        stub(h).GetAcademicYear(pb.GetAcademicYearRequest(id=year_id), metadata=caller.md),
        stub(h).DeleteAcademicYear(pb.DeleteAcademicYearRequest(id=year_id), metadata=caller.md),
        stub(h).BatchDeleteAcademicYears(
            pb.BatchDeleteAcademicYearsRequest(ids=[*ids, victim]), metadata=caller.md
        ),
    ):
        code, result = await outcome(call)
        assert code in (
            grpc.StatusCode.OK,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
        )
        if code == grpc.StatusCode.OK and hasattr(result, "deleted_count"):
            assert result.deleted_count == 0
    deleted = await h.scalar(select(years_table.c.deletedAt).where(years_table.c.id == victim))
    assert deleted is None


@pytest.mark.parametrize(
    ("rpc", "field"),
    [
        ("create", "data.name"),
        ("update", "data.name"),
        ("list", "name"),
        ("count", "name"),
        ("autocomplete", "query"),
    ],
)
@pytest.mark.parametrize("bad", ["a\x00b", "x" * (MAX_NAME_LENGTH + 1)])
async def test_nul_or_overlong_text_is_invalid_argument_naming_the_field(
    academic_years: Harness, rpc: str, field: str, bad: str
) -> None:
    caller = staff()
    [mine] = await seed_years(academic_years, {"name": "mine", "organizationId": caller.org})
    s = stub(academic_years)
    calls = {
        "create": lambda: s.CreateAcademicYear(
            pb.CreateAcademicYearRequest(data=pb.AcademicYearInput(name=bad)), metadata=caller.md
        ),
        "update": lambda: s.UpdateAcademicYear(
            pb.UpdateAcademicYearRequest(id=mine, data=pb.AcademicYearInput(name=bad)),
            metadata=caller.md,
        ),
        "list": lambda: s.ListAcademicYears(
            pb.ListAcademicYearsRequest(name=bad), metadata=caller.md
        ),
        "count": lambda: s.CountAcademicYears(
            pb.ListAcademicYearsRequest(name=bad), metadata=caller.md
        ),
        "autocomplete": lambda: s.AutocompleteAcademicYears(
            pb.AutocompleteAcademicYearsRequest(query=bad), metadata=caller.md
        ),
    }
    err = await expect_error(calls[rpc](), grpc.StatusCode.INVALID_ARGUMENT)
    [(got_field, description)] = err.violations
    assert got_field == field
    assert description == NUL_MESSAGE if "\x00" in bad else "at most" in description
    assert [r["name"] for r in await rows_of_org(academic_years, caller.org)] == ["mine"]


async def test_longest_name_is_stored_whatever_its_characters(academic_years: Harness) -> None:
    caller = staff()
    # 4-byte characters that do not compress: the worst case for the name index.
    name = "".join(chr(0x10000 + (i * 7919) % 0xFFFF) for i in range(MAX_NAME_LENGTH))
    created = await stub(academic_years).CreateAcademicYear(
        pb.CreateAcademicYearRequest(data=pb.AcademicYearInput(name=name)), metadata=caller.md
    )
    assert created.name == name


@pytest.mark.parametrize(
    "bounds",
    [
        ["", "9999-12-31"],
        ["0001-01-01", "9999-12-31"],
        ["9999-12-31T23:59:59-23:59", ""],
        ["0001-01-01T00:00:00+23:59", ""],
        ["", "9999-12-31T23:59:59.999999999Z"],
    ],
)
async def test_created_at_range_at_the_calendar_edges(
    academic_years: Harness, bounds: list[str]
) -> None:
    caller = staff()
    await seed_years(academic_years, {"name": "mine", "organizationId": caller.org})
    code, result = await outcome(
        stub(academic_years).ListAcademicYears(
            pb.ListAcademicYearsRequest(created_at_range=bounds), metadata=caller.md
        )
    )
    if code == grpc.StatusCode.OK:
        assert [r.name for r in result.rows] == ["mine"]
    else:
        assert [f for f, _ in result.violations] == ["createdAtRange[0]"]


@pytest.mark.parametrize(
    "method", ["CreateAcademicYear", "ListAcademicYears", "AutocompleteAcademicYears"]
)
async def test_undecodable_request_is_invalid_argument(
    academic_years: Harness, method: str
) -> None:
    from tests.progress.test_bad_input import RAW_UPSERTS

    raw = academic_years.channel.unary_unary(f"/academic_years.v1.AcademicYearsService/{method}")
    for payload in (RAW_UPSERTS["corrupt_wire_format"], b"\x0a\x02\xed\xa0"):
        err = await expect_error(
            raw(payload, metadata=staff().md), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert err.reason == "MALFORMED_REQUEST" and err.domain == "academic_years.v1"
