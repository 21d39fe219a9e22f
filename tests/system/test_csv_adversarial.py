"""CSV import and export under attack: garbage files, NUL, other tenants' rows and ids."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from progress.v1 import progress_pb2 as ppb
from sqlalchemy import select

from academic_years_service.domain import MAX_NAME_LENGTH
from academic_years_service.tables import academic_years as years_table
from common.validation import NUL_MESSAGE
from progress_service.tables import user_progress
from tests.academic_years import test_csv as ay_csv
from tests.conftest import Harness
from tests.progress import test_csv as p_csv
from tests.progress.test_bad_input import FUZZ, TEXT
from tests.support.academic_years import admin, seed_years, staff
from tests.support.callers import Caller, expect_error, rich_error
from tests.support.csv import collect, csv_bytes, parse_csv

pytestmark = pytest.mark.asyncio

P_HEADER = ["progress_type", "item_id", "value", "score", "metadata"]
SIGN = "sign_learned"


async def progress_rows(h: Harness, caller: Caller) -> list[dict[str, Any]]:
    rows = await h.rows(select(user_progress).where(user_progress.c.userId == caller.sub))
    return [dict(r) for r in rows]


async def year_rows(h: Harness, org: str | None) -> list[dict[str, Any]]:
    rows = await h.rows(select(years_table).where(years_table.c.organizationId == org))
    return [dict(r) for r in rows]


async def outcome(call: Any) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, await call
    except grpc.aio.AioRpcError as err:
        error = rich_error(err)
    assert error.code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), error.message
    return error.code, error


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ([SIGN, "a\x00b", "", "", ""], "line 3: item_id"),
        ([SIGN, "a", "v\x00", "", ""], "line 3: value"),
        ([SIGN, "a", "", "", '{"k": "\\u0000"}'], "line 3: metadata"),
        ([SIGN, "a", "", "", '{"\\u0000": 1}'], "line 3: metadata"),
    ],
)
async def test_progress_import_refuses_nul_naming_line_and_column(
    progress: Harness, row: list[str], field: str
) -> None:
    caller = Caller()
    data = csv_bytes([P_HEADER, [SIGN, "fine", "", "", ""], row])
    err = await expect_error(
        p_csv.import_csv(progress, caller, data), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert err.violations == [(field, NUL_MESSAGE)]
    assert await progress_rows(progress, caller) == []  # all or nothing


@pytest.mark.parametrize(
    ("row", "field", "description"),
    [
        (["a\x00b"], "line 3: name", NUL_MESSAGE),
        (
            ["x" * (MAX_NAME_LENGTH + 1)],
            "line 3: name",
            f"must be at most {MAX_NAME_LENGTH} characters",
        ),
    ],
)
async def test_academic_years_import_refuses_nul_and_overlong_names(
    academic_years: Harness, row: list[str], field: str, description: str
) -> None:
    caller = staff()
    data = csv_bytes([["name"], ["fine"], row])
    err = await expect_error(
        ay_csv.import_csv(academic_years, caller, data), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert err.violations == [(field, description)]
    assert await year_rows(academic_years, caller.org) == []


CELLS = st.one_of(
    TEXT, st.sampled_from(["", SIGN, "zone_checkin", "1", "{}", "null", "2024-01-01"])
)


@FUZZ
@given(
    header=st.one_of(st.just(P_HEADER), st.lists(TEXT, max_size=6)),
    rows=st.lists(st.lists(CELLS, min_size=0, max_size=6), max_size=6),
)
async def test_fuzzed_progress_import_is_all_or_nothing_and_never_internal(
    progress_harness: Harness, header: list[str], rows: list[list[str]]
) -> None:
    caller = Caller()
    code, result = await outcome(
        p_csv.import_csv(progress_harness, caller, csv_bytes([header, *rows]))
    )
    stored = await progress_rows(progress_harness, caller)
    if code != grpc.StatusCode.OK:
        assert code == grpc.StatusCode.INVALID_ARGUMENT and result.violations
        assert stored == []
        return
    assert len(stored) == result.created
    for row in stored:
        assert row["organizationId"] == caller.org and row["item_id"].strip() == row["item_id"]


@FUZZ
@given(data=st.binary(max_size=300))
async def test_random_bytes_as_a_csv_never_fail_inside(
    progress_harness: Harness, data: bytes
) -> None:
    caller = Caller()
    await outcome(p_csv.import_csv(progress_harness, caller, data))
    await outcome(
        p_csv.import_csv(progress_harness, caller, ",".join(P_HEADER).encode() + b"\n" + data)
    )
    for row in await progress_rows(progress_harness, caller):
        assert row["organizationId"] == caller.org


@FUZZ
@given(
    rows=st.lists(st.lists(CELLS, min_size=1, max_size=6), max_size=5),
    header=st.permutations(ay_csv.HEADER),
)
async def test_fuzzed_academic_years_import_is_all_or_nothing_and_never_internal(
    academic_years_harness: Harness, rows: list[list[str]], header: list[str]
) -> None:
    caller = staff()
    code, result = await outcome(
        ay_csv.import_csv(academic_years_harness, caller, csv_bytes([header, *rows]))
    )
    stored = await year_rows(academic_years_harness, caller.org)
    if code != grpc.StatusCode.OK:
        assert result.violations or code == grpc.StatusCode.ALREADY_EXISTS
        assert stored == []
        return
    assert len(stored) == result.created


# --- tenants ------------------------------------------------------------------------------


async def test_progress_export_holds_only_the_callers_rows(progress: Harness) -> None:
    owner = Caller()
    await p_csv.import_csv(progress, owner, csv_bytes([P_HEADER, [SIGN, "secret", "s", "", ""]]))
    for other in (Caller(org=owner.org), Caller(), Caller(sub=owner.sub)):
        await p_csv.import_csv(progress, other, csv_bytes([P_HEADER, [SIGN, "theirs", "", "", ""]]))
        exported = parse_csv(await p_csv.export_csv(progress, other))
        assert [r[1] for r in exported[1:]] == ["theirs"]
    exported = parse_csv(await p_csv.export_csv(progress, owner))
    assert [r[1] for r in exported[1:]] == ["secret"]


async def test_progress_export_without_an_organization_is_refused(progress: Harness) -> None:
    call = p_csv.stub(progress).ExportUserProgressCsv(
        ppb.ExportUserProgressCsvRequest(), metadata=Caller(org=None).md
    )
    await expect_error(collect(call), grpc.StatusCode.UNAUTHENTICATED)


async def test_academic_years_export_stays_in_scope_whatever_the_filter(
    academic_years: Harness,
) -> None:
    mine, theirs = staff(), staff()
    await seed_years(academic_years, {"name": "mine", "organizationId": mine.org})
    await seed_years(academic_years, {"name": "theirs", "organizationId": theirs.org})
    for request in (
        {},
        {"organization": theirs.org},
        {"name": "theirs"},
        {"organization": f"{mine.org}|{theirs.org}"},
    ):
        exported = parse_csv(await ay_csv.export_csv(academic_years, mine, **request))
        assert {r[1] for r in exported[1:]} <= {"mine"}, request
    everything = parse_csv(await ay_csv.export_csv(academic_years, admin()))
    assert {r[1] for r in everything[1:]} == {"mine", "theirs"}


async def test_academic_years_import_cannot_touch_another_organizations_year(
    academic_years: Harness,
) -> None:
    mine, theirs = staff(), staff()
    [their_year] = await seed_years(
        academic_years, {"name": "theirs", "organizationId": theirs.org}
    )
    before = await year_rows(academic_years, theirs.org)
    data = csv_bytes([["id", "name"], [their_year, "hijacked"]])
    # Ids are keyed within the organization (migration 0003; before, this was ALREADY_EXISTS,
    # which told the importer the id was taken elsewhere): the row lands in the importer's own
    # organization, as for any free id, and theirs is untouched.
    summary = await ay_csv.import_csv(academic_years, mine, data)
    assert summary.created == 1
    assert await year_rows(academic_years, theirs.org) == before
    assert [r["name"] for r in await year_rows(academic_years, mine.org)] == ["hijacked"]


async def test_academic_years_import_needs_create_permission(academic_years: Harness) -> None:
    reader = Caller(permissions=["READ_ACADEMIC_YEARS"])
    err = await expect_error(
        ay_csv.import_csv(academic_years, reader, csv_bytes([["name"], ["x"]])),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert err.reason == "MISSING_PERMISSION"
    assert await year_rows(academic_years, reader.org) == []


@pytest.mark.parametrize(
    "method",
    [
        "/progress.v1.UserProgressService/ImportUserProgressCsv",
        "/academic_years.v1.AcademicYearsService/ImportAcademicYearsCsv",
    ],
)
async def test_undecodable_stream_message_is_invalid_argument(
    progress: Harness, academic_years: Harness, method: str
) -> None:
    harness = progress if method.startswith("/progress") else academic_years
    caller = staff()

    header = ",".join(P_HEADER if harness is progress else ["name"]).encode() + b"\n"

    async def messages() -> Any:
        yield bytes([0x12, len(header)]) + header  # HttpBody.data = the header: a fine message
        yield b"\xff\xff\xff\xff"  # then bytes that are no message at all

    call = harness.channel.stream_unary(method)(messages(), metadata=caller.md)
    err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert err.reason == "MALFORMED_REQUEST"
    assert await year_rows(harness, caller.org) == []
    assert await progress_rows(harness, caller) == []


@pytest.mark.parametrize(
    ("persona", "import_code"),
    [
        ("same_org_other_user", grpc.StatusCode.OK),
        ("other_org", grpc.StatusCode.OK),
        ("other_org_same_user_id", grpc.StatusCode.OK),
        ("global_access", grpc.StatusCode.PERMISSION_DENIED),
        ("no_organization", grpc.StatusCode.UNAUTHENTICATED),
    ],
)
async def test_progress_csv_matrix(
    progress: Harness, persona: str, import_code: grpc.StatusCode
) -> None:
    from tests.progress.test_tenant_isolation import owner_rows, personas

    owner = Caller()
    await p_csv.import_csv(progress, owner, csv_bytes([P_HEADER, [SIGN, "secret", "s", "", ""]]))
    before = await owner_rows(progress, owner)
    who = personas(owner)[persona]
    data = csv_bytes([P_HEADER, [SIGN, "secret", "overwritten?", "", ""]])
    code, _ = await outcome(p_csv.import_csv(progress, who, data))
    assert code == import_code
    code, exported = await outcome(
        collect(
            p_csv.stub(progress).ExportUserProgressCsv(
                ppb.ExportUserProgressCsvRequest(), metadata=who.md
            )
        )
    )
    if code == grpc.StatusCode.OK:
        assert [r[2] for r in parse_csv(exported)[1:]] in ([], ["overwritten?"])
    assert await owner_rows(progress, owner) == before
