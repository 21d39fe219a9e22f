"""Row-level security is on in every shipped setup: `migrate` makes the app role, the embedded
default serves as it, and `serve` says so (or refuses) when its role would bypass the policies.
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import ColumnElement, func, select

from bench.scratch import scratch_database
from common.auth import Principal
from common.cli import migrate
from common.config import JwtSettings, Settings
from common.db import Database, asyncpg_dsn
from common.db.roles import RoleError, serving_risks
from common.server import check_role
from common.tenancy import tenant_scope
from progress_service.app import DEFINITION
from progress_service.domain import UserProgressInput
from progress_service.repository import REQUEST_IDS, UserProgressRepository
from progress_service.tables import user_progress
from tests.support.callers import SECRET, new_uuid

pytestmark = pytest.mark.asyncio


class UnscopedProgress(UserProgressRepository):
    """A repository that forgot its tenant: its readable rows are every live row."""

    @classmethod
    def readable(cls, global_access: bool) -> ColumnElement[bool]:
        return user_progress.c.deletedAt.is_(None)


def principal(org: str) -> Principal:
    return Principal(new_uuid(), org, None, False, frozenset())


@pytest.fixture(scope="module")
def compose_shaped(server_url: str) -> Iterator[tuple[str, str]]:
    """A named server as docker-compose.yml sets it up: `migrate` as the owner with
    DATABASE_APP_ROLE and a password; (owner URL, the app role's URL)."""
    role = f"app_{uuid.uuid4().hex[:10]}"
    with scratch_database(server_url, prefix="t_roles") as owner:
        env = {"DATABASE_URL": owner, "DATABASE_APP_ROLE": role, "DATABASE_APP_PASSWORD": "pw"}
        assert migrate(DEFINITION, env) == owner
        migrate(DEFINITION, env)  # repeatable: a second migrate changes nothing and succeeds
        parts = asyncpg_dsn(owner).split("://", 1)[1].rpartition("@")[2]
        yield owner, f"postgresql://{role}:pw@{parts}"
        _drop_role(owner, role)


def _drop_role(owner: str, role: str) -> None:
    import asyncio

    async def drop() -> None:
        conn = await asyncpg.connect(asyncpg_dsn(owner))
        try:
            await conn.execute(f'DROP OWNED BY "{role}"')
            await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="module")
def embedded_default() -> tuple[str, str]:
    """The embedded default, in a private data directory: (owner URL, the URL it serves with)."""
    # Outside pytest's temp tree: pytest resets it to 0700, which locks the server's own
    # system user out of its data directory (see tests/support/processes.py).
    data_dir = Path(tempfile.mkdtemp(prefix="embedded-pg-roles-")) / "pg"
    served = migrate(DEFINITION, {"EMBEDDED_PGDATA": str(data_dir)})
    owner = served.replace("school_app@", "postgres@", 1)
    return owner, served


@pytest.fixture(params=["embedded", "compose"])
def setup(
    request: pytest.FixtureRequest,
    embedded_default: tuple[str, str],
    compose_shaped: tuple[str, str],
) -> tuple[str, str]:
    return embedded_default if request.param == "embedded" else compose_shaped


@pytest_asyncio.fixture
async def app_db(setup: tuple[str, str]) -> AsyncIterator[tuple[Database, Database]]:
    owner, app = Database(setup[0], pool_size=2), Database(setup[1], pool_size=2)
    yield owner, app
    await owner.dispose()
    await app.dispose()


async def test_the_served_role_is_not_exempt_from_row_level_security(
    app_db: tuple[Database, Database],
) -> None:
    owner, app = app_db
    async with owner.unit_of_work(None, lambda *_: None) as uow:
        assert await serving_risks(uow.executor.conn, ["user_progress"])  # the owner is exempt
    async with app.unit_of_work(None, lambda *_: None) as uow:
        assert await serving_risks(uow.executor.conn, ["user_progress"]) == []


