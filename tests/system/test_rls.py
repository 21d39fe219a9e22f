"""Defence in depth: row-level security holds where a query forgets its tenant filter.

The service connects as a non-owner role without BYPASSRLS, as docs/security.md tells operators to.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from grpc import aio
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import select, text

from academic_years_service.app import DEFINITION as AY_DEFINITION
from academic_years_service.tables import academic_years
from common.auth import Principal
from common.db import Database, UnitOfWork, asyncpg_dsn
from common.idempotency import APP_PRIVILEGES
from common.migrations import upgrade
from common.server import RunningServer, start_server
from common.tenancy import tenant_scope
from progress_service.app import DEFINITION
from progress_service.repository import REQUEST_IDS
from progress_service.tables import request_ids, user_progress
from tests.conftest import test_settings as settings_for
from tests.support.callers import Caller, new_uuid

pytestmark = pytest.mark.asyncio


async def _admin(url: str, *statements: str) -> None:
    """Runs each statement on its own, outside a transaction (roles, grants)."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def as_user(url: str, user: str, password: str) -> str:
    """`url` with another login (any credentials it carried are dropped)."""
    parts = urlsplit(asyncpg_dsn(url))
    where = parts.netloc.rpartition("@")[2]  # empty for a unix socket (?host=…)
    return urlunsplit(parts._replace(netloc=f"{quote(user)}:{quote(password)}@{where}"))


def _no_repository(*_: Any) -> None:
    return None


def unit(db: Database, who: Principal | None = None) -> UnitOfWork[None]:
    """A transaction as the service opens one for `who` (RLS settings and all), or with no
    tenant named at all; nothing lasts unless the block commits."""
    return db.unit_of_work(None if who is None else tenant_scope(who), _no_repository)


async def write(
    db: Database, who: Principal, sql: str, params: dict[str, Any] | None = None
) -> int:
    """Runs and commits one statement as `who`; the number of rows it touched."""
    async with unit(db, who) as uow:
        count = await uow.executor.execute(text(sql), params or {})
        await uow.commit()
    return count


@pytest_asyncio.fixture(scope="module")
async def app_url(postgres_url: str) -> AsyncIterator[str]:
    """A login role that owns nothing and lacks BYPASSRLS, granted only DML; dropped afterwards."""
    for definition in (DEFINITION, AY_DEFINITION):
        await asyncio.to_thread(
            upgrade, postgres_url, definition.migrations_dir, definition.version_table
        )
    role, password = f"rls_app_{uuid.uuid4().hex[:12]}", secrets.token_hex(16)
    await _admin(
        postgres_url,
        f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}' "
        "NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE",
        f'GRANT USAGE ON SCHEMA public TO "{role}"',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON user_progress TO "{role}"',
        f'GRANT SELECT ON {DEFINITION.version_table} TO "{role}"',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON academic_years TO "{role}"',
        f'GRANT SELECT ON organizations, classes, timetables TO "{role}"',
        f'GRANT SELECT ON {AY_DEFINITION.version_table} TO "{role}"',
        *(
            grant
            for store in (*DEFINITION.request_ids, *AY_DEFINITION.request_ids)
            for grant in (
                f'GRANT {APP_PRIVILEGES} ON {store.table.name} TO "{role}"',
                f'GRANT EXECUTE ON FUNCTION {store.function} TO "{role}"',
            )
        ),
    )
    try:
        yield as_user(postgres_url, role, password)
    finally:
        await _admin(postgres_url, f'DROP OWNED BY "{role}"', f'DROP ROLE IF EXISTS "{role}"')


@pytest_asyncio.fixture(scope="module")
async def app_db(app_url: str) -> AsyncIterator[Database]:
    # One pooled connection, so consecutive transactions reuse it (settings must not leak).
    db = Database(app_url, pool_size=1)
    yield db
    await db.dispose()


@pytest_asyncio.fixture(scope="module")
async def owner_db(postgres_url: str) -> AsyncIterator[Database]:
    db = Database(postgres_url)
    yield db
    await db.dispose()


@pytest_asyncio.fixture
async def world(owner_db: Database) -> dict[str, Caller]:
    """Rows of two users in one organization and one user elsewhere, written by the owner."""
    me = Caller()
    people = {"me": me, "colleague": Caller(org=me.org), "stranger": Caller()}
    async with unit(owner_db) as uow:
        await uow.executor.execute(user_progress.delete())
        for name, caller in people.items():
            await uow.executor.execute(user_progress.insert().values(**_row(caller, name)))
        await uow.commit()
    return people


