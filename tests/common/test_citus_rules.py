"""The rules deploy/citus/distribute.sql relies on, checked on the migrated catalog.

Citus cannot run here, so this reads what the script asks for (which table is distributed by
which column, which are reference tables) and checks it against both services' migrated schema
and statements: every table is placed; a distributed table's column is NOT NULL and in every
unique index (Citus enforces no other); colocated tables share its type; foreign keys between
distributed tables use it, and none runs from a reference table to a distributed one; the
row-level security policy filters by it; and every statement a tenant runs pins each
distributed table it reads or writes to one organization (one shard).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from progress.v1 import progress_pb2
from sqlalchemy import Executable, Table
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, ColumnClause

from academic_years_service import csv as ay_csv
from academic_years_service import repository as ay_repository
from academic_years_service import statements as ay_statements
from academic_years_service.app import DEFINITION as AY
from academic_years_service.domain import AcademicYearFilter
from bench.scratch import scratch_database
from common.auth import Principal
from common.db import asyncpg_dsn
from common.idempotency import Once
from common.migrations import upgrade
from common.tenancy import tenant_scope
from progress_service import csv as progress_csv
from progress_service.app import DEFINITION as PROGRESS
from progress_service.repository import UserProgressRepository
from tests.academic_years.test_query_plans import tenant_cases as ay_cases
from tests.progress.test_query_plans import cases as progress_cases

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "citus" / "distribute.sql"
DISTRIBUTED = re.compile(
    r"create_distributed_table\('(\w+)', '(\w+)'(?:, colocate_with => '(\w+)')?\)"
)
REFERENCE = re.compile(r"create_reference_table\('(\w+)'\)")


def script() -> tuple[dict[str, tuple[str, str | None]], set[str]]:
    """{distributed table: (column, colocated with)}, {reference tables}."""
    text = SCRIPT.read_text()
    distributed = {t: (c, w or None) for t, c, w in DISTRIBUTED.findall(text)}
    return distributed, set(REFERENCE.findall(text))


@pytest.fixture(scope="module")
def catalog(postgres_url: str) -> Iterator[str]:
    with scratch_database(postgres_url, prefix="t_citus") as url:
        for definition in (PROGRESS, AY):
            upgrade(url, definition.migrations_dir, definition.version_table)
        yield url


def query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def test_the_script_places_every_table_and_distributes_ours_by_organization(catalog: str) -> None:
    distributed, reference = script()
    assert distributed == {
        "academic_years": ("organizationId", None),
        "user_progress": ("organizationId", "academic_years"),
        "progress_request_ids": ("organizationId", "academic_years"),
        "academic_years_request_ids": ("organizationId", "academic_years"),
    }
    tables = {
        name
        for (name,) in query(
            catalog,
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relkind IN ('r', 'p') AND relname NOT LIKE 'alembic_version%'",
        )
    }
    assert tables == set(distributed) | reference, "a table the script does not place"
    assert not set(distributed) & reference


def test_distribution_columns_are_not_null_and_in_every_unique_index(catalog: str) -> None:
    distributed, _ = script()
    for table, (column, _colocated) in distributed.items():
        [(not_null,)] = query(
            catalog,
            "SELECT attnotnull FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2",
            table,
            column,
        )
        assert not_null, f"{table}.{column} may be NULL"
        uniques = query(
            catalog,
            "SELECT c.relname::text, array_agg(a.attname::text) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "CROSS JOIN LATERAL unnest(i.indkey) AS k(attnum) "
            "LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = $1::regclass AND i.indisunique GROUP BY 1",
            table,
        )
        assert uniques, f"{table} has no key"
        for name, columns in uniques:
            assert column in columns, f"{name} of {table} lacks {column}: Citus cannot enforce it"
        exclusions = query(
            catalog,
            "SELECT conname FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'x'",
            table,
        )
        assert not exclusions


def test_colocated_tables_and_foreign_keys_use_the_distribution_column(catalog: str) -> None:
    distributed, reference = script()

    def column_type(table: str, column: str) -> str:
        [(kind,)] = query(
            catalog,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = $1::regclass AND attname = $2",
            table,
            column,
        )
        return str(kind)

    for table, (column, colocated) in distributed.items():
        if colocated is not None:
            other = distributed[colocated][0]
            assert column_type(table, column) == column_type(colocated, other)
    keys = query(
        catalog,
        "SELECT conrelid::regclass::text, confrelid::regclass::text, "
        "ARRAY(SELECT attname::text FROM unnest(conkey) WITH ORDINALITY k(n, i) "
        "JOIN pg_attribute ON attrelid = conrelid AND attnum = n ORDER BY i), "
        "ARRAY(SELECT attname::text FROM unnest(confkey) WITH ORDINALITY k(n, i) "
        "JOIN pg_attribute ON attrelid = confrelid AND attnum = n ORDER BY i) "
        "FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace",
    )
    for source, target, columns, targets in keys:
        if source in reference:
            assert target not in distributed, f"{source} → {target}: reference to distributed"
        if source in distributed and target in distributed:
            position = columns.index(distributed[source][0])
            assert targets[position] == distributed[target][0], f"{source} → {target}"


def test_row_level_security_filters_by_the_distribution_column(catalog: str) -> None:
    distributed, _ = script()
    for table, (column, _colocated) in distributed.items():
        policies = query(catalog, "SELECT qual FROM pg_policies WHERE tablename = $1", table)
        assert policies and all(f'"{column}"' in qual for (qual,) in policies), table


def _distribution_column(side: Any, distributed: dict[str, str]) -> Any:
    """The table (or alias) whose distribution column `side` is, else None."""
    table = getattr(side, "table", None)
    name = getattr(getattr(table, "element", table), "name", None)
    if isinstance(side, ColumnClause) and distributed.get(str(name)) == side.name:
        return table
    return None


def unpinned(statement: Executable, distributed: dict[str, str]) -> list[str]:
    """Distributed tables (or aliases) the statement reads or writes without its distribution
    column equal to a value or to a colocated table's (a join Citus runs on one shard)."""
    used: dict[int, str] = {}
    pinned: set[int] = set()
    for element in visitors.iterate(statement):
        if isinstance(element, Table) and element.name in distributed:
            used[id(element)] = element.name
        original = getattr(element, "element", None)
        if isinstance(original, Table) and original.name in distributed and hasattr(element, "c"):
            used[id(element)] = f"{original.name} as {element.name}"
        if isinstance(element, BinaryExpression) and element.operator is operators.eq:
            sides = (element.left, element.right)
            for side, other in (sides, sides[::-1]):
                table = _distribution_column(side, distributed)
                if table is not None and (
                    isinstance(other, BindParameter)
                    or _distribution_column(other, distributed) is not None
                ):
                    pinned.add(id(table))
    return [name for key, name in used.items() if key not in pinned]


