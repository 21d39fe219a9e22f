"""The unit of work on the one asyncpg pool: explicit commit, rollback, tenant, lost database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import func, literal, select, text

from common.auth import Principal
from common.db import Database, compile_statement, is_unavailable
from common.errors import UnavailableError
from common.tenancy import TenantScope, tenant_scope
from progress_service.domain import UserProgressInput
from progress_service.repository import UserProgressRepository
from progress_service.tables import user_progress
from tests.conftest import Harness
from tests.support.callers import new_uuid

pytestmark = pytest.mark.asyncio


def scope(org: str | None = None, global_access: bool = False) -> TenantScope:
    who = Principal(new_uuid(), org or new_uuid(), None, global_access, frozenset())
    return tenant_scope(who)


@pytest_asyncio.fixture
async def single(progress: Harness) -> AsyncIterator[Database]:
    """A pool of one connection, so the next unit of work sees what the last one left behind."""
    db = Database(progress.db.url, pool_size=1)
    yield db
    await db.dispose()


class Boom(Exception):
    pass


async def stored_rows(h: Harness) -> int:
    return int(await h.scalar(select(func.count()).select_from(user_progress)))


async def assert_clean(db: Database) -> None:
    """The pooled connection is idle (no open transaction) and the tenant settings are gone."""
    assert db.pool is not None and db.pool.get_max_size() == 1
    async with db.pool.acquire() as conn:
        assert not conn.is_in_transaction()
        settings = await conn.fetchrow(
            "SELECT current_setting('app.organization_id', true),"
            " current_setting('app.user_id', true)"
        )
        assert tuple(settings) in {(None, None), ("", "")}


async def upsert(db: Database, who: TenantScope, then: str | None, commit: bool) -> None:
    """One unit of work: an upsert, then `then` ('boom' raises), then commit if asked."""
    async with db.unit_of_work(who, UserProgressRepository) as uow:
        assert uow.executor.conn.is_in_transaction()
        await uow.repo.upsert(UserProgressInput("sign_learned", "a"))
        setting = await uow.executor.scalar(select(func.current_setting("app.user_id")))
        assert setting == who.user_id
        if then == "boom":
            raise Boom
        if then is not None:
            await uow.executor.conn.fetchval(then)
        if commit:
            await uow.commit()


async def test_a_unit_commits_only_when_told(progress: Harness, single: Database) -> None:
    await upsert(single, scope(), None, commit=False)
    assert await stored_rows(progress) == 0
    await assert_clean(single)
    await upsert(single, scope(), None, commit=True)
    assert await stored_rows(progress) == 1
    await assert_clean(single)


async def test_a_failure_rolls_back_the_statements_and_the_tenant(
    progress: Harness, single: Database
) -> None:
    with pytest.raises(Boom):
        await upsert(single, scope(), "boom", commit=True)
    with pytest.raises(asyncpg.DivisionByZeroError):
        await upsert(single, scope(), "SELECT 1 / 0", commit=True)
    assert await stored_rows(progress) == 0
    await assert_clean(single)


async def test_a_lost_connection_is_unavailable_and_not_handed_out_again(
    progress: Harness, single: Database
) -> None:
    who = scope()
    with pytest.raises(UnavailableError):
        await upsert(single, who, "SELECT pg_terminate_backend(pg_backend_pid())", commit=True)
    await upsert(single, who, None, commit=True)  # a fresh connection from the pool
    assert await stored_rows(progress) == 1
    await assert_clean(single)


async def test_a_cancelled_unit_leaves_no_rows_and_no_open_transaction(
    progress: Harness, single: Database
) -> None:
    who, running = scope(), asyncio.Event()

    async def slow() -> None:
        async with single.unit_of_work(who, UserProgressRepository) as uow:
            await uow.repo.upsert(UserProgressInput("sign_learned", "a"))
            running.set()
            await uow.executor.conn.fetchval("SELECT pg_sleep(30)")
            await uow.commit()

    task = asyncio.create_task(slow())
    await running.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await stored_rows(progress) == 0
    await assert_clean(single)


async def test_a_waiting_caller_is_bounded_by_its_deadline_and_takes_nothing(
    single: Database,
) -> None:
    async def one_unit() -> int:
        async with single.unit_of_work(scope(), UserProgressRepository) as uow:
            return int(await uow.executor.scalar(select(literal(1))))

    async with single.unit_of_work(scope(), UserProgressRepository):
        waiting = asyncio.create_task(one_unit())
        await asyncio.sleep(0.2)
        assert not waiting.done()  # waits for the only connection
        waiting.cancel()  # what gRPC does when the call's deadline passes
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert await one_unit() == 1  # the connection came back and nothing else was opened
    assert single.pool is not None and single.pool.get_size() == 1


async def test_dispose_closes_the_pool(progress: Harness) -> None:
    db = Database(progress.db.url, pool_size=2)
    async with db.unit_of_work(scope(), UserProgressRepository) as uow:
        backend = await uow.executor.conn.fetchval("SELECT pg_backend_pid()")
    pool = db.pool
    assert pool is not None and pool.get_size() == 1
    await db.dispose()
    assert db.pool is None and pool.is_closing()
    alive = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
    for _ in range(50):  # the server notices the closed connection asynchronously
        count = await progress.scalar(alive, {"pid": backend})
        if not count:
            break
        await asyncio.sleep(0.02)
    assert count == 0


async def test_one_pool_per_process_at_most_its_size(progress: Harness) -> None:
    """However many units run at once, the process opens at most DB_POOL_SIZE connections."""
    db = Database(progress.db.url, pool_size=3)
    try:

        async def hold() -> None:
            async with db.unit_of_work(scope(), UserProgressRepository) as uow:
                await uow.executor.conn.fetchval("SELECT pg_sleep(0.05)")

        await asyncio.gather(*(hold() for _ in range(12)))
        assert db.pool is not None and db.pool.get_size() <= 3
        assert db.pool_stats() == {"checked_out": 0, "idle": db.pool.get_size(), "size": 3}
    finally:
        await db.dispose()


async def test_statements_compile_once_to_asyncpg_sql() -> None:
    statement = UserProgressRepository._count_statement(False, False)
    compiled = compile_statement(statement)
    assert compiled is compile_statement(statement)  # the one compile cache
    assert compiled.names == ("scope_org", "scope_user", "b_type")
    assert '"organizationId" = $1::UUID' in compiled.sql and '"deletedAt" IS NULL' in compiled.sql


async def test_an_expanding_in_list_is_refused_at_compile_time() -> None:
    with pytest.raises(TypeError, match="ANY"):
        compile_statement(select(user_progress.c.id).where(user_progress.c.id.in_(["a", "b"])))


async def test_only_lost_connections_from_asyncpg_are_unavailable() -> None:
    assert is_unavailable(asyncpg.ConnectionDoesNotExistError("gone"))
    assert is_unavailable(
        asyncpg.InterfaceError("cannot call Connection.fetch(): connection is closed")
    )
    assert is_unavailable(asyncpg.CannotConnectNowError("starting up"))
    assert not is_unavailable(asyncpg.exceptions._base.DataError("invalid input for $1"))
    assert not is_unavailable(asyncpg.UniqueViolationError("duplicate key"))


async def test_statements_sent_with_begin_and_commit_share_their_transaction(
    single: Database, progress: Harness
) -> None:
    """`opening` rides in BEGIN's message (its command tag is `opened`), `send_with_commit`
    in COMMIT's: both in the unit's transaction, so without a commit neither lasts."""
    async with single.unit_of_work(
        None, lambda *_: None, opening="CREATE TEMP TABLE probe (n int) ON COMMIT PRESERVE ROWS"
    ) as uow:
        assert uow.opened == "CREATE TABLE"
        await uow.executor.conn.execute("INSERT INTO probe VALUES (1)")
        uow.send_with_commit("INSERT INTO probe VALUES (2)")
        await uow.commit()
    async with single.unit_of_work(None, lambda *_: None) as uow:
        uow.send_with_commit("INSERT INTO probe VALUES (3)")  # no commit: never sent
    async with single.unit_of_work(None, lambda *_: None) as uow:
        found = await uow.executor.conn.fetch("SELECT n FROM probe ORDER BY n")
        assert [r[0] for r in found] == [1, 2]
        uow.send_with_commit("DROP TABLE probe")
        await uow.commit()
    with pytest.raises(Boom):
        async with single.unit_of_work(
            None, lambda *_: None, opening="CREATE TEMP TABLE gone (n int)"
        ) as uow:
            raise Boom
    async with single.unit_of_work(None, lambda *_: None) as uow:
        assert await uow.executor.conn.fetchval("SELECT to_regclass('pg_temp.gone')") is None
    await assert_clean(single)
