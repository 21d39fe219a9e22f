"""The CSV import and export skeleton both services share: one unit of work each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from common import keyset
from common.csvstream.export import stream_csv_pages
from common.csvstream.reader import CsvReader
from common.csvstream.staging import Staging, stage
from common.csvstream.watch import CHECKING, DONE, WRITING, ImportTracker
from common.db import Database, UnitOfWork
from common.db.uow import RepositoryFactory
from common.idempotency import Once, RequestIds, Stored
from common.tenancy import TenantScope
from common.tracing import note

R = TypeVar("R")
T = TypeVar("T")


async def import_csv(
    db: Database,
    scope: TenantScope,
    repository: RepositoryFactory[R],
    reader: CsvReader,
    staging: Staging,
    apply: Callable[[R], Awaitable[T]],
    *,
    check: Callable[[R], Awaitable[None]] | None = None,
    tracker: ImportTracker | None = None,
    request_ids: RequestIds | None = None,
    once: Once[T, Any] | None = None,
) -> T | Stored:
    """Streams every row of `reader` into `staging`, then, only if every row was valid and
    `check(repository)` passes, `apply(repository)` writes them; all in one transaction,
    committed at the end. `tracker` follows it: reading, checking, writing, done. With a
    request id (`once`), kept in `request_ids`, a retry is answered with the first import's
    answer before anything is read (common.idempotency)."""
    tracker = tracker or ImportTracker()
    tracker.follow(reader)

    async def work(uow: UnitOfWork[R]) -> T:
        await stage(uow.executor, staging, tracker.staged(reader.rows()))
        note(**{"csv.rows": reader.rows_read, "csv.bytes": reader.bytes_read})
        tracker.phase = CHECKING
        reader.raise_if_invalid()
        if check is not None:
            await check(uow.repo)
        tracker.phase = WRITING
        return await apply(uow.repo)

    if request_ids is None:
        async with db.unit_of_work(scope, repository) as uow:
            result: T | Stored = await work(uow)
            await uow.commit()
    else:
        result = await request_ids.write(db, scope, repository, once, work)
    tracker.phase = DONE
    return result


async def export_csv(
    db: Database,
    scope: TenantScope,
    repository: RepositoryFactory[R],
    query: Callable[[R], keyset.Walk],
    header: tuple[str, ...],
    *,
    label: str,
) -> AsyncIterator[bytes]:
    """CSV chunks of every row `query(repository)` walks, with `header` first, read a keyset
    page at a time on one read-only snapshot; the call's span gets the rows and bytes sent."""
    async with db.unit_of_work(scope, repository, snapshot=True) as uow:
        sent = lines = 0
        try:
            async for chunk in stream_csv_pages(uow.executor, query(uow.repo), header, label=label):
                sent += len(chunk)
                lines += chunk.count(b"\n")
                yield chunk
        finally:
            # Records end in LF; a quoted line break inside a cell counts too (an estimate).
            note(**{"csv.rows": max(lines - 1, 0), "csv.bytes": sent})
