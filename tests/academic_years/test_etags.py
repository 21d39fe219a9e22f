"""Etags (AIP-154) on academic years: Update and Delete apply only to the year as read."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb

from common import b64url
from tests.conftest import Harness
from tests.support.academic_years import admin, create, get, listing, staff, stored, stub
from tests.support.callers import Caller, expect_error

pytestmark = pytest.mark.asyncio


async def update(
    h: Harness, caller: Caller, year_id: str, etag: str, **fields: Any
) -> pb.AcademicYear:
    request = pb.UpdateAcademicYearRequest(
        id=year_id, data=pb.AcademicYearInput(**fields), etag=etag
    )
    return await stub(h).UpdateAcademicYear(request, metadata=caller.md)


async def delete(h: Harness, caller: Caller, year_id: str, etag: str) -> pb.AcademicYear:
    request = pb.DeleteAcademicYearRequest(id=year_id, etag=etag)
    return await stub(h).DeleteAcademicYear(request, metadata=caller.md)


async def test_every_read_carries_the_etag_and_every_write_changes_it(
    academic_years: Harness,
) -> None:
    caller = staff()
    year = await create(academic_years, caller, name="2024/25")
    assert year.etag
    assert (await get(academic_years, caller, year.id)).etag == year.etag
    assert [r.etag for r in (await listing(academic_years, caller)).rows] == [year.etag]
    seen = {year.etag}
    # The same values written again still make a new version: the tag tracks writes.
    for _ in range(3):
        written = await update(academic_years, caller, year.id, "", name="2024/25")
        assert written.etag not in seen
        seen.add(written.etag)
    assert (await stored(academic_years, year.id))["version"] == 4
    deleted = await delete(academic_years, caller, year.id, "")
    assert deleted.etag not in seen


async def test_of_two_updates_with_one_etag_one_applies_and_the_other_is_aborted(
    academic_years: Harness,
) -> None:
    caller = staff()
    year = await create(academic_years, caller, name="read")
    results = await asyncio.gather(
        update(academic_years, caller, year.id, year.etag, name="first"),
        update(academic_years, caller, year.id, year.etag, name="second"),
        return_exceptions=True,
    )
    applied = [r for r in results if isinstance(r, pb.AcademicYear)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(applied) == 1 and len(failed) == 1, results
    assert failed[0].code() == grpc.StatusCode.ABORTED
    assert (await stored(academic_years, year.id))["name"] == applied[0].name
    # The stale tag keeps failing, with the reason a client can act on; the fresh one works.
    error = await expect_error(
        update(academic_years, caller, year.id, year.etag, name="late"),
        grpc.StatusCode.ABORTED,
    )
    assert error.reason == "ETAG_MISMATCH" and error.metadata["field"] == "etag"
    assert (await stored(academic_years, year.id))["name"] == applied[0].name
    fresh = await update(academic_years, caller, year.id, applied[0].etag, name="fresh")
    assert fresh.name == "fresh"


async def test_delete_with_a_stale_etag_is_aborted_and_deletes_nothing(
    academic_years: Harness,
) -> None:
    caller = staff()
    year = await create(academic_years, caller, name="x")
    changed = await update(academic_years, caller, year.id, "", current=True)
    error = await expect_error(
        delete(academic_years, caller, year.id, year.etag), grpc.StatusCode.ABORTED
    )
    assert error.reason == "ETAG_MISMATCH"
    assert (await stored(academic_years, year.id))["deletedAt"] is None
    deleted = await delete(academic_years, caller, year.id, changed.etag)
    assert deleted.HasField("deleted_at")
    # Once deleted, the year is gone for every tag, its own included.
    await expect_error(
        delete(academic_years, caller, year.id, deleted.etag), grpc.StatusCode.NOT_FOUND
    )


async def test_a_tag_of_another_row_at_the_same_version_does_not_match(
    academic_years: Harness,
) -> None:
    caller = staff()
    one = await create(academic_years, caller, name="one")
    other = await create(academic_years, caller, name="other")
    error = await expect_error(
        update(academic_years, caller, one.id, other.etag, name="changed"),
        grpc.StatusCode.ABORTED,
    )
    assert error.reason == "ETAG_MISMATCH"
    assert (await stored(academic_years, one.id))["name"] == "one"


async def test_an_etag_never_reaches_another_organizations_year(academic_years: Harness) -> None:
    owner, outsider = staff(), staff()
    year = await create(academic_years, owner, name="theirs")
    for call in (
        update(academic_years, outsider, year.id, year.etag, name="mine"),
        delete(academic_years, outsider, year.id, year.etag),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND)
    row = await stored(academic_years, year.id)
    assert row["name"] == "theirs" and row["deletedAt"] is None and row["version"] == 1


async def test_same_id_in_two_organizations_each_tag_fits_its_own_row(
    academic_years: Harness,
) -> None:
    """Ids are keyed within an organization: a global caller may create one id in two. Both
    rows are at version 1, but one's tag does not pass for the other's."""
    north, south = staff(), staff()
    year = await create(academic_years, north, name="north")
    twin = await create(
        academic_years, admin(), id=year.id, name="south", organization_id=south.org
    )
    assert twin.id == year.id and twin.etag != year.etag
    error = await expect_error(
        update(academic_years, south, year.id, year.etag, name="changed"), grpc.StatusCode.ABORTED
    )
    assert error.reason == "ETAG_MISMATCH"
    assert (await update(academic_years, south, year.id, twin.etag, name="ok")).name == "ok"


@pytest.mark.parametrize(
    "etag", ["not base64 !", b64url.encode(b"short"), b64url.encode(bytes(17)), "é"]
)
async def test_an_etag_no_server_gave_out_is_invalid_argument(
    academic_years: Harness, etag: str
) -> None:
    caller = staff()
    year = await create(academic_years, caller, name="x")
    for call in (
        update(academic_years, caller, year.id, etag, name="y"),
        delete(academic_years, caller, year.id, etag),
    ):
        error = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert error.violations[0][0] == "etag"
    assert (await stored(academic_years, year.id))["name"] == "x"
