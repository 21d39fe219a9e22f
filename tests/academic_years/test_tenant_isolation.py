"""Tenant isolation matrix for academic years: every RPC x every kind of caller, and injections."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb
from sqlalchemy import select

from academic_years_service.tables import academic_years as years_table
from tests.conftest import Harness
from tests.progress.test_tenant_isolation import INJECTIONS
from tests.support.academic_years import ALL, READ, admin, seed_years, staff, stub
from tests.support.callers import Caller, RichError, expect_error, new_uuid, rich_error

pytestmark = pytest.mark.asyncio

OWNER_NAMES = ["Owner Year", "100%", "a_b", "O'Brien", "back\\slash"]


async def seeded(h: Harness) -> tuple[Caller, dict[str, str], dict[str, Any]]:
    """An owner organization with a few years, a stranger's year elsewhere, and the stored state."""
    owner = staff()
    ids = await seed_years(h, *({"name": n, "organizationId": owner.org} for n in OWNER_NAMES))
    await seed_years(h, {"name": "Elsewhere", "organizationId": new_uuid()})
    return owner, dict(zip(OWNER_NAMES, ids, strict=True)), await snapshot(h)


async def snapshot(h: Harness) -> dict[str, Any]:
    rows = await h.rows(select(years_table).order_by(years_table.c.id))
    return {r["id"]: dict(r) for r in rows}


async def snapshot_all(h: Harness) -> list[dict[str, Any]]:
    rows = await h.rows(
        select(years_table).order_by(years_table.c.organizationId, years_table.c.id)
    )
    return [dict(r) for r in rows]


async def snapshot_of(h: Harness, organization: str) -> dict[str, Any]:
    rows = await h.rows(
        select(years_table)
        .where(years_table.c.organizationId == organization)
        .order_by(years_table.c.id)
    )
    return {r["id"]: dict(r) for r in rows}


def personas(owner: Caller) -> dict[str, Caller]:
    return {
        "same_org_colleague": staff(owner.org),
        "other_org": staff(),
        "global_access": admin(),
        "no_permission": Caller(org=owner.org, permissions=[]),
        "read_only": Caller(org=owner.org, permissions=[READ]),
    }


Rpc = Callable[[Harness, Caller, str], Awaitable[Any]]
RPCS: dict[str, Rpc] = {
    "get": lambda h, who, yid: stub(h).GetAcademicYear(
        pb.GetAcademicYearRequest(id=yid), metadata=who.md
    ),
    "update": lambda h, who, yid: stub(h).UpdateAcademicYear(
        pb.UpdateAcademicYearRequest(id=yid, data=pb.AcademicYearInput(name="hijacked")),
        metadata=who.md,
    ),
    "delete": lambda h, who, yid: stub(h).DeleteAcademicYear(
        pb.DeleteAcademicYearRequest(id=yid), metadata=who.md
    ),
    "batch_delete": lambda h, who, yid: stub(h).BatchDeleteAcademicYears(
        pb.BatchDeleteAcademicYearsRequest(ids=[yid]), metadata=who.md
    ),
    "list": lambda h, who, yid: stub(h).ListAcademicYears(
        pb.ListAcademicYearsRequest(id=yid), metadata=who.md
    ),
    "count": lambda h, who, yid: stub(h).CountAcademicYears(
        pb.ListAcademicYearsRequest(id=yid), metadata=who.md
    ),
    "autocomplete": lambda h, who, yid: stub(h).AutocompleteAcademicYears(
        pb.AutocompleteAcademicYearsRequest(query=yid), metadata=who.md
    ),
    "create_with_owner_org": lambda h, who, yid: stub(h).CreateAcademicYear(
        pb.CreateAcademicYearRequest(
            data=pb.AcademicYearInput(name="planted", organization_id=yid)
        ),
        metadata=who.md,
    ),
}
NEEDS = {
    "get": "READ",
    "list": "READ",
    "count": "READ",
    "autocomplete": "READ",
    "update": "UPDATE",
    "delete": "DELETE",
    "batch_delete": "DELETE",
    "create_with_owner_org": "CREATE",
}
WRITES = {"update", "delete", "batch_delete", "create_with_owner_org"}


