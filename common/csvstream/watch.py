"""How far an import is, for the caller: its phase and counts, sampled while it runs.

The import keeps an `ImportTracker` up to date (`transfer.import_csv`); `watch` runs the import
beside the call that reports it and yields a snapshot whenever it has moved on. Progress goes
back on the import's own call, so it always comes from the process doing the work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
B = TypeVar("B", bound=Sequence[Any])

READING, CHECKING, WRITING, DONE = "reading", "checking", "writing", "done"
REPORT_EVERY_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class ImportProgress:
    phase: str
    bytes_read: int  # bytes of the file received so far
    rows_read: int  # data rows parsed so far
    rows_staged: int  # rows handed to the staging table's COPY so far


class Counted(Protocol):
    """What `CsvReader` counts as it reads."""

    bytes_read: int
    rows_read: int


class ImportTracker:
    """Where one import is. The import sets the phase and counts staged rows; the reader it
    follows counts bytes and rows parsed."""

    def __init__(self) -> None:
        self.phase = READING
        self.rows_staged = 0
        self._reader: Counted | None = None

    def follow(self, reader: Counted) -> None:
        self._reader = reader

    async def staged(self, batches: AsyncIterable[B]) -> AsyncIterator[B]:
        """`batches` as they are, counting the rows COPY has taken."""
        async for batch in batches:
            yield batch
            self.rows_staged += len(batch)

    def snapshot(self) -> ImportProgress:
        r = self._reader
        return ImportProgress(
            self.phase, r.bytes_read if r else 0, r.rows_read if r else 0, self.rows_staged
        )


@dataclass(frozen=True, slots=True)
class Report(Generic[T]):
    """One report; `result` is the import's, on the last report only (phase done)."""

    progress: ImportProgress
    result: T | None = None


async def watch(
    run: Callable[[ImportTracker], Awaitable[T]], every: float = REPORT_EVERY_SECONDS
) -> AsyncIterator[Report[T]]:
    """Runs `run(tracker)` and reports every `every` seconds while it has moved on, then once
    with its result. Its error is raised here; leaving the loop early cancels it."""
    tracker = ImportTracker()
    task = asyncio.ensure_future(run(tracker))
    last: ImportProgress | None = None
    try:
        while not (await asyncio.wait({task}, timeout=every))[0]:
            now = tracker.snapshot()
            if now != last:
                last = now
                yield Report(now)
        result = task.result()
        yield Report(tracker.snapshot(), result)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: raised above, or superseded by our own exit
