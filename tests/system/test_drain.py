"""The drain, step by step, on a real server: NOT_SERVING at once, calls still served during the
delay, then new calls refused UNAVAILABLE while those in flight finish, health watches ended
with OK, and the server gone as soon as the last call is done; and, from outside, a process
under load that no call leaves CANCELLED."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import select

from common.db import Database
from common.drain import REFUSED_REASON
from common.migrations import upgrade
from progress_service.app import DEFINITION
from progress_service.tables import metadata, user_progress
from tests.conftest import Harness, start_harness
from tests.support.callers import Caller, expect_error
from tests.support.processes import start_service
from tests.support.rowlock import RowLock

pytestmark = pytest.mark.asyncio

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
DELAY = 0.6
GRACE = 20.0  # far longer than the test: the drain must not wait for it


def upsert(item: str, value: str) -> pb.UpsertUserProgressRequest:
    return pb.UpsertUserProgressRequest(
        data=pb.UserProgressInput(progress_type="sign_learned", item_id=item, value=value)
    )


@pytest_asyncio.fixture
async def harness(postgres_url: str) -> AsyncIterator[Harness]:
    """A server of its own: the test stops it."""
    h = await start_harness(DEFINITION, postgres_url, metadata, grace_seconds=GRACE)
    yield h
    await h.channel.close()


@pytest_asyncio.fixture
async def db(postgres_url: str) -> AsyncIterator[Database]:
    """The test's own view of the database: the server's pool closes as it stops."""
    database = Database(postgres_url)
    yield database
    await database.dispose()


async def inside(harness: Harness, within: float = 5.0) -> None:
    """Until a call is in flight inside the server (a state we cannot be notified of)."""
    deadline = time.monotonic() + within
    while harness.running.admission.in_flight < 1:
        if time.monotonic() > deadline:
            raise AssertionError(f"no call in flight within {within}s")
        await asyncio.sleep(0.01)


async def test_drain_serves_during_the_delay_then_refuses_and_finishes_in_flight(
    harness: Harness, db: Database
) -> None:
    caller = Caller()
    # A plain channel: a client that does not watch health (as behind a layer-4 balancer).
    async with aio.insecure_channel(harness.target) as channel:
        stub = progress_pb2_grpc.UserProgressServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        await stub.UpsertUserProgress(upsert("locked", "before"), metadata=caller.md)
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == SERVING
        lock = await RowLock(db, "locked").take()
        in_flight = asyncio.ensure_future(
            stub.UpsertUserProgress(upsert("locked", "after"), metadata=caller.md)
        )
        await inside(harness)

        started = time.monotonic()
        draining = asyncio.create_task(harness.running.shutdown(GRACE, DELAY))
        assert (await watch.read()).status == NOT_SERVING  # at once
        check = await health.Check(health_pb2.HealthCheckRequest())
        assert check.status == NOT_SERVING
        # The delay: still served, for the clients that have not moved away yet.
        served = await stub.UpsertUserProgress(upsert("during", "delay"), metadata=caller.md)
        assert served.value == "delay" and time.monotonic() - started < DELAY

        await asyncio.sleep(DELAY - (time.monotonic() - started) + 0.05)
        refused = await expect_error(
            stub.UpsertUserProgress(upsert("after", "refused"), metadata=caller.md),
            grpc.StatusCode.UNAVAILABLE,
        )
        assert refused.reason == REFUSED_REASON and refused.domain == "progress.v1"
        listed = await expect_error(  # reads alike, and health still answers
            stub.ListUserProgress(
                pb.ListUserProgressRequest(progress_type="sign_learned"), metadata=caller.md
            ),
            grpc.StatusCode.UNAVAILABLE,
        )
        assert listed.reason == REFUSED_REASON
        assert (await health.Check(health_pb2.HealthCheckRequest())).status == NOT_SERVING

        await asyncio.sleep(0.3)
        assert not in_flight.done() and not draining.done()  # the call in flight is waited for
        await lock.release()
        assert (await in_flight).value == "after"
        await asyncio.wait_for(draining, 5)  # done once the call is, long before the grace
        assert await watch.read() == aio.EOF  # the watch was ended, not cancelled
        assert await watch.code() == grpc.StatusCode.OK
    async with db.unit_of_work(None, lambda *_: None) as uow:
        stored = await uow.executor.rows(
            select(user_progress.c.item_id, user_progress.c.value).where(
                user_progress.c.userId == caller.sub
            )
        )
    assert {(r["item_id"], r["value"]) for r in stored} == {
        ("locked", "after"),
        ("during", "delay"),
    }


async def test_a_call_still_running_when_the_grace_ends_is_cancelled_then(
    harness: Harness, db: Database
) -> None:
    caller = Caller()
    async with aio.insecure_channel(harness.target) as channel:
        stub = progress_pb2_grpc.UserProgressServiceStub(channel)
        await stub.UpsertUserProgress(upsert("stuck", "before"), metadata=caller.md)
        lock = await RowLock(db, "stuck").take()
        call = asyncio.ensure_future(
            stub.UpsertUserProgress(upsert("stuck", "after"), metadata=caller.md)
        )
        await inside(harness)
        started = time.monotonic()
        await harness.running.shutdown(0.5)
        # Not before the grace, and promptly after it: the server does not wait for the pool
        # connection the call still holds.
        assert 0.5 <= time.monotonic() - started < 3
        with pytest.raises(aio.AioRpcError) as ended:
            await call
        # gRPC core's "Cancelling all calls" reaches the client as UNAVAILABLE.
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        await lock.release()


async def test_sigterm_under_load_answers_every_call_ok_or_unavailable(
    postgres_url: str, tmp_path: Path
) -> None:
    """The issue's measurement: 16 callers on plain channels (no health checks, no retries),
    each calling again as soon as answered. Before, calls in flight and calls sent after
    SIGTERM ended CANCELLED; now a call is served, or refused UNAVAILABLE (also when it
    reaches the process as it exits), and every call sent before SIGTERM is served."""
    await asyncio.to_thread(
        upgrade, postgres_url, DEFINITION.migrations_dir, DEFINITION.version_table
    )
    service = await asyncio.to_thread(
        start_service,
        "progress_service",
        tmp_path,
        DATABASE_URL=postgres_url,
        DRAIN_DELAY_SECONDS="0.5",
    )
    answers: list[tuple[bool, str]] = []  # (sent before SIGTERM, code)
    signalled: list[float] = []
    stop, warm = asyncio.Event(), asyncio.Event()

    async def caller(channel: aio.Channel) -> None:
        stub, who = progress_pb2_grpc.UserProgressServiceStub(channel), Caller()
        n = 0
        while not stop.is_set():
            before = not signalled
            n += 1
            try:
                await stub.UpsertUserProgress(upsert(f"k{n % 3}", "v"), metadata=who.md)
                code = "OK"
            except aio.AioRpcError as err:
                code = err.code().name
                await asyncio.sleep(0.005)
            answers.append((before, code))
            if len(answers) >= 200:
                warm.set()

    channels = [aio.insecure_channel(service.target) for _ in range(4)]
    try:
        callers = [asyncio.create_task(caller(channels[i % 4])) for i in range(16)]
        await asyncio.wait_for(warm.wait(), 30)
        signalled.append(time.monotonic())
        service.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(service.proc.wait, 30) == 0
        await asyncio.sleep(0.3)  # calls to a closed port, too
        stop.set()
        await asyncio.gather(*callers)
    finally:
        for channel in channels:
            await channel.close()
        service.stop()
    codes = Counter(code for _, code in answers)
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert {code for before, code in answers if before} == {"OK"}
    assert codes["OK"] > 200 and codes["UNAVAILABLE"] > 0
