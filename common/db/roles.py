"""The role the services serve as: it owns no table and may not bypass row-level security.

The owner (the role `migrate` runs as) is exempt from the policies, and so is any superuser or
role with BYPASSRLS. `grant_app_role` creates or checks the app role and grants it exactly the
data access one service needs; `serving_risks` tells `serve` whether its own role would leave
the policies switched off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import asyncpg

from common.db.engine import asyncpg_dsn

# Privileges by table: what each service's app role may do (its version table is read by
# `serve`, which checks the schema is migrated).
Grants = Mapping[str, str]


class RoleError(Exception):
    """The app role exists with rights that would lift row-level security."""


async def _format(conn: asyncpg.Connection, template: str, *values: str) -> str:
    """A statement with identifiers (%I) and literals (%L) quoted by the server itself."""
    sql: str = await conn.fetchval(f"SELECT format('{template}', {_params(len(values))})", *values)
    return sql


def _params(n: int) -> str:
    return ", ".join(f"${i}::text" for i in range(1, n + 1))


async def grant_app_role(
    url: str, role: str, password: str | None, grants: Grants, functions: Sequence[str] = ()
) -> None:
    """Creates `role` (LOGIN, no superuser, no BYPASSRLS) when missing, sets its password when
    one is given, and grants it `grants`, EXECUTE on `functions` (by name: each has one
    signature) and what serving needs (connect, temporary tables for CSV staging, the schema).
    Repeatable: every `migrate` runs it again. Run as the owner."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        async with conn.transaction():
            found = await conn.fetchrow(
                "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = $1", role
            )
            if found is None:
                await conn.execute(
                    await _format(
                        conn,
                        "CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE",
                        role,
                    )
                )
            elif found["rolsuper"] or found["rolbypassrls"]:
                raise RoleError(
                    f"role {role!r} is a superuser or has BYPASSRLS: row-level security would "
                    "not apply to it; choose another app role"
                )
            if password:
                await conn.execute(await _format(conn, "ALTER ROLE %I PASSWORD %L", role, password))
            database = await conn.fetchval("SELECT current_database()")
            for template, values in (
                ("GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I", (database, role)),
                ("GRANT USAGE ON SCHEMA public TO %I", (role,)),
            ):
                await conn.execute(await _format(conn, template, *values))
            for table, privileges in grants.items():
                template = f"GRANT {privileges} ON TABLE %I TO %I"
                await conn.execute(await _format(conn, template, table, role))
            for function in functions:
                template = "GRANT EXECUTE ON FUNCTION %I TO %I"
                await conn.execute(await _format(conn, template, function, role))
    finally:
        await conn.close()


async def serving_risks(conn: asyncpg.Connection, tables: Sequence[str]) -> list[str]:
    """Why row-level security would not apply to the connection's role: it is a superuser,
    has BYPASSRLS, or owns (directly or through membership) one of `tables`."""
    me = await conn.fetchrow(
        "SELECT current_user AS name, rolsuper, rolbypassrls FROM pg_roles"
        " WHERE rolname = current_user"
    )
    risks = []
    if me["rolsuper"]:
        risks.append(f"role {me['name']} is a superuser")
    if me["rolbypassrls"]:
        risks.append(f"role {me['name']} has BYPASSRLS")
    owned = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        " AND tablename = ANY($1::text[]) AND pg_has_role(current_user, tableowner, 'USAGE')"
        " ORDER BY tablename",
        list(tables),
    )
    if owned and not me["rolsuper"]:
        names = ", ".join(r["tablename"] for r in owned)
        risks.append(f"role {me['name']} owns {names}")
    return risks