def found(rpc: str, response: Any) -> bool:
    """Whether the response shows (or acted on) the owner's year."""
    if rpc in ("get", "update", "delete"):
        return True
    if rpc == "batch_delete":
        return bool(response.deleted_count)
    if rpc == "list":
        return bool(response.rows)
    if rpc == "count":
        return bool(response.count)
    return bool(response.items)


@pytest.mark.parametrize("rpc", sorted(RPCS))
@pytest.mark.parametrize(
    "persona", ["same_org_colleague", "other_org", "global_access", "no_permission", "read_only"]
)
async def test_matrix(academic_years: Harness, rpc: str, persona: str) -> None:
    owner, ids, before = await seeded(academic_years)
    who = personas(owner)[persona]
    target = owner.org if rpc == "create_with_owner_org" else ids["Owner Year"]
    assert target is not None
    call = RPCS[rpc](academic_years, who, target)
    allowed = set(who.permissions) >= {f"{NEEDS[rpc]}_ACADEMIC_YEARS"}
    if not allowed:
        err = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED)
        assert err.reason == "MISSING_PERMISSION"
        assert await snapshot(academic_years) == before
        return
    if rpc == "create_with_owner_org":
        created = await call
        # A non-global caller's named organization is ignored; global access may name one.
        expected_org = owner.org if persona == "global_access" else who.org
        assert created.organization_id == expected_org
        return
    in_scope = persona in ("same_org_colleague", "global_access", "read_only")
    if in_scope:
        assert found(rpc, await call)
        return
    if rpc in ("get", "update", "delete"):
        err = await expect_error(call, grpc.StatusCode.NOT_FOUND)
        assert err.reason == "ACADEMIC_YEARS_NOT_FOUND"
    else:
        assert not found(rpc, await call)
    assert await snapshot(academic_years) == before


async def _error_of(call: Awaitable[Any]) -> RichError:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return rich_error(err)
    raise AssertionError("the call succeeded")


@pytest.mark.parametrize("rpc", ["get", "update", "delete"])
async def test_out_of_scope_id_answers_exactly_like_a_missing_one(
    academic_years: Harness, rpc: str
) -> None:
    owner, ids, _ = await seeded(academic_years)
    stranger = staff()
    out_of_scope = await _error_of(RPCS[rpc](academic_years, stranger, ids["Owner Year"]))
    missing = await _error_of(RPCS[rpc](academic_years, stranger, new_uuid()))
    assert out_of_scope == missing
    assert out_of_scope.code == grpc.StatusCode.NOT_FOUND
    # A soft-deleted row of one's own looks the same as well.
    await RPCS["delete"](academic_years, owner, ids["a_b"])
    deleted = await _error_of(RPCS[rpc](academic_years, owner, ids["a_b"]))
    assert deleted == missing


@pytest.mark.parametrize("rpc", ["list", "count", "autocomplete", "batch_delete"])
async def test_out_of_scope_id_in_collections_answers_like_a_missing_one(
    academic_years: Harness, rpc: str
) -> None:
    _owner, ids, _ = await seeded(academic_years)
    stranger = staff()
    out_of_scope = await RPCS[rpc](academic_years, stranger, ids["Owner Year"])
    missing = await RPCS[rpc](academic_years, stranger, new_uuid())
    assert out_of_scope == missing


# Every string field of the filter; each injection goes through each.
FILTER_FIELDS = ["id", "name", "calendar_start", "organization", "field", "sort"]
RANGE_FIELDS = ["start_date_range", "end_date_range", "created_at_range"]


def _filter(field: str, value: str) -> pb.ListAcademicYearsRequest:
    if field in RANGE_FIELDS:
        return pb.ListAcademicYearsRequest(**{field: [value, value]})
    if field == "calendar_start":
        return pb.ListAcademicYearsRequest(calendar_start=value, calendar_end=value)
    return pb.ListAcademicYearsRequest(**{field: value})


async def _outcome(call: Awaitable[Any]) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, await call
    except grpc.aio.AioRpcError as err:
        error = rich_error(err)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
    assert error.violations, error
    return error.code, error


