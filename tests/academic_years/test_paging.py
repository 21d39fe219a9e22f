"""Keyset paging of ListAcademicYears (page_token), skip_count, and the export's keyset batches."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb

from academic_years_service.statements import SORT_COLUMNS
from common.csvstream import export as csv_export
from tests.conftest import Harness
from tests.support.academic_years import READ, listing, seed_years, staff, stub, utc
from tests.support.callers import Caller, expect_error, new_uuid
from tests.support.csv import collect, copy_limits, parse_csv

pytestmark = pytest.mark.asyncio

NULLABLE = {"name", "start_date", "end_date"}


def _rows(org: str) -> list[dict[str, Any]]:
    """Years with ties on every sort field and NULLs in each nullable one."""
    rows = []
    for i in range(23):
        day = dt.date(2020, 1, 1) + dt.timedelta(days=i % 5)
        stamp = utc("2025-01-01T00:00:00") + dt.timedelta(seconds=i % 7)
        rows.append(
            {
                "organizationId": org,
                "name": None if i % 6 == 0 else f"year{i % 4}",
                "start_date": None if i % 5 == 1 else day,
                "end_date": None if i % 4 == 2 else day,
                "current": i % 3 == 0,
                "createdAt": stamp,
                "updatedAt": stamp + dt.timedelta(seconds=i % 2),
            }
        )
    return rows


async def _with_ids(h: Harness, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row, year_id in zip(rows, await seed_years(h, *rows), strict=True):
        row["id"] = year_id
    return rows


async def seeded_with_others(
    h: Harness,
) -> tuple[Caller, list[dict[str, Any]], list[dict[str, Any]]]:
    """A caller, its organization's live years and another organization's."""
    caller = staff()
    rows = await _with_ids(h, _rows(caller.org))
    others = await _with_ids(h, _rows(new_uuid()))
    await seed_years(
        h, {"organizationId": caller.org, "name": "gone", "deletedAt": utc("2025-01-02T00:00:00")}
    )
    return caller, rows, others


async def seeded(h: Harness) -> tuple[Caller, list[dict[str, Any]]]:
    caller, rows, _ = await seeded_with_others(h)
    return caller, rows


def expected(rows: list[dict[str, Any]], field: str, descending: bool) -> list[str]:
    """The order List promises, computed here: the field (NULLs last), then id, both one way."""
    present = [r for r in rows if r[field] is not None]
    nulls = [r for r in rows if r[field] is None]
    present.sort(key=lambda r: (r[field], r["id"]), reverse=descending)
    nulls.sort(key=lambda r: r["id"], reverse=descending)
    return [r["id"] for r in present + nulls]


async def walk(h: Harness, caller: Caller, limit: int, **request: Any) -> tuple[list[str], int]:
    """Every page by page_token; the ids in order and how many pages it took."""
    ids: list[str] = []
    token, pages = "", 0
    while True:
        page = await listing(h, caller, limit=limit, page_token=token, **request)
        pages += 1
        ids += [r.id for r in page.rows]
        token = page.next_page_token
        if not token:
            return ids, pages
        assert len(page.rows) == limit  # only the last page is short (or empty-free)


@pytest.mark.parametrize("field", list(SORT_COLUMNS))
@pytest.mark.parametrize("sort", ["asc", "desc"])
async def test_every_order_walks_by_token_exactly_as_it_pages_by_number(
    academic_years: Harness, field: str, sort: str
) -> None:
    caller, rows = await seeded(academic_years)
    want = expected(rows, field, sort == "desc")
    ids, pages = await walk(academic_years, caller, 4, field=field, sort=sort)
    assert ids == want and pages == 6
    by_number = []
    for number in range(6):
        page = await listing(academic_years, caller, limit=4, page=number, field=field, sort=sort)
        by_number += [r.id for r in page.rows]
        assert page.count == len(rows)
        assert bool(page.next_page_token) == (number < 5)
    assert by_number == want


async def test_the_default_order_and_a_filter_walk_by_token(academic_years: Harness) -> None:
    caller, rows = await seeded(academic_years)
    ids, _ = await walk(academic_years, caller, 5)
    assert ids == expected(rows, "createdAt", True)
    named = [r for r in rows if r["name"] == "year1"]
    ids, _ = await walk(academic_years, caller, 2, name="YEAR1")
    assert ids == expected(named, "createdAt", True)
    # The page size may change between pages.
    first = await listing(academic_years, caller, limit=3)
    second = await listing(academic_years, caller, limit=10, page_token=first.next_page_token)
    assert [r.id for r in [*first.rows, *second.rows]] == expected(rows, "createdAt", True)[:13]


async def test_a_page_that_ends_the_list_has_no_token(academic_years: Harness) -> None:
    caller, _rows = await seeded(academic_years)
    assert (await listing(academic_years, caller, limit=23)).next_page_token == ""
    assert (await listing(academic_years, caller, limit=22)).next_page_token != ""
    assert (await listing(academic_years, staff())).next_page_token == ""  # nothing at all


async def test_skip_count_skips_only_the_count(academic_years: Harness) -> None:
    caller, _rows = await seeded(academic_years)
    counted = await listing(academic_years, caller, limit=5)
    skipped = await listing(academic_years, caller, limit=5, skip_count=True)
    assert counted.count == 23 and skipped.count == 0
    assert [r.id for r in skipped.rows] == [r.id for r in counted.rows]
    assert skipped.next_page_token == counted.next_page_token


async def test_a_token_is_refused_for_another_filter_order_or_caller_or_when_altered(
    academic_years: Harness,
) -> None:
    caller, _rows = await seeded(academic_years)
    token = (await listing(academic_years, caller, limit=2, name="year")).next_page_token
    assert (await listing(academic_years, caller, limit=2, name="year", page_token=token)).rows
    colleague = staff(caller.org)
    reader = Caller(org=caller.org, sub=caller.sub, permissions=[READ])  # same user, fewer rights
    misuses = [
        (caller, {"name": "yea"}),  # another filter
        (caller, {"name": "year", "current": True}),  # a filter more
        (caller, {"name": "year", "field": "name"}),  # another order
        (caller, {"name": "year", "sort": "asc"}),
        (colleague, {"name": "year"}),  # another user of the organization
        (staff(), {"name": "year"}),  # another organization
    ]
    for who, request in misuses:
        error = await expect_error(
            listing(academic_years, who, limit=2, page_token=token, **request),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert [f for f, _ in error.violations] == ["pageToken"], request
    assert (await listing(academic_years, reader, limit=2, name="year", page_token=token)).rows
    altered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (altered, token[::-1], "not a token"):
        error = await expect_error(
            listing(academic_years, caller, limit=2, name="year", page_token=bad),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert [f for f, _ in error.violations] == ["pageToken"]
    error = await expect_error(
        listing(academic_years, caller, page=1, page_token=token, name="year"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [f for f, _ in error.violations] == ["pageToken"]


@pytest.mark.parametrize("everyone", [False, True], ids=["one-organization", "global-access"])
async def test_export_reads_in_lists_order_in_one_copy_or_keyset_batches(
    academic_years: Harness, monkeypatch: pytest.MonkeyPatch, everyone: bool
) -> None:
    """One organization's export is one COPY; a global-access caller's reads keyset batches
    (of 3 here, so every order crosses batch boundaries inside ties and NULLs)."""
    caller, rows, others = await seeded_with_others(academic_years)
    if everyone:
        caller, rows = replace(caller, global_access=True), rows + others
    monkeypatch.setattr(csv_export, "EXPORT_BATCH_ROWS", 3)
    copies = copy_limits(monkeypatch)
    for field, sort in (("createdAt", "desc"), ("name", "desc"), ("end_date", "asc")):
        copies.clear()
        call = stub(academic_years).ExportAcademicYearsCsv(
            pb.ListAcademicYearsRequest(field=field, sort=sort), metadata=caller.md
        )
        exported = [line[0] for line in parse_csv(await collect(call))[1:]]
        assert exported == expected(rows, field, sort == "desc"), field
        assert copies == ([3] * (len(rows) // 3 + 1) if everyone else [None]), field


async def test_names_longer_than_their_cap_page_by_the_whole_name(academic_years: Harness) -> None:
    """A name stored before the length limit is read cut; the page after it must start after
    the whole name, or years sharing the cut prefix would repeat or go missing."""
    caller = staff()
    long = "a" * 600
    rows = [{"organizationId": caller.org, "name": f"{long}{i}"} for i in (3, 1, 2)]
    ids = await seed_years(academic_years, *rows)
    by_name = [ids[1], ids[2], ids[0]]
    assert (await walk(academic_years, caller, 1, field="name"))[0] == by_name
    assert (await walk(academic_years, caller, 1, field="name", sort="desc"))[0] == by_name[::-1]
