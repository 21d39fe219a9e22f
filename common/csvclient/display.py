"""Progress on stderr: a bar on a terminal, a plain line every few seconds anywhere else."""

from __future__ import annotations

import time
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
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class _Counts:
    """Bytes and rows so far. Rows are line ends after the header's, so a quoted field that
    spans lines counts once per line: close enough for a rate, never used for the summary."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.bytes = 0
        self.lines = 0
        self.started = time.monotonic()

    def add(self, chunk: bytes) -> None:
        self.bytes += len(chunk)
        self.lines += chunk.count(b"\n")

    @property
    def rows(self) -> int:
        return max(self.lines - 1, 0)

    def rate(self) -> float:
        return self.rows / max(time.monotonic() - self.started, 1e-6)


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
        self._bar.set_postfix_str(
            f"{self._counts.rows:,} rows, {self._counts.rate():,.0f} rows/s", refresh=False
        )
        self._bar.update(len(chunk))

    def note(self, text: str) -> None:
        self._bar.set_description_str(text)

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
        return f"{self._label}: {prefix}{done}, {c.rows:,} rows, {c.rate():,.0f} rows/s"

    def advance(self, chunk: bytes) -> None:
        self._counts.add(chunk)
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            self._write(self._line(""))

    def note(self, text: str) -> None:
        self._write(f"{self._label}: {text}")

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
