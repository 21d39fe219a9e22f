"""Request ids (AIP-155) on the progress writes, through a real server, and their expiry."""

from __future__ import annotations

import asyncio
import datetime as dt

import grpc
import pytest
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import func, select, update

from common.idempotency import Purger
from progress_service.app import DEFINITION
from progress_service.repository import REQUEST_IDS
from progress_service.tables import metadata, request_ids, user_progress
from tests.conftest import Harness, start_harness, stop_harness
from tests.support.callers import Caller, expect_error, new_uuid
from tests.support.csv import bodies, csv_bytes

pytestmark = pytest.mark.asyncio

HEADER = ["progress_type", "item_id", "value", "score", "metadata"]


def stub(h: Harness) -> progress_pb2_grpc.UserProgressServiceStub:
    return progress_pb2_grpc.UserProgressServiceStub(h.channel)


def upsert(value: str, request_id: str = "", item: str = "a") -> pb.UpsertUserProgressRequest:
    data = pb.UserProgressInput(progress_type="sign_learned", item_id=item, value=value)
    return pb.UpsertUserProgressRequest(data=data, request_id=request_id)


async def rows(h: Harness) -> list[tuple[str, str]]:
    found = await h.rows(select(user_progress.c.item_id, user_progress.c.value))
    return sorted((r["item_id"], r["value"]) for r in found)


async def kept(h: Harness) -> int:
    return int(await h.scalar(select(func.count()).select_from(request_ids)))


async def test_a_retried_upsert_answers_the_first_row_without_writing(progress: Harness) -> None:
    caller, rid = Caller(), new_uuid()
    first = await stub(progress).UpsertUserProgress(upsert("one", rid), metadata=caller.md)
    await stub(progress).UpsertUserProgress(upsert("two"), metadata=caller.md)
    again = await stub(progress).UpsertUserProgress(upsert("one", rid), metadata=caller.md)
    assert again == first and again.value == "one"
    assert await rows(progress) == [("a", "two")]  # the retry did not write "one" back


async def test_the_same_id_with_another_upsert_is_invalid(progress: Harness) -> None:
    caller, rid = Caller(), new_uuid()
    await stub(progress).UpsertUserProgress(upsert("one", rid), metadata=caller.md)
    error = await expect_error(
        stub(progress).UpsertUserProgress(upsert("other", rid), metadata=caller.md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error.reason == "REQUEST_ID_REUSED"
    assert error.violations == [
        ("requestId", "was used for a different request: send a new id for a new operation")
    ]
    assert await rows(progress) == [("a", "one")]


async def test_twenty_concurrent_upserts_with_one_id_write_once(progress: Harness) -> None:
    caller, rid = Caller(), new_uuid()
    answers = await asyncio.gather(
        *(
            stub(progress).UpsertUserProgress(upsert("v", rid, item="once"), metadata=caller.md)
            for _ in range(20)
        )
    )
    assert len({a.SerializeToString(deterministic=True) for a in answers}) == 1
    [row] = await progress.rows(select(user_progress))
    # Written once: a second write would have moved updatedAt past createdAt.
    assert row["createdAt"] == row["updatedAt"] and await kept(progress) == 1


async def test_a_retried_import_answers_the_first_summary(progress: Harness) -> None:
    caller, rid = Caller(), new_uuid()
    data = csv_bytes(
        [HEADER, ["sign_learned", "a", "x", "", ""], ["zone_checkin", "b", "", "", ""]]
    )
    md = (*caller.md, ("request-id", rid))
    first = await stub(progress).ImportUserProgressCsv(bodies(data), metadata=md)
    assert (first.created, first.updated) == (2, 0)
    await stub(progress).UpsertUserProgress(upsert("changed"), metadata=caller.md)
    again = await stub(progress).ImportUserProgressCsv(bodies(data), metadata=md)
    assert again == first  # not (0, 2): nothing was applied again
    reports = [
        r async for r in stub(progress).ImportUserProgressCsvWithProgress(bodies(data), metadata=md)
    ]
    assert reports[-1].summary == first and reports[-1].bytes_read == 0
    assert await rows(progress) == [("a", "changed"), ("b", None)]


async def test_a_large_import_is_told_apart_by_the_start_of_its_file(progress: Harness) -> None:
    """The digest of an import is of its file's first 64 KiB, however the file is chunked."""
    caller, rid = Caller(), new_uuid()
    lines = [HEADER, *(["sign_learned", f"item {i:06}", "v" * 40, "", ""] for i in range(3000))]
    data = csv_bytes(lines)
    assert len(data) > 64 * 1024
    md = (*caller.md, ("request-id", rid))
    first = await stub(progress).ImportUserProgressCsv(bodies(data, 10_000), metadata=md)
    again = await stub(progress).ImportUserProgressCsv(bodies(data, 7_000), metadata=md)
    assert again == first and first.created == 3000
    changed = data.replace(b"item 000001", b"item 999999")
    await expect_error(
        stub(progress).ImportUserProgressCsv(bodies(changed), metadata=md),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def expire(h: Harness, seconds: float) -> None:
    """Makes every kept answer `seconds` old."""
    stamp = func.now() - dt.timedelta(seconds=seconds)
    await h.execute(update(request_ids).values(createdAt=stamp))


async def test_expired_answers_are_purged_in_batches_and_then_writes_apply_again(
    progress: Harness,
) -> None:
    caller = Caller()
    ids = [new_uuid() for _ in range(5)]
    for n, rid in enumerate(ids):
        await stub(progress).UpsertUserProgress(upsert(f"v{n}", rid, f"i{n}"), metadata=caller.md)
    await expire(progress, 3600)
    fresh = new_uuid()
    await stub(progress).UpsertUserProgress(upsert("new", fresh, "i9"), metadata=caller.md)
    assert await REQUEST_IDS.purge(progress.db, ttl_seconds=7200) == 0  # not old enough yet
    assert await REQUEST_IDS.purge(progress.db, ttl_seconds=1800, batch=2) == 5
    assert await kept(progress) == 1  # the fresh one stays
    # The answer is gone: the same id and request is a new operation now, and applies.
    await stub(progress).UpsertUserProgress(upsert("changed", item="i0"), metadata=caller.md)
    await stub(progress).UpsertUserProgress(upsert("v0", ids[0], "i0"), metadata=caller.md)
    assert ("i0", "v0") in await rows(progress)


async def test_each_server_purges_expired_answers_by_itself(pg_url: str) -> None:
    harness = await start_harness(DEFINITION, pg_url, metadata, request_id_ttl_seconds=1)
    try:
        purger = Purger(harness.db, DEFINITION.request_ids, 1)
        assert purger.interval == pytest.approx(0.2)
        caller = Caller()
        await stub(harness).UpsertUserProgress(upsert("v", new_uuid()), metadata=caller.md)
        assert await kept(harness) >= 1
        for _ in range(100):  # 10 s at most
            if not await kept(harness):
                break
            await asyncio.sleep(0.1)
        assert await kept(harness) == 0
    finally:
        await stop_harness(harness)
