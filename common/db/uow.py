"""The unit of work: one transaction on one pooled connection, committed only when told."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

import asyncpg

from common.db.errors import is_unavailable, unavailable
from common.db.executor import Executor
from common.tenancy import TenantScope

if TYPE_CHECKING:
    from common.db.engine import Database

R = TypeVar("R")
RepositoryFactory = Callable[[Executor, TenantScope], R]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# A read-only transaction on one snapshot: every statement sees the same rows (an export
# read in several keyset batches neither repeats nor misses a row that changes meanwhile).
SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


def _begin_sql(scope: TenantScope | None, snapshot: bool = False) -> str:
    """BEGIN and the caller's tenant, read by the row-level security policies (local to the
    transaction), in one message: one round trip instead of two per call. SET LOCAL rather than
    set_config(): Citus passes SET LOCAL on to the workers, where the shards' policies read
    the settings (docs/scaling.md). The values are ids the token verifier checked as UUIDs;
    quoting keeps the statement well-formed regardless."""
    begin = SNAPSHOT if snapshot else "BEGIN"
    if scope is None:
        return begin
    return (
        f"{begin}; SET LOCAL app.organization_id = {_quote(scope.organization_id or '')}; "
        f"SET LOCAL app.user_id = {_quote(scope.user_id)}; "
        f"SET LOCAL app.global_access = '{'on' if scope.global_access else 'off'}'"
    )


class UnitOfWork(Generic[R]):
    """`async with db.unit_of_work(scope, Repository) as uow:` gives `uow.repo`; the block's
    writes last only if it calls `await uow.commit()`, and are rolled back otherwise. A lost
    database, here or in the block, leaves as UNAVAILABLE."""

    __slots__ = (
        "_committed",
        "_conn",
        "_db",
        "_factory",
        "_scope",
        "_snapshot",
        "executor",
        "repo",
    )

    executor: Executor
    repo: R

    def __init__(
        self,
        db: Database,
        scope: TenantScope | None,
        factory: RepositoryFactory[R],
        *,
        snapshot: bool = False,
    ):
        self._db = db
        self._scope = scope
        self._snapshot = snapshot
        self._factory = factory
        self._committed = False
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> UnitOfWork[R]:
        try:
            pool = self._db.pool or await self._db.open()
            # No timer on the wait for a connection: the call's deadline bounds it.
            conn = self._conn = await pool.acquire()
            self.executor = Executor(conn)
            await conn.execute(_begin_sql(self._scope, self._snapshot))
        except BaseException as exc:
            await self._release(failed=True)
            if isinstance(exc, Exception) and is_unavailable(exc):
                raise unavailable(exc) from exc
            raise
        if self._scope is not None:
            self.repo = self._factory(self.executor, self._scope)
        return self

    async def commit(self) -> None:
        assert self._conn is not None
        try:
            await self._conn.execute("COMMIT")
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable(exc) from exc
            raise
        self._committed = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._release(failed=exc is not None)
        if isinstance(exc, Exception) and is_unavailable(exc):
            raise unavailable(exc) from exc

    async def _release(self, *, failed: bool) -> None:
        """Roll back what was not committed and hand the connection back; a connection left
        mid-protocol (a cancelled statement, a broken COPY, a lost server) is closed instead."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        reusable = not self.executor.broken if hasattr(self, "executor") else False
        if reusable and not self._committed:
            try:
                await conn.execute("ROLLBACK")
            except (Exception, asyncio.CancelledError):
                reusable = False
        # A connection the server dropped is handed back by asyncpg itself as it closes.
        with contextlib.suppress(asyncpg.InterfaceError):
            if not reusable or (failed and conn.is_closed()):
                conn.terminate()
            pool = self._db.pool
            if pool is not None:
                await pool.release(conn)
