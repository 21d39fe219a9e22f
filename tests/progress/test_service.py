"""UserProgressService through a real server and channel, on each backend."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import struct_pb2
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import func, select

from progress_service.tables import user_progress
from tests.conftest import Harness
from tests.support.callers import SECRET, Caller, bearer, expect_error, expired_token, new_uuid

pytestmark = pytest.mark.asyncio

SIGN, ZONE = "sign_learned", "zone_checkin"


def stub(h: Harness) -> progress_pb2_grpc.UserProgressServiceStub:
    return progress_pb2_grpc.UserProgressServiceStub(h.channel)


async def upsert(
    h: Harness, caller: Caller, item: str = "a", ptype: str = SIGN, **fields
) -> pb.UserProgress:
    data = pb.UserProgressInput(progress_type=ptype, item_id=item, **fields)
    return await stub(h).UpsertUserProgress(
        pb.UpsertUserProgressRequest(data=data), metadata=caller.md
    )


async def listing(
    h: Harness, caller: Caller, ptype: str = SIGN, **kw
) -> pb.ListUserProgressResponse:
    return await stub(h).ListUserProgress(
        pb.ListUserProgressRequest(progress_type=ptype, **kw), metadata=caller.md
    )


async def stored_rows(h: Harness) -> list:
    return [dict(r) for r in await h.rows(select(user_progress))]


async def test_upsert_creates_row_owned_by_the_token(progress: Harness) -> None:
    caller = Caller(campus=new_uuid())
    row = await upsert(progress, caller, "  hello  ", value="learned", score=3)
    assert row.item_id == "hello"
    assert (row.user_id, row.organization_id, row.campus_id) == (
        caller.sub,
        caller.org,
        caller.campus,
    )
    assert row.value == "learned" and row.score == 3
    assert row.created_at.ToDatetime() == row.updated_at.ToDatetime()
    [stored] = await stored_rows(progress)
    assert stored["item_id"] == "hello"
    assert stored["createdById"] == caller.sub and stored["updatedById"] == caller.sub
    assert stored["organizationId"] == caller.org and stored["deletedAt"] is None


async def test_upsert_updates_the_same_row_and_keeps_created(progress: Harness) -> None:
    caller = Caller()
    first = await upsert(progress, caller, "a", value="one", score=1)
    second = await upsert(progress, caller, " a ", value="two")
    assert second.id == first.id
    assert second.value == "two" and not second.HasField("score")
    assert second.created_at == first.created_at
    assert second.updated_at.ToDatetime() >= first.updated_at.ToDatetime()
    assert len(await stored_rows(progress)) == 1


async def test_optional_fields_absent_are_null_and_empty_is_kept(progress: Harness) -> None:
    caller = Caller()
    bare = await upsert(progress, caller, "bare")
    assert not bare.HasField("value") and not bare.HasField("score")
    assert not bare.HasField("metadata") and not bare.HasField("campus_id")
    zeroes = await upsert(progress, caller, "zero", value="", score=0)
    assert zeroes.HasField("value") and zeroes.value == ""
    assert zeroes.HasField("score") and zeroes.score == 0
    rows = {r["item_id"]: r for r in await stored_rows(progress)}
    assert rows["bare"]["value"] is None and rows["bare"]["score"] is None
    assert rows["bare"]["metadata"] is None
    assert rows["zero"]["value"] == "" and rows["zero"]["score"] == 0


@pytest.mark.parametrize(
    "value",
    [{"zone": "green", "notes": ["a", 1]}, [1, 2, 3], "text", 4.5, True],
)
async def test_metadata_round_trips_any_json(progress: Harness, value: object) -> None:
    meta = struct_pb2.Value()
    from google.protobuf import json_format

    json_format.ParseDict(value, meta)
    row = await upsert(progress, Caller(), "m", metadata=meta)
    assert json_format.MessageToDict(row.metadata) == value
    [stored] = await stored_rows(progress)
    assert stored["metadata"] == value


@pytest.mark.parametrize(
    ("ptype", "item", "fields"),
    [
        ("", "a", ["data.progress_type"]),
        ("sign", "a", ["data.progress_type"]),
        (SIGN, "", ["data.item_id"]),
        (SIGN, "   ", ["data.item_id"]),
        ("bogus", " ", ["data.progress_type", "data.item_id"]),
    ],
)
async def test_upsert_validation_names_each_field(progress: Harness, ptype, item, fields) -> None:
    err = await expect_error(
        upsert(progress, Caller(), item, ptype), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert [f for f, _ in err.violations] == fields
    assert err.domain == "progress.v1" and err.reason == "INVALID_ARGUMENT"
    assert await stored_rows(progress) == []


async def test_list_validates_type_and_paging(progress: Harness) -> None:
    caller = Caller()
    err = await expect_error(listing(progress, caller, "nope"), grpc.StatusCode.INVALID_ARGUMENT)
    assert err.violations[0][0] == "progress_type"
    err = await expect_error(listing(progress, caller, limit=-1), grpc.StatusCode.INVALID_ARGUMENT)
    assert err.violations[0][0] == "limit"
    err = await expect_error(listing(progress, caller, page=-2), grpc.StatusCode.INVALID_ARGUMENT)
    assert err.violations[0][0] == "page"


async def test_list_orders_newest_first_counts_before_paging(progress: Harness) -> None:
    caller = Caller()
    for i in range(13):
        await upsert(progress, caller, f"item-{i:02d}")
    await upsert(progress, caller, "zone", ZONE)
    first = await listing(progress, caller)
    assert first.count == 13 and len(first.rows) == 10  # default page size
    assert [r.item_id for r in first.rows] == [f"item-{i:02d}" for i in range(12, 2, -1)]
    second = await listing(progress, caller, page=1)
    assert [r.item_id for r in second.rows] == ["item-02", "item-01", "item-00"]
    assert second.count == 13
    small = await listing(progress, caller, limit=4, page=2)
    assert [r.item_id for r in small.rows] == ["item-04", "item-03", "item-02", "item-01"]
    beyond = await listing(progress, caller, limit=5, page=9)
    assert beyond.rows == [] and beyond.count == 13


async def test_list_caps_page_size_at_100(progress: Harness) -> None:
    caller = Caller()
    await asyncio.gather(*(upsert(progress, caller, f"i{i}") for i in range(105)))
    capped = await listing(progress, caller, limit=1000)
    assert len(capped.rows) == 100 and capped.count == 105


async def test_list_filters_by_item_id(progress: Harness) -> None:
    caller = Caller()
    await upsert(progress, caller, "a")
    await upsert(progress, caller, "b")
    only = await listing(progress, caller, item_id=" b ")
    assert [r.item_id for r in only.rows] == ["b"] and only.count == 1


async def test_callers_see_only_their_own_rows_in_their_organization(progress: Harness) -> None:
    me = Caller()
    colleague = Caller(org=me.org)
    me_elsewhere = Caller(org=new_uuid(), sub=me.sub)
    await upsert(progress, me, "shared-item", value="mine")
    await upsert(progress, colleague, "shared-item", value="theirs")
    await upsert(progress, me_elsewhere, "shared-item", value="other-org")
    mine = await listing(progress, me)
    assert [r.value for r in mine.rows] == ["mine"] and mine.count == 1
    assert [r.value for r in (await listing(progress, colleague)).rows] == ["theirs"]
    assert [r.value for r in (await listing(progress, me_elsewhere)).rows] == ["other-org"]
    # A colleague deleting "the same" item deletes only their own row.
    deleted = await stub(progress).DeleteUserProgressByItem(
        pb.DeleteUserProgressByItemRequest(progress_type=SIGN, item_id="shared-item"),
        metadata=colleague.md,
    )
    assert deleted.deleted_count == 1
    assert (await listing(progress, me)).count == 1
    assert len(await stored_rows(progress)) == 3


async def test_global_access_sees_own_rows_across_organizations(progress: Harness) -> None:
    me = Caller()
    await upsert(progress, me, "x")
    await upsert(progress, Caller(org=new_uuid(), sub=me.sub), "y")
    await upsert(progress, Caller(), "z")  # someone else
    roaming = Caller(org=None, sub=me.sub, global_access=True)
    rows = await listing(progress, roaming)
    assert sorted(r.item_id for r in rows.rows) == ["x", "y"]
    err = await expect_error(upsert(progress, roaming, "w"), grpc.StatusCode.PERMISSION_DENIED)
    assert err.reason == "NO_ORGANIZATION"


async def test_delete_by_item_soft_deletes_and_counts(progress: Harness) -> None:
    caller = Caller()
    await upsert(progress, caller, "a")
    await upsert(progress, caller, "a", ZONE)
    request = pb.DeleteUserProgressByItemRequest(progress_type=SIGN, item_id=" a ")
    first = await stub(progress).DeleteUserProgressByItem(request, metadata=caller.md)
    again = await stub(progress).DeleteUserProgressByItem(request, metadata=caller.md)
    assert (first.deleted_count, again.deleted_count) == (1, 0)
    assert (await listing(progress, caller)).count == 0
    assert (await listing(progress, caller, ZONE)).count == 1
    rows = await stored_rows(progress)
    assert sum(r["deletedAt"] is not None for r in rows) == 1
    recreated = await upsert(progress, caller, "a")
    assert (await listing(progress, caller)).rows[0].id == recreated.id


async def test_delete_validates(progress: Harness) -> None:
    err = await expect_error(
        stub(progress).DeleteUserProgressByItem(
            pb.DeleteUserProgressByItemRequest(progress_type="x", item_id=" "), metadata=Caller().md
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [f for f, _ in err.violations] == ["progress_type", "item_id"]


async def test_concurrent_upserts_of_one_key_leave_one_row(progress: Harness) -> None:
    caller = Caller()
    results = await asyncio.gather(*(upsert(progress, caller, "race", score=i) for i in range(50)))
    assert len({r.id for r in results}) == 1
    assert await progress.scalar(select(func.count()).select_from(user_progress)) == 1


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer"),),
        (("authorization", "Basic abc"),),
        (("authorization", "Bearer not-a-jwt"),),
    ],
)
async def test_missing_or_malformed_token_is_unauthenticated(progress: Harness, metadata) -> None:
    err = await expect_error(
        stub(progress).ListUserProgress(
            pb.ListUserProgressRequest(progress_type=SIGN), metadata=metadata
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert err.domain == "progress.v1" and err.reason == "UNAUTHENTICATED"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_expired_wrongly_signed_or_unsigned_tokens_get_nothing(progress: Harness) -> None:
    import jwt

    caller = Caller()
    await upsert(progress, caller, "secret")
    claims = {"sub": caller.sub, "org": caller.org, "exp": 4102444800}
    tokens = [
        expired_token(caller),
        jwt.encode(claims, "another-secret-" + "y" * 40, algorithm="HS256"),
        jwt.encode(claims, None, algorithm="none"),
        jwt.encode(claims, SECRET, algorithm="HS512"),  # right secret, other algorithm
        jwt.encode({"org": caller.org, "exp": 4102444800}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": caller.sub, "org": caller.org}, SECRET, algorithm="HS256"),
        jwt.encode({"sub": caller.sub, "exp": 4102444800}, SECRET, algorithm="HS256"),
    ]
    for token in tokens:
        await expect_error(
            stub(progress).ListUserProgress(
                pb.ListUserProgressRequest(progress_type=SIGN), metadata=bearer(token)
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        await expect_error(
            stub(progress).UpsertUserProgress(
                pb.UpsertUserProgressRequest(
                    data=pb.UserProgressInput(progress_type=SIGN, item_id="x")
                ),
                metadata=bearer(token),
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    assert len(await stored_rows(progress)) == 1
