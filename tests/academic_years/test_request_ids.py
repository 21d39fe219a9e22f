"""Request ids (AIP-155) on the academic-years writes, through a real server: a retry is
answered with the first call's answer and writes nothing; the same id with another request is
refused; concurrent calls with one id write once; ids are each caller's own."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb
from sqlalchemy import func, select

from academic_years_service.tables import academic_years, request_ids
from tests.conftest import Harness
from tests.support.academic_years import create, staff, stored, stub
from tests.support.callers import Caller, expect_error, new_uuid
from tests.support.csv import bodies, csv_bytes

pytestmark = pytest.mark.asyncio


def _create(request_id: str, **fields: Any) -> pb.CreateAcademicYearRequest:
    return pb.CreateAcademicYearRequest(data=pb.AcademicYearInput(**fields), request_id=request_id)


async def years(h: Harness) -> int:
    return int(await h.scalar(select(func.count()).select_from(academic_years)))


async def kept(h: Harness) -> int:
    return int(await h.scalar(select(func.count()).select_from(request_ids)))


async def test_a_retried_create_answers_the_first_year_and_stores_one(
    academic_years: Harness,
) -> None:
    caller, rid = staff(), new_uuid()
    first = await stub(academic_years).CreateAcademicYear(
        _create(rid, name="2025/26"), metadata=caller.md
    )
    # The row changes meanwhile: the retry still gets the first answer, and writes nothing.
    await stub(academic_years).UpdateAcademicYear(
        pb.UpdateAcademicYearRequest(id=first.id, data=pb.AcademicYearInput(name="renamed")),
        metadata=caller.md,
    )
    again = await stub(academic_years).CreateAcademicYear(
        _create(rid, name="2025/26"), metadata=caller.md
    )
    assert again == first and again.name == "2025/26"
    assert await years(academic_years) == 1 and await kept(academic_years) == 1
    assert (await stored(academic_years, first.id))["name"] == "renamed"


async def test_a_retried_create_with_a_client_id_is_not_already_exists(
    academic_years: Harness,
) -> None:
    caller, rid, year_id = staff(), new_uuid(), new_uuid()
    request = _create(rid, id=year_id, name="mine")
    first = await stub(academic_years).CreateAcademicYear(request, metadata=caller.md)
    assert await stub(academic_years).CreateAcademicYear(request, metadata=caller.md) == first
    # Without the id the same create is a second one, which the key refuses as before.
    request.request_id = ""
    await expect_error(
        stub(academic_years).CreateAcademicYear(request, metadata=caller.md),
        grpc.StatusCode.ALREADY_EXISTS,
    )


async def test_a_retried_update_answers_the_first_update_without_writing(
    academic_years: Harness,
) -> None:
    caller, rid = staff(), new_uuid()
    year = await create(academic_years, caller, name="a")
    update = pb.UpdateAcademicYearRequest(
        id=year.id, data=pb.AcademicYearInput(name="b"), request_id=rid
    )
    first = await stub(academic_years).UpdateAcademicYear(update, metadata=caller.md)
    other = pb.UpdateAcademicYearRequest(id=year.id, data=pb.AcademicYearInput(name="c"))
    await stub(academic_years).UpdateAcademicYear(other, metadata=caller.md)
    before = await stored(academic_years, year.id)
    again = await stub(academic_years).UpdateAcademicYear(update, metadata=caller.md)
    assert again == first and again.name == "b"
    assert await stored(academic_years, year.id) == before and before["name"] == "c"


async def test_a_retried_delete_answers_the_deleted_year_not_not_found(
    academic_years: Harness,
) -> None:
    caller, rid = staff(), new_uuid()
    year = await create(academic_years, caller, name="gone")
    delete = pb.DeleteAcademicYearRequest(id=year.id, request_id=rid)
    first = await stub(academic_years).DeleteAcademicYear(delete, metadata=caller.md)
    again = await stub(academic_years).DeleteAcademicYear(delete, metadata=caller.md)
    assert again == first and first.HasField("deleted_at")
    # Without a request id a repeat is what it always was.
    await expect_error(
        stub(academic_years).DeleteAcademicYear(
            pb.DeleteAcademicYearRequest(id=year.id), metadata=caller.md
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_retried_batch_delete_answers_the_first_count(academic_years: Harness) -> None:
    caller, rid = staff(), new_uuid()
    ids = [(await create(academic_years, caller, name=n)).id for n in ("a", "b")]
    batch = pb.BatchDeleteAcademicYearsRequest(ids=ids, request_id=rid)
    first = await stub(academic_years).BatchDeleteAcademicYears(batch, metadata=caller.md)
    again = await stub(academic_years).BatchDeleteAcademicYears(batch, metadata=caller.md)
    assert first.deleted_count == again.deleted_count == 2
    plain = pb.BatchDeleteAcademicYearsRequest(ids=ids)
    repeat = await stub(academic_years).BatchDeleteAcademicYears(plain, metadata=caller.md)
    assert repeat.deleted_count == 0


async def test_a_retried_import_answers_the_first_summary_without_reading_the_file(
    academic_years: Harness,
) -> None:
    caller, rid = staff(), new_uuid()
    data = csv_bytes([["name", "importHash"], ["a", "h1"], ["b", "h2"]])
    md = (*caller.md, ("request-id", rid))
    first = await stub(academic_years).ImportAcademicYearsCsv(bodies(data), metadata=md)
    assert (first.rows_read, first.created, first.skipped) == (2, 2, 0)
    again = await stub(academic_years).ImportAcademicYearsCsv(bodies(data), metadata=md)
    assert again == first
    # The variant reporting progress shares the id: its last report carries the same
    # summary, and shows that nothing of the file was read into the import.
    reports = [
        r
        async for r in stub(academic_years).ImportAcademicYearsCsvWithProgress(
            bodies(data), metadata=md
        )
    ]
    assert reports[-1].summary == first and reports[-1].rows_read == 0
    assert await years(academic_years) == 2


async def test_an_import_id_with_another_file_is_invalid(academic_years: Harness) -> None:
    caller, rid = staff(), new_uuid()
    md = (*caller.md, ("request-id", rid))
    data = csv_bytes([["name"], ["a"]])
    await stub(academic_years).ImportAcademicYearsCsv(bodies(data), metadata=md)
    other = csv_bytes([["name"], ["b"]])
    error = await expect_error(
        stub(academic_years).ImportAcademicYearsCsv(bodies(other), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error.reason == "REQUEST_ID_REUSED" and error.violations[0][0] == "request-id"
    bad = (*caller.md, ("request-id", "not-a-uuid"))
    error = await expect_error(
        stub(academic_years).ImportAcademicYearsCsv(bodies(data), metadata=bad),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [field for field, _ in error.violations] == ["request-id"]
    assert await years(academic_years) == 1


@pytest.mark.parametrize(
    ("second", "rid"),
    [
        ({"name": "another"}, None),  # the same id with a different request
        ({"name": "first"}, "not-a-uuid"),
        ({"name": "first"}, "{00000000-0000-4000-8000-000000000000}"),  # not as written
    ],
)
async def test_a_reused_or_malformed_id_is_invalid_argument_naming_it(
    academic_years: Harness, second: dict[str, str], rid: str | None
) -> None:
    caller, first_id = staff(), new_uuid()
    await stub(academic_years).CreateAcademicYear(
        _create(first_id, name="first"), metadata=caller.md
    )
    error = await expect_error(
        stub(academic_years).CreateAcademicYear(
            _create(rid or first_id, **second), metadata=caller.md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [field for field, _ in error.violations] == ["requestId"]
    assert error.reason == ("REQUEST_ID_REUSED" if rid is None else "INVALID_ARGUMENT")
    assert await years(academic_years) == 1


async def test_an_id_is_the_callers_own(academic_years: Harness) -> None:
    """Another organization's, or another user's, equal id is another operation: it writes
    its own year and never gets the first caller's answer."""
    me, rid = staff(), new_uuid()
    colleague, stranger = staff(org=me.org), staff()
    answers = [
        await stub(academic_years).CreateAcademicYear(_create(rid, name="x"), metadata=c.md)
        for c in (me, colleague, stranger)
    ]
    assert len({a.id for a in answers}) == 3
    assert [a.organization_id for a in answers] == [me.org, me.org, stranger.org]
    assert await years(academic_years) == 3 and await kept(academic_years) == 3


