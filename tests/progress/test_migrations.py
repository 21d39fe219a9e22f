"""The progress migrations: keys within the organization, on a fresh and an adopted table."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from alembic import command

from bench.scratch import scratch_database
from common.db import asyncpg_dsn
from common.migrations import alembic_config, upgrade
from common.online_ddl import MigrationRefused
from progress_service.app import DEFINITION
from tests.support.request_ids import assert_migrated, store

# The original backend's table as Sequelize created it on PostgreSQL (abridged): the
# organization may be NULL there.
ORIGINAL_SCHEMA = [
    "CREATE TYPE enum_user_progress_progress_type AS ENUM ('sign_learned', 'zone_checkin')",
    "CREATE TABLE user_progress (id UUID PRIMARY KEY, progress_type "
    "enum_user_progress_progress_type NOT NULL, item_id TEXT NOT NULL, value TEXT, score INT, "
    'metadata JSONB, "importHash" VARCHAR(255) UNIQUE, "organizationId" UUID, "campusId" UUID, '
    '"userId" UUID NOT NULL, "createdById" UUID NOT NULL, "updatedById" UUID, '
    '"createdAt" TIMESTAMPTZ NOT NULL, "updatedAt" TIMESTAMPTZ NOT NULL, "deletedAt" TIMESTAMPTZ)',
]
KEYS = (
    "SELECT c.relname::text, array_agg(a.attname::text ORDER BY k.n) FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid "
    "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
    "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
    "WHERE i.indrelid = 'user_progress'::regclass AND i.indisunique GROUP BY 1 ORDER BY 1"
)
NOT_NULL = (
    "SELECT attnotnull FROM pg_attribute "
    "WHERE attrelid = 'user_progress'::regclass AND attname = 'organizationId'"
)
KEYS_AFTER = [
    ("user_progress_org_import_hash_key", ["organizationId", "importHash"]),
    ("user_progress_owner_item_key", ["userId", "progress_type", "item_id", "organizationId"]),
    ("user_progress_pkey", ["organizationId", "id"]),
]


@pytest.fixture
def scratch_pg(postgres_url: str) -> Iterator[str]:
    with scratch_database(postgres_url, prefix="t_progress") as url:
        yield url


async def _sql(url: str, statements: list[str]) -> list[Any]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    results: list[Any] = []
    try:
        async with conn.transaction():
            for sql in statements:
                results.append([tuple(r) for r in await conn.fetch(sql)])
    finally:
        await conn.close()
    return results


def _upgrade(url: str) -> None:
    upgrade(url, DEFINITION.migrations_dir, DEFINITION.version_table)


def test_every_key_contains_the_organization_and_downgrade_restores_the_old_ones(
    scratch_pg: str,
) -> None:
    _upgrade(scratch_pg)
    assert asyncio.run(_sql(scratch_pg, [KEYS]))[0] == KEYS_AFTER
    config = alembic_config(scratch_pg, DEFINITION.migrations_dir, DEFINITION.version_table)
    command.downgrade(config, "0002")
    [keys, [(not_null,)]] = asyncio.run(_sql(scratch_pg, [KEYS, NOT_NULL]))
    assert ("user_progress_pkey", ["id"]) in keys
    assert ("user_progress_importHash_key", ["importHash"]) in keys
    owner = (
        "user_progress_owner_item_key",
        ["organizationId", "userId", "progress_type", "item_id"],
    )
    assert owner in keys
    assert not_null  # revision 0001 made it NOT NULL already
    _upgrade(scratch_pg)
    assert asyncio.run(_sql(scratch_pg, [KEYS]))[0] == KEYS_AFTER


def test_an_adopted_table_with_rows_of_no_organization_is_refused_until_they_have_one(
    scratch_pg: str,
) -> None:
    user, org = str(uuid.uuid4()), str(uuid.uuid4())
    rows = "', '".join([str(uuid.uuid4()), "sign_learned", "a", user, user])
    asyncio.run(
        _sql(
            scratch_pg,
            [
                *ORIGINAL_SCHEMA,
                'INSERT INTO user_progress (id, progress_type, item_id, "userId", "createdById", '
                f'"createdAt", "updatedAt") VALUES (\'{rows}\', now(), now()) RETURNING id',
            ],
        )
    )
    with pytest.raises(MigrationRefused, match="1 row"):
        _upgrade(scratch_pg)
    [keys, [(not_null,)]] = asyncio.run(_sql(scratch_pg, [KEYS, NOT_NULL]))
    assert ("user_progress_pkey", ["id"]) in keys and not not_null  # nothing changed
    asyncio.run(
        _sql(scratch_pg, [f"UPDATE user_progress SET \"organizationId\" = '{org}' RETURNING id"])
    )
    _upgrade(scratch_pg)
    [keys, [(not_null,)]] = asyncio.run(_sql(scratch_pg, [KEYS, NOT_NULL]))
    assert keys == KEYS_AFTER and not_null


def test_the_request_id_store_comes_and_goes_with_its_revision(scratch_pg: str) -> None:
    _upgrade(scratch_pg)
    assert_migrated(asyncio.run(store(scratch_pg, "progress_request_ids")))
    config = alembic_config(scratch_pg, DEFINITION.migrations_dir, DEFINITION.version_table)
    command.downgrade(config, "0003")
    assert asyncio.run(store(scratch_pg, "progress_request_ids")) is None
    assert asyncio.run(_sql(scratch_pg, [KEYS]))[0] == KEYS_AFTER  # the rest as 0003 left it
    _upgrade(scratch_pg)
    assert_migrated(asyncio.run(store(scratch_pg, "progress_request_ids")))