def tenant_statements() -> Iterator[tuple[str, Executable]]:
    """Every statement shape a caller bound to an organization runs on a distributed table."""
    for label, statement, _params in ay_cases():
        yield f"academic years {label}", statement
    for label, statement, _params in progress_cases():
        if "tenant" in label:
            yield f"progress {label}", statement
    yield "get", ay_statements.get_statement(False)
    for checked in (False, True):  # with an etag or without
        yield f"update {checked=}", ay_repository._update_statement(False, ("name",), checked)
        yield f"delete {checked=}", ay_repository._soft_delete_statement(False, False, checked)
    yield "delete many", ay_repository._soft_delete_statement(False, True)
    yield "exists", ay_repository._exists_statement(False)
    yield "import id check", ay_csv._taken_statement()
    yield "progress delete", UserProgressRepository._soft_delete_statement(False)
    yield "progress import count", progress_csv._existing_statement()
    for store in (*PROGRESS.request_ids, *AY.request_ids):
        yield f"{store.table.name} lookup", store.lookup_statement


def test_the_shard_check_sees_a_global_callers_fan_out() -> None:
    distributed = {t: c for t, (c, _w) in script()[0].items()}
    shape, _params = ay_statements.filter_binds(AcademicYearFilter())
    assert unpinned(ay_statements.get_statement(True), distributed) == ["academic_years"]
    assert unpinned(ay_statements.count_statement(True, shape), distributed) == ["academic_years"]
    assert unpinned(ay_statements.get_statement(False), distributed) == []