async def test_twenty_concurrent_calls_with_one_id_write_one_year(
    academic_years: Harness,
) -> None:
    caller, rid = staff(), new_uuid()
    request = _create(rid, name="once")
    answers = await asyncio.gather(
        *(stub(academic_years).CreateAcademicYear(request, metadata=caller.md) for _ in range(20))
    )
    assert len({a.SerializeToString(deterministic=True) for a in answers}) == 1
    assert await years(academic_years) == 1 and await kept(academic_years) == 1


async def test_an_error_is_not_kept_and_a_retry_is_tried_afresh(academic_years: Harness) -> None:
    caller, rid, year_id = staff(), new_uuid(), new_uuid()
    update = pb.UpdateAcademicYearRequest(
        id=year_id, data=pb.AcademicYearInput(name="later"), request_id=rid
    )
    await expect_error(
        stub(academic_years).UpdateAcademicYear(update, metadata=caller.md),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await kept(academic_years) == 0
    await create(academic_years, caller, id=year_id, name="now")
    updated = await stub(academic_years).UpdateAcademicYear(update, metadata=caller.md)
    assert updated.name == "later" and await kept(academic_years) == 1


async def test_without_a_request_id_nothing_is_kept(academic_years: Harness) -> None:
    caller = staff()
    for _ in range(2):
        await create(academic_years, caller, name="same")
    assert await years(academic_years) == 2 and await kept(academic_years) == 0


async def test_a_global_caller_without_an_organization_has_ids_too(
    academic_years: Harness,
) -> None:
    admin = Caller(org=None, global_access=True, permissions=staff().permissions)
    target, rid = new_uuid(), new_uuid()
    request = _create(rid, name="x", organization_id=target)
    first = await stub(academic_years).CreateAcademicYear(request, metadata=admin.md)
    assert await stub(academic_years).CreateAcademicYear(request, metadata=admin.md) == first
    assert first.organization_id == target and await years(academic_years) == 1


async def test_a_retried_update_with_an_etag_gets_its_answer_not_aborted(
    academic_years: Harness,
) -> None:
    """The first call moved the year past the etag the retry carries: the retry is answered
    with the first answer instead of ETAG_MISMATCH; without the request id it is ABORTED."""
    caller, rid = staff(), new_uuid()
    year = await create(academic_years, caller, name="a")
    update = pb.UpdateAcademicYearRequest(
        id=year.id, data=pb.AcademicYearInput(name="b"), etag=year.etag, request_id=rid
    )
    first = await stub(academic_years).UpdateAcademicYear(update, metadata=caller.md)
    assert first.etag != year.etag
    assert await stub(academic_years).UpdateAcademicYear(update, metadata=caller.md) == first
    update.request_id = ""
    error = await expect_error(
        stub(academic_years).UpdateAcademicYear(update, metadata=caller.md),
        grpc.StatusCode.ABORTED,
    )
    assert error.reason == "ETAG_MISMATCH"
    delete = pb.DeleteAcademicYearRequest(id=year.id, etag=first.etag, request_id=new_uuid())
    deleted = await stub(academic_years).DeleteAcademicYear(delete, metadata=caller.md)
    assert await stub(academic_years).DeleteAcademicYear(delete, metadata=caller.md) == deleted