def _row(caller: Caller, item: str) -> dict[str, Any]:
    from common.db import utcnow

    now = utcnow()
    return {
        "id": new_uuid(),
        "progress_type": "sign_learned",
        "item_id": item,
        "organizationId": caller.org,
        "userId": caller.sub,
        "createdById": caller.sub,
        "createdAt": now,
        "updatedAt": now,
    }


def principal(caller: Caller, **changes: Any) -> Principal:
    values: dict[str, Any] = {
        "user_id": caller.sub,
        "organization_id": caller.org,
        "campus_id": None,
        "global_access": False,
        "permissions": frozenset(),
    }
    values.update(changes)
    return Principal(**values)


async def visible_items(db: Database, who: Principal | None) -> list[str]:
    """A query with the tenant filter removed: whatever comes back, RLS let through."""
    async with unit(db, who) as uow:
        rows = await uow.executor.rows(text("SELECT item_id FROM user_progress"))
    return sorted(row["item_id"] for row in rows)


async def owner_items(db: Database) -> dict[str, str | None]:
    async with unit(db) as uow:
        rows = await uow.executor.rows(select(user_progress.c.item_id, user_progress.c.value))
    return {row["item_id"]: row["value"] for row in rows}


@pytest.mark.parametrize("table", ["user_progress", "academic_years"])
async def test_the_app_role_is_not_privileged(owner_db: Database, app_url: str, table: str) -> None:
    role = urlsplit(app_url).username
    async with unit(owner_db) as uow:
        rows = await uow.executor.rows(
            text(
                "SELECT r.rolsuper, r.rolbypassrls, c.relowner = r.oid, c.relrowsecurity "
                "FROM pg_roles r, pg_class c WHERE r.rolname = :role AND c.relname = :table"
            ),
            {"role": role, "table": table},
        )
    assert [tuple(row) for row in rows] == [(False, False, False, True)]


async def test_unfiltered_select_sees_only_the_callers_rows(
    app_db: Database, world: dict[str, Caller]
) -> None:
    assert await visible_items(app_db, principal(world["me"])) == ["me"]
    assert await visible_items(app_db, principal(world["stranger"])) == ["stranger"]
    # Same user, claiming another organization: its rows there (none), not the real ones.
    assert await visible_items(app_db, principal(world["me"], organization_id=new_uuid())) == []


async def test_no_tenant_named_means_no_rows_and_settings_do_not_leak(
    app_db: Database, world: dict[str, Caller]
) -> None:
    assert await visible_items(app_db, principal(world["me"])) == ["me"]
    first = await backend_pid(app_db)
    # The same pooled connection, next transaction, no principal: the setting was local.
    assert await visible_items(app_db, None) == []
    assert await backend_pid(app_db) == first


async def backend_pid(db: Database) -> int:
    async with unit(db) as uow:
        return int(await uow.executor.scalar(text("SELECT pg_backend_pid()")))


async def test_global_access_lifts_only_the_organization_filter(
    app_db: Database, owner_db: Database, world: dict[str, Caller]
) -> None:
    me = world["me"]
    async with unit(owner_db) as uow:
        await uow.executor.execute(
            user_progress.insert().values(**_row(Caller(org=new_uuid(), sub=me.sub), "me-abroad"))
        )
        await uow.commit()
    roaming = principal(me, organization_id=None, global_access=True)
    assert await visible_items(app_db, roaming) == ["me", "me-abroad"]


async def test_unfiltered_update_and_delete_touch_only_the_callers_rows(
    app_db: Database, owner_db: Database, world: dict[str, Caller]
) -> None:
    me, colleague = principal(world["me"]), principal(world["colleague"])
    assert await write(app_db, me, "UPDATE user_progress SET value = 'pwned'") == 1
    assert await write(app_db, colleague, "DELETE FROM user_progress") == 1
    assert await owner_items(owner_db) == {"me": "pwned", "stranger": None}


@pytest.mark.parametrize(
    "statement",
    [
        # a row for another organization
        'INSERT INTO user_progress (id, progress_type, item_id, "organizationId", "userId",'
        ' "createdById", "createdAt", "updatedAt") VALUES (gen_random_uuid(), \'sign_learned\','
        " 'x', :other_org, :me, :me, now(), now())",
        # a row for another user of the same organization
        'INSERT INTO user_progress (id, progress_type, item_id, "organizationId", "userId",'
        ' "createdById", "createdAt", "updatedAt") VALUES (gen_random_uuid(), \'sign_learned\','
        " 'x', :my_org, :other_user, :me, now(), now())",
        # moving one's own row to another organization
        'UPDATE user_progress SET "organizationId" = :other_org',
        # handing one's own row to another user
        'UPDATE user_progress SET "userId" = :other_user',
    ],
    ids=["insert_other_org", "insert_other_user", "move_to_other_org", "give_to_other_user"],
)
async def test_writes_outside_the_tenant_are_refused(
    app_db: Database, owner_db: Database, world: dict[str, Caller], statement: str
) -> None:
    me = world["me"]
    params = {
        "me": me.sub,
        "my_org": me.org,
        "other_org": world["stranger"].org,
        "other_user": world["colleague"].sub,
    }
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await write(app_db, principal(me), statement, params)
    assert await owner_items(owner_db) == {"me": None, "colleague": None, "stranger": None}


