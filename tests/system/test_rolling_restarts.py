"""Rolling restarts and a database restart without a failed call, measured from outside.

Two replicas of each service, as `python -m <service> serve` processes, on one private
PostgreSQL (tests/support/pgcluster.py); 16 callers mixing reads and writes through the
project's client config (common.client: round robin over both replicas, health checks, the
config that retries writes, and the interceptors that give every write a request id). The
writes are not idempotent by nature: each upsert writes a new value, each update a new name,
and the academic-years callers create a year on every round, during the faults too. Every
acknowledged write must be stored exactly once: each create's year once (no year the callers
did not get an answer for, none twice), each acknowledged upsert's and update's value, and one
kept answer per acknowledged write. The numbers each run prints are in docs/operations.md
(`make test-faults PYTEST_ARGS=-s` shows them).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from academic_years.v1 import academic_years_pb2 as ay_pb
from academic_years.v1 import academic_years_pb2_grpc
from grpc import aio
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import select

from academic_years_service.app import DEFINITION as ACADEMIC_YEARS
from academic_years_service.tables import academic_years
from academic_years_service.tables import request_ids as ay_request_ids
from bench.scratch import free_port
from common import client
from common.db import Database
from progress_service.app import DEFINITION as PROGRESS
from progress_service.tables import request_ids as progress_request_ids
from progress_service.tables import user_progress
from tests.support.academic_years import staff
from tests.support.callers import Caller
from tests.support.pgcluster import PrivateCluster, migrated_cluster
from tests.support.processes import ServiceProcess, spawn_service

pytestmark = [pytest.mark.asyncio, pytest.mark.faults]

CALLERS_PER_SERVICE = 8
KEYS = 5  # each progress caller upserts these items in turn, each time to a new value
DRAIN = {"DRAIN_DELAY_SECONDS": "1", "SHUTDOWN_GRACE_SECONDS": "10"}
MODULES = {"progress": "progress_service", "academic_years": "academic_years_service"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    with migrated_cluster(PROGRESS, ACADEMIC_YEARS) as private:
        yield private


@dataclass
class Replicas:
    """Two processes per service on fixed ports, which a restarted replica takes over."""

    folder: Path
    url: str
    ports: dict[str, list[int]] = field(default_factory=dict)
    running: dict[tuple[str, int], ServiceProcess] = field(default_factory=dict)
    retired: list[ServiceProcess] = field(default_factory=list)

    def target(self, service: str) -> str:
        return "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in self.ports[service])

    def spawn(self, service: str, index: int) -> ServiceProcess:
        port = self.ports[service][index]
        process = spawn_service(
            MODULES[service],
            self.folder,
            DATABASE_URL=self.url,
            GRPC_ADDR=f"127.0.0.1:{port}",
            **DRAIN,
        )
        self.running[(service, index)] = process
        return process

    async def start_all(self) -> None:
        for service in MODULES:
            self.ports[service] = [free_port(), free_port()]
        started = [self.spawn(s, i) for s in MODULES for i in range(2)]
        for process in started:
            await asyncio.to_thread(process.wait_ready)

    def terminate(self, service: str, index: int) -> ServiceProcess:
        process = self.running.pop((service, index))
        process.proc.send_signal(signal.SIGTERM)
        self.retired.append(process)
        return process

    def stop_all(self) -> None:
        for process in [*self.running.values(), *self.retired]:
            if process.proc.poll() is None:
                process.proc.kill()
                process.proc.wait()

    def answered_unavailable(self) -> Counter[str]:
        """Attempts the servers answered UNAVAILABLE (each then retried by its client), by
        method."""
        return Counter(
            e["method"].rsplit("/", 1)[-1]
            for p in [*self.running.values(), *self.retired]
            for e in p.log
            if e.get("msg") == "rpc" and e.get("code") == "UNAVAILABLE"
        )


@pytest_asyncio.fixture
async def replicas(cluster: PrivateCluster, tmp_path: Path) -> AsyncIterator[Replicas]:
    group = Replicas(tmp_path, cluster.url)
    try:
        await group.start_all()
        yield group
    finally:
        group.stop_all()


class Load:
    """16 callers, each calling as soon as its last call is answered, with the deadlines of
    the client config; every answer counted, every acknowledged write remembered."""

    def __init__(self, replicas: Replicas) -> None:
        self._progress = client.channel(replicas.target("progress"), request_ids=True)
        self._years = client.channel(replicas.target("academic_years"), request_ids=True)
        self.ok: Counter[str] = Counter()
        self.failed: list[tuple[str, str, str]] = []
        self.upserted: dict[tuple[str, str], str] = {}  # (user, item) -> value
        self.renamed: dict[str, str] = {}  # year id -> name
        self.created: dict[str, list[str]] = {}  # organization -> acknowledged year ids
        self.writes: Counter[str] = Counter()  # acknowledged writes, by method
        self.organizations: set[str] = set()
        self.users: set[str] = set()  # the progress callers
        self._stop = asyncio.Event()
        self._answered = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        years = academic_years_pb2_grpc.AcademicYearsServiceStub(self._years)
        owners = [staff() for _ in range(CALLERS_PER_SERVICE)]
        self.organizations = {str(owner.org) for owner in owners}
        created = []
        for owner in owners:
            first = ay_pb.CreateAcademicYearRequest(data=ay_pb.AcademicYearInput(name="first"))
            year = await years.CreateAcademicYear(first, metadata=owner.md)
            self.created[str(owner.org)] = [year.id]
            self.writes["Create"] += 1
            created.append(year)
        self._tasks = [
            *(asyncio.create_task(self._progress_caller()) for _ in owners),
            *(
                asyncio.create_task(self._years_caller(owner, year.id))
                for owner, year in zip(owners, created, strict=True)
            ),
        ]

    @property
    def answered(self) -> int:
        return sum(self.ok.values()) + len(self.failed)

    async def until(self, predicate: Callable[[], bool], seconds: float) -> None:
        async with asyncio.timeout(seconds):
            while not predicate():
                self._answered.clear()
                await self._answered.wait()

    async def more(self, calls: int, seconds: float = 60) -> None:
        """Until `calls` more calls have been answered."""
        target = self.answered + calls
        await self.until(lambda: self.answered >= target, seconds)

    async def _call(self, method: str, call: Any) -> Any:
        try:
            answer = await call
        except aio.AioRpcError as err:
            self.failed.append((method, err.code().name, err.details() or ""))
            answer = None
        else:
            self.ok[method] += 1
        self._answered.set()
        return answer

    async def _write(self, method: str, call: Any) -> Any:
        """A write (its request id given by the channel); counted when acknowledged."""
        answer = await self._call(method, call)
        if answer is not None:
            self.writes[method] += 1
        return answer

    async def _progress_caller(self) -> None:
        stub = progress_pb2_grpc.UserProgressServiceStub(self._progress)
        caller, n = Caller(), 0
        self.users.add(caller.sub)
        while not self._stop.is_set():
            item, value = f"k{n % KEYS}", f"value {n}"
            request = pb.UpsertUserProgressRequest(
                data=pb.UserProgressInput(progress_type="sign_learned", item_id=item, value=value)
            )
            if await self._write("Upsert", stub.UpsertUserProgress(request, metadata=caller.md)):
                self.upserted[(caller.sub, item)] = value
            listing = pb.ListUserProgressRequest(progress_type="sign_learned")
            await self._call("List", stub.ListUserProgress(listing, metadata=caller.md))
            n += 1

    async def _years_caller(self, owner: Caller, year: str) -> None:
        stub = academic_years_pb2_grpc.AcademicYearsServiceStub(self._years)
        n = 0
        while not self._stop.is_set():
            name = f"year {n}"
            create = ay_pb.CreateAcademicYearRequest(data=ay_pb.AcademicYearInput(name=name))
            made = await self._write("Create", stub.CreateAcademicYear(create, metadata=owner.md))
            if made is not None:
                self.created[str(owner.org)].append(made.id)
            name = f"renamed {n}"
            update = ay_pb.UpdateAcademicYearRequest(
                id=year, data=ay_pb.AcademicYearInput(name=name)
            )
            if await self._write("Update", stub.UpdateAcademicYear(update, metadata=owner.md)):
                self.renamed[year] = name
            get = ay_pb.GetAcademicYearRequest(id=year)
            await self._call("Get", stub.GetAcademicYear(get, metadata=owner.md))
            await self._call(
                "Count",
                stub.CountAcademicYears(ay_pb.ListAcademicYearsRequest(), metadata=owner.md),
            )
            n += 1

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self._progress.close()
        await self._years.close()


async def every_ack_stored_once(url: str, load: Load) -> None:
    db = Database(url)
    try:
        async with db.unit_of_work(None, lambda *_: None) as uow:
            progress = await uow.executor.rows(
                select(user_progress.c.userId, user_progress.c.item_id, user_progress.c.value)
            )
            years = await uow.executor.rows(
                select(
                    academic_years.c.id,
                    academic_years.c.name,
                    academic_years.c.organizationId,
                )
            )
            kept_years = await uow.executor.rows(
                select(ay_request_ids.c.method, ay_request_ids.c.organizationId)
            )
            kept_progress = await uow.executor.rows(select(progress_request_ids.c.userId))
    finally:
        await db.dispose()
    stored: Counter[tuple[str, str]] = Counter((r["userId"], r["item_id"]) for r in progress)
    values = {(r["userId"], r["item_id"]): r["value"] for r in progress}
    assert load.upserted, "no write was acknowledged"
    for key, value in load.upserted.items():
        assert stored[key] == 1 and values[key] == value, key
    # Each organization holds exactly the years its caller was told were created: none
    # missing, none twice, none whose create was not acknowledged.
    mine = [r for r in years if r["organizationId"] in load.organizations]
    by_org: dict[str, list[str]] = {}
    for r in mine:
        by_org.setdefault(r["organizationId"], []).append(r["id"])
    assert {org: sorted(ids) for org, ids in by_org.items()} == {
        org: sorted(ids) for org, ids in load.created.items()
    }
    assert sum(map(len, load.created.values())) > 2 * len(load.created), "too few creates"
    by_id = {r["id"]: r for r in mine}
    assert load.renamed
    for year, name in load.renamed.items():
        assert by_id[year]["name"] == name
    # One kept answer per acknowledged write: a retried one was answered, not applied again.
    kept = Counter(r["method"] for r in kept_years if r["organizationId"] in load.organizations)
    assert kept == {
        "CreateAcademicYear": load.writes["Create"],
        "UpdateAcademicYear": load.writes["Update"],
    }
    assert sum(r["userId"] in load.users for r in kept_progress) == load.writes["Upsert"]


async def logged_calls(process: ServiceProcess, at_least: int, seconds: float = 30) -> None:
    """Until `process` has logged `at_least` calls of its service: clients have found it."""
    deadline = time.monotonic() + seconds
    while sum(e.get("msg") == "rpc" and "Health" not in e["method"] for e in process.log) < (
        at_least
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"{process.module} served no calls within {seconds}s")
        await asyncio.sleep(0.1)


async def exits(process: ServiceProcess, seconds: float = 20) -> int:
    return await asyncio.to_thread(process.proc.wait, seconds)


def drain_seconds(process: ServiceProcess) -> float:
    """From its "draining" line to its "stopped" line."""
    stamps = {e["msg"]: e["ts"] for e in process.log if e.get("msg") in {"draining", "stopped"}}
    began, ended = (dt.datetime.fromisoformat(stamps[m]) for m in ("draining", "stopped"))
    return (ended - began).total_seconds()


def report(what: str, load: Load, replicas: Replicas, **extra: Any) -> None:
    failed = Counter(code for _, code, _ in load.failed)
    print(
        f"\n{what}: {sum(load.ok.values())} calls answered OK {dict(load.ok)}, "
        f"failed {dict(failed)}; acknowledged writes {dict(load.writes)}; "
        f"attempts answered UNAVAILABLE and retried {dict(replicas.answered_unavailable())}"
        + "".join(f"; {k} {v}" for k, v in extra.items())
    )


async def test_a_rolling_restart_under_load_fails_no_call(
    replicas: Replicas, cluster: PrivateCluster
) -> None:
    load = Load(replicas)
    await load.start()
    try:
        await load.more(300)
        # Replica 0 of each service drains, exits and comes back on its port; then replica 1
        # drains while clients are on the new replica 0.
        for index in (0, 1):
            drained = [replicas.terminate(s, index) for s in MODULES]
            await load.more(100)  # calls go on while they drain
            assert [await exits(p) for p in drained] == [0, 0]
            if index == 0:
                back = [replicas.spawn(s, 0) for s in MODULES]
                for process in back:
                    await asyncio.to_thread(process.wait_ready)
                    await logged_calls(process, 20)
        await load.more(200)
    finally:
        await load.stop()
    longest = max(drain_seconds(p) for p in replicas.retired)
    report("rolling restart", load, replicas, longest_drain_seconds=round(longest, 2))
    assert load.failed == []
    for process in replicas.retired:
        assert any(e.get("msg") == "refusing new calls" for e in process.log)
        assert not any(e.get("msg", "").startswith("grace period over") for e in process.log)
    await every_ack_stored_once(cluster.url, load)


async def test_a_database_restart_under_load_fails_no_call(
    replicas: Replicas, cluster: PrivateCluster
) -> None:
    load = Load(replicas)
    await load.start()
    try:
        await load.more(300)
        before = load.answered
        down = time.monotonic()
        await asyncio.to_thread(cluster.stop, "fast")
        await asyncio.sleep(2)  # with pg_ctl's stop and start, about 3 s without a database
        await asyncio.to_thread(cluster.start)
        outage = time.monotonic() - down
        during = load.answered - before
        await load.more(300)
    finally:
        await load.stop()
    report("database restart", load, replicas, outage_seconds=round(outage, 1), during=during)
    assert load.failed == []
    waited = [
        e
        for p in replicas.running.values()
        for e in p.log
        if e.get("msg") == "database reachable again"
    ]
    assert waited, "no replica waited for the database"
    await every_ack_stored_once(cluster.url, load)
