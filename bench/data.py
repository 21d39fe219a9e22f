"""Benchmark datasets, generated in the database with set-based SQL, and the ids that match them."""

from __future__ import annotations

import hashlib
import uuid

import asyncpg

ORGANIZATIONS = 10


def bench_uuid(kind: str, number: int) -> str:
    """The same deterministic UUID that `md5('bench-<kind>-<n>')::uuid` gives in SQL."""
    return str(uuid.UUID(hashlib.md5(f"bench-{kind}-{number}".encode()).hexdigest()))  # noqa: S324


def user_id(number: int) -> str:
    return bench_uuid("user", number)


def user_org_id(number: int) -> str:
    return bench_uuid("org", number % ORGANIZATIONS)


# Users [$1, $2) get $3 `sign_learned` rows each, one second apart, newest item last.
_SEED_PROGRESS = f"""
INSERT INTO user_progress (id, progress_type, item_id, value, score, metadata, "organizationId",
    "campusId", "userId", "createdById", "updatedById", "createdAt", "updatedAt")
SELECT gen_random_uuid(), 'sign_learned', 'item-' || i, 'learned', i % 100, NULL,
    md5('bench-org-' || (u % {ORGANIZATIONS}))::uuid, NULL,
    md5('bench-user-' || u)::uuid, md5('bench-user-' || u)::uuid, md5('bench-user-' || u)::uuid,
    now() - (i * interval '1 second'), now() - (i * interval '1 second')
FROM generate_series($1::int, $2::int - 1) AS u, generate_series(0, $3::int - 1) AS i
"""


async def seed_progress(dsn: str, first_user: int, end_user: int, rows_per_user: int) -> None:
    """Add progress rows for users [first_user, end_user), then refresh the planner's stats."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_SEED_PROGRESS, first_user, end_user, rows_per_user)
        await conn.execute("VACUUM ANALYZE user_progress")
    finally:
        await conn.close()


async def count_rows(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


def ay_org_id(number: int) -> str:
    return bench_uuid("ayorg", number)


def ay_year_id(org: int, number: int) -> str:
    return bench_uuid(f"year-{org}", number)


_SEED_ORGS = """
INSERT INTO organizations (id, name, "createdAt", "updatedAt")
SELECT md5('bench-ayorg-' || o)::uuid, 'Organization ' || o, now(), now()
FROM generate_series($1::int, $2::int - 1) AS o
"""
# $3 years in each of organizations [$1, $2), named "Academic year <n>", one minute apart.
_SEED_YEARS = """
INSERT INTO academic_years (id, name, start_date, end_date, current, "organizationId",
    "createdById", "updatedById", "createdAt", "updatedAt")
SELECT md5('bench-year-' || o || '-' || i)::uuid, 'Academic year ' || i,
    date '2000-09-01' + (i % 40) * 365, date '2001-06-30' + (i % 40) * 365, i = 0,
    md5('bench-ayorg-' || o)::uuid, NULL, NULL,
    now() - (i * interval '1 minute'), now() - (i * interval '1 minute')
FROM generate_series($1::int, $2::int - 1) AS o, generate_series(0, $3::int - 1) AS i
"""
# The first $1 years of organization 0 get $2 rows of the reference table each.
_SEED_REFERENCES = """
INSERT INTO {table} (id, name, "academic_yearId", "organizationId")
SELECT gen_random_uuid(), '{label} ' || c, md5('bench-year-0-' || i)::uuid,
    md5('bench-ayorg-0')::uuid
FROM generate_series(0, $1::int - 1) AS i, generate_series(1, $2::int) AS c
"""


async def seed_academic_years(
    dsn: str, organizations: int, years: int, with_refs: int, classes: int, timetables: int
) -> None:
    """`years` academic years in each organization; the first `with_refs` of organization 0
    have `classes` classes and `timetables` timetables."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_SEED_ORGS, 0, organizations)
        await conn.execute(_SEED_YEARS, 0, organizations, years)
        for table, label, per_year in (
            ("classes", "Class", classes),
            ("timetables", "Slot", timetables),
        ):
            await conn.execute(
                _SEED_REFERENCES.format(table=table, label=label), with_refs, per_year
            )
        await conn.execute("VACUUM ANALYZE academic_years, classes, timetables, organizations")
    finally:
        await conn.close()


async def seed_more_years(dsn: str, first_org: int, end_org: int, years: int) -> None:
    """`years` academic years in each of organizations [first_org, end_org) (no associations),
    then fresh planner statistics: grows the table a global-access caller lists."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_SEED_ORGS, first_org, end_org)
        await conn.execute(_SEED_YEARS, first_org, end_org, years)
        await conn.execute("VACUUM ANALYZE academic_years, organizations")
    finally:
        await conn.close()


# The one caller with a deep list (the keyset paging cases), far from the other users' numbers.
DEEP_USER = 1_000_000
