"""List and Count filters, ordering, paging and Autocomplete, through a real server."""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
import pytest_asyncio

from tests.conftest import Harness
from tests.support.academic_years import (
    autocomplete,
    count,
    listing,
    seed_years,
    staff,
    stub,
)
from tests.support.callers import Caller, expect_error, new_uuid

pytestmark = pytest.mark.asyncio

# Five years of one organization, created in this order one second apart (R5 newest).
ROWS: dict[str, dict[str, Any]] = {
    "R1": {"name": "Autumn 2021", "start_date": "2021-09-01", "end_date": "2022-06-30"},
    "R2": {"name": "Spring 2022", "start_date": "2022-01-10", "end_date": "2022-05-31"},
    "R3": {"name": "Autumn 2022", "start_date": "2022-09-01", "end_date": "2023-06-30"},
    "R4": {
        "name": "Autumn 2023",
        "start_date": "2023-09-01",
        "end_date": "2024-06-30",
        "current": True,
    },
    "R5": {},
}
CREATED = {
    "R1": "2024-01-01T10:00:00",
    "R2": "2024-01-02T10:00:00",
    "R3": "2024-01-03T23:59:59",
    "R4": "2024-01-04T00:00:00",
    "R5": "2024-01-05T00:00:00",
}


class Dataset:
    def __init__(self, h: Harness, caller: Caller, ids: dict[str, str], foreign: str) -> None:
        self.h, self.caller, self.ids, self.foreign = h, caller, ids, foreign

    def keys(self, rows: Any) -> list[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id.get(r.id, "foreign") for r in rows]

    async def matching(self, **kw: Any) -> list[str]:
        """Keys of the listed rows in order; Count must agree with List's total."""
        listed = await listing(self.h, self.caller, limit=100, **kw)
        assert listed.count == len(listed.rows) == await count(self.h, self.caller, **kw)
        return self.keys(listed.rows)


@pytest_asyncio.fixture
async def data(academic_years: Harness) -> Dataset:
    caller = staff()
    rows = [{**ROWS[k], "organizationId": caller.org, "createdAt": _utc(CREATED[k])} for k in ROWS]
    ids = await seed_years(academic_years, *rows)
    # The same shape in another organization: never visible to this caller.
    [foreign] = await seed_years(
        academic_years, {**ROWS["R4"], "organizationId": new_uuid(), "name": "Autumn 2021"}
    )
    return Dataset(academic_years, caller, dict(zip(ROWS, ids, strict=True)), foreign)


def _utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


NEWEST_FIRST = ["R5", "R4", "R3", "R2", "R1"]

FILTER_CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({}, NEWEST_FIRST),
    ({"name": "autumn"}, ["R4", "R3", "R1"]),
    ({"name": "UTUMN 202"}, ["R4", "R3", "R1"]),
    ({"calendar_start": "2022-01-01", "calendar_end": "2022-06-30"}, ["R2", "R1"]),
    ({"calendar_start": "2023-07-01", "calendar_end": "2023-09-01"}, ["R4"]),
    ({"calendar_start": "2022-01-01"}, NEWEST_FIRST),
    ({"calendar_end": "2022-01-01"}, NEWEST_FIRST),
    ({"start_date_range": ["2022-01-01", "2022-12-31"]}, ["R3", "R2"]),
    ({"start_date_range": ["2022-09-01", ""]}, ["R4", "R3"]),
    ({"start_date_range": ["2022-09-01"]}, ["R4", "R3"]),
    ({"start_date_range": ["", "2022-01-10"]}, ["R2", "R1"]),
    ({"start_date_range": ["", ""]}, NEWEST_FIRST),
    ({"end_date_range": ["", "2022-06-30"]}, ["R2", "R1"]),
    ({"end_date_range": ["2023-06-30", "2024-06-30"]}, ["R4", "R3"]),
    ({"created_at_range": ["2024-01-02", "2024-01-03"]}, ["R3", "R2"]),
    ({"created_at_range": ["2024-01-03T00:00:00Z", ""]}, ["R5", "R4", "R3"]),
    ({"created_at_range": ["", "2024-01-02T10:00:00+00:00"]}, ["R2", "R1"]),
    ({"created_at_range": ["2024-01-02T11:00:00+01:00", "2024-01-02T10:00:00.000Z"]}, ["R2"]),
    ({"created_at_range": ["2024-01-04", "2024-01-04"]}, ["R4"]),
    ({"current": True}, ["R4"]),
    ({"current": False}, ["R5", "R3", "R2", "R1"]),
    ({"active": True}, NEWEST_FIRST),
    ({"active": False}, NEWEST_FIRST),
    # Combined filters narrow one another.
    ({"name": "autumn", "current": False}, ["R3", "R1"]),
    ({"name": "autumn", "start_date_range": ["2022-01-01", ""]}, ["R4", "R3"]),
    ({"name": "2022", "calendar_start": "2022-05-01", "calendar_end": "2022-06-01"}, ["R2"]),
    (
        {
            "end_date_range": ["2022-06-01", ""],
            "created_at_range": ["", "2024-01-03"],
            "current": False,
        },
        ["R3", "R1"],
    ),
    ({"name": "spring", "current": True}, []),
]


