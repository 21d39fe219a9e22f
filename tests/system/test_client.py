"""The client service config at work: reads retry on UNAVAILABLE, writes only in the config for
callers that send request ids; deadlines; round robin over the replicas that say SERVING."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from academic_years.v1 import academic_years_pb2
from grpc import aio
from grpc_health.v1 import health_pb2_grpc
from progress.v1 import progress_pb2

from common import client
from common.drain import DrainingHealth

pytestmark = pytest.mark.asyncio

SERVICE = "academic_years.v1.AcademicYearsService"


class Flaky:
    """Answers UNAVAILABLE to the first call of each method, then echoes; counts attempts."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, flaky: Flaky) -> None:
        self._flaky = flaky

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        if not details.method.startswith(f"/{SERVICE}/"):
            return None
        method = details.method.rsplit("/", 1)[-1]

        async def behave(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
            self._flaky.attempts[method] += 1
            if method == "GetAcademicYear":
                await asyncio.sleep(5)  # slower than the deadline under test
            if self._flaky.attempts[method] == 1:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
            return request

        return grpc.unary_unary_rpc_method_handler(behave)


@pytest_asyncio.fixture
async def flaky() -> AsyncIterator[tuple[Flaky, str]]:
    state = Flaky()
    server = aio.server()
    server.add_generic_rpc_handlers((_Handler(state),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield state, f"127.0.0.1:{port}"
    await server.stop(0)


async def invoke(channel: aio.Channel, method: str) -> bytes:
    call = channel.unary_unary(f"/{SERVICE}/{method}")
    return bytes(await call(b"ping"))


async def test_reads_are_retried_on_unavailable(flaky: tuple[Flaky, str]) -> None:
    state, target = flaky
    async with client.channel(target) as channel:
        assert await invoke(channel, "ListAcademicYears") == b"ping"
    assert state.attempts["ListAcademicYears"] == 2


async def test_writes_are_not_retried(flaky: tuple[Flaky, str]) -> None:
    state, target = flaky
    async with client.channel(target) as channel:
        for method in ("CreateAcademicYear", "ImportAcademicYearsCsv"):
            with pytest.raises(aio.AioRpcError) as err:
                await invoke(channel, method)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert state.attempts[method] == 1


async def test_with_request_ids_writes_are_retried_on_unavailable(
    flaky: tuple[Flaky, str],
) -> None:
    state, target = flaky
    async with client.channel(target, request_ids=True) as channel:
        for method in ("CreateAcademicYear", "DeleteAcademicYear", "ImportAcademicYearsCsv"):
            assert await invoke(channel, method) == b"ping"
            assert state.attempts[method] == 2


def rpcs() -> list[tuple[str, str, Any]]:
    """(service, method, request descriptor) of every RPC of the contract."""
    return [
        (service.full_name, method.name, method.input_type)
        for module in (progress_pb2, academic_years_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def retried(config: dict[str, Any]) -> set[str]:
    """The contract's methods the config retries (a method entry wins over its service's)."""
    policy: dict[tuple[str, str], bool] = {}
    for entry in config["methodConfig"]:
        for name in entry["name"]:
            policy[(name["service"], name.get("method", ""))] = "retryPolicy" in entry
    return {
        m
        for s, m, _ in rpcs()
        if policy.get((s, m), policy.get((s, ""), False))  # no entry: no retry
    }


READS = {
    "ListUserProgress",
    "ExportUserProgressCsv",
    "GetAcademicYear",
    "ListAcademicYears",
    "CountAcademicYears",
    "AutocompleteAcademicYears",
    "ExportAcademicYearsCsv",
}
# The writes that take a request id (the contract's additions of this round).
WITH_REQUEST_IDS = {
    "UpsertUserProgress",
    "ImportUserProgressCsv",
    "ImportUserProgressCsvWithProgress",
    "CreateAcademicYear",
    "UpdateAcademicYear",
    "DeleteAcademicYear",
    "BatchDeleteAcademicYears",
    "ImportAcademicYearsCsv",
    "ImportAcademicYearsCsvWithProgress",
}


async def test_which_methods_each_config_retries() -> None:
    assert retried(client.service_config()) == READS
    assert retried(client.service_config(request_ids=True)) == READS | WITH_REQUEST_IDS
    # DeleteUserProgressByItem takes no request id: a repeat would answer deleted_count 0.
    assert {m for _, m, _ in rpcs()} - READS - WITH_REQUEST_IDS == {"DeleteUserProgressByItem"}
    # Every request that has a request_id field is retried in the config made for them.
    carry = {m for _, m, request in rpcs() if "request_id" in request.fields_by_name}
    assert carry <= WITH_REQUEST_IDS


async def test_round_robin_skips_a_replica_that_is_not_serving() -> None:
    """A draining replica turns NOT_SERVING first; a client with the config stops sending it
    calls at once, while its calls go on being answered by the others."""
    answered: Counter[int] = Counter()
    servers, healths, ports = [], [], []
    for index in range(2):

        async def echo(request: bytes, _: Any, index: int = index) -> bytes:
            answered[index] += 1
            return request

        server = aio.server()
        server.add_generic_rpc_handlers((_Echo(echo),))
        health = DrainingHealth()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        ports.append(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        servers.append(server)
        healths.append(health)
    try:
        async with client.channel("ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)) as ch:
            for _ in range(20):
                await invoke(ch, "ListAcademicYears")
            assert answered[0] >= 5 and answered[1] >= 5  # spread over both
            await healths[0].enter_graceful_shutdown()
            await asyncio.sleep(0.2)  # the Watch stream brings the news
            answered.clear()
            for _ in range(20):
                await invoke(ch, "ListAcademicYears")
            assert answered == {1: 20}
    finally:
        for server in servers:
            await server.stop(0)


class _Echo(grpc.GenericRpcHandler):
    def __init__(self, behavior: Any) -> None:
        self._behavior = behavior

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith(f"/{SERVICE}/"):
            return grpc.unary_unary_rpc_method_handler(self._behavior)
        return None


async def test_without_the_config_reads_fail_at_once(flaky: tuple[Flaky, str]) -> None:
    state, target = flaky
    async with client.channel(target, config={}) as channel:
        with pytest.raises(aio.AioRpcError):
            await invoke(channel, "ListAcademicYears")
    assert state.attempts["ListAcademicYears"] == 1


async def test_the_configured_deadline_applies_when_the_caller_sets_none(
    flaky: tuple[Flaky, str],
) -> None:
    _, target = flaky
    config = client.service_config()
    config["methodConfig"][1]["timeout"] = "0.2s"  # the reads' entry, shortened for the test
    async with client.channel(target, config=config) as channel:
        with pytest.raises(aio.AioRpcError) as err:
            await invoke(channel, "GetAcademicYear")
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_the_config_prints_as_json_for_other_languages() -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "common.client"],
        capture_output=True,
        text=True,
        check=True,
    )
    out = done.stdout
    assert json.loads(out) == client.service_config()
    with_ids = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "common.client", "--request-ids"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(with_ids.stdout) == client.service_config(request_ids=True)