@pytest.mark.parametrize("field", FILTER_FIELDS + RANGE_FIELDS)
async def test_injection_through_every_filter_never_fails_inside_or_widens(
    academic_years: Harness, field: str
) -> None:
    owner, _ids, before = await seeded(academic_years)
    for injection in INJECTIONS:
        request = _filter(field, injection)
        code, listed = await _outcome(
            stub(academic_years).ListAcademicYears(request, metadata=owner.md)
        )
        if code == grpc.StatusCode.OK:
            assert {r.organization_id for r in listed.rows} <= {owner.org}
            if field == "name":
                expected = sorted(n for n in OWNER_NAMES if injection.lower() in n.lower())
                assert sorted(r.name for r in listed.rows) == expected, injection
        await _outcome(stub(academic_years).CountAcademicYears(request, metadata=owner.md))
    assert await snapshot(academic_years) == before


async def test_injection_through_autocomplete_matches_literally_within_scope(
    academic_years: Harness,
) -> None:
    owner, _ids, before = await seeded(academic_years)
    for injection in INJECTIONS:
        response = await stub(academic_years).AutocompleteAcademicYears(
            pb.AutocompleteAcademicYearsRequest(query=injection), metadata=owner.md
        )
        expected = sorted(n for n in OWNER_NAMES if injection.strip().lower() in n.lower())
        assert sorted(i.label for i in response.items) == expected, injection
    assert await snapshot(academic_years) == before


@pytest.mark.parametrize("injection", INJECTIONS)
async def test_injection_through_ids_is_invalid_argument(
    academic_years: Harness, injection: str
) -> None:
    owner, _ids, before = await seeded(academic_years)
    for rpc in ("get", "update", "delete", "batch_delete"):
        err = await expect_error(
            RPCS[rpc](academic_years, owner, injection), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert err.violations
    assert await snapshot(academic_years) == before


async def test_sort_field_is_whitelisted(academic_years: Harness) -> None:
    owner, _ids, _ = await seeded(academic_years)
    for field in ("name; DROP TABLE academic_years", '"organizationId"', "organizationId", "1"):
        err = await expect_error(
            stub(academic_years).ListAcademicYears(
                pb.ListAcademicYearsRequest(field=field), metadata=owner.md
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert [f for f, _ in err.violations] == ["field"]


assert set(ALL) == {f"{p}_ACADEMIC_YEARS" for p in NEEDS.values()}


async def test_create_with_another_organizations_id_is_like_a_free_id(
    academic_years: Harness,
) -> None:
    """Ids are keyed within the organization (migration 0003; before, another organization's
    id answered ALREADY_EXISTS, telling that the id was in use): a stranger creating with the
    owner's id gets exactly what a free id gives, and the owner's year is untouched."""
    owner, ids, before = await seeded(academic_years)
    stranger = staff()

    async def create(year_id: str) -> pb.AcademicYear:
        return await stub(academic_years).CreateAcademicYear(
            pb.CreateAcademicYearRequest(data=pb.AcademicYearInput(id=year_id, name="x")),
            metadata=stranger.md,
        )

    foreign, free = await create(ids["Owner Year"]), await create(new_uuid())
    assert (foreign.organization_id, foreign.name) == (free.organization_id, free.name)
    assert (foreign.id, foreign.organization_id) == (ids["Owner Year"], stranger.org)
    after = await snapshot_of(academic_years, owner.org)
    assert after == {k: v for k, v in before.items() if v["organizationId"] == owner.org}


async def test_a_global_caller_cannot_act_on_an_id_two_organizations_hold(
    academic_years: Harness,
) -> None:
    """Ids are keyed within the organization, so two may hold one; a global-access caller's
    bare id then names two years, and Get/Update/Delete/BatchDelete refuse rather than pick
    one or touch both."""
    first, second, shared = staff(), staff(), new_uuid()
    await seed_years(
        academic_years,
        {"id": shared, "name": "first", "organizationId": first.org},
        {"id": shared, "name": "second", "organizationId": second.org},
    )
    before = await snapshot_all(academic_years)
    for name in ("get", "update", "delete", "batch_delete"):
        error = await expect_error(
            RPCS[name](academic_years, admin(), shared), grpc.StatusCode.FAILED_PRECONDITION
        )
        assert (error.reason, error.metadata["ids"]) == ("AMBIGUOUS_ID", shared), name
    assert await snapshot_all(academic_years) == before
    for caller, name in ((first, "first"), (second, "second")):
        got = await stub(academic_years).GetAcademicYear(
            pb.GetAcademicYearRequest(id=shared), metadata=caller.md
        )
        assert got.name == name
