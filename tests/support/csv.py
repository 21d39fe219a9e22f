"""Helpers the CSV tests share: chunked uploads, collected downloads, finished-RPC events."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest
from google.api import httpbody_pb2
from sqlalchemy import MetaData

from common.db.executor import NO_PARAMS, Executor
from common.server import ServiceDefinition, start_server
from tests.conftest import Harness, test_settings


async def bodies(data: bytes, chunk: int = 64 * 1024) -> AsyncIterator[httpbody_pb2.HttpBody]:
    for start in range(0, len(data), chunk):
        yield httpbody_pb2.HttpBody(content_type="text/csv", data=data[start : start + chunk])


def copy_limits(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """The `limit` each `COPY ... TO STDOUT` the servers run from now on binds (None: every
    row), in order: how an export split its rows."""
    limits: list[int | None] = []
    original = Executor.copy_out

    def counted(self: Executor, statement: Any, params: Any = NO_PARAMS) -> Any:
        limits.append(params.get("limit"))
        return original(self, statement, params)

    monkeypatch.setattr(Executor, "copy_out", counted)
    return limits


async def collect(call: Any) -> bytes:
    """The whole body of a server-streaming export, checking each chunk's content type."""
    parts = []
    async for message in call:
        assert message.content_type == "text/csv; charset=utf-8"
        parts.append(message.data)
    return b"".join(parts)


def csv_bytes(rows: Iterable[Iterable[Any]], *, newline: str = "\n", bom: bool = False) -> bytes:
    rows = [list(r) for r in rows]
    # The writer quotes a field holding CR only when CR is in its line terminator.
    has_cr = any("\r" in str(cell) for row in rows for cell in row)
    buffer = io.StringIO()
    quoting = csv.QUOTE_ALL if has_cr and newline == "\n" else csv.QUOTE_MINIMAL
    csv.writer(buffer, lineterminator=newline, quoting=quoting).writerows(rows)
    return ("\ufeff" if bom else "").encode() + buffer.getvalue().encode()


def parse_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


class Finished:
    """An RpcObserver that lets a test await the server's own end of an RPC and its code."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self.codes: dict[str, grpc.StatusCode] = {}

    def _event(self, method: str) -> asyncio.Event:
        return self._events.setdefault(method, asyncio.Event())

    async def wait(self, method: str) -> grpc.StatusCode:
        await self._event(method).wait()
        return self.codes[method]

    def __call__(self, method: str, code: grpc.StatusCode, _elapsed: float, _ids: Any) -> None:
        name = method.rsplit("/", 1)[-1]
        self.codes[name] = code
        self._event(name).set()


async def start_observed(
    definition: ServiceDefinition,
    url: str,
    metadata: MetaData,
    finished: Finished,
    **overrides: Any,
) -> Harness:
    """A second server on an already migrated database, reporting finished RPCs."""
    running = await start_server(
        definition, test_settings(definition.name, url, **overrides), observers=[finished]
    )
    from grpc import aio

    return Harness(running, aio.insecure_channel(f"127.0.0.1:{running.port}"), metadata)