async def test_a_repository_without_its_scope_still_reaches_only_its_tenant(
    app_db: tuple[Database, Database],
) -> None:
    _owner, app = app_db
    mine, theirs = principal(new_uuid()), principal(new_uuid())
    for who in (mine, theirs):
        async with app.unit_of_work(tenant_scope(who), UserProgressRepository) as uow:
            await uow.repo.upsert(UserProgressInput("sign_learned", f"item of {who.user_id}"))
            await uow.commit()
    count = (
        select(func.count()).select_from(user_progress).where(user_progress.c.deletedAt.is_(None))
    )
    async with app.unit_of_work(tenant_scope(mine), UnscopedProgress) as uow:
        # Reads: the statement has no tenant filter at all, the policy adds it.
        assert await uow.executor.scalar(count) == 1
        # Updates and deletes: the other tenant's row is not there to change.
        deleted = await uow.repo.soft_delete("sign_learned", f"item of {theirs.user_id}")
        assert deleted == 0
        # Writes into another organization are refused by the policy's WITH CHECK.
        forged = replace(
            uow.repo.scope, principal=replace(mine, organization_id=theirs.organization_id)
        )
        uow.repo.scope = forged
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await uow.repo.upsert(UserProgressInput("sign_learned", "planted"))


def settings(url: str, require_rls: bool) -> Settings:
    return Settings(
        service="progress",
        database_url=url,
        grpc_addr="127.0.0.1:0",
        jwt=JwtSettings("HS256", SECRET.encode()),
        require_rls=require_rls,
    )


async def test_serve_warns_then_refuses_as_a_role_that_bypasses_the_policies(
    app_db: tuple[Database, Database], caplog: pytest.LogCaptureFixture
) -> None:
    owner, app = app_db
    with caplog.at_level(logging.WARNING, logger="server"):
        await check_role(owner, DEFINITION, settings(owner.url, require_rls=False))
    [warning] = [r for r in caplog.records if "row-level security" in r.getMessage()]
    assert "superuser" in warning.getMessage() and "DATABASE_APP_ROLE" in warning.getMessage()
    with pytest.raises(RoleError, match="REQUIRE_RLS"):
        await check_role(owner, DEFINITION, settings(owner.url, require_rls=True))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="server"):
        await check_role(app, DEFINITION, settings(app.url, require_rls=True))
    assert not [r for r in caplog.records if "row-level security" in r.getMessage()]


async def test_an_app_role_with_bypassrls_is_refused_by_migrate(
    compose_shaped: tuple[str, str],
) -> None:
    owner, _app = compose_shaped
    role = f"bypass_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(asyncpg_dsn(owner))
    try:
        await conn.execute(f'CREATE ROLE "{role}" LOGIN BYPASSRLS')
        import asyncio

        env: dict[str, Any] = {"DATABASE_URL": owner, "DATABASE_APP_ROLE": role}
        with pytest.raises(RoleError, match="BYPASSRLS"):
            await asyncio.to_thread(migrate, DEFINITION, env)
    finally:
        await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
        await conn.close()


async def test_the_embedded_default_serves_as_its_app_role(
    embedded_default: tuple[str, str],
) -> None:
    _owner, served = embedded_default
    assert served.startswith("postgresql://school_app@/school?host=")
    app = Database(served, pool_size=1)
    try:
        async with app.unit_of_work(None, lambda *_: None) as uow:
            assert await uow.executor.conn.fetchval("SELECT current_user") == "school_app"
    finally:
        await app.dispose()


async def test_migrate_lets_the_app_role_purge_expired_request_ids(
    app_db: tuple[Database, Database],
) -> None:
    """The purge is a SECURITY DEFINER function that PUBLIC may not run: `migrate` grants it
    to the app role, which may then purge, and only through it (no DELETE of its own)."""
    _owner, app = app_db
    assert await REQUEST_IDS.purge(app, ttl_seconds=86400) == 0
    async with app.unit_of_work(None, lambda *_: None) as uow:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await uow.executor.conn.execute("DELETE FROM progress_request_ids")
