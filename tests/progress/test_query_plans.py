"""ListUserProgress, its count and the export read `user_progress` through an index.

100,000 rows (generate_series, then VACUUM ANALYZE): the caller holds 30% of them, of both
types, in its organization; the rest belong to other users. Each statement is EXPLAINed with
realistic values, custom and generic plans alike: a sequential scan of the table fails the
test, and so does a list page sorted after reading the table instead of read in index order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Executable

from bench.scratch import scratch_database
from common.migrations import upgrade
from progress_service.app import DEFINITION
from progress_service.csv import _export_boundary, _export_statement
from progress_service.repository import UserProgressRepository as Repository
from tests.support.plans import (
    BIG_TABLE_ROWS,
    FULL_SAMPLE,
    connect,
    explain,
    sequential_scans,
    sorted_scans,
    summary,
)


def ident(kind: str, number: int) -> str:
    return str(uuid.UUID(hashlib.md5(f"plan-{kind}-{number}".encode()).hexdigest()))  # noqa: S324


ORG, USER = ident("org", 0), ident("user", 0)
# Rows i % 10 < 3 are the caller's (user 0, organization 0); the others spread over 500 users.
SEED = f"""
INSERT INTO user_progress (id, progress_type, item_id, value, "organizationId", "userId",
    "createdById", "createdAt", "updatedAt", "deletedAt")
SELECT gen_random_uuid(),
    CAST(CASE WHEN i % 4 = 0 THEN 'zone_checkin' ELSE 'sign_learned' END
        AS enum_user_progress_progress_type),
    'item-' || i, 'v',
    md5('plan-org-' || CASE WHEN i % 10 < 3 THEN 0 ELSE i % 7 END)::uuid,
    md5('plan-user-' || CASE WHEN i % 10 < 3 THEN 0 ELSE i % 500 + 1 END)::uuid,
    md5('plan-user-0')::uuid,
    timestamptz '2025-01-01' + i * interval '1 second',
    timestamptz '2025-01-01' + i * interval '1 second',
    CASE WHEN i % 97 = 0 THEN timestamptz '2026-01-01' END
FROM generate_series(1, {BIG_TABLE_ROWS}) AS i
"""
Case = tuple[str, Executable, dict[str, Any]]
# List pages read in index order (an item's list is at most a row or two, sorted for free; an
# export's batch of 10,000 may be fetched and sorted when the planner finds that cheaper).
ORDERED = ("list tenant, every item, after", "list global, every item, after")
POSITION = {"k_value": dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC), "k_id": str(uuid.uuid4())}


def cases() -> Iterator[Case]:
    for global_access in (False, True):
        who = "global" if global_access else "tenant"
        scope = {"scope_user": USER} | ({} if global_access else {"scope_org": ORG})
        for with_item in (False, True):
            binds = {**scope, **POSITION, "b_type": "sign_learned", "b_item": "item-30",
                     "limit": 11, "b_offset": 5000}  # fmt: skip
            shape = f"{who}, {'an item' if with_item else 'every item'}"
            yield f"count, {shape}", Repository._count_statement(global_access, with_item), binds
            for after in (False, True):
                statement = Repository._keyset_statement(global_access, with_item, after)
                yield f"list {shape}, after {after}", statement, binds
            yield (
                f"list by page, {shape}",
                Repository._page_statement(global_access, with_item),
                binds,
            )
        for with_type in (False, True):
            binds = {**scope, **POSITION, "b_type": "zone_checkin", "limit": 10_000, "skip": 9_999}
            for after in (None, "v"):
                label = f"{who}, {'one type' if with_type else 'every type'}, after {after}"
                yield f"export {label}", _export_statement(global_access, with_type, after), binds
                boundary = _export_boundary(global_access, with_type, after)
                yield f"export boundary {label}", boundary, binds


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
                await conn.execute("VACUUM ANALYZE user_progress")
            finally:
                await conn.close()

        asyncio.run(seed())
        yield url


@pytest.mark.parametrize("generic", [False, True], ids=["custom plans", "generic plans"])
def test_lists_counts_and_exports_use_an_index(big_table: str, generic: bool) -> None:
    async def offenders() -> list[str]:
        conn = await connect(big_table)
        found = []
        try:
            for label, statement, params in cases():
                plan = await explain(conn, statement, params, generic=generic)
                bad = sequential_scans(plan, "user_progress")
                if label.startswith(ORDERED):
                    bad += sorted_scans(plan, "user_progress")
                if bad:
                    found.append(f"{label}: {summary(plan)}")
        finally:
            await conn.close()
        return found

    found = asyncio.run(offenders())
    assert not found, "plans that read the whole table or sort it:\n" + "\n".join(found)
