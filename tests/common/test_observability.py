"""Prometheus metrics scraped over HTTP, and the one structured access-log line per RPC."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from progress.v1 import progress_pb2 as pb
from progress.v1 import progress_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from common.accesslog import REPORT_DELAY
from tests.conftest import Harness, start_harness, stop_harness
from tests.support.accesslog import captured_access_log, lines
from tests.support.callers import Caller, expect_error

pytestmark = pytest.mark.asyncio

SERVICE = "progress.v1.UserProgressService"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest_asyncio.fixture(scope="module")
async def metered(backend: str, backend_urls: dict[str, str]) -> AsyncIterator[Harness]:
    from progress_service.app import DEFINITION
    from progress_service.tables import metadata

    harness = await start_harness(
        DEFINITION, backend_urls[backend], metadata, metrics_addr="127.0.0.1:0"
    )
    yield harness
    await stop_harness(harness)


async def reported() -> None:
    """Lets the in-process server report the calls finished so far (it does so in batches, on
    this event loop, REPORT_DELAY after the first): the timer was set before the reply arrived."""
    await asyncio.sleep(3 * REPORT_DELAY)


async def scrape(h: Harness) -> Samples:
    url = f"http://127.0.0.1:{h.running.metrics_port}/metrics"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            return str(response.read().decode())

    text = await asyncio.to_thread(fetch)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_handled_counts_and_latency_by_method_and_code(metered: Harness) -> None:
    await metered.wipe()
    stub, caller = progress_pb2_grpc.UserProgressServiceStub(metered.channel), Caller()
    before = await scrape(metered)
    data = pb.UserProgressInput(progress_type="sign_learned", item_id="a")
    await stub.UpsertUserProgress(pb.UpsertUserProgressRequest(data=data), metadata=caller.md)
    await stub.UpsertUserProgress(pb.UpsertUserProgressRequest(data=data), metadata=caller.md)
    await expect_error(
        stub.UpsertUserProgress(pb.UpsertUserProgressRequest(data=data)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await reported()
    after = await scrape(metered)

    rpc = {"grpc_service": SERVICE, "grpc_method": "UpsertUserProgress", "grpc_type": "unary"}

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **rpc, **extra) - value(before, name, **rpc, **extra)

    assert delta("grpc_server_started_total") == 3
    assert delta("grpc_server_handled_total", grpc_code="OK") == 2
    assert delta("grpc_server_handled_total", grpc_code="UNAUTHENTICATED") == 1
    assert delta("grpc_server_handling_seconds_count") == 3
    assert delta("grpc_server_handling_seconds_bucket", le="+Inf") == 3
    assert value(after, "grpc_server_in_flight_streams", **rpc) == 0


async def test_in_flight_streams_and_pool_usage(metered: Harness) -> None:
    health = health_pb2_grpc.HealthStub(metered.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    streaming = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Watch"}
    streaming["grpc_type"] = "server_stream"
    assert value(await scrape(metered), "grpc_server_in_flight_streams", **streaming) == 1
    watch.cancel()
    for _ in range(100):  # the server notices the cancellation asynchronously
        samples = await scrape(metered)
        if value(samples, "grpc_server_in_flight_streams", **streaming) == 0:
            break
        await asyncio.sleep(0.02)
    assert value(samples, "grpc_server_in_flight_streams", **streaming) == 0
    await reported()
    samples = await scrape(metered)
    assert value(samples, "grpc_server_handled_total", **streaming, grpc_code="CANCELLED") >= 1
    assert ("db_pool_checked_out_connections", frozenset()) in samples
    assert value(samples, "db_pool_checked_out_connections") == 0


async def test_the_one_pool_is_reported(metered: Harness) -> None:
    stub, caller = progress_pb2_grpc.UserProgressServiceStub(metered.channel), Caller()
    await stub.ListUserProgress(
        pb.ListUserProgressRequest(progress_type="sign_learned"), metadata=caller.md
    )
    idle = await scrape(metered)
    assert value(idle, "db_pool_size") == metered.db.pool_size
    assert value(idle, "db_pool_checked_out_connections") == 0
    assert value(idle, "db_pool_idle_connections") >= 1
    async with metered.db.unit_of_work(None, lambda *_: None):
        busy = await scrape(metered)
        assert value(busy, "db_pool_checked_out_connections") == 1


@pytest.fixture
def access_log() -> Iterator[io.StringIO]:
    with captured_access_log() as buffer:
        yield buffer


async def logged(buffer: io.StringIO, count: int) -> list[dict[str, object]]:
    """The access lines once `count` have been written (they are logged in batches)."""
    for _ in range(200):
        if len(found := lines(buffer)) >= count:
            return found
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} access lines expected, got {lines(buffer)}")


async def test_one_json_line_per_rpc_without_the_token(
    progress: Harness, access_log: io.StringIO
) -> None:
    await reported()  # earlier tests' lines, written before this test's
    access_log.seek(0)
    access_log.truncate()
    stub, caller = progress_pb2_grpc.UserProgressServiceStub(progress.channel), Caller()
    token = caller.token()
    md = (("authorization", f"Bearer {token}"), ("x-request-id", "req-42"))
    data = pb.UserProgressInput(progress_type="sign_learned", item_id="a")
    await stub.UpsertUserProgress(pb.UpsertUserProgressRequest(data=data), metadata=md)
    bad = (("authorization", f"Bearer {token}x"),)
    await expect_error(
        stub.ListUserProgress(pb.ListUserProgressRequest(progress_type="x"), metadata=bad),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    answered = time.time()

    ok, failed = await logged(access_log, 2)
    assert ok["msg"] == "rpc" and ok["level"] == "info"
    assert ok["method"] == f"/{SERVICE}/UpsertUserProgress"
    assert ok["code"] == "OK"
    assert isinstance(ok["duration_ms"], float) and ok["duration_ms"] > 0
    assert ok["request_id"] == "req-42"
    assert (ok["user_id"], ok["organization_id"]) == (caller.sub, caller.org)
    assert failed["method"] == f"/{SERVICE}/ListUserProgress"
    assert failed["code"] == "UNAUTHENTICATED"
    assert failed["user_id"] is None
    assert len(str(failed["request_id"])) == 32  # generated when the caller sends none
    # The time is when each call ended, though the lines were written later, in one batch.
    stamps = [dt.datetime.fromisoformat(str(line["ts"])).timestamp() for line in (ok, failed)]
    assert answered - 5 < stamps[0] <= stamps[1] <= answered + 0.001
    text = access_log.getvalue()
    assert token not in text and token.split(".")[1] not in text
    assert "authorization" not in text.lower()


async def test_shutdown_writes_the_last_calls_lines(
    backend: str, backend_urls: dict[str, str], access_log: io.StringIO
) -> None:
    from progress_service.app import DEFINITION
    from progress_service.tables import metadata

    harness = await start_harness(DEFINITION, backend_urls[backend], metadata)
    stub, caller = progress_pb2_grpc.UserProgressServiceStub(harness.channel), Caller()
    request = pb.ListUserProgressRequest(progress_type="sign_learned")
    await stub.ListUserProgress(request, metadata=caller.md)
    await stop_harness(harness)  # at once: sooner than the batch would have been written
    (line,) = lines(access_log)
    assert line["method"] == f"/{SERVICE}/ListUserProgress" and line["code"] == "OK"
