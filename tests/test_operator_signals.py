"""What an operator sees of a real process: every log line names its service."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import client
from common.logs import ConsoleFormatter, JsonFormatter
from tests.processes import ServiceProcess, start_service


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
