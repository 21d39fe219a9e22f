"""The log handler: access lines written in batches, everything else at once and in order."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import time
from collections.abc import Iterator

import grpc
import pytest

from common.accesslog import REPORT_DELAY, AccessLog
from common.logs import ACCESS_LOGGER, AccessBufferingHandler, JsonFormatter


class CountingStream(io.StringIO):
    """Remembers how many writes reached it (each one a system call on a real stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@pytest.fixture
def stream() -> CountingStream:
    return CountingStream()


def make_handler(stream: CountingStream, max_lines: int = 256) -> AccessBufferingHandler:
    handler = AccessBufferingHandler(stream, max_lines=max_lines)
    handler.setFormatter(JsonFormatter())
    return handler


def record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 0, msg, (), None)


def messages(stream: CountingStream) -> list[str]:
    return [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]


def test_access_lines_wait_for_a_batch(stream: CountingStream) -> None:
    handler = make_handler(stream)
    try:
        for i in range(5):
            handler.handle(record(ACCESS_LOGGER, logging.INFO, f"rpc {i}"))
        assert stream.getvalue() == ""
        handler.flush()
        assert messages(stream) == [f"rpc {i}" for i in range(5)] and stream.writes == 1
    finally:
        handler.close()


def test_any_other_line_writes_what_is_pending_then_itself(stream: CountingStream) -> None:
    handler = make_handler(stream)
    try:
        handler.handle(record(ACCESS_LOGGER, logging.INFO, "rpc 1"))
        handler.handle(record("server", logging.INFO, "draining"))
        assert messages(stream) == ["rpc 1", "draining"]
        handler.handle(record(ACCESS_LOGGER, logging.INFO, "rpc 2"))
        handler.handle(record(ACCESS_LOGGER, logging.ERROR, "unhandled error"))
        assert messages(stream) == ["rpc 1", "draining", "rpc 2", "unhandled error"]
    finally:
        handler.close()


def test_a_full_batch_is_written_without_waiting(stream: CountingStream) -> None:
    handler = make_handler(stream, max_lines=3)
    try:
        for i in range(7):
            handler.handle(record(ACCESS_LOGGER, logging.INFO, f"rpc {i}"))
        assert messages(stream) == [f"rpc {i}" for i in range(6)] and stream.writes == 2
    finally:
        handler.close()


@pytest.fixture
def access_handler(stream: CountingStream) -> Iterator[AccessBufferingHandler]:
    """The handler on the access log's logger, alone."""
    handler, logger = make_handler(stream), logging.getLogger(ACCESS_LOGGER)
    old = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)
    logger.level, logger.propagate = old
    handler.close()


@pytest.mark.asyncio
async def test_finished_calls_are_written_in_one_batch_soon_after(
    stream: CountingStream, access_handler: AccessBufferingHandler
) -> None:
    observed: list[tuple[str, grpc.StatusCode]] = []
    access_log = AccessLog([lambda method, code, _seconds: observed.append((method, code))])
    first_ended = time.time()
    access_log.finished("/s.S/A", grpc.StatusCode.OK, time.perf_counter(), "req-1")
    access_log.finished("/s.S/B", grpc.StatusCode.NOT_FOUND, time.perf_counter(), "req-2")
    last_ended = time.time()
    assert stream.getvalue() == "" and observed == []  # nothing more in the calls' path
    for _ in range(100):
        await asyncio.sleep(REPORT_DELAY)
        if stream.getvalue():
            break
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["method"], line["code"]) for line in lines] == [
        ("/s.S/A", "OK"),
        ("/s.S/B", "NOT_FOUND"),
    ]
    assert stream.writes == 1
    assert observed == [("/s.S/A", grpc.StatusCode.OK), ("/s.S/B", grpc.StatusCode.NOT_FOUND)]
    stamps = [dt.datetime.fromisoformat(line["ts"]).timestamp() for line in lines]
    # When the calls ended, not when the batch was written (at least REPORT_DELAY later); the
    # slack covers the clocks' conversion on a loaded machine.
    slack = min(0.02, REPORT_DELAY / 2)
    assert first_ended - slack <= stamps[0] <= stamps[1] <= last_ended + slack


def test_close_writes_what_is_pending(stream: CountingStream) -> None:
    handler = make_handler(stream)
    handler.handle(record(ACCESS_LOGGER, logging.INFO, "last rpc"))
    handler.close()
    assert messages(stream) == ["last rpc"]
