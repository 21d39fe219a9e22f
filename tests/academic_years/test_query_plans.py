"""Every List filter and order is read through an index, never a sequential scan of the table.

The table gets 100,000 years (generate_series, then VACUUM ANALYZE): the caller's organization
holds 30% of them, the rest are spread over seven others, some are deleted, and names and dates
have NULLs. Each statement List, Count, Export and Autocomplete run is EXPLAINed with realistic
values: its custom plan, and the generic plan a prepared statement may settle on. Any
"Seq Scan on academic_years" fails the test, which names the statement and shows its plan.
A global-access caller's COUNT of every row is the one exception: it is the whole table by
definition, which is what `skip_count` is for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Executable

from academic_years_service import statements as st
from academic_years_service.app import DEFINITION
from academic_years_service.domain import AcademicYearFilter, Bounds, Ordering
from bench.scratch import scratch_database
from common import keyset
from common.migrations import upgrade
from tests.support.plans import (
    BIG_TABLE_ROWS,
    FULL_SAMPLE,
    connect,
    explain,
    sequential_scans,
    sorted_scans,
    summary,
)


def org(number: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"plan-org-{number}".encode()).hexdigest()))  # noqa: S324


CALLER_ORG = org(0)
# Row i belongs to organization 0 when i % 10 < 3 (30%), else to organization i % 10.
SEED = f"""
INSERT INTO academic_years (id, name, start_date, end_date, current, "organizationId",
    "createdAt", "updatedAt", "deletedAt")
SELECT gen_random_uuid(),
    CASE WHEN i % 50 = 0 THEN NULL ELSE 'Academic year ' || i END,
    CASE WHEN i % 40 = 0 THEN NULL ELSE date '2000-09-01' + (i % 9000) END,
    CASE WHEN i % 40 = 1 THEN NULL ELSE date '2001-06-30' + (i % 9000) END,
    i % 1000 = 0,
    md5('plan-org-' || CASE WHEN i % 10 < 3 THEN 0 ELSE i % 10 END)::uuid,
    timestamptz '2020-01-01' + i * interval '1 minute',
    timestamptz '2021-01-01' + ((i * 7919) % {BIG_TABLE_ROWS}) * interval '1 minute',
    CASE WHEN i % 97 = 0 THEN timestamptz '2024-01-01' END
FROM generate_series(1, {BIG_TABLE_ROWS}) AS i
"""


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


JANUARY = Bounds(dt.date(2010, 1, 1), dt.date(2010, 1, 31))
FILTERS = {
    "no filter": AcademicYearFilter(),
    "id": AcademicYearFilter(id=str(uuid.uuid4())),
    "name": AcademicYearFilter(name="year 1234"),
    "calendar": AcademicYearFilter(calendar=JANUARY),
    "start_dateRange": AcademicYearFilter(start_date=JANUARY),
    "start_dateRange open above": AcademicYearFilter(start_date=Bounds(dt.date(2024, 6, 1))),
    "end_dateRange open below": AcademicYearFilter(end_date=Bounds(None, dt.date(2001, 7, 31))),
    "createdAtRange": AcademicYearFilter(
        created_at=Bounds(utc("2020-02-01T00:00:00"), utc("2020-02-02T00:00:00"), True)
    ),
    "current": AcademicYearFilter(current=True),
    "not current": AcademicYearFilter(current=False),
    "organization": AcademicYearFilter(organizations=(CALLER_ORG,)),
}
# A position inside the data for each sort field (a keyset page's k_value).
SAMPLES: dict[str, Any] = {
    "id": None,
    "name": "Academic year 5000",
    "start_date": dt.date(2010, 1, 1),
    "end_date": dt.date(2010, 1, 1),
    "current": False,
    "createdAt": utc("2020-03-01T00:00:00"),
    "updatedAt": utc("2021-02-01T00:00:00"),
}
Case = tuple[str, Executable, dict[str, Any]]


def tenant_cases() -> Iterator[Case]:
    for label, f in FILTERS.items():
        shape, params = st.filter_binds(f)
        params["scope_org"] = CALLER_ORG
        yield f"count, {label}", st.count_statement(False, shape), params
        for field in st.SORT_COLUMNS:
            for descending in (False, True):
                ordering = Ordering(field, descending)
                key = st.sort_key(ordering)
                order = f"{field} {'desc' if descending else 'asc'}"
                for after in (None, keyset.VALUE, keyset.NULL) if key.nulls else (None, "v"):
                    binds = {
                        **params,
                        "limit": 11,
                        "skip": 10,
                        "k_value": SAMPLES[field],
                        "k_id": str(uuid.uuid4()),
                    }
                    where = f"{label}, {order}, after {after}"
                    page = st.keyset_statement(False, shape, ordering, after)
                    yield f"list {where}", page, binds
                    export = st.export_statement(False, shape, ordering, after)
                    yield f"export {where}", export, binds
                    boundary = st.export_boundary_statement(False, shape, ordering, after)
                    yield f"export boundary {where}", boundary, binds
                offset = {**params, "limit": 11, "offset": 5000}
                yield (
                    f"list by page, {label}, {order}",
                    st.page_statement(False, shape, ordering),
                    offset,
                )
    for query in ("year 12", "Academic"):
        binds = {"scope_org": CALLER_ORG, "q_name": f"%{query}%", "limit": 10, "offset": 0}
        yield f"autocomplete {query!r}", st.autocomplete_statement(False, True, False), binds


def global_cases() -> Iterator[Case]:
    """A global-access caller's default order (every organization) and its name filter."""
    default = Ordering()
    for label in ("no filter", "name"):
        shape, params = st.filter_binds(FILTERS[label])
        binds = {**params, "limit": 11, "k_value": SAMPLES["createdAt"], "k_id": str(uuid.uuid4())}
        for after in (None, keyset.VALUE):
            statement = st.keyset_statement(True, shape, default, after)
            yield f"global list, {label}, after {after}", statement, binds
        if label != "no filter":  # counting every row is a whole-table read: skip_count
            yield f"global count, {label}", st.count_statement(True, shape), params
    binds = {"q_name": "%year 12%", "limit": 10, "offset": 0}
    yield "global autocomplete", st.autocomplete_statement(True, True, False), binds


