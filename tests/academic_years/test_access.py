"""Permissions and tenant scope of every academic-years RPC, through a real server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb

from tests.conftest import Harness
from tests.support.academic_years import (
    ALL,
    CREATE,
    DELETE,
    READ,
    UPDATE,
    admin,
    autocomplete,
    count,
    create,
    get,
    listing,
    seed_years,
    staff,
    stored,
    stub,
)
from tests.support.callers import Caller, bearer, expect_error, new_uuid

pytestmark = pytest.mark.asyncio

NAME = "Year under test"

# Each probe calls one RPC as `caller` on the year `year_id` of organization `org`, and says
# whether the call reached that year (read it, or changed it as the stored row shows).
Probe = Callable[[Harness, Caller, str, str], Awaitable[bool]]


async def _found(call: Awaitable[object]) -> bool:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False
    return True


async def probe_create(h: Harness, caller: Caller, year_id: str, org: str) -> bool:
    year = await create(h, caller, name="new", organization_id=org)
    return (await stored(h, year.id))["organizationId"] == org


async def probe_update(h: Harness, caller: Caller, year_id: str, org: str) -> bool:
    request = pb.UpdateAcademicYearRequest(id=year_id, data=pb.AcademicYearInput(name="changed"))
    await _found(stub(h).UpdateAcademicYear(request, metadata=caller.md))
    return (await stored(h, year_id))["name"] == "changed"


async def probe_delete(h: Harness, caller: Caller, year_id: str, org: str) -> bool:
    request = pb.DeleteAcademicYearRequest(id=year_id)
    await _found(stub(h).DeleteAcademicYear(request, metadata=caller.md))
    return (await stored(h, year_id))["deletedAt"] is not None


async def probe_batch_delete(h: Harness, caller: Caller, year_id: str, org: str) -> bool:
    request = pb.BatchDeleteAcademicYearsRequest(ids=[year_id])
    response = await stub(h).BatchDeleteAcademicYears(request, metadata=caller.md)
    deleted = (await stored(h, year_id))["deletedAt"] is not None
    assert response.deleted_count == int(deleted)
    return deleted


async def probe_get(h: Harness, caller: Caller, year_id: str, org: str) -> bool:
    return await _found(get(h, caller, year_id))


async def probe_list(h: Harness, caller: Caller, year_id: str, org: str) -> bool:
    listed = await listing(h, caller)
    return year_id in {r.id for r in listed.rows}


async def probe_count(h: Harness, caller: Caller, year_id: str, org: str) -> bool:
    return await count(h, caller, id=year_id) == 1


async def probe_autocomplete(h: Harness, caller: Caller, year_id: str, org: str) -> bool:
    by_name = await autocomplete(h, caller, query="under test")
    by_id = await autocomplete(h, caller, query=year_id)
    assert by_name == by_id
    return by_name == [(year_id, NAME)]


PROBES: dict[str, tuple[str, Probe]] = {
    "Create": (CREATE, probe_create),
    "Update": (UPDATE, probe_update),
    "Delete": (DELETE, probe_delete),
    "BatchDelete": (DELETE, probe_batch_delete),
    "Get": (READ, probe_get),
    "List": (READ, probe_list),
    "Count": (READ, probe_count),
    "Autocomplete": (READ, probe_autocomplete),
}


async def _seed_target(h: Harness) -> tuple[str, str]:
    org = new_uuid()
    [year_id] = await seed_years(h, {"name": NAME, "organizationId": org})
    return year_id, org


@pytest.mark.parametrize("rpc", PROBES)
@pytest.mark.parametrize("grant", ["role", "custom"])
async def test_permission_from_role_or_custom_is_enough(
    academic_years: Harness, rpc: str, grant: str
) -> None:
    permission, probe = PROBES[rpc]
    year_id, org = await _seed_target(academic_years)
    granted = [permission]
    caller = (
        Caller(org=org, permissions=granted)
        if grant == "role"
        else Caller(org=org, custom_permissions=granted)
    )
    assert await probe(academic_years, caller, year_id, org)


@pytest.mark.parametrize("rpc", PROBES)
async def test_missing_permission_is_denied_and_changes_nothing(
    academic_years: Harness, rpc: str
) -> None:
    permission, probe = PROBES[rpc]
    year_id, org = await _seed_target(academic_years)
    others = [p for p in ALL if p != permission]
    caller = Caller(org=org, permissions=others, custom_permissions=others)
    error = await expect_error(
        probe(academic_years, caller, year_id, org), grpc.StatusCode.PERMISSION_DENIED
    )
    assert error.reason == "MISSING_PERMISSION" and error.metadata == {"permission": permission}
    assert error.domain == "academic_years.v1"
    row = await stored(academic_years, year_id)
    assert row["name"] == NAME and row["deletedAt"] is None
    assert await count(academic_years, admin()) == 1


@pytest.mark.parametrize("rpc", PROBES)
@pytest.mark.parametrize(
    ("who", "reaches"),
    [("same organization", True), ("other organization", False), ("global", True)],
)
async def test_tenant_scope_of_each_rpc(
    academic_years: Harness, rpc: str, who: str, reaches: bool
) -> None:
    _permission, probe = PROBES[rpc]
    year_id, org = await _seed_target(academic_years)
    caller = {
        "same organization": staff(org=org),
        "other organization": staff(),
        "global": admin(org=new_uuid()),
    }[who]
    assert await probe(academic_years, caller, year_id, org) is reaches
    if not reaches:
        row = await stored(academic_years, year_id)
        assert row["name"] == NAME and row["deletedAt"] is None


async def test_organization_filter_narrows_and_never_widens(academic_years: Harness) -> None:
    mine, theirs = staff(), staff()
    own_id, their_id = await seed_years(
        academic_years,
        {"name": "own", "organizationId": mine.org},
        {"name": "theirs", "organizationId": theirs.org},
    )

    async def ids(caller: Caller, organization: str) -> list[str]:
        listed = await listing(academic_years, caller, organization=organization)
        assert await count(academic_years, caller, organization=organization) == listed.count
        return sorted(r.id for r in listed.rows)

    assert await ids(mine, f"{theirs.org}") == []
    assert await ids(mine, f"{mine.org}|{theirs.org}") == [own_id]
    assert await ids(mine, f" {mine.org} |") == [own_id]
    assert await ids(admin(), f"{theirs.org}") == [their_id]
    assert await ids(admin(), f"{theirs.org}|{mine.org}") == sorted([own_id, their_id])
    assert await ids(admin(), "") == sorted([own_id, their_id])
    error = await expect_error(
        listing(academic_years, mine, organization=f"{mine.org}|acme"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error.violations[0][0] == "organization"


class ExpiredCaller(Caller):
    """Everything a caller needs, but with an expired token."""

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.token(ttl_seconds=-3600))


@pytest.mark.parametrize("rpc", PROBES)
async def test_every_rpc_needs_a_valid_token(academic_years: Harness, rpc: str) -> None:
    _permission, probe = PROBES[rpc]
    year_id, org = await _seed_target(academic_years)
    anonymous = ExpiredCaller(org=org, permissions=list(ALL))
    error = await expect_error(
        probe(academic_years, anonymous, year_id, org), grpc.StatusCode.UNAUTHENTICATED
    )
    assert error.reason == "UNAUTHENTICATED"
    assert (await stored(academic_years, year_id))["name"] == NAME
