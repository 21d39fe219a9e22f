"""The academic-years migrations: a fresh database, and adopting the original backend's tables."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from alembic import command

from academic_years_service.app import DEFINITION
from bench.scratch import scratch_database
from common.db import asyncpg_dsn
from common.migrations import alembic_config, upgrade
from common.online_ddl import MigrationRefused
from tests.support.databases import head_revision
from tests.support.request_ids import assert_migrated, store

# academic_years_org_name of revision 0001 was replaced by academic_years_org_name_id in 0003.
INDEXES = {
    "academic_years_pkey",
    "academic_years_org_import_hash_key",
    "academic_years_org_created",
    "academic_years_org_name_id",
    "academic_years_org_start",
    "academic_years_org_end",
    "academic_years_org_updated",
    "academic_years_org_current",
    "academic_years_created",
    "academic_years_name_trgm",
    "academic_years_org_name_trgm",
    "classes_academic_year_id",
    "timetables_academic_year_id",
}


def _upgrade(url: str) -> None:
    upgrade(url, DEFINITION.migrations_dir, DEFINITION.version_table)


def _migrate(url: str, revision: str, *, down: bool = False) -> None:
    config = alembic_config(url, DEFINITION.migrations_dir, DEFINITION.version_table)
    (command.downgrade if down else command.upgrade)(config, revision)


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


KEYS = (
    "SELECT c.relname::text, array_agg(a.attname::text ORDER BY k.n) "
    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
    "WHERE i.indrelid = 'academic_years'::regclass AND i.indisunique GROUP BY 1 ORDER BY 1"
)
NOT_NULL = (
    "SELECT attnotnull FROM pg_attribute "
    "WHERE attrelid = 'academic_years'::regclass AND attname = 'organizationId'"
)


def test_keys_contain_the_organization_and_downgrade_restores_the_old_ones(
    scratch_pg: str,
) -> None:
    _upgrade(scratch_pg)
    [keys, [(not_null,)]] = asyncio.run(_sql(scratch_pg, [KEYS, NOT_NULL]))
    assert keys == keys_after_upgrade() and not_null
    _migrate(scratch_pg, "0002", down=True)
    [keys, [(not_null,)], indexes] = asyncio.run(
        _sql(scratch_pg, [KEYS, NOT_NULL, "SELECT indexname FROM pg_indexes"])
    )
    assert keys == [
        ("academic_years_importHash_key", ["importHash"]),
        ("academic_years_pkey", ["id"]),
    ]
    assert not not_null and "academic_years_org_name" in {r[0] for r in indexes}
    _upgrade(scratch_pg)  # and up again
    assert asyncio.run(_sql(scratch_pg, [KEYS]))[0] == keys_after_upgrade()


def keys_after_upgrade() -> list[tuple[str, list[str]]]:
    return [
        ("academic_years_org_import_hash_key", ["organizationId", "importHash"]),
        ("academic_years_pkey", ["organizationId", "id"]),
    ]


def test_a_year_without_organization_stops_the_upgrade_until_it_is_assigned(
    scratch_pg: str,
) -> None:
    org, orphan = str(uuid.uuid4()), str(uuid.uuid4())
    asyncio.run(
        _sql(
            scratch_pg,
            [
                *ORIGINAL_SCHEMA,
                f"INSERT INTO organizations VALUES ('{org}', 'North', now(), now(), NULL, NULL)",
                f'INSERT INTO academic_years (id, name, "createdAt", "updatedAt") '
                f"VALUES ('{orphan}', 'orphan', now(), now())",
            ],
        )
    )
    with pytest.raises(
        MigrationRefused, match=r'1 row\(s\) of academic_years have no "organizationId"'
    ):
        _upgrade(scratch_pg)
    [keys, [(not_null,)]] = asyncio.run(_sql(scratch_pg, [KEYS, NOT_NULL]))
    assert ("academic_years_pkey", ["id"]) in keys and not not_null  # nothing changed
    asyncio.run(
        _sql(scratch_pg, [f"UPDATE academic_years SET \"organizationId\" = '{org}' RETURNING id"])
    )
    _upgrade(scratch_pg)
    [keys, [(not_null,)]] = asyncio.run(_sql(scratch_pg, [KEYS, NOT_NULL]))
    assert keys == keys_after_upgrade() and not_null


def test_downgrade_refuses_when_two_organizations_share_an_id(scratch_pg: str) -> None:
    _upgrade(scratch_pg)
    year = str(uuid.uuid4())
    asyncio.run(
        _sql(
            scratch_pg,
            [
                f'INSERT INTO academic_years (id, "organizationId", "createdAt", "updatedAt") '
                f"VALUES ('{year}', '{uuid.uuid4()}', now(), now()), "
                f"('{year}', '{uuid.uuid4()}', now(), now()) RETURNING id"
            ],
        )
    )
    with pytest.raises(MigrationRefused, match=r'\("id"\) in academic_years are held by more'):
        _migrate(scratch_pg, "0002", down=True)
    assert asyncio.run(_sql(scratch_pg, [KEYS]))[0] == keys_after_upgrade()


def test_an_index_build_left_invalid_is_built_again(scratch_pg: str) -> None:
    """CREATE INDEX CONCURRENTLY that fails leaves an invalid index behind: a re-run must not
    take it for done."""
    _migrate(scratch_pg, "0002")
    asyncio.run(
        _sql(
            scratch_pg,
            [
                "CREATE INDEX academic_years_org_start ON academic_years (name)",
                "UPDATE pg_index SET indisvalid = false "
                "WHERE indexrelid = 'academic_years_org_start'::regclass RETURNING 1",
            ],
        )
    )
    _upgrade(scratch_pg)
    [[(valid, definition)]] = asyncio.run(
        _sql(
            scratch_pg,
            [
                "SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index "
                "WHERE indexrelid = 'academic_years_org_start'::regclass"
            ],
        )
    )
    assert valid and '("organizationId", start_date, id)' in definition


def test_the_request_id_store_comes_and_goes_with_its_revision(scratch_pg: str) -> None:
    _upgrade(scratch_pg)
    assert_migrated(asyncio.run(store(scratch_pg, "academic_years_request_ids")))
    _migrate(scratch_pg, "-1", down=True)
    assert asyncio.run(store(scratch_pg, "academic_years_request_ids")) is None
    assert asyncio.run(_sql(scratch_pg, [KEYS]))[0] == keys_after_upgrade()
    _upgrade(scratch_pg)
    assert_migrated(asyncio.run(store(scratch_pg, "academic_years_request_ids")))


def test_row_version_starts_existing_rows_at_one_and_downgrades_away(scratch_pg: str) -> None:
    org = str(uuid.uuid4())
    _migrate(scratch_pg, "0003")
    asyncio.run(
        _sql(
            scratch_pg,
            [
                f'INSERT INTO academic_years (id, name, "organizationId", "createdAt", '
                f"\"updatedAt\") VALUES ('{uuid.uuid4()}', 'before etags', '{org}', now(), now())"
            ],
        )
    )
    _migrate(scratch_pg, "0004")
    [[(version,)]] = asyncio.run(_sql(scratch_pg, ["SELECT version FROM academic_years"]))
    assert version == 1
    _migrate(scratch_pg, "0003", down=True)
    [columns] = asyncio.run(
        _sql(
            scratch_pg,
            [
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'academic_years'"
            ],
        )
    )
    assert "version" not in {r[0] for r in columns}
    _upgrade(scratch_pg)  # and up again