@pytest.fixture(scope="module")
def big_table(postgres_url: str) -> Iterator[str]:
    with scratch_database(postgres_url, prefix="t_plans") as url:
        upgrade(url, DEFINITION.migrations_dir, DEFINITION.version_table)

        async def seed() -> None:
            conn = await connect(url)
            try:
                await conn.execute(SEED)
                # A sample of 300 × the target rows covers the whole table: the statistics, and
                # so the plans, are the same on every run (a smaller random sample once tipped
                # a nullable order's NULL branch from the index to a sort).
                await conn.execute(FULL_SAMPLE)
                await conn.execute("VACUUM ANALYZE academic_years")
            finally:
                await conn.close()

        asyncio.run(seed())
        yield url


# Filters that leave most of the organization's rows: pages in any order must come off an index
# in that order. (A selective filter may fetch its few rows and sort them, which is cheap; so
# may a page among the NULLs, the tail of a nullable order, which the same index bounds.)
UNSELECTIVE = ("no filter", "not current", "organization")


@pytest.mark.parametrize("generic", [False, True], ids=["custom plans", "generic plans"])
def test_every_order_is_read_off_an_index(big_table: str, generic: bool) -> None:
    async def offenders() -> list[str]:
        conn = await connect(big_table)
        found = []
        try:
            for label, statement, params in tenant_cases():
                if label.endswith("after n") or not label.startswith(
                    tuple(f"list {u}," for u in UNSELECTIVE)
                ):
                    continue
                plan = await explain(conn, statement, params, generic=generic)
                if sorted_scans(plan, "academic_years"):
                    found.append(f"{label}: {summary(plan)}")
        finally:
            await conn.close()
        return found

    found = asyncio.run(offenders())
    assert not found, "pages sorted after reading the table:\n" + "\n".join(found)


@pytest.mark.parametrize("generic", [False, True], ids=["custom plans", "generic plans"])
def test_no_list_filter_or_order_scans_the_whole_table(big_table: str, generic: bool) -> None:
    async def offenders() -> list[str]:
        conn = await connect(big_table)
        found = []
        try:
            for label, statement, params in [*tenant_cases(), *global_cases()]:
                plan = await explain(conn, statement, params, generic=generic)
                if sequential_scans(plan, "academic_years"):
                    found.append(f"{label}: {summary(plan)}")
        finally:
            await conn.close()
        return found

    found = asyncio.run(offenders())
    assert not found, "sequential scans:\n" + "\n".join(found)


def test_the_cases_cover_every_filter_and_order() -> None:
    """A filter or sort field added later must come with its EXPLAIN case."""
    labels = [label for label, _, _ in tenant_cases()]
    for field in st.SORT_COLUMNS:
        for direction in ("asc", "desc"):
            assert any(f", {field} {direction}," in label for label in labels), field
    for field in dataclasses.fields(AcademicYearFilter):
        assert any(getattr(f, field.name) is not None for f in FILTERS.values()), field.name


def test_a_callers_name_filter_reads_only_its_organizations_trigrams(big_table: str) -> None:
    """The trigram index of every organization would find the matches of all of them first
    (its cost growing with the table); the caller's is keyed by organization."""
    shape, params = st.filter_binds(FILTERS["name"])
    params |= {"scope_org": CALLER_ORG, "limit": 11}
    statements = {
        "count": st.count_statement(False, shape),
        "first page": st.keyset_statement(False, shape, Ordering(), None),
    }

    async def plans() -> dict[str, str]:
        conn = await connect(big_table)
        try:
            return {
                label: summary(await explain(conn, statement, params, generic=False))
                for label, statement in statements.items()
            }
        finally:
            await conn.close()

    for label, plan in asyncio.run(plans()).items():
        assert "academic_years_org_name_trgm" in plan, f"{label}: {plan}"
        assert "(academic_years_name_trgm)" not in plan, f"{label}: {plan}"
