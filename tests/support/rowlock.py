"""A row lock taken from outside the services, so that a call writing that row waits inside
the server for as long as a test needs it in flight."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from common.db import Database
from progress_service.tables import user_progress


class RowLock:
    """Holds `FOR UPDATE` on the progress rows of `item` until released; `async with` takes
    and releases it, or `take()` and `release()` do."""

    def __init__(self, db: Database, item: str) -> None:
        self._db, self._item = db, item
        self._held, self._release = asyncio.Event(), asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _hold(self) -> None:
        # A transaction of no tenant, rolled back on release: the lock is all it takes.
        async with self._db.unit_of_work(None, lambda *_: None) as uow:
            await uow.executor.rows(
                select(user_progress.c.id)
                .where(user_progress.c.item_id == self._item)
                .with_for_update()
            )
            self._held.set()
            await self._release.wait()

    async def take(self) -> RowLock:
        self._task = asyncio.create_task(self._hold())
        await self._held.wait()
        return self

    async def release(self) -> None:
        self._release.set()
        assert self._task is not None
        await self._task

    async def __aenter__(self) -> RowLock:
        return await self.take()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()
