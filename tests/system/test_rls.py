"""Defence in depth: row-level security holds where a query forgets its tenant filter.

The service connects as a non-owner role without BYPASSRLS, as docs/security.md tells operators to.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from grpc import aio
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import make_url, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from academic_years_service.app import DEFINITION as AY_DEFINITION
from academic_years_service.tables import academic_years
from common.auth import Principal
from common.db import Database
from common.migrations import upgrade
from common.server import RunningServer, start_server
from progress_service.app import DEFINITION
from progress_service.tables import user_progress
from tests.conftest import test_settings as settings_for
from tests.support.callers import Caller, new_uuid

pytestmark = pytest.mark.asyncio


async def _admin(url: str, *statements: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            for statement in statements:
                await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


@pytest_asyncio.fixture(scope="module")
async def app_url(postgres_url: str) -> AsyncIterator[str]:
    """A login role that owns nothing and lacks BYPASSRLS, granted only DML; dropped afterwards."""
    for definition in (DEFINITION, AY_DEFINITION):
        await asyncio.to_thread(
            upgrade, postgres_url, definition.migrations_dir, definition.version_table
        )
    role = f"rls_app_{uuid.uuid4().hex[:12]}"
    await _admin(
        postgres_url,
        f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE',
        f'GRANT USAGE ON SCHEMA public TO "{role}"',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON user_progress TO "{role}"',
        f'GRANT SELECT ON {DEFINITION.version_table} TO "{role}"',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON academic_years TO "{role}"',
        f'GRANT SELECT ON organizations, classes, timetables TO "{role}"',
        f'GRANT SELECT ON {AY_DEFINITION.version_table} TO "{role}"',
    )
    try:
        yield make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
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
    async with owner_db.transaction(write=True) as conn:
        await conn.execute(user_progress.delete())
    me = Caller()
    people = {"me": me, "colleague": Caller(org=me.org), "stranger": Caller()}
    async with owner_db.transaction(write=True) as conn:
        for name, caller in people.items():
            await conn.execute(user_progress.insert().values(**_row(caller, name)))
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
    async with db.transaction(principal=who) as conn:
        return sorted((await conn.execute(text("SELECT item_id FROM user_progress"))).scalars())


async def owner_items(db: Database) -> dict[str, str | None]:
    async with db.transaction() as conn:
        rows = await conn.execute(select(user_progress.c.item_id, user_progress.c.value))
        return dict(rows.all())


@pytest.mark.parametrize("table", ["user_progress", "academic_years"])
async def test_the_app_role_is_not_privileged(owner_db: Database, app_url: str, table: str) -> None:
    role = make_url(app_url).username
    async with owner_db.transaction() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT r.rolsuper, r.rolbypassrls, c.relowner = r.oid, c.relrowsecurity "
                    "FROM pg_roles r, pg_class c WHERE r.rolname = :role AND c.relname = :table"
                ),
                {"role": role, "table": table},
            )
        ).one()
    assert tuple(row) == (False, False, False, True)


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
    # The same pooled connection, next transaction, no principal: the setting was local.
    assert await visible_items(app_db, None) == []


async def test_global_access_lifts_only_the_organization_filter(
    app_db: Database, owner_db: Database, world: dict[str, Caller]
) -> None:
    me = world["me"]
    async with owner_db.transaction(write=True) as conn:
        await conn.execute(
            user_progress.insert().values(**_row(Caller(org=new_uuid(), sub=me.sub), "me-abroad"))
        )
    roaming = principal(me, organization_id=None, global_access=True)
    assert await visible_items(app_db, roaming) == ["me", "me-abroad"]


async def test_unfiltered_update_and_delete_touch_only_the_callers_rows(
    app_db: Database, owner_db: Database, world: dict[str, Caller]
) -> None:
    async with app_db.transaction(write=True, principal=principal(world["me"])) as conn:
        updated = await conn.execute(text("UPDATE user_progress SET value = 'pwned'"))
        assert updated.rowcount == 1
    async with app_db.transaction(write=True, principal=principal(world["colleague"])) as conn:
        deleted = await conn.execute(text("DELETE FROM user_progress"))
        assert deleted.rowcount == 1
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
    with pytest.raises(DBAPIError, match="row-level security"):
        async with app_db.transaction(write=True, principal=principal(me)) as conn:
            await conn.execute(text(statement), params)
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
    async with owner_db.transaction() as conn:
        live = await conn.execute(
            select(user_progress.c.userId).where(
                user_progress.c.item_id == "via-rpc", user_progress.c.deletedAt.is_(None)
            )
        )
        assert live.scalars().all() == [stranger.sub]


@pytest_asyncio.fixture
async def years(owner_db: Database) -> dict[str, str]:
    """Two organizations' academic years, written by the owner: org name -> org id."""
    from common.db import utcnow

    orgs = {"mine": new_uuid(), "theirs": new_uuid()}
    async with owner_db.transaction(write=True) as conn:
        await conn.execute(academic_years.delete())
        for name, org in orgs.items():
            now = utcnow()
            await conn.execute(
                academic_years.insert().values(
                    id=new_uuid(), name=name, organizationId=org, createdAt=now, updatedAt=now
                )
            )
    return orgs


def year_principal(org: str | None, global_access: bool = False) -> Principal:
    return Principal(new_uuid(), org, None, global_access, frozenset())


async def year_names(db: Database, who: Principal | None) -> list[str]:
    async with db.transaction(principal=who) as conn:
        return sorted((await conn.execute(text("SELECT name FROM academic_years"))).scalars())


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
    async with app_db.transaction(write=True, principal=me) as conn:
        result = await conn.execute(text("UPDATE academic_years SET name = 'pwned'"))
        assert result.rowcount == 1
    with pytest.raises(DBAPIError, match="row-level security"):
        async with app_db.transaction(write=True, principal=me) as conn:
            await conn.execute(
                text('UPDATE academic_years SET "organizationId" = :other'),
                {"other": years["theirs"]},
            )
    async with owner_db.transaction() as conn:
        names = await conn.execute(select(academic_years.c.name, academic_years.c.organizationId))
        assert sorted(names.all()) == sorted(
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