@pytest.mark.parametrize(("request_fields", "expected"), FILTER_CASES)
async def test_each_filter_alone_and_combined(
    data: Dataset, request_fields: dict[str, Any], expected: list[str]
) -> None:
    assert await data.matching(**request_fields) == expected


async def test_id_filter(data: Dataset) -> None:
    assert await data.matching(id=data.ids["R2"]) == ["R2"]
    assert await data.matching(id=data.ids["R2"].upper(), name="spring") == ["R2"]
    assert await data.matching(id=data.foreign) == []
    assert await data.matching(id=new_uuid()) == []


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"id": "R2"}, "id"),
        ({"start_date_range": ["2022-01-01", "2022-02-01", "2022-03-01"]}, "start_dateRange"),
        ({"end_date_range": ["a", "b", "c"]}, "end_dateRange"),
        ({"created_at_range": ["", "", ""]}, "createdAtRange"),
        ({"start_date_range": ["2022-1-1"]}, "start_dateRange[0]"),
        ({"end_date_range": ["", "2022-13-01"]}, "end_dateRange[1]"),
        ({"created_at_range": ["2024-01-02T10:00:00"]}, "createdAtRange[0]"),
        ({"created_at_range": ["", "yesterday"]}, "createdAtRange[1]"),
        ({"calendar_start": "2022-01-01", "calendar_end": "soon"}, "calendarEnd"),
        ({"field": "importHash"}, "field"),
        ({"field": "organizationId; DROP TABLE x"}, "field"),
        ({"sort": "up"}, "sort"),
    ],
)
async def test_bad_filters_are_invalid_argument_naming_the_field(
    data: Dataset, request_fields: dict[str, Any], field: str
) -> None:
    for call in (listing, count):
        error = await expect_error(
            call(data.h, data.caller, **request_fields), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert [v[0] for v in error.violations] == [field]


async def test_name_filter_matches_percent_underscore_and_backslash_literally(
    academic_years: Harness,
) -> None:
    caller = staff()
    names = ["100% done", "1000 done", "a_b", "axb", "back\\slash", "backslash"]
    await seed_years(academic_years, *[{"name": n, "organizationId": caller.org} for n in names])

    async def names_for(text: str) -> list[str]:
        listed = await listing(academic_years, caller, name=text, field="name")
        assert await count(academic_years, caller, name=text) == listed.count
        return [r.name for r in listed.rows]

    assert await names_for("0%") == ["100% done"]
    assert await names_for("%") == ["100% done"]
    assert await names_for("a_b") == ["a_b"]
    assert await names_for("_") == ["a_b"]
    assert await names_for("k\\s") == ["back\\slash"]
    assert await names_for("A_B") == ["a_b"]


@pytest.mark.parametrize(
    ("field", "sort", "expected"),
    [
        ("", "", NEWEST_FIRST),
        ("", "asc", NEWEST_FIRST[::-1]),
        ("createdAt", "desc", NEWEST_FIRST),
        ("createdAt", "", NEWEST_FIRST[::-1]),
        ("name", "asc", ["R1", "R3", "R4", "R2", "R5"]),
        ("name", "DESC", ["R2", "R4", "R3", "R1", "R5"]),
        ("start_date", "asc", ["R1", "R2", "R3", "R4", "R5"]),
        ("end_date", "desc", ["R4", "R3", "R1", "R2", "R5"]),
        ("updatedAt", "asc", NEWEST_FIRST[::-1]),
    ],
)
async def test_sort_whitelist(data: Dataset, field: str, sort: str, expected: list[str]) -> None:
    assert await data.matching(field=field, sort=sort) == expected


async def test_sort_by_current_and_id_break_ties_deterministically(data: Dataset) -> None:
    rest = sorted(["R1", "R2", "R3", "R5"], key=lambda k: data.ids[k])
    assert await data.matching(field="current", sort="desc") == ["R4", *rest[::-1]]
    assert await data.matching(field="current", sort="asc") == [*rest, "R4"]
    assert await data.matching(field="id", sort="asc") == sorted(ROWS, key=lambda k: data.ids[k])


async def test_equal_created_at_pages_by_id_without_overlap(academic_years: Harness) -> None:
    caller = staff()
    same = _utc("2024-05-01T00:00:00")
    ids = await seed_years(
        academic_years, *[{"organizationId": caller.org, "createdAt": same} for _ in range(7)]
    )
    pages = [await listing(academic_years, caller, limit=3, page=p) for p in range(3)]
    seen = [r.id for page in pages for r in page.rows]
    assert seen == sorted(ids, reverse=True)


async def test_paging_default_cap_and_negative_values(academic_years: Harness) -> None:
    caller = staff()
    await seed_years(academic_years, *[{"organizationId": caller.org} for _ in range(105)])
    default = await listing(academic_years, caller)
    assert len(default.rows) == 10 and default.count == 105
    capped = await listing(academic_years, caller, limit=1000)
    assert len(capped.rows) == 100 and capped.count == 105
    last = await listing(academic_years, caller, limit=100, page=1)
    assert len(last.rows) == 5
    page2 = await listing(academic_years, caller, limit=10, page=2)
    assert [r.id for r in page2.rows] == [r.id for r in capped.rows[20:30]]
    beyond = await listing(academic_years, caller, page=50)
    assert beyond.rows == [] and beyond.count == 105
    for kw, field in (({"limit": -1}, "limit"), ({"page": -1}, "page")):
        error = await expect_error(
            listing(academic_years, caller, **kw), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert error.violations[0][0] == field


async def test_autocomplete_by_substring_ordered_by_name(data: Dataset) -> None:
    h, caller, ids = data.h, data.caller, data.ids
    assert await autocomplete(h, caller, query="autumn") == [
        (ids["R1"], "Autumn 2021"),
        (ids["R3"], "Autumn 2022"),
        (ids["R4"], "Autumn 2023"),
    ]
    assert await autocomplete(h, caller, query="  SPRING ") == [(ids["R2"], "Spring 2022")]
    everything = await autocomplete(h, caller)
    assert [i for i, _ in everything] == [ids[k] for k in ("R1", "R3", "R4", "R2", "R5")]
    assert await autocomplete(h, caller, query="winter") == []


async def test_autocomplete_by_exact_id(data: Dataset) -> None:
    h, caller, ids = data.h, data.caller, data.ids
    assert await autocomplete(h, caller, query=ids["R5"]) == [(ids["R5"], "")]
    assert await autocomplete(h, caller, query=ids["R3"].upper()) == [(ids["R3"], "Autumn 2022")]
    assert await autocomplete(h, caller, query=ids["R3"][:8]) == []
    assert await autocomplete(h, caller, query=data.foreign) == []


async def test_autocomplete_literal_wildcards_and_scope(academic_years: Harness) -> None:
    caller = staff()
    names = ["100% done", "1000 done", "a_b", "axb"]
    ids = await seed_years(
        academic_years, *[{"name": n, "organizationId": caller.org} for n in names]
    )
    await seed_years(academic_years, {"name": "a_b elsewhere", "organizationId": new_uuid()})
    assert await autocomplete(academic_years, caller, query="%") == [(ids[0], "100% done")]
    assert await autocomplete(academic_years, caller, query="_") == [(ids[2], "a_b")]


async def test_autocomplete_limit_and_offset(academic_years: Harness) -> None:
    caller = staff()
    names = [f"year {i:03}" for i in range(120)]
    await seed_years(academic_years, *[{"name": n, "organizationId": caller.org} for n in names])
    default = await autocomplete(academic_years, caller, query="year")
    assert [label for _, label in default] == names[:10]
    capped = await autocomplete(academic_years, caller, query="year", limit=500)
    assert [label for _, label in capped] == names[:100]
    shifted = await autocomplete(academic_years, caller, query="year", limit=5, offset=117)
    assert [label for _, label in shifted] == names[117:]
    for kw, field in (({"limit": -1}, "limit"), ({"offset": -5}, "offset")):
        error = await expect_error(
            autocomplete(academic_years, caller, query="year", **kw),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert error.violations[0][0] == field


async def test_count_ignores_paging(data: Dataset) -> None:
    from academic_years.v1 import academic_years_pb2 as pb

    response = await stub(data.h).CountAcademicYears(
        pb.ListAcademicYearsRequest(limit=1, page=3, name="autumn"), metadata=data.caller.md
    )
    assert response.count == 3