@pytest_asyncio.fixture(scope="module")
async def app_server(app_url: str) -> AsyncIterator[tuple[RunningServer, aio.Channel]]:
    running = await start_server(DEFINITION, settings_for("progress", app_url))
    channel = aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, channel
    await channel.close()
    await running.shutdown(1.0)


async def test_the_service_runs_as_the_app_role(
    app_server: tuple[RunningServer, aio.Channel], owner_db: Database, world: dict[str, Caller]
) -> None:
    stub = progress_pb2_grpc.UserProgressServiceStub(app_server[1])
    me, stranger = world["me"], world["stranger"]
    for caller in (me, stranger):
        data = pb.UserProgressInput(progress_type="sign_learned", item_id="via-rpc", value="v")
        await stub.UpsertUserProgress(pb.UpsertUserProgressRequest(data=data), metadata=caller.md)
        # The upsert's ON CONFLICT path passes the policy too.
        await stub.UpsertUserProgress(pb.UpsertUserProgressRequest(data=data), metadata=caller.md)
    listed = await stub.ListUserProgress(
        pb.ListUserProgressRequest(progress_type="sign_learned"), metadata=me.md
    )
    assert sorted(r.item_id for r in listed.rows) == ["me", "via-rpc"]
    deleted = await stub.DeleteUserProgressByItem(
        pb.DeleteUserProgressByItemRequest(progress_type="sign_learned", item_id="via-rpc"),
        metadata=me.md,
    )
    assert deleted.deleted_count == 1
    async with unit(owner_db) as uow:
        live = await uow.executor.rows(
            select(user_progress.c.userId).where(
                user_progress.c.item_id == "via-rpc", user_progress.c.deletedAt.is_(None)
            )
        )
    assert [row["userId"] for row in live] == [stranger.sub]


@pytest_asyncio.fixture
async def years(owner_db: Database) -> dict[str, str]:
    """Two organizations' academic years, written by the owner: org name -> org id."""
    from common.db import utcnow

    orgs = {"mine": new_uuid(), "theirs": new_uuid()}
    async with unit(owner_db) as uow:
        await uow.executor.execute(academic_years.delete())
        for name, org in orgs.items():
            now = utcnow()
            await uow.executor.execute(
                academic_years.insert().values(
                    id=new_uuid(), name=name, organizationId=org, createdAt=now, updatedAt=now
                )
            )
        await uow.commit()
    return orgs


def year_principal(org: str | None, global_access: bool = False) -> Principal:
    return Principal(new_uuid(), org, None, global_access, frozenset())


async def year_names(db: Database, who: Principal | None) -> list[str]:
    async with unit(db, who) as uow:
        rows = await uow.executor.rows(text("SELECT name FROM academic_years"))
    return sorted(row["name"] for row in rows)


async def test_academic_years_unfiltered_reads_stay_in_the_organization(
    app_db: Database, years: dict[str, str]
) -> None:
    assert await year_names(app_db, year_principal(years["mine"])) == ["mine"]
    assert await year_names(app_db, year_principal(years["theirs"])) == ["theirs"]
    assert await year_names(app_db, None) == []
    assert await year_names(app_db, year_principal(None, global_access=True)) == [
        "mine",
        "theirs",
    ]


async def test_academic_years_unfiltered_writes_stay_in_the_organization(
    app_db: Database, owner_db: Database, years: dict[str, str]
) -> None:
    me = year_principal(years["mine"])
    assert await write(app_db, me, "UPDATE academic_years SET name = 'pwned'") == 1
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await write(
            app_db,
            me,
            'UPDATE academic_years SET "organizationId" = :other',
            {"other": years["theirs"]},
        )
    async with unit(owner_db) as uow:
        names = await uow.executor.rows(
            select(academic_years.c.name, academic_years.c.organizationId)
        )
    assert sorted(tuple(row) for row in names) == sorted(
        [("pwned", years["mine"]), ("theirs", years["theirs"])]
    )


