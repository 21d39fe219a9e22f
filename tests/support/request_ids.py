"""What a request-id store's migration leaves in the catalog (common.idempotency.create_store)."""

from __future__ import annotations

import asyncpg

from common.db import asyncpg_dsn

STORE = """
SELECT c.relrowsecurity,
       ARRAY(SELECT a.attname::text FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY k.n) AS key,
       (SELECT qual FROM pg_policies WHERE tablename = c.relname) AS policy,
       (SELECT p.prosecdef FROM pg_proc p WHERE p.proname = c.relname || '_purge') AS definer,
       (SELECT p.proowner = c.relowner FROM pg_proc p
        WHERE p.proname = c.relname || '_purge') AS owned_alike,
       (SELECT has_function_privilege('public', p.oid, 'EXECUTE') FROM pg_proc p
        WHERE p.proname = c.relname || '_purge') AS public_execute
FROM pg_class c WHERE c.relname = $1 AND c.relkind = 'r'
"""


async def store(url: str, table: str) -> dict[str, object] | None:
    """The store `table` as the catalog has it, or None when there is no such table."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        row = await conn.fetchrow(STORE, table)
        function = await conn.fetchval(
            "SELECT count(*) FROM pg_proc WHERE proname = $1", f"{table}_purge"
        )
    finally:
        await conn.close()
    if row is None:
        assert function == 0, "a purge function outlived its table"
        return None
    return dict(row)


def assert_migrated(found: dict[str, object] | None) -> None:
    """Keyed within the organization, under row-level security for the caller's own rows,
    purged by a SECURITY DEFINER function of the table's owner that PUBLIC cannot run."""
    assert found is not None
    assert found["key"] == ["organizationId", "userId", "method", "requestId"]
    assert found["relrowsecurity"] is True
    policy = str(found["policy"])
    assert "app.organization_id" in policy and '"userId"' in policy and "app.user_id" in policy
    assert found["definer"] is True and found["owned_alike"] is True
    assert found["public_execute"] is False
