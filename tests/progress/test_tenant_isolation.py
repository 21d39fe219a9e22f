"""Tenant isolation matrix: every RPC against someone else's rows, from every kind of caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import select

from progress_service.tables import user_progress
from tests.conftest import Harness
from tests.support.callers import Caller, expect_error, new_uuid

pytestmark = pytest.mark.asyncio

SIGN = "sign_learned"
INJECTIONS = [
    "%",
    "_",
    "%%",
    "sha%",
    "sh_red",
    "' OR '1'='1",
    "shared' --",
    "shared'; DELETE FROM user_progress; --",
    '"; DROP TABLE user_progress; --',
    "\\",
    "shared\\",
    "SHARED",
    "ｓｈａｒｅｄ",  # fullwidth
    "shared\u200b",  # zero-width space
    "shared\u0301",  # combining accent
    "𝓈𝒽𝒶𝓇𝑒𝒹",
    "$1",
    ":item_id",
    "*",
    ".*",
]


def personas(owner: Caller) -> dict[str, Caller]:
    """Everyone who is not the owner; the owner's rows must stay out of their reach."""
    return {
        "same_org_other_user": Caller(org=owner.org),
        "other_org": Caller(),
        "other_org_same_user_id": Caller(sub=owner.sub),
        "global_access": Caller(org=None, global_access=True),
        "global_access_with_org": Caller(org=owner.org, global_access=True),
        "no_permissions": Caller(org=owner.org, permissions=[]),
        "no_organization": Caller(org=None),
    }


# Callers that may not write tenant rows (no organization to write into).
CANNOT_WRITE = {"global_access"}
# Callers refused outright: the token names neither an organization nor global access.
REFUSED = {"no_organization"}


def stub(h: Harness) -> progress_pb2_grpc.UserProgressServiceStub:
    return progress_pb2_grpc.UserProgressServiceStub(h.channel)


async def upsert(h: Harness, who: Caller, item: str, value: str) -> pb.UserProgress:
    data = pb.UserProgressInput(progress_type=SIGN, item_id=item, value=value)
    return await stub(h).UpsertUserProgress(
        pb.UpsertUserProgressRequest(data=data), metadata=who.md
    )


async def listing(h: Harness, who: Caller, item: str | None = None) -> pb.ListUserProgressResponse:
    request = pb.ListUserProgressRequest(progress_type=SIGN)
    if item is not None:
        request.item_id = item
    return await stub(h).ListUserProgress(request, metadata=who.md)


async def delete(h: Harness, who: Caller, item: str) -> pb.DeleteUserProgressByItemResponse:
    request = pb.DeleteUserProgressByItemRequest(progress_type=SIGN, item_id=item)
    return await stub(h).DeleteUserProgressByItem(request, metadata=who.md)


async def owner_rows(h: Harness, owner: Caller) -> dict[str, tuple[str | None, bool]]:
    """The owner's rows as stored: item -> (value, live)."""
    rows = await h.rows(
        select(user_progress.c.item_id, user_progress.c.value, user_progress.c.deletedAt).where(
            user_progress.c.userId == owner.sub,
            user_progress.c.organizationId == owner.org,
        )
    )
    return {item: (value, deleted is None) for item, value, deleted in rows}


async def seeded(h: Harness) -> tuple[Caller, dict[str, tuple[str | None, bool]]]:
    owner = Caller()
    for item in ("shared", "only-mine", "%", "_"):
        await upsert(h, owner, item, f"owner:{item}")
    return owner, await owner_rows(h, owner)


Rpc = Callable[[Harness, Caller], Awaitable[Any]]
RPCS: dict[str, Rpc] = {
    "upsert": lambda h, who: upsert(h, who, "shared", "intruder"),
    "list": lambda h, who: listing(h, who),
    "list_by_owner_item": lambda h, who: listing(h, who, "only-mine"),
    "delete_owner_item": lambda h, who: delete(h, who, "only-mine"),
}


@pytest.mark.parametrize("rpc", sorted(RPCS))
@pytest.mark.parametrize(
    "persona",
    [
        "same_org_other_user",
        "other_org",
        "other_org_same_user_id",
        "global_access",
        "global_access_with_org",
        "no_permissions",
        "no_organization",
    ],
)
async def test_matrix(progress: Harness, rpc: str, persona: str) -> None:
    owner, before = await seeded(progress)
    who = personas(owner)[persona]
    call = RPCS[rpc](progress, who)
    if persona in REFUSED:
        await expect_error(call, grpc.StatusCode.UNAUTHENTICATED)
    elif rpc == "upsert" and persona in CANNOT_WRITE:
        err = await expect_error(call, grpc.StatusCode.PERMISSION_DENIED)
        assert err.reason == "NO_ORGANIZATION"
    else:
        response = await call
        if rpc == "upsert":
            assert response.user_id == who.sub and response.value == "intruder"
            assert response.id not in {r.id for r in (await listing(progress, owner)).rows}
        elif rpc.startswith("list"):
            assert response.count == 0 and not response.rows
        else:
            assert response.deleted_count == 0
    assert await owner_rows(progress, owner) == before
    assert (await listing(progress, owner)).count == len(before)


@pytest.mark.parametrize(
    "persona", ["same_org_other_user", "other_org", "other_org_same_user_id", "global_access"]
)
async def test_out_of_scope_answers_exactly_like_missing(progress: Harness, persona: str) -> None:
    owner, _ = await seeded(progress)
    who = personas(owner)[persona]
    missing = f"never-{new_uuid()}"
    assert await listing(progress, who, "only-mine") == await listing(progress, who, missing)
    assert await delete(progress, who, "only-mine") == await delete(progress, who, missing)


async def test_refusals_look_the_same_whatever_the_target(progress: Harness) -> None:
    owner, _ = await seeded(progress)
    nobody = personas(owner)["no_organization"]
    errors = [
        await expect_error(delete(progress, nobody, item), grpc.StatusCode.UNAUTHENTICATED)
        for item in ("only-mine", f"never-{new_uuid()}")
    ]
    assert errors[0] == errors[1]


@pytest.mark.parametrize("injection", INJECTIONS)
async def test_injection_through_item_id_matches_nothing_and_widens_nothing(
    progress: Harness, injection: str
) -> None:
    owner, before = await seeded(progress)
    outsider = Caller(org=owner.org)
    await upsert(progress, outsider, "shared", "outsider")
    # As the owner: exact match only, so a pattern finds only a row literally named like it.
    listed = await listing(progress, owner, injection)
    expected = [injection] if injection in before else []
    assert [r.item_id for r in listed.rows] == expected and listed.count == len(expected)
    # As the outsider: nothing of the owner's, whatever the string.
    assert (await listing(progress, outsider, injection)).count == 0
    assert (await delete(progress, outsider, injection)).deleted_count == 0
    assert await owner_rows(progress, owner) == before


@pytest.mark.parametrize("injection", INJECTIONS)
async def test_injection_through_progress_type_is_invalid_argument(
    progress: Harness, injection: str
) -> None:
    owner, before = await seeded(progress)
    for call in (
        stub(progress).ListUserProgress(
            pb.ListUserProgressRequest(progress_type=injection), metadata=owner.md
        ),
        stub(progress).DeleteUserProgressByItem(
            pb.DeleteUserProgressByItemRequest(progress_type=injection, item_id="shared"),
            metadata=owner.md,
        ),
    ):
        err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert [f for f, _ in err.violations] == ["progress_type"]
    assert await owner_rows(progress, owner) == before
