"""The academic-years migrations: a fresh database, and adopting the original backend's tables."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from academic_years_service.app import DEFINITION
from bench.scratch import scratch_database
from common.db import asyncpg_dsn
from common.migrations import upgrade
from tests.support.databases import head_revision

INDEXES = {
    "academic_years_org_created",
    "academic_years_org_name",
    "classes_academic_year_id",
    "timetables_academic_year_id",
}


def _upgrade(url: str) -> None:
    upgrade(url, DEFINITION.migrations_dir, DEFINITION.version_table)


def test_fresh_database_gets_every_table_and_index_once(scratch_pg: str) -> None:
    _upgrade(scratch_pg)
    _upgrade(scratch_pg)  # a second run is a no-op
    [names, [(version,)]] = asyncio.run(
        _sql(
            scratch_pg,
            [
                "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace",
                "SELECT version_num FROM alembic_version_academic_years",
            ],
        )
    )
    tables = {"academic_years", "organizations", "classes", "timetables"}
    assert tables | INDEXES <= {r[0] for r in names} and version == head_revision(DEFINITION)


# The original backend's tables as Sequelize created them on PostgreSQL (abridged).
ORIGINAL_SCHEMA = [
    'CREATE TABLE organizations (id UUID PRIMARY KEY, name TEXT, "createdAt" TIMESTAMPTZ '
    'NOT NULL, "updatedAt" TIMESTAMPTZ NOT NULL, "deletedAt" TIMESTAMPTZ, "importHash" '
    "VARCHAR(255) UNIQUE)",
    "CREATE TABLE academic_years (id UUID PRIMARY KEY, name TEXT, start_date DATE, end_date DATE, "
    'current BOOLEAN NOT NULL DEFAULT false, "importHash" VARCHAR(255) UNIQUE, '
    '"organizationId" UUID REFERENCES organizations(id), "createdById" UUID, "updatedById" UUID, '
    '"createdAt" TIMESTAMPTZ NOT NULL, "updatedAt" TIMESTAMPTZ NOT NULL, "deletedAt" TIMESTAMPTZ)',
    'CREATE TABLE classes (id UUID PRIMARY KEY, name TEXT, "academic_yearId" UUID, '
    '"organizationId" UUID, "teacherId" UUID, "deletedAt" TIMESTAMPTZ)',
]


@pytest.fixture
def scratch_pg(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of its own for this test, dropped afterwards."""
    with scratch_database(postgres_url, prefix="t_adopt") as url:
        yield url


async def _sql(url: str, statements: list[str]) -> list[Any]:
    """Each statement's rows (as tuples), all in one transaction."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    results: list[Any] = []
    try:
        async with conn.transaction():
            for sql in statements:
                results.append([tuple(r) for r in await conn.fetch(sql)])
    finally:
        await conn.close()
    return results


def test_existing_postgres_tables_are_adopted_with_their_rows(scratch_pg: str) -> None:
    org, year = str(uuid.uuid4()), str(uuid.uuid4())
    asyncio.run(
        _sql(
            scratch_pg,
            [
                *ORIGINAL_SCHEMA,
                f"INSERT INTO organizations VALUES ('{org}', 'North', now(), now(), NULL, NULL)",
                f'INSERT INTO academic_years (id, name, "organizationId", "createdAt", '
                f"\"updatedAt\") VALUES ('{year}', 'kept', '{org}', now(), now())",
            ],
        )
    )
    _upgrade(scratch_pg)
    [rows, indexes, columns] = asyncio.run(
        _sql(
            scratch_pg,
            [
                "SELECT id::text, name, current FROM academic_years",
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'",
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'classes'",
            ],
        )
    )
    assert rows == [(year, "kept", False)]
    assert {r[0] for r in indexes} >= INDEXES
    assert "teacherId" in {r[0] for r in columns}  # adopted as it was
