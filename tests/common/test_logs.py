"""The log handler: access lines written in batches, everything else at once and in order."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

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


def make_handler(
    stream: CountingStream, interval: float, max_lines: int = 256
) -> AccessBufferingHandler:
    handler = AccessBufferingHandler(stream, interval=interval, max_lines=max_lines)
    handler.setFormatter(JsonFormatter())
    return handler


def record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 0, msg, (), None)


def messages(stream: CountingStream) -> list[str]:
    return [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]


def test_access_lines_wait_for_a_batch(stream: CountingStream) -> None:
    handler = make_handler(stream, interval=60)
    try:
        for i in range(5):
            handler.handle(record(ACCESS_LOGGER, logging.INFO, f"rpc {i}"))
        assert stream.getvalue() == ""
        handler.flush()
        assert messages(stream) == [f"rpc {i}" for i in range(5)] and stream.writes == 1
    finally:
        handler.close()


def test_any_other_line_writes_what_is_pending_then_itself(stream: CountingStream) -> None:
    handler = make_handler(stream, interval=60)
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
    handler = make_handler(stream, interval=60, max_lines=3)
    try:
        for i in range(7):
            handler.handle(record(ACCESS_LOGGER, logging.INFO, f"rpc {i}"))
        assert messages(stream) == [f"rpc {i}" for i in range(6)] and stream.writes == 2
    finally:
        handler.close()


def test_pending_lines_are_written_within_the_interval(stream: CountingStream) -> None:
    handler = make_handler(stream, interval=0.05)
    try:
        handler.handle(record(ACCESS_LOGGER, logging.INFO, "rpc"))
        deadline = time.monotonic() + 5
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert messages(stream) == ["rpc"]
    finally:
        handler.close()


def test_close_writes_what_is_pending(stream: CountingStream) -> None:
    handler = make_handler(stream, interval=60)
    handler.handle(record(ACCESS_LOGGER, logging.INFO, "last rpc"))
    handler.close()
    assert messages(stream) == ["last rpc"]
