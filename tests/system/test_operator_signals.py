"""What an operator sees of a real process: a second signal ends a long drain at once, and
every log line names its service."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import client
from common.logs import ConsoleFormatter, JsonFormatter
from tests.support.processes import ServiceProcess, start_service

FORCED_EXIT = "second signal while draining: exiting now"
LONG_GRACE = "60"  # the drain a Watch stream keeps going, unless cut short


async def logged(
    service: ServiceProcess, found: Callable[[dict[str, Any]], bool], within: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for entry in list(service.log):
            if found(entry):
                return entry
        await asyncio.sleep(0.05)
    raise AssertionError(f"no such log line within {within}s: {service.log[-20:]}")


async def exit_code(service: ServiceProcess, within: float) -> int:
    return await asyncio.to_thread(service.proc.wait, within)


@asynccontextmanager
async def watching(target: str) -> AsyncIterator[None]:
    """A health Watch open on the server: a call that stays in flight until cancelled (on a
    plain channel: `common.client` gives health calls a deadline)."""
    async with aio.insecure_channel(target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        yield
        watch.cancel()


@pytest.mark.asyncio
async def test_a_second_signal_ends_a_long_drain_at_once(tmp_path: Path) -> None:
    service = start_service("progress_service", tmp_path, SHUTDOWN_GRACE_SECONDS=LONG_GRACE)
    try:
        async with watching(service.target):
            service.proc.send_signal(signal.SIGINT)
            await logged(service, lambda e: e.get("msg") == "draining")
            await asyncio.sleep(1)
            assert service.proc.poll() is None  # still draining: the Watch is in flight
            second = time.monotonic()
            service.proc.send_signal(signal.SIGINT)
            assert await exit_code(service, 10) == 128 + signal.SIGINT
            assert time.monotonic() - second < 5
    finally:
        service.stop()
    await logged(service, lambda e: e.get("msg") == FORCED_EXIT)
    forced = [e for e in service.log if e.get("msg") == FORCED_EXIT]
    assert len(forced) == 1 and forced[0]["signal"] == "SIGINT"
    assert forced[0]["level"] == "warning" and forced[0]["service"] == "progress"
    assert not any(e.get("msg") == "stopped" for e in service.log)


@pytest.mark.asyncio
async def test_with_workers_a_second_signal_stops_them_all_at_once(tmp_path: Path) -> None:
    service = start_service(
        "progress_service", tmp_path, WORKERS="2", SHUTDOWN_GRACE_SECONDS=LONG_GRACE
    )
    try:
        started = await logged(service, lambda e: e.get("msg") == "workers started")
        async with watching(service.target):
            service.proc.send_signal(signal.SIGTERM)
            await logged(service, lambda e: e.get("msg") == "draining")
            await asyncio.sleep(1)
            assert service.proc.poll() is None  # the worker with the Watch is still draining
            second = time.monotonic()
            service.proc.send_signal(signal.SIGTERM)
            assert await exit_code(service, 10) == 128 + signal.SIGTERM
            assert time.monotonic() - second < 5
    finally:
        service.stop()
    await logged(service, lambda e: e.get("msg") == FORCED_EXIT)
    forced = [e for e in service.log if e.get("msg") == FORCED_EXIT]
    assert len(forced) == 1 and forced[0]["logger"] == "workers"
    assert all(e.get("service") == "progress" for e in service.log), service.log
    for pid in started["pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.asyncio
async def test_every_json_line_names_its_service(tmp_path: Path) -> None:
    service = start_service("progress_service", tmp_path)
    try:
        async with client.channel(service.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            await health.Check(health_pb2.HealthCheckRequest())
            await logged(service, lambda e: e.get("msg") == "rpc")
    finally:
        assert service.stop() == 0
    await logged(service, lambda e: e.get("msg") == "stopped")
    kinds = {e.get("msg") for e in service.log}
    assert {"serving", "rpc", "draining", "stopped"} <= kinds
    assert all(e.get("service") == "progress" for e in service.log), service.log


def test_console_lines_name_their_service() -> None:
    record = logging.LogRecord("server", logging.INFO, __file__, 0, "draining", (), None)
    line = ConsoleFormatter("progress").format(record)
    assert "INFO    [progress] server: draining" in line


def test_error_lines_name_their_service() -> None:
    try:
        raise RuntimeError("bug")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("rpc", logging.ERROR, __file__, 0, "unhandled", (), exc_info)
    entry = json.loads(JsonFormatter("academic_years").format(record))
    assert entry["service"] == "academic_years" and "RuntimeError: bug" in entry["exc"]