def test_every_tenant_statement_runs_on_one_shard() -> None:
    distributed = {t: c for t, (c, _w) in script()[0].items()}
    fanning = [
        f"{label}: {tables}"
        for label, statement in tenant_statements()
        if (tables := unpinned(statement, distributed))
    ]
    assert not fanning, "statements that would fan out to every shard:\n" + "\n".join(fanning)


def test_the_request_id_statements_sent_as_text_name_their_organization() -> None:
    """The stored answer's INSERT and an import's look for one go in COMMIT's and BEGIN's
    messages as text (no bind parameters for the check above to see): each names the
    organization by its value, which puts it on one shard."""
    org = "0b7e6c7e-3f0a-4a55-9d8e-1d2f3a4b5c6d"
    user = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    scope = tenant_scope(Principal(user, org, None, False, frozenset()))
    request = progress_pb2.UpsertUserProgressRequest(request_id=str(uuid.uuid4()))
    once = Once.unary("UpsertUserProgress", request, lambda r: r, progress_pb2.UserProgress)
    assert once.key is not None
    for store in (*PROGRESS.request_ids, *AY.request_ids):
        answer = store.answer_statement(scope, once.key, b"answer", b"digest")
        assert (
            '("organizationId", "userId", ' in answer and f"VALUES ('{org}', '{user}', " in answer
        )
        exists = store.exists_statement(scope, once.key)
        assert f"WHERE \"organizationId\" = '{org}' AND " in exists


def test_the_compose_profile_migrates_then_distributes_then_serves() -> None:
    import yaml

    root = SCRIPT.parents[2]
    services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    citus = {name: s for name, s in services.items() if "citus" in s.get("profiles", [])}
    assert set(citus) == {
        "citus-coordinator",
        "citus-worker-1",
        "citus-worker-2",
        "citus-nodes",
        "progress-migrate-citus",
        "academic-years-migrate-citus",
        "citus-distribute",
        "progress-citus",
        "academic-years-citus",
    }
    assert all(not s.get("profiles") for n, s in services.items() if n not in citus)
    for node in ("citus-coordinator", "citus-worker-1", "citus-worker-2", "citus-nodes"):
        assert citus[node]["image"].startswith("citusdata/citus:")
    assert citus["citus-nodes"]["command"][-1] == "/citus/nodes.sql"
    assert citus["citus-distribute"]["command"][-1] == "/citus/distribute.sql"
    assert "./deploy/citus:/citus:ro" in citus["citus-distribute"]["volumes"]
    done = {"condition": "service_completed_successfully"}
    for name, module in (("progress", "progress"), ("academic-years", "academic_years")):
        migrate, serve = citus[f"{name}-migrate-citus"], citus[f"{name}-citus"]
        assert migrate["command"] == ["python", "-m", f"{module}_service", "migrate"]
        assert migrate["depends_on"] == {"citus-nodes": done}
        assert citus["citus-distribute"]["depends_on"][f"{name}-migrate-citus"] == done
        assert serve["depends_on"] == {"citus-distribute": done}
        owner, app = migrate["environment"]["DATABASE_URL"], serve["environment"]["DATABASE_URL"]
        assert owner.startswith("postgresql://school@citus-coordinator:")
        assert app.startswith("postgresql://school_app:") and "@citus-coordinator:" in app
        assert migrate["environment"]["DATABASE_APP_ROLE"] == "school_app"
        assert serve["environment"]["REQUIRE_RLS"] == "1"
    nodes = (root / "deploy" / "citus" / "nodes.sql").read_text()
    assert "citus_add_node('citus-worker-1'" in nodes and "citus_add_node('citus-worker-2'" in nodes
