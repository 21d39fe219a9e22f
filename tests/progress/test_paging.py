"""Keyset paging of ListUserProgress (page_token), skip_count, and the export's keyset batches."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import grpc
import pytest
from progress.v1 import progress_pb2 as pb

from common.csvstream import export as csv_export
from progress_service.tables import user_progress
from tests.conftest import Harness
from tests.progress.test_service import SIGN, ZONE, listing, stub
from tests.support.callers import Caller, expect_error, new_uuid
from tests.support.csv import collect, copy_limits, parse_csv

pytestmark = pytest.mark.asyncio

BASE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


async def seed(h: Harness, caller: Caller, count: int, ptype: str = SIGN) -> list[dict[str, Any]]:
    """`count` rows of `caller`, createdAt tied in threes (id breaks the ties)."""
    rows = []
    for i in range(count):
        stamp = BASE + dt.timedelta(seconds=i // 3)
        row = {
            "id": new_uuid(),
            "progress_type": ptype,
            "item_id": f"{ptype}-{i}",
            "organizationId": caller.org,
            "userId": caller.sub,
            "createdById": caller.sub,
            "createdAt": stamp,
            "updatedAt": stamp,
        }
        await h.execute(user_progress.insert().values(row))
        rows.append(row)
    return rows


def newest_first(rows: list[dict[str, Any]]) -> list[str]:
    return [
        r["item_id"] for r in sorted(rows, key=lambda r: (r["createdAt"], r["id"]), reverse=True)
    ]


async def walk(h: Harness, caller: Caller, limit: int, **request: Any) -> list[str]:
    items: list[str] = []
    token = ""
    while True:
        page = await listing(h, caller, limit=limit, page_token=token, **request)
        items += [r.item_id for r in page.rows]
        token = page.next_page_token
        if not token:
            return items


async def test_walking_by_token_gives_every_row_once_newest_first(progress: Harness) -> None:
    caller = Caller()
    rows = await seed(progress, caller, 17)
    await seed(progress, caller, 4, ZONE)
    await seed(progress, Caller(org=caller.org), 5)  # a colleague's rows
    assert await walk(progress, caller, 4) == newest_first(rows)
    assert await walk(progress, caller, 100) == newest_first(rows)
    by_number = []
    for number in range(5):
        page = await listing(progress, caller, limit=4, page=number)
        by_number += [r.item_id for r in page.rows]
        assert page.count == 17 and bool(page.next_page_token) == (number < 4)
    assert by_number == newest_first(rows)


async def test_skip_count_and_the_item_filter(progress: Harness) -> None:
    caller = Caller()
    rows = await seed(progress, caller, 6)
    skipped = await listing(progress, caller, limit=2, skip_count=True)
    assert skipped.count == 0 and [r.item_id for r in skipped.rows] == newest_first(rows)[:2]
    only = await listing(progress, caller, item_id=f"{SIGN}-4")
    assert [r.item_id for r in only.rows] == [f"{SIGN}-4"] and only.next_page_token == ""


async def test_a_token_is_good_only_for_its_caller_type_and_item(progress: Harness) -> None:
    caller = Caller()
    await seed(progress, caller, 6)
    await seed(progress, caller, 6, ZONE)
    token = (await listing(progress, caller, limit=2)).next_page_token
    assert len((await listing(progress, caller, limit=2, page_token=token)).rows) == 2
    misuses = [
        (caller, {"ptype": ZONE}),
        (caller, {"item_id": f"{SIGN}-1"}),
        (Caller(org=caller.org), {}),  # a colleague
        (Caller(sub=caller.sub), {}),  # the same user in another organization
        (Caller(org=None, sub=caller.sub, global_access=True), {}),
    ]
    for who, request in misuses:
        error = await expect_error(
            listing(progress, who, limit=2, page_token=token, **request),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert [f for f, _ in error.violations] == ["pageToken"], request
    error = await expect_error(
        listing(progress, caller, page=1, page_token=token), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert [f for f, _ in error.violations] == ["pageToken"]


@pytest.mark.parametrize("everyone", [False, True], ids=["one-organization", "global-access"])
async def test_export_reads_oldest_first_in_one_copy_or_keyset_batches(
    progress: Harness, monkeypatch: pytest.MonkeyPatch, everyone: bool
) -> None:
    """A caller's export in its organization is one COPY; a global-access caller's (its rows
    in every organization) reads keyset batches, of 4 here, across createdAt ties."""
    caller = Caller(global_access=everyone)
    rows = await seed(progress, caller, 10) + await seed(progress, caller, 5, ZONE)
    if everyone:  # the same user's rows in another organization
        rows += await seed(progress, replace(caller, org=new_uuid()), 6)
    monkeypatch.setattr(csv_export, "EXPORT_BATCH_ROWS", 4)
    copies = copy_limits(monkeypatch)
    for ptype in (None, ZONE):
        wanted = [r for r in rows if ptype in (None, r["progress_type"])]
        copies.clear()
        request = pb.ExportUserProgressCsvRequest(progress_type=ptype)
        call = stub(progress).ExportUserProgressCsv(request, metadata=caller.md)
        exported = [line[1] for line in parse_csv(await collect(call))[1:]]
        assert exported == newest_first(wanted)[::-1]
        assert copies == ([4] * (len(wanted) // 4 + 1) if everyone else [None]), ptype
