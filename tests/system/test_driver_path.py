"""The PostgreSQL hot paths on asyncpg: same unit of work, same rows as the Core statements."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from academic_years_service.domain import AcademicYearFilter, Bounds, Ordering
from academic_years_service.repository import AcademicYearsRepository
from academic_years_service.tables import classes, organizations, timetables
from common.auth import Principal
from common.db import Database, driver_statement, is_unavailable
from common.errors import UnavailableError
from common.pagination import PageRequest
from progress_service.domain import UserProgressInput
from progress_service.repository import UserProgressRepository, _count_statement
from progress_service.tables import user_progress
from tests.conftest import Harness
from tests.support.academic_years import seed, seed_years, utc
from tests.support.callers import new_uuid

pytestmark = pytest.mark.asyncio


def principal(org: str | None, user: str | None = None, global_access: bool = False) -> Principal:
    return Principal(user or new_uuid(), org, None, global_access, frozenset())


def academic_years_personas(org_a: str, org_b: str) -> list[Principal]:
    """Staff of either organization, a global caller, and a stranger."""
    return [
        principal(org_a),
        principal(org_b),
        principal(None, global_access=True),
        principal(new_uuid()),
    ]


@pytest_asyncio.fixture
async def single(progress: Harness) -> AsyncIterator[Database]:
    """A pool of one connection, so the next unit of work sees what the last one left behind."""
    db = Database(progress.db.url, pool_size=1)
    yield db
    await db.dispose()


class Boom(Exception):
    pass


async def stored_rows(db: Database) -> int:
    async with db.transaction() as conn:
        return int(await conn.scalar(select(func.count()).select_from(user_progress)) or 0)


async def assert_clean(db: Database) -> None:
    """The pooled connection is idle (no open transaction) and the tenant settings are gone."""
    assert db.driver_pool is not None and db.driver_pool.get_max_size() == 1
    async with db.driver_pool.acquire() as driver:
        assert not driver.is_in_transaction()
        settings = await driver.fetchrow(
            "SELECT current_setting('app.organization_id', true),"
            " current_setting('app.user_id', true)"
        )
        assert tuple(settings) in {(None, None), ("", "")}


async def upsert_then(db: Database, who: Principal | None, then: str | None) -> None:
    """One hot-path unit of work: an upsert, then `then` on the driver ('boom' raises)."""
    owner = who or principal(new_uuid())
    async with db.driver_transaction(write=True, principal=who) as driver:
        assert not isinstance(driver, AsyncConnection) and driver.is_in_transaction()
        await UserProgressRepository(driver, owner).upsert(UserProgressInput("sign_learned", "a"))
        if who is not None:
            assert await driver.fetchval("SELECT current_setting('app.user_id')") == who.user_id
        if then == "boom":
            raise Boom
        if then is not None:
            await driver.fetchval(then)


@pytest.mark.postgres
async def test_a_failure_rolls_back_driver_statements_and_tenant_settings(single: Database) -> None:
    with pytest.raises(Boom):
        await upsert_then(single, principal(new_uuid()), "boom")
    assert await stored_rows(single) == 0
    await assert_clean(single)


@pytest.mark.postgres
async def test_a_failing_statement_rolls_back_the_unit_of_work(single: Database) -> None:
    with pytest.raises(asyncpg.DivisionByZeroError):
        await upsert_then(single, principal(new_uuid()), "SELECT 1 / 0")
    assert await stored_rows(single) == 0
    await assert_clean(single)


@pytest.mark.postgres
async def test_driver_statements_commit_with_the_unit_of_work(single: Database) -> None:
    await upsert_then(single, principal(new_uuid()), None)
    assert await stored_rows(single) == 1
    await assert_clean(single)


@pytest.mark.postgres
async def test_without_a_principal_the_statements_are_still_one_transaction(
    single: Database,
) -> None:
    with pytest.raises(Boom):
        await upsert_then(single, None, "boom")
    assert await stored_rows(single) == 0
    await assert_clean(single)


@pytest.mark.postgres
async def test_a_lost_connection_is_unavailable_and_not_handed_out_again(single: Database) -> None:
    who = principal(new_uuid())
    with pytest.raises(UnavailableError):
        await upsert_then(single, who, "SELECT pg_terminate_backend(pg_backend_pid())")
    await upsert_then(single, who, None)  # a fresh connection from the pool
    assert await stored_rows(single) == 1
    await assert_clean(single)


async def no_batches() -> AsyncIterator[list[tuple[Any, ...]]]:
    for batch in ():
        yield batch


@pytest.mark.postgres
async def test_sqlalchemy_statements_are_refused_on_the_driver(single: Database) -> None:
    who = principal(new_uuid())
    async with single.driver_transaction(principal=who) as driver:
        with pytest.raises(TypeError):
            await UserProgressRepository(driver, who).stage_import(no_batches())


async def test_driver_sql_is_the_core_statement_compiled() -> None:
    compiled = driver_statement(_count_statement(True, False))
    assert compiled.names == ("b_user", "b_org", "b_type")
    assert '"organizationId" = $2::UUID' in compiled.sql and '"deletedAt" IS NULL' in compiled.sql


async def both_paths(
    db: Database, who: Principal, make: Any, call: str, *args: Any
) -> tuple[Any, Any]:
    """(asyncpg path, Core path) results of the same repository call, each in its own unit."""
    async with db.driver_transaction(principal=who) as driver:
        assert not isinstance(driver, AsyncConnection)
        fast = await getattr(make(driver, who), call)(*args)
    async with db.transaction(principal=who) as conn:
        core = await getattr(make(conn, who), call)(*args)
    return fast, core


async def same_page_on_both_paths(
    db: Database, who: Principal, make: Any, call: str, *args: Any
) -> int:
    """Asserts both paths return the same (rows, count); the number of rows."""
    fast, core = await both_paths(db, who, make, call, *args)
    assert fast == core
    return len(fast[0])


@pytest.mark.postgres
async def test_progress_fast_path_matches_core_for_every_persona(progress: Harness) -> None:
    org_a, org_b, user, other = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    writers = [principal(org_a, user), principal(org_b, user), principal(org_a, other)]
    async with progress.db.transaction(write=True) as conn:
        for who in writers:
            repository = UserProgressRepository(conn, who)
            for item in ("i1", "i2", "i3"):
                await repository.upsert(UserProgressInput("sign_learned", item, "v", 3, {"k": 1}))
            await repository.upsert(UserProgressInput("zone_checkin", "i1"))
            await repository.soft_delete("sign_learned", "i3")
    personas = [*writers, principal(None, user, global_access=True), principal(new_uuid(), user)]
    rows_seen = 0
    for who in personas:
        for kind in ("sign_learned", "zone_checkin"):
            for item in (None, "i1", "i3", "nope"):
                for page in (PageRequest(10, 0), PageRequest(1, 1)):
                    rows_seen += await same_page_on_both_paths(
                        progress.db, who, UserProgressRepository, "list", kind, item, page
                    )
    assert rows_seen > 20  # the comparisons were not all of empty pages


@pytest.mark.postgres
async def test_progress_fast_writes_match_core(progress: Harness) -> None:
    who = principal(new_uuid())
    data = UserProgressInput("sign_learned", "i1", "v", 7, {"nested": [1, None, "x"]})
    for unit in (progress.db.driver_transaction, progress.db.transaction):
        await progress.wipe()
        async with unit(write=True, principal=who) as conn:
            repository = UserProgressRepository(conn, who)
            first, created = await repository.upsert(data)
            second, again = await repository.upsert(dataclasses.replace(data, score=8))
            deleted = await repository.soft_delete("sign_learned", "i1")
            missing = await repository.soft_delete("sign_learned", "i1")
        assert (created, again, deleted, missing) == (True, False, 1, 0)
        assert second.id == first.id and second.score == 8 and second.metadata == data.metadata
        assert isinstance(first.id, str) and first.organization_id == who.organization_id
        assert first.user_id == who.user_id and first.campus_id is None
        assert first.created_at.tzinfo is not None


@pytest.mark.postgres
async def test_academic_years_get_fast_path_matches_core_for_every_persona(
    academic_years: Harness,
) -> None:
    org_a, org_b = new_uuid(), new_uuid()
    await seed(academic_years, organizations, {"id": org_a, "name": "North"})
    years = await seed_years(
        academic_years,
        {"name": "a", "organizationId": org_a, "start_date": "2025-01-01"},
        {"name": "gone", "organizationId": org_a, "deletedAt": utc("2025-02-01T00:00:00")},
        {"name": "b", "organizationId": org_b},
        {"name": "orphan"},
    )
    for year, org in ((years[0], org_a), (years[2], org_b), (years[3], None)):
        for table in (classes, timetables):
            await seed(
                academic_years,
                table,
                {"name": "z", "academic_yearId": year, "organizationId": org},
                {"name": "m", "academic_yearId": year, "organizationId": org},
                {"name": "x", "academic_yearId": year, "organizationId": new_uuid()},
            )
    personas = academic_years_personas(org_a, org_b)
    found = 0
    for who in personas:
        for year_id in (*years, new_uuid()):
            fast, core = await both_paths(
                academic_years.db, who, AcademicYearsRepository, "get", year_id
            )
            assert fast == core
            found += fast is not None and len(fast.classes) == 2
    assert found == 5  # org a: 1, org b: 1, global: 3, stranger: 0


@pytest.mark.postgres
async def test_academic_years_list_fast_path_matches_core_for_every_filter_shape(
    academic_years: Harness,
) -> None:
    org_a, org_b = new_uuid(), new_uuid()
    rows: list[dict[str, Any]] = []
    for org in (org_a, org_b, None):
        for i in range(6):
            rows.append(
                {
                    "name": ["Alpha 100%", "beta_2", None, "Gamma", "alpha", "Delta"][i],
                    "organizationId": org,
                    "start_date": dt.date(2020 + i, 9, 1) if i != 3 else None,
                    "end_date": dt.date(2021 + i, 6, 30) if i != 4 else None,
                    "current": i == 1,
                    "deletedAt": None,
                }
            )
    gone = {**rows[0], "name": "gone", "deletedAt": utc("2025-02-01T00:00:00")}
    rows.append(gone)
    ids = await seed_years(academic_years, *rows)
    d = dt.date
    filters = [
        AcademicYearFilter(),
        AcademicYearFilter(id=ids[1]),
        AcademicYearFilter(name="ALPHA"),
        AcademicYearFilter(name="100%"),
        AcademicYearFilter(name="_"),
        AcademicYearFilter(calendar=Bounds(d(2021, 1, 1), d(2022, 12, 31))),
        AcademicYearFilter(calendar=Bounds(d(2023, 1, 1), None)),
        AcademicYearFilter(start_date=Bounds(None, d(2022, 9, 1), upper_exclusive=True)),
        AcademicYearFilter(start_date=Bounds(d(2021, 9, 1), d(2022, 9, 1))),
        AcademicYearFilter(end_date=Bounds(d(2023, 1, 1), None)),
        AcademicYearFilter(created_at=Bounds(utc("2025-01-01T00:00:03"), None)),
        AcademicYearFilter(current=True),
        AcademicYearFilter(current=False, name="a"),
        AcademicYearFilter(organizations=(org_a,)),
        AcademicYearFilter(organizations=(org_a, org_b)),
        AcademicYearFilter(organizations=()),
    ]
    orderings = [Ordering(), Ordering("name", False), Ordering("end_date", True), Ordering("id")]
    personas = academic_years_personas(org_a, org_b)
    seen = 0
    for who in personas:
        for f in filters:
            fast, core = await both_paths(
                academic_years.db, who, AcademicYearsRepository, "count", f
            )
            assert fast == core
            for ordering in orderings:
                for page in (PageRequest(100, 0), PageRequest(2, 1)):
                    seen += await same_page_on_both_paths(
                        academic_years.db, who, AcademicYearsRepository, "page", f, ordering, page
                    )
    assert seen > 500  # the comparisons were not all of empty pages


async def test_only_lost_connections_from_asyncpg_are_unavailable() -> None:
    assert is_unavailable(asyncpg.ConnectionDoesNotExistError("gone"))
    assert is_unavailable(
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed")
    )
    assert not is_unavailable(asyncpg.exceptions._base.DataError("invalid input for $1"))
    assert not is_unavailable(asyncpg.UniqueViolationError("duplicate key"))


@pytest.mark.postgres
async def test_a_cancelled_unit_leaves_no_rows_and_no_open_transaction(single: Database) -> None:
    who, running = principal(new_uuid()), asyncio.Event()

    async def slow() -> None:
        async with single.driver_transaction(write=True, principal=who) as driver:
            await UserProgressRepository(driver, who).upsert(UserProgressInput("sign_learned", "a"))
            running.set()
            await driver.fetchval("SELECT pg_sleep(30)")

    task = asyncio.create_task(slow())
    await running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await stored_rows(single) == 0
    await assert_clean(single)


@pytest.mark.postgres
async def test_a_waiting_caller_is_bounded_by_its_deadline_and_takes_nothing(
    progress: Harness,
) -> None:
    db = Database(progress.db.url, pool_size=1)

    async def one_unit() -> int:
        async with db.driver_transaction() as driver:
            return int(await driver.fetchval("SELECT 1"))

    try:
        async with db.driver_transaction():
            waiting = asyncio.create_task(one_unit())
            await asyncio.sleep(0.2)
            assert not waiting.done()  # waits for the only connection
            waiting.cancel()  # what gRPC does when the call's deadline passes
            with pytest.raises(asyncio.CancelledError):
                await waiting
        assert await one_unit() == 1  # the connection came back and nothing else was opened
        assert db.driver_pool is not None and db.driver_pool.get_size() == 1
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_dispose_closes_the_hot_path_pool(progress: Harness) -> None:
    db = Database(progress.db.url, pool_size=2)
    async with db.driver_transaction() as driver:
        backend = await driver.fetchval("SELECT pg_backend_pid()")
    pool = db.driver_pool
    assert pool is not None and pool.get_size() == 1
    await db.dispose()
    assert db.driver_pool is None and pool.is_closing()
    for _ in range(50):  # the server notices the closed connection asynchronously
        async with progress.db.transaction() as conn:
            alive = await conn.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": backend}
            )
        if not alive:
            break
        await asyncio.sleep(0.02)
    assert alive == 0