async def test_the_academic_years_service_runs_as_the_app_role(
    app_url: str, years: dict[str, str]
) -> None:
    from academic_years.v1 import academic_years_pb2 as ay_pb
    from academic_years.v1 import academic_years_pb2_grpc

    from tests.support.academic_years import staff

    running = await start_server(AY_DEFINITION, settings_for("academic_years", app_url))
    channel = aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        client = academic_years_pb2_grpc.AcademicYearsServiceStub(channel)
        me = staff(years["mine"])
        created = await client.CreateAcademicYear(
            ay_pb.CreateAcademicYearRequest(data=ay_pb.AcademicYearInput(name="new")),
            metadata=me.md,
        )
        got = await client.GetAcademicYear(
            ay_pb.GetAcademicYearRequest(id=created.id), metadata=me.md
        )
        assert got.name == "new"
        listed = await client.ListAcademicYears(ay_pb.ListAcademicYearsRequest(), metadata=me.md)
        assert sorted(r.name for r in listed.rows) == ["mine", "new"]
    finally:
        await channel.close()
        await running.shutdown(1.0)


async def test_csv_import_and_export_run_as_the_app_role(
    app_server: tuple[RunningServer, aio.Channel], owner_db: Database, world: dict[str, Caller]
) -> None:
    from tests.support.csv import bodies, collect, csv_bytes, parse_csv

    stub = progress_pb2_grpc.UserProgressServiceStub(app_server[1])
    me = world["me"]
    data = csv_bytes(
        [
            ["progress_type", "item_id", "value", "score", "metadata"],
            ["sign_learned", "csv-1", "a", "1", "{}"],
            ["sign_learned", "me", "updated", "", ""],  # an existing row: the update path
        ]
    )
    summary = await stub.ImportUserProgressCsv(bodies(data), metadata=me.md)
    assert (summary.created, summary.updated) == (1, 1)
    exported = parse_csv(
        await collect(stub.ExportUserProgressCsv(pb.ExportUserProgressCsvRequest(), metadata=me.md))
    )
    assert sorted(r[1] for r in exported[1:]) == ["csv-1", "me"]
    assert await owner_items(owner_db) == {
        "me": "updated",
        "csv-1": "a",
        "colleague": None,
        "stranger": None,
    }


async def test_academic_years_csv_runs_as_the_app_role(app_url: str, years: dict[str, str]) -> None:
    from academic_years.v1 import academic_years_pb2 as ay_pb
    from academic_years.v1 import academic_years_pb2_grpc

    from tests.support.academic_years import staff
    from tests.support.csv import bodies, collect, csv_bytes, parse_csv

    running = await start_server(AY_DEFINITION, settings_for("academic_years", app_url))
    channel = aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        client = academic_years_pb2_grpc.AcademicYearsServiceStub(channel)
        me = staff(years["mine"])
        data = csv_bytes([["name", "importHash"], ["imported", f"h-{new_uuid()}"]])
        summary = await client.ImportAcademicYearsCsv(bodies(data), metadata=me.md)
        assert summary.created == 1
        exported = parse_csv(
            await collect(
                client.ExportAcademicYearsCsv(ay_pb.ListAcademicYearsRequest(), metadata=me.md)
            )
        )
        assert sorted(r[1] for r in exported[1:]) == ["imported", "mine"]
    finally:
        await channel.close()
        await running.shutdown(1.0)


async def test_request_ids_are_each_callers_own_and_purged_across_tenants(
    app_server: tuple[RunningServer, aio.Channel],
    app_db: Database,
    owner_db: Database,
    world: dict[str, Caller],
) -> None:
    stub = progress_pb2_grpc.UserProgressServiceStub(app_server[1])
    data = pb.UserProgressInput(progress_type="sign_learned", item_id="with-id", value="v")
    me, stranger = world["me"], world["stranger"]
    mine = new_uuid()
    async with unit(owner_db) as uow:
        await uow.executor.execute(request_ids.delete())  # other modules' answers
        await uow.commit()
    for caller, rid in ((me, mine), (stranger, new_uuid())):
        request = pb.UpsertUserProgressRequest(data=data, request_id=rid)
        first = await stub.UpsertUserProgress(request, metadata=caller.md)
        assert await stub.UpsertUserProgress(request, metadata=caller.md) == first
    # The claim, the lookup and the stored answer all passed the policy; an unfiltered read
    # of the store sees the caller's own ids only, and no tenant named sees none.
    async with unit(app_db, principal(me)) as uow:
        seen = await uow.executor.rows(text('SELECT "requestId" FROM progress_request_ids'))
    assert [row["requestId"] for row in seen] == [mine]
    async with unit(app_db) as uow:
        assert await uow.executor.rows(text("SELECT 1 FROM progress_request_ids")) == []
    # The purge, run as the app role, reaches every tenant's expired answers.
    async with unit(owner_db) as uow:
        await uow.executor.execute(
            request_ids.update().values(createdAt=text("now() - interval '2 days'"))
        )
        await uow.commit()
    assert await REQUEST_IDS.purge(app_db, ttl_seconds=86400) == 2
