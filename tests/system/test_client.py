"""The client service config at work: reads retry on UNAVAILABLE, writes do not; deadlines."""

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
from grpc import aio

from common import client

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
