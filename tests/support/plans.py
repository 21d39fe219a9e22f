"""EXPLAIN the services' own statements (as the executor compiles them) and read the plans."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from typing import Any

import asyncpg
from sqlalchemy import Executable

from common.db import compile_statement
from common.db.engine import _init_connection

# A 100k-row table: what the plan tests generate before they EXPLAIN.
BIG_TABLE_ROWS = 100_000
# ANALYZE samples 300 × default_statistics_target rows: enough for every row of the big table.
FULL_SAMPLE = f"SET default_statistics_target = {BIG_TABLE_ROWS // 300 + 1}"
_names = itertools.count()


def nodes(plan: Any) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan."""
    if isinstance(plan, dict):
        if "Node Type" in plan:
            yield plan
        for value in plan.values():
            yield from nodes(value)
    elif isinstance(plan, list):
        for value in plan:
            yield from nodes(value)


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "'" + str(value).replace("'", "''") + "'"


async def connect(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    await _init_connection(conn)  # ids and JSON as the services bind them
    return conn


async def explain(
    conn: asyncpg.Connection, statement: Executable, params: Mapping[str, Any], *, generic: bool
) -> list[dict[str, Any]]:
    """The plan's nodes for `statement` with `params`: the custom plan PostgreSQL makes for
    these values, or (`generic`) the one plan a prepared statement settles on after its first
    executions, whatever the values, which is what the services' cached statements may run."""
    compiled = compile_statement(statement)
    args = compiled.args(params)
    if not generic:
        plan = await conn.fetchval("EXPLAIN (FORMAT JSON) " + compiled.sql, *args)
    else:
        name = f"plan_{next(_names)}"
        await conn.execute(f"PREPARE {name} AS {compiled.sql}")
        values = f"({', '.join(_literal(a) for a in args)})" if args else ""
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        try:
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE {name}{values}")
        finally:
            await conn.execute("RESET plan_cache_mode")
            await conn.execute(f"DEALLOCATE {name}")
    return list(nodes(json.loads(plan) if isinstance(plan, str) else plan))


_SCANS = ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Heap Scan")


def sorted_scans(plan: list[dict[str, Any]], table: str) -> list[str]:
    """Sorts of rows read straight from `table`: an order no index gave. (A Sort over an Append
    only merges two index-ordered branches of a page.)"""
    found = []
    for node in plan:
        if node["Node Type"] in ("Sort", "Incremental Sort"):
            for child in node.get("Plans", []):
                if child["Node Type"] in _SCANS and child.get("Relation Name") == table:
                    found.append(f"{node['Node Type']} of {child['Node Type']}")
    return found


def sequential_scans(plan: list[dict[str, Any]], table: str) -> list[str]:
    return [
        n["Node Type"]
        for n in plan
        if n["Node Type"] == "Seq Scan" and n.get("Relation Name") == table
    ]


def summary(plan: list[dict[str, Any]]) -> str:
    return " > ".join(
        f"{n['Node Type']}({n.get('Index Name') or n.get('Relation Name') or ''})"
        for n in plan
        if n["Node Type"] not in ("Limit", "Result", "Subquery Scan")
    )
