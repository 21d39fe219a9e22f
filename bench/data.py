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
