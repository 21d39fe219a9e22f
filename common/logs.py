"""Structured logging: one JSON object per line, or readable console lines on a terminal."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

# The access log's logger: one line per RPC (common.accesslog).
ACCESS_LOGGER = "rpc"

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# One encoder for every line: `json.dumps(..., default=str)` builds a new one per call.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, the service when named, logger, message, extras."""

    _second = -1
    _second_text = ""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self._service = {"service": service} if service else {}

    def _timestamp(self, record: logging.LogRecord) -> str:
        """ISO time in UTC; the formatted second is reused, as most lines share it."""
        second = int(record.created)
        if second != self._second:
            self._second_text = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            **self._service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


class ConsoleFormatter(logging.Formatter):
    """`time level [service] logger: message  key=value ...`, for a terminal."""

    def __init__(self, service: str | None = None) -> None:
        super().__init__()
        self._prefix = f"[{service}] " if service else ""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{k}={v}" for k, v in record.__dict__.items() if k not in _RESERVED and v is not None
        )
        line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} "
        line += f"{self._prefix}{record.name}: "
        line += record.getMessage() + (f"  {extras}" if extras else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class AccessBufferingHandler(logging.StreamHandler[TextIO]):
    """Writes a batch of access lines at once; every other line at once, after what is held.

    One write and flush per RPC cost more CPU than the RPC's own Python code: every write is a
    system call that hands the interpreter lock to gRPC's polling thread and back. Access lines
    (INFO on the `rpc` logger) come in batches from `common.accesslog.AccessLog`, which flushes
    the handlers after each batch; until then they are held here (written every `max_lines`
    lines of a large batch). A line of any other logger or level (start-up, drain, warnings,
    errors) writes what is held and itself immediately, so the order holds.
    `logging.shutdown()` flushes at exit.
    """

    def __init__(self, stream: TextIO | None = None, *, max_lines: int = 256) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._max_lines = max_lines

    def emit(self, record: logging.LogRecord) -> None:  # called with the handler's lock held
        try:
            self._pending.append(self.format(record) + self.terminator)
            urgent = record.levelno > logging.INFO or record.name != ACCESS_LOGGER
            if urgent or len(self._pending) >= self._max_lines:
                self._write_pending()
        except Exception:
            self.handleError(record)

    def _write_pending(self) -> None:
        if self._pending:
            text, self._pending = "".join(self._pending), []
            self.stream.write(text)
            self.stream.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
        except Exception:  # a closed or broken stream: the lines cannot be written anywhere
            self._pending.clear()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        super().close()


def flush_handlers(logger: logging.Logger) -> None:
    """Flush every handler a record of `logger` reaches."""
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            handler.flush()
        current = current.parent if current.propagate else None


def setup_logging(
    log_format: str, level: int = logging.INFO, *, service: str | None = None
) -> None:
    """Log to stderr in `log_format`; every line names `service`, the process's service."""
    # No formatter prints the process, thread or process name: don't look them up per record.
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    handler = AccessBufferingHandler(sys.stderr)
    formatter = (JsonFormatter if log_format == "json" else ConsoleFormatter)(service)
    formatter.converter = __import__("time").gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
