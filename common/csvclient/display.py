"""Progress on stderr: a bar on a terminal, a plain line every few seconds anywhere else."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, TextIO

from tqdm import tqdm

PLAIN_INTERVAL_SECONDS = 5.0


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class Progress(Protocol):
    def advance(self, chunk: bytes) -> None: ...
    def server(self, phase: str, rows: int, staged: int) -> None: ...
    def note(self, text: str) -> None: ...
    def restart(self, text: str) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ServerReport:
    """How far the server is with an import, as it last said."""

    phase: str
    rows: int
    staged: int

    def __str__(self) -> str:
        if self.phase == "reading":
            return f"server reading: {self.rows:,} rows parsed, {self.staged:,} staged"
        return f"server {self.phase}: {self.rows:,} rows"


class _Counts:
    """Bytes and rows so far. Rows are line ends after the header's, so a quoted field that
    spans lines counts once per line: close enough for a rate, never used for the summary."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.bytes = 0
        self.lines = 0
        self.started = time.monotonic()
        self.server: ServerReport | None = None

    def add(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        self.lines += chunk.count(b"\n")

    @property
    def rows(self) -> int:
        return max(self.lines - 1, 0)

    def rate(self) -> float:
        return self.rows / max(time.monotonic() - self.started, 1e-6)

    def summary(self) -> str:
        """Rows and rate here, then the server's report when there is one."""
        text = f"{self.rows:,} rows, {self.rate():,.0f} rows/s"
        return text if self.server is None else f"{text}; {self.server}"


class BarProgress:
    """A tqdm bar of bytes with rows and rows/s beside it, for a person at a terminal."""

    def __init__(self, label: str, total: int | None, stream: TextIO) -> None:
        self._counts = _Counts(total)
        self._bar = tqdm(
            total=total,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=stream,
            dynamic_ncols=True,
            leave=True,
        )

    def advance(self, chunk: bytes) -> None:
        self._counts.add(chunk)
        self._bar.set_postfix_str(self._counts.summary(), refresh=False)
        self._bar.update(len(chunk))

    def server(self, phase: str, rows: int, staged: int) -> None:
        self._counts.server = ServerReport(phase, rows, staged)
        self._bar.set_postfix_str(self._counts.summary())

    def note(self, text: str) -> None:
        self._bar.set_description_str(text)

    def restart(self, text: str) -> None:
        self._counts = _Counts(self._counts.total)
        self._bar.reset(total=self._counts.total)
        self.note(text)

    def close(self) -> None:
        self._bar.close()


class PlainProgress:
    """One line every `interval` seconds and one at the end: logs and CI keep them readable."""

    def __init__(
        self,
        label: str,
        total: int | None,
        stream: TextIO,
        interval: float = PLAIN_INTERVAL_SECONDS,
    ) -> None:
        self._label, self._stream, self._interval = label, stream, interval
        self._counts = _Counts(total)
        self._next = time.monotonic() + interval

    def _line(self, prefix: str) -> str:
        c = self._counts
        done = human_bytes(c.bytes)
        if c.total:
            done += f" of {human_bytes(c.total)} ({100 * c.bytes / c.total:.0f}%)"
        return f"{self._label}: {prefix}{done}, {c.summary()}"

    def advance(self, chunk: bytes) -> None:
        self._counts.add(chunk)
        self._tick(force=False)

    def server(self, phase: str, rows: int, staged: int) -> None:
        """A line at once when the server's phase changes, else at the usual pace."""
        before = self._counts.server
        self._counts.server = ServerReport(phase, rows, staged)
        self._tick(force=before is None or before.phase != phase)

    def _tick(self, *, force: bool) -> None:
        now = time.monotonic()
        if force or now >= self._next:
            self._next = now + self._interval
            self._write(self._line(""))

    def note(self, text: str) -> None:
        self._write(f"{self._label}: {text}")

    def restart(self, text: str) -> None:
        self._counts = _Counts(self._counts.total)
        self.note(text)

    def close(self) -> None:
        elapsed = time.monotonic() - self._counts.started
        self._write(self._line(f"done in {elapsed:.1f} s, "))

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()


def progress_for(label: str, total: int | None, stream: TextIO) -> Progress:
    """A bar when `stream` is a terminal, else plain periodic lines."""
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return BarProgress(label, total, stream)
    return PlainProgress(label, total, stream)
