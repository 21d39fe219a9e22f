"""Create, Get, Update, Delete and BatchDelete of academic years through a real server."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb

from academic_years_service.tables import classes, organizations, timetables
from tests.conftest import Harness
from tests.support.academic_years import (
    admin,
    autocomplete,
    count,
    create,
    get,
    listing,
    seed,
    seed_years,
    staff,
    statements,
    stored,
    stub,
)
from tests.support.callers import Caller, expect_error, new_uuid

pytestmark = pytest.mark.asyncio

NOT_FOUND_REASON = "ACADEMIC_YEARS_NOT_FOUND"


async def test_create_stores_a_row_in_the_callers_organization(academic_years: Harness) -> None:
    caller = staff()
    year = await create(
        academic_years, caller, name="2024/25", start_date="2024-09-01", end_date="2025-06-30"
    )
    assert (year.name, year.start_date, year.end_date) == ("2024/25", "2024-09-01", "2025-06-30")
    assert year.current is False and year.organization_id == caller.org
    assert year.created_by_id == caller.sub == year.updated_by_id
    assert not year.HasField("deleted_at")
    row = await stored(academic_years, year.id)
    assert row["organizationId"] == caller.org and row["createdById"] == caller.sub
    assert row["start_date"] == dt.date(2024, 9, 1) and row["current"] is False
    assert row["deletedAt"] is None


async def test_create_leaves_absent_fields_null(academic_years: Harness) -> None:
    year = await create(academic_years, staff(), current=True)
    assert not year.HasField("name") and not year.HasField("start_date")
    assert year.current is True
    row = await stored(academic_years, year.id)
    assert row["name"] is None and row["end_date"] is None and row["current"] is True


async def test_non_global_caller_cannot_create_in_another_organization(
    academic_years: Harness,
) -> None:
    caller = staff()
    year = await create(academic_years, caller, name="x", organization_id=new_uuid())
    assert year.organization_id == caller.org
    assert (await stored(academic_years, year.id))["organizationId"] == caller.org


async def test_global_caller_may_name_the_organization(academic_years: Harness) -> None:
    target = new_uuid()
    named = await create(academic_years, admin(), name="x", organization_id=target)
    assert (await stored(academic_years, named.id))["organizationId"] == target
    own_org = new_uuid()
    defaulted = await create(academic_years, admin(org=own_org), name="y")
    assert defaulted.organization_id == own_org
    # Neither an org claim nor a named organization: the same answer as progress gives a
    # write without an organization.
    error = await expect_error(
        create(academic_years, admin(), name="z"), grpc.StatusCode.PERMISSION_DENIED
    )
    assert error.reason == "NO_ORGANIZATION"


async def test_client_chosen_id_and_duplicates(academic_years: Harness) -> None:
    caller, chosen = staff(), new_uuid()
    year = await create(academic_years, caller, id=chosen.upper(), name="a")
    assert year.id == chosen
    error = await expect_error(
        create(academic_years, caller, id=chosen, name="b"), grpc.StatusCode.ALREADY_EXISTS
    )
    assert error.domain == "academic_years.v1"
    # A soft-deleted row's id stays taken in its organization.
    await stub(academic_years).DeleteAcademicYear(
        pb.DeleteAcademicYearRequest(id=chosen), metadata=caller.md
    )
    await expect_error(create(academic_years, caller, id=chosen), grpc.StatusCode.ALREADY_EXISTS)
    assert (await stored(academic_years, chosen))["name"] == "a"
    # Ids are keyed within the organization (this changed with migration 0003): another
    # organization takes the same id as a free one, and each sees its own year.
    other = staff()
    theirs = await create(academic_years, other, id=chosen, name="theirs")
    assert theirs.id == chosen and theirs.organization_id == other.org
    assert (await get(academic_years, other, chosen)).name == "theirs"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"id": "not-a-uuid"}, "data.id"),
        ({"start_date": "2024-2-01"}, "data.start_date"),
        ({"start_date": "2024-02-30"}, "data.start_date"),
        ({"end_date": "2024-02-01T00:00:00"}, "data.end_date"),
        ({"end_date": ""}, "data.end_date"),
        ({"organization_id": "123"}, "data.organizationId"),
    ],
)
async def test_create_validates_each_field(
    academic_years: Harness, fields: dict[str, str], field: str
) -> None:
    error = await expect_error(
        create(academic_years, admin(org=new_uuid()), **fields), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert [v[0] for v in error.violations] == [field]
    assert await count(academic_years, admin()) == 0


async def test_get_returns_organization_classes_and_timetables(academic_years: Harness) -> None:
    caller = staff()
    [org_id] = await seed(academic_years, organizations, {"id": caller.org, "name": "North"})
    year = await create(academic_years, caller, name="2024")
    other_year = await create(academic_years, caller, name="2023")
    now = dt.datetime.now(dt.UTC)
    await seed(
        academic_years,
        classes,
        *[
            {"name": n, "academic_yearId": year.id, "organizationId": caller.org, "deletedAt": None}
            for n in ("B class", "A class")
        ],
        {"name": "gone", "academic_yearId": year.id, "organizationId": caller.org}
        | {"deletedAt": now},
        {"name": "elsewhere", "academic_yearId": year.id, "organizationId": new_uuid()},
        {"name": "other year", "academic_yearId": other_year.id, "organizationId": caller.org},
    )
    await seed(
        academic_years,
        timetables,
        {"name": "Term 1", "academic_yearId": year.id, "organizationId": caller.org},
    )
    got = await get(academic_years, caller, year.id)
    assert (got.organization.id, got.organization.name) == (org_id, "North")
    assert [c.name for c in got.classes_academic_year] == ["A class", "B class"]
    assert [t.name for t in got.timetables_academic_year] == ["Term 1"]
    assert got.name == "2024" and got.organization_id == caller.org
    listed = await listing(academic_years, caller)
    assert all(not r.classes_academic_year and not r.HasField("organization") for r in listed.rows)


async def test_get_issues_a_bounded_number_of_statements(academic_years: Harness) -> None:
    caller = staff()
    few, many = await seed_years(
        academic_years,
        {"name": "few", "organizationId": caller.org},
        {"name": "many", "organizationId": caller.org},
    )

    def children(year_id: str, n: int) -> list[dict[str, object]]:
        return [
            {"name": f"c{i:03}", "academic_yearId": year_id, "organizationId": caller.org}
            for i in range(n)
        ]

    await seed(academic_years, classes, *children(few, 1), *children(many, 150))
    await seed(academic_years, timetables, *children(few, 1), *children(many, 150))
    counts = []
    for year_id, size in ((few, 1), (many, 150)):
        with statements(academic_years.db) as seen:
            got = await get(academic_years, caller, year_id)
        assert len(got.classes_academic_year) == len(got.timetables_academic_year) == size
        # Not counted: the row-level security settings every transaction starts with.
        queries = [s for s in seen if "SET LOCAL" not in s]
        counts.append(sum(1 for s in queries if s.lstrip().upper().startswith("SELECT")))
    assert counts[0] == counts[1] == 3  # the year with its organization, classes, timetables


async def test_list_returns_rows_and_total_newest_first(academic_years: Harness) -> None:
    caller = staff()
    ids = [(await create(academic_years, caller, name=f"y{i}")).id for i in range(3)]
    await create(academic_years, staff(), name="other organization")
    listed = await listing(academic_years, caller)
    assert [r.id for r in listed.rows] == ids[::-1] and listed.count == 3


async def test_update_writes_only_the_fields_present(academic_years: Harness) -> None:
    caller, editor = staff(), None
    year = await create(
        academic_years, caller, name="old", start_date="2024-09-01", end_date="2025-06-30"
    )
    editor = staff(org=caller.org)
    updated = await stub(academic_years).UpdateAcademicYear(
        pb.UpdateAcademicYearRequest(
            id=year.id, data=pb.AcademicYearInput(name="new", current=True)
        ),
        metadata=editor.md,
    )
    assert (updated.name, updated.current) == ("new", True)
    assert (updated.start_date, updated.end_date) == ("2024-09-01", "2025-06-30")
    assert updated.updated_by_id == editor.sub and updated.created_by_id == caller.sub
    row = await stored(academic_years, year.id)
    assert row["name"] == "new" and row["start_date"] == dt.date(2024, 9, 1)
    assert row["updatedAt"] >= row["createdAt"]
    # Present but empty is written as given; absent is left alone.
    again = await stub(academic_years).UpdateAcademicYear(
        pb.UpdateAcademicYearRequest(id=year.id, data=pb.AcademicYearInput(name="", current=False)),
        metadata=editor.md,
    )
    assert again.HasField("name") and again.name == "" and again.current is False
    assert again.start_date == "2024-09-01"


async def test_update_reassigns_organization_for_global_callers_only(
    academic_years: Harness,
) -> None:
    caller, target = staff(), new_uuid()
    year = await create(academic_years, caller, name="x")

    async def move(who: Caller) -> pb.AcademicYear:
        return await stub(academic_years).UpdateAcademicYear(
            pb.UpdateAcademicYearRequest(
                id=year.id, data=pb.AcademicYearInput(organization_id=target)
            ),
            metadata=who.md,
        )

    assert (await move(caller)).organization_id == caller.org
    assert (await move(admin())).organization_id == target
    assert (await stored(academic_years, year.id))["organizationId"] == target


async def test_update_validates(academic_years: Harness) -> None:
    caller = staff()
    year = await create(academic_years, caller, name="x")
    requests = [
        (pb.UpdateAcademicYearRequest(id="nope", data=pb.AcademicYearInput()), "id"),
        (
            pb.UpdateAcademicYearRequest(id=year.id, data=pb.AcademicYearInput(id=new_uuid())),
            "data.id",
        ),
        (
            pb.UpdateAcademicYearRequest(
                id=year.id, data=pb.AcademicYearInput(start_date="01/09/2024")
            ),
            "data.start_date",
        ),
    ]
    for request, field in requests:
        error = await expect_error(
            stub(academic_years).UpdateAcademicYear(request, metadata=caller.md),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error.violations[0][0] == field
    assert (await stored(academic_years, year.id))["start_date"] is None


async def test_delete_is_soft_and_returns_the_row(academic_years: Harness) -> None:
    caller = staff()
    year = await create(academic_years, caller, name="x")
    deleted = await stub(academic_years).DeleteAcademicYear(
        pb.DeleteAcademicYearRequest(id=year.id), metadata=caller.md
    )
    assert deleted.id == year.id and deleted.HasField("deleted_at")
    row = await stored(academic_years, year.id)
    assert row["deletedAt"] is not None and row["updatedById"] == caller.sub
    await expect_error(
        stub(academic_years).DeleteAcademicYear(
            pb.DeleteAcademicYearRequest(id=year.id), metadata=caller.md
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_batch_delete_soft_deletes_those_in_scope(academic_years: Harness) -> None:
    caller = staff()
    mine = [(await create(academic_years, caller, name=f"m{i}")).id for i in range(3)]
    theirs = (await create(academic_years, staff(), name="t")).id
    await stub(academic_years).DeleteAcademicYear(
        pb.DeleteAcademicYearRequest(id=mine[2]), metadata=caller.md
    )
    response = await stub(academic_years).BatchDeleteAcademicYears(
        pb.BatchDeleteAcademicYearsRequest(ids=[mine[0], mine[1], mine[1], mine[2], theirs]),
        metadata=caller.md,
    )
    assert response.deleted_count == 2
    assert (await stored(academic_years, mine[0]))["deletedAt"] is not None
    assert (await stored(academic_years, theirs))["deletedAt"] is None
    empty = await stub(academic_years).BatchDeleteAcademicYears(
        pb.BatchDeleteAcademicYearsRequest(ids=[]), metadata=caller.md
    )
    assert empty.deleted_count == 0
    error = await expect_error(
        stub(academic_years).BatchDeleteAcademicYears(
            pb.BatchDeleteAcademicYearsRequest(ids=[theirs, "x"]), metadata=caller.md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error.violations[0][0] == "ids[1]"


async def test_soft_deleted_rows_are_invisible_everywhere(academic_years: Harness) -> None:
    caller = staff()
    live, gone = await seed_years(
        academic_years,
        {"name": "live year", "organizationId": caller.org},
        {"name": "gone year", "organizationId": caller.org, "deletedAt": dt.datetime.now(dt.UTC)},
    )
    listed = await listing(academic_years, caller)
    assert [r.id for r in listed.rows] == [live] and listed.count == 1
    assert await count(academic_years, caller) == 1
    assert await count(academic_years, caller, id=gone) == 0
    assert await autocomplete(academic_years, caller, query="year") == [(live, "live year")]
    assert await autocomplete(academic_years, caller, query=gone) == []
    error = await expect_error(get(academic_years, caller, gone), grpc.StatusCode.NOT_FOUND)
    assert error.reason == NOT_FOUND_REASON
    await expect_error(
        stub(academic_years).UpdateAcademicYear(
            pb.UpdateAcademicYearRequest(id=gone, data=pb.AcademicYearInput(name="back")),
            metadata=caller.md,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert (await stored(academic_years, gone))["name"] == "gone year"


async def test_not_found_is_the_same_for_missing_and_out_of_scope(
    academic_years: Harness,
) -> None:
    caller = staff()
    [foreign] = await seed_years(academic_years, {"name": "x", "organizationId": new_uuid()})
    s = stub(academic_years)
    calls = [
        lambda i: s.GetAcademicYear(pb.GetAcademicYearRequest(id=i), metadata=caller.md),
        lambda i: s.UpdateAcademicYear(
            pb.UpdateAcademicYearRequest(id=i, data=pb.AcademicYearInput(name="y")),
            metadata=caller.md,
        ),
        lambda i: s.DeleteAcademicYear(pb.DeleteAcademicYearRequest(id=i), metadata=caller.md),
    ]
    for call in calls:
        missing = await expect_error(call(new_uuid()), grpc.StatusCode.NOT_FOUND)
        hidden = await expect_error(call(foreign), grpc.StatusCode.NOT_FOUND)
        assert missing == hidden
        assert missing.reason == NOT_FOUND_REASON and missing.domain == "academic_years.v1"
        assert missing.metadata == {"code": "academic_yearsNotFound"}
        assert missing.message.startswith("academic_yearsNotFound")
    row = await stored(academic_years, foreign)
    assert row["name"] == "x" and row["deletedAt"] is None


@pytest.mark.parametrize("rpc", ["Get", "Delete"])
async def test_malformed_id_is_invalid_argument(academic_years: Harness, rpc: str) -> None:
    s, caller = stub(academic_years), staff()
    call = (
        s.GetAcademicYear(pb.GetAcademicYearRequest(id="1"), metadata=caller.md)
        if rpc == "Get"
        else s.DeleteAcademicYear(pb.DeleteAcademicYearRequest(id=""), metadata=caller.md)
    )
    error = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
    assert error.violations == [("id", "must be a UUID")]


async def test_concurrent_creates_of_one_id_leave_one_row(academic_years: Harness) -> None:
    caller, chosen = staff(), new_uuid()
    results = await asyncio.gather(
        *[create(academic_years, caller, id=chosen, name=f"n{i}") for i in range(6)],
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(errors) == 5 and all(e.code() == grpc.StatusCode.ALREADY_EXISTS for e in errors)
    assert await count(academic_years, caller) == 1


async def test_every_bad_field_is_named_at_once(academic_years: Harness) -> None:
    error = await expect_error(
        create(academic_years, staff(), id="x", start_date="2024-01-32", end_date="tomorrow"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [v[0] for v in error.violations] == ["data.id", "data.start_date", "data.end_date"]


async def test_moving_a_year_into_an_organization_holding_its_id_is_already_exists(
    academic_years: Harness,
) -> None:
    """A move deletes and inserts the row (Citus cannot update a distribution column); the
    target's key on (organization, id), deleted rows included, refuses a clash."""
    first, second = staff(), staff()
    own = await create(academic_years, first, name="own")
    clash = await create(academic_years, second, id=own.id, name="clash")
    await stub(academic_years).DeleteAcademicYear(
        pb.DeleteAcademicYearRequest(id=clash.id), metadata=second.md
    )
    move = stub(academic_years).UpdateAcademicYear(
        pb.UpdateAcademicYearRequest(
            id=own.id, data=pb.AcademicYearInput(organization_id=second.org, name="moved")
        ),
        metadata=admin().md,
    )
    await expect_error(move, grpc.StatusCode.ALREADY_EXISTS)
    assert (await get(academic_years, first, own.id)).name == "own"  # the rename rolled back
