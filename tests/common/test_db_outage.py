"""A lost database is waited for where that is safe: a unit of work that cannot begin waits for
it within its call's time, every waiting unit behind one probe; what has begun is not retried."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import literal, select

from common.db import Database
from common.db.outage import set_call_deadline
from common.errors import UnavailableError
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def proxy(postgres_url: str) -> AsyncIterator[TcpProxy]:
    p = await TcpProxy(postgres_url).start()
    yield p
    await p.close()


@pytest_asyncio.fixture
async def db(proxy: TcpProxy) -> AsyncIterator[Database]:
    database = Database(proxy.url, pool_size=3, wait_seconds=10)
    yield database
    await database.dispose()


def _no_repository(*_: Any) -> None:
    return None


async def one_unit(db: Database, deadline: float | None = None) -> int:
    """A call's unit of work, `deadline` the seconds its call has left; in a task of its own,
    as each call is, so the deadline stays the call's."""

    async def call() -> int:
        set_call_deadline(deadline)
        async with db.unit_of_work(None, _no_repository) as uow:
            return int(await uow.executor.scalar(select(literal(1))))

    return await asyncio.create_task(call())


async def until(check: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s")
        await asyncio.sleep(0.01)


async def test_a_unit_begun_while_the_database_is_down_runs_once_it_is_back(
    proxy: TcpProxy, db: Database
) -> None:
    assert await one_unit(db) == 1  # a pooled connection, cut by the outage
    proxy.down()
    waiting = asyncio.create_task(one_unit(db, deadline=10))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # waiting, not failed
    proxy.up()
    assert await asyncio.wait_for(waiting, 5) == 1


async def test_the_wait_ends_at_half_the_calls_deadline_as_unavailable(
    proxy: TcpProxy, db: Database
) -> None:
    proxy.down()
    started = time.monotonic()
    with pytest.raises(UnavailableError):
        await one_unit(db, deadline=1.0)
    waited = time.monotonic() - started
    # Half of it: the caller keeps time to try another replica.
    assert 0.4 < waited < 0.9, waited


async def test_without_a_wait_a_lost_database_is_unavailable_at_once(
    proxy: TcpProxy, postgres_url: str
) -> None:
    impatient = Database(proxy.url, wait_seconds=0)
    try:
        proxy.down()
        started = time.monotonic()
        with pytest.raises(UnavailableError):
            await one_unit(impatient)
        assert time.monotonic() - started < 0.5
    finally:
        await impatient.dispose()


async def test_waiting_units_share_one_probe_and_the_pool_bounds_the_reconnect(
    proxy: TcpProxy, db: Database
) -> None:
    proxy.down()
    first = asyncio.create_task(one_unit(db, deadline=20))
    await until(lambda: db.outage.ongoing)  # the outage is found
    rest = [asyncio.create_task(one_unit(db, deadline=20)) for _ in range(49)]
    await asyncio.sleep(1.5)
    # One probe backing off: a handful of attempts in 1.5 s, not one per waiting unit.
    assert proxy.refused <= 12, proxy.refused
    assert not any(t.done() for t in [first, *rest])
    proxy.up()
    assert await asyncio.wait_for(asyncio.gather(first, *rest), 10) == [1] * 50
    assert db.pool is not None and db.pool.get_size() <= 3


async def test_a_unit_that_lost_the_database_after_it_began_is_not_begun_again(
    proxy: TcpProxy, db: Database
) -> None:
    """Its statements may have run (a COMMIT may even have gone through): UNAVAILABLE."""
    began = 0

    async def cut_mid_unit() -> None:
        nonlocal began
        set_call_deadline(10)
        async with db.unit_of_work(None, _no_repository) as uow:
            began += 1
            proxy.down()
            await uow.executor.scalar(select(literal(1)))

    with pytest.raises(UnavailableError):
        await asyncio.create_task(cut_mid_unit())
    assert began == 1
    proxy.up()
    assert await one_unit(db) == 1
