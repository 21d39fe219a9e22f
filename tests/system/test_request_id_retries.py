"""Writes whose answer is lost after they committed: the project's client config (with request
ids) retries them and the server answers the retry with the stored answer, so each applies
once. Without request ids the same loss is a failed call.

The loss is made two ways: a server interceptor that answers UNAVAILABLE in place of the first
answer (tests/support/lost_answers.py), and a TCP proxy that drops the answer and then cuts the
connection, as a network does."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from academic_years.v1 import academic_years_pb2 as ay_pb
from academic_years.v1 import academic_years_pb2_grpc
from grpc import aio
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from sqlalchemy import func, select

from academic_years_service.app import DEFINITION as ACADEMIC_YEARS
from academic_years_service.tables import academic_years as years_table
from academic_years_service.tables import request_ids
from common import client
from common.server import RunningServer, start_server
from progress_service.app import DEFINITION as PROGRESS
from progress_service.tables import request_ids as progress_request_ids
from progress_service.tables import user_progress
from tests.conftest import NO_HEALTH_CHECKS, Harness
from tests.conftest import test_settings as settings_for
from tests.support.academic_years import staff
from tests.support.callers import Caller, expect_error, new_uuid
from tests.support.csv import bodies, csv_bytes
from tests.support.lost_answers import LoseFirstAnswers
from tests.support.tcpproxy import TcpProxy

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]
# Every method that takes a request id, as the client config names them.
WRITES = tuple(
    method
    for kinds in client.SERVICES.values()
    for kind in ("write", "import")
    for method in kinds[kind]
)


async def count(h: Harness, table: Any) -> int:
    return int(await h.scalar(select(func.count()).select_from(table)))


@pytest_asyncio.fixture
async def lossy(
    progress: Harness, academic_years: Harness
) -> AsyncIterator[tuple[LoseFirstAnswers, dict[str, RunningServer]]]:
    """A server of each service, on the suites' (migrated, emptied) database, losing the first
    answer of each write."""
    hook = LoseFirstAnswers(*WRITES)
    servers = {
        name: await start_server(
            definition, settings_for(definition.name, h.db.url), interceptors=[hook]
        )
        for name, definition, h in (
            ("progress", PROGRESS, progress),
            ("academic_years", ACADEMIC_YEARS, academic_years),
        )
    }
    yield hook, servers
    for server in servers.values():
        await server.shutdown(1.0)


def channel(server: RunningServer, *, request_ids: bool) -> aio.Channel:
    return client.channel(
        f"127.0.0.1:{server.port}", request_ids=request_ids, options=[NO_HEALTH_CHECKS]
    )


async def test_every_write_whose_answer_is_lost_is_retried_and_applies_once(
    lossy: tuple[LoseFirstAnswers, dict[str, RunningServer]],
    progress: Harness,
    academic_years: Harness,
) -> None:
    hook, servers = lossy
    learner, caller = Caller(), staff()
    async with (
        channel(servers["progress"], request_ids=True) as progress_channel,
        channel(servers["academic_years"], request_ids=True) as years_channel,
    ):
        # No request id is set anywhere below: the channel gives each write its own.
        p = progress_pb2_grpc.UserProgressServiceStub(progress_channel)
        y = academic_years_pb2_grpc.AcademicYearsServiceStub(years_channel)
        data = pb.UserProgressInput(progress_type="sign_learned", item_id="a", value="v")
        upserted = await p.UpsertUserProgress(
            pb.UpsertUserProgressRequest(data=data), metadata=learner.md
        )
        rows = csv_bytes([["progress_type", "item_id"], ["zone_checkin", "b"]])
        imported = await p.ImportUserProgressCsv(bodies(rows), metadata=learner.md)
        rows = csv_bytes([["progress_type", "item_id"], ["zone_checkin", "c"]])
        watched = [
            r async for r in p.ImportUserProgressCsvWithProgress(bodies(rows), metadata=learner.md)
        ]
        year = await y.CreateAcademicYear(
            ay_pb.CreateAcademicYearRequest(data=ay_pb.AcademicYearInput(name="a")),
            metadata=caller.md,
        )
        renamed = await y.UpdateAcademicYear(
            ay_pb.UpdateAcademicYearRequest(id=year.id, data=ay_pb.AcademicYearInput(name="b")),
            metadata=caller.md,
        )
        deleted = await y.DeleteAcademicYear(
            ay_pb.DeleteAcademicYearRequest(id=year.id), metadata=caller.md
        )
        more = [
            (await y.CreateAcademicYear(ay_pb.CreateAcademicYearRequest(), metadata=caller.md)).id
            for _ in range(2)
        ]
        batch = await y.BatchDeleteAcademicYears(
            ay_pb.BatchDeleteAcademicYearsRequest(ids=more), metadata=caller.md
        )
        rows = csv_bytes([["name"], ["imported"]])
        years_imported = await y.ImportAcademicYearsCsv(bodies(rows), metadata=caller.md)
        years_watched = [
            r async for r in y.ImportAcademicYearsCsvWithProgress(bodies(rows), metadata=caller.md)
        ]
    # Each write answered as its first attempt did, and applied once.
    assert upserted.value == "v" and (imported.created, imported.updated) == (1, 0)
    assert watched[-1].summary.created == 1
    assert renamed.name == "b" and deleted.HasField("deleted_at") and batch.deleted_count == 2
    assert years_imported.created == 1 and years_watched[-1].summary.created == 1
    assert hook.lost == dict.fromkeys(WRITES, 1) | {"CreateAcademicYear": 3}
    assert hook.attempts == dict.fromkeys(WRITES, 2) | {"CreateAcademicYear": 6}
    assert await count(progress, user_progress) == 3
    assert await count(academic_years, years_table) == 5
    assert await count(progress, progress_request_ids) == 3
    assert await count(academic_years, request_ids) == 8


async def test_without_request_ids_a_lost_answer_is_a_failed_call_after_the_write(
    lossy: tuple[LoseFirstAnswers, dict[str, RunningServer]], academic_years: Harness
) -> None:
    hook, servers = lossy
    async with channel(servers["academic_years"], request_ids=False) as ch:
        y = academic_years_pb2_grpc.AcademicYearsServiceStub(ch)
        await expect_error(
            y.CreateAcademicYear(ay_pb.CreateAcademicYearRequest(), metadata=staff().md),
            grpc.StatusCode.UNAVAILABLE,
        )
    assert hook.attempts["CreateAcademicYear"] == 1
    assert await count(academic_years, years_table) == 1  # applied, and the caller never knew


async def committed(condition: Callable[[], Any]) -> None:
    """Until `condition()` (a write the test waits for is stored); 10 s at most."""
    for _ in range(500):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the write was not stored")


@pytest_asyncio.fixture
async def proxy(academic_years: Harness) -> AsyncIterator[TcpProxy]:
    started = await TcpProxy(f"tcp://127.0.0.1:{academic_years.running.port}").start()
    yield started
    await started.close()


async def lose_the_answer(
    proxy: TcpProxy, h: Harness, request: ay_pb.CreateAcademicYearRequest, *, request_ids: bool
) -> tuple[Any, aio.Channel]:
    """Sends `request` through `proxy`, drops what comes back until the year is stored, then
    cuts the connection; the call, still running, and its channel."""
    ch = client.channel(f"127.0.0.1:{proxy.port}", request_ids=request_ids)
    y = academic_years_pb2_grpc.AcademicYearsServiceStub(ch)
    caller = staff()
    await y.CountAcademicYears(ay_pb.ListAcademicYearsRequest(), metadata=caller.md)  # connected
    proxy.dropping_answers = True
    call = y.CreateAcademicYear(request, metadata=caller.md)
    await committed(lambda: count(h, years_table))
    await asyncio.sleep(0.05)  # the answer has left the server, into the proxy
    proxy.down()
    proxy.dropping_answers = False
    proxy.up()
    return call, ch


@pytest.mark.parametrize("request_ids", [True, False], ids=["with_ids", "without"])
async def test_a_create_whose_connection_drops_after_commit(
    academic_years: Harness, proxy: TcpProxy, request_ids: bool
) -> None:
    """With request ids it is retried and answered with the one year stored; without, it
    fails although the year was stored."""
    call, ch = await lose_the_answer(
        proxy, academic_years, ay_pb.CreateAcademicYearRequest(), request_ids=request_ids
    )
    try:
        if request_ids:
            year = await call
        else:
            await expect_error(call, grpc.StatusCode.UNAVAILABLE)
    finally:
        await ch.close()
    [row] = await academic_years.rows(select(years_table.c.id))
    assert not request_ids or year.id == row["id"]


async def test_a_caller_that_gave_up_sends_the_same_id_again_and_gets_the_stored_year(
    academic_years: Harness, proxy: TcpProxy
) -> None:
    request = ay_pb.CreateAcademicYearRequest(
        data=ay_pb.AcademicYearInput(name="x"), request_id=new_uuid()
    )
    ch = client.channel(f"127.0.0.1:{proxy.port}", request_ids=True)
    try:
        y = academic_years_pb2_grpc.AcademicYearsServiceStub(ch)
        caller = staff()
        await y.CountAcademicYears(ay_pb.ListAcademicYearsRequest(), metadata=caller.md)
        proxy.dropping_answers = True
        call = y.CreateAcademicYear(request, metadata=caller.md)
        await committed(lambda: count(academic_years, years_table))
        call.cancel()  # the person closed the page, or the caller's own deadline passed
        assert await call.code() == grpc.StatusCode.CANCELLED
        proxy.down()
        proxy.dropping_answers = False
        proxy.up()
        year = await y.CreateAcademicYear(request, metadata=caller.md)
    finally:
        await ch.close()
    [row] = await academic_years.rows(select(years_table.c.id, years_table.c.name))
    assert (year.id, year.name) == (row["id"], "x")


def googleapis_include() -> str:
    import google.api

    return str(Path(next(iter(google.api.__path__))).parent.parent)


@pytest.mark.skipif(
    shutil.which("node") is None or not (ROOT / "node_modules" / "@grpc" / "grpc-js").exists(),
    reason="needs Node.js and `make install` (npm install)",
)
async def test_a_grpc_js_client_with_the_config_retries_a_write_with_a_request_id(
    lossy: tuple[LoseFirstAnswers, dict[str, RunningServer]], academic_years: Harness
) -> None:
    hook, servers = lossy
    caller = staff()
    config = json.dumps(client.service_config(request_ids=True))
    done = await asyncio.to_thread(
        subprocess.run,
        [
            "node",
            "tests/system/node/interop.js",
            "retry",
            str(ROOT / "protos"),
            googleapis_include(),
            f"127.0.0.1:{servers['academic_years'].port}",
        ],
        cwd=ROOT,
        env={**os.environ, "TOKEN": caller.token(), "SERVICE_CONFIG": config},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    retried, again = out["retried"], out["again"]
    assert retried["code"] == 0, retried
    assert again == retried  # the same id sent again by hand: the stored answer
    assert hook.attempts["CreateAcademicYear"] == 3 and hook.lost["CreateAcademicYear"] == 1
    [row] = await academic_years.rows(select(years_table.c.id))
    assert retried["response"]["id"] == row["id"]
    [kept] = await academic_years.rows(select(request_ids.c.requestId))
    assert kept["requestId"] == out["requestId"]
