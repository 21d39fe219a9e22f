"""Row-level security DDL both services' migrations use (PostgreSQL only; see docs/security.md)."""

from __future__ import annotations

from typing import Any

# Unset or empty settings compare as NULL, so a transaction that named no tenant sees no rows.
ORGANIZATION = "NULLIF(current_setting('app.organization_id', true), '')::uuid"
USER = "NULLIF(current_setting('app.user_id', true), '')::uuid"
GLOBAL_ACCESS = "COALESCE(current_setting('app.global_access', true), '') = 'on'"


def organization_scope(column: str = '"organizationId"') -> str:
    """Rows of the caller's organization, or every row for a global-access caller."""
    return f"({GLOBAL_ACCESS} OR {column} = {ORGANIZATION})"


def enable(bind: Any, table: str, policy: str, predicate: str) -> None:
    """Enable RLS on `table` with one policy for every command (USING and WITH CHECK alike).

    The table owner stays exempt (migrations, operators) unless FORCE ROW LEVEL SECURITY is set.
    """
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
    bind.exec_driver_sql(f'DROP POLICY IF EXISTS "{policy}" ON "{table}"')
    bind.exec_driver_sql(
        f'CREATE POLICY "{policy}" ON "{table}" FOR ALL '
        f"USING ({predicate}) WITH CHECK ({predicate})"
    )


def disable(bind: Any, table: str, policy: str) -> None:
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql(f'DROP POLICY IF EXISTS "{policy}" ON "{table}"')
    bind.exec_driver_sql(f'ALTER TABLE "{table}" DISABLE ROW LEVEL SECURITY')
