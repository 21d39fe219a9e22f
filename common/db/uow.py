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


def sql_literal(value: str) -> str:
    """`value` as an SQL string literal, for the few statements sent as text (see
    `_begin_sql`); everything else binds its values."""
    return "'" + value.replace("'", "''") + "'"


# A read-only transaction on one snapshot: every statement sees the same rows (an export
# read in several keyset batches neither repeats nor misses a row that changes meanwhile).
SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


def _begin_sql(scope: TenantScope | None, snapshot: bool = False, opening: str = "") -> str:
    """BEGIN and the caller's tenant, read by the row-level security policies (local to the
    transaction), in one message: one round trip instead of two per call. SET LOCAL rather than
    set_config(): Citus passes SET LOCAL on to the workers, where the shards' policies read
    the settings (docs/scaling.md). The values are ids the token verifier checked as UUIDs;
    quoting keeps the statement well-formed regardless. `opening`, when given, is one more
    statement for the same message (an import's look for its stored answer, common.idempotency)."""
    begin = SNAPSHOT if snapshot else "BEGIN"
    if scope is not None:
        begin = (
            f"{begin}; SET LOCAL app.organization_id = {sql_literal(scope.organization_id or '')}; "
            f"SET LOCAL app.user_id = {sql_literal(scope.user_id)}; "
            f"SET LOCAL app.global_access = '{'on' if scope.global_access else 'off'}'"
        )
    return f"{begin}; {opening}" if opening else begin


class UnitOfWork(Generic[R]):
    """`async with db.unit_of_work(scope, Repository) as uow:` gives `uow.repo`; the block's
    writes last only if it calls `await uow.commit()`, and are rolled back otherwise. A lost
    database is waited for while the unit begins (within the call's deadline), and leaves as
    UNAVAILABLE if it is not back in time, or is lost once the block has begun."""

    __slots__ = (
        "_closing",
        "_committed",
        "_conn",
        "_db",
        "_factory",
        "_scope",
        "_snapshot",
        "executor",
        "opened",
        "opening",
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
        # A statement sent in BEGIN's message, and the command tag of the message's last
        # statement; statements sent in COMMIT's message (see `send_with_commit`).
        self.opening = ""
        self.opened = ""
        self._closing: list[str] = []

    async def __aenter__(self) -> UnitOfWork[R]:
        outage, until = self._db.outage, None
        if outage.ongoing:  # known to be gone: wait with the others rather than knock again
            until = outage.wait_until()
            await outage.wait(until)  # if not back in time, one try says why it failed
        while True:
            try:
                await self._start()
                break
            except BaseException as exc:
                await self._release(failed=True)
                if not (isinstance(exc, Exception) and is_unavailable(exc)):
                    raise
                # Nothing of this unit has reached the database: beginning again is safe.
                # Wait for it to be back, within the call's time (common.db.outage).
                until = outage.wait_until() if until is None else until
                if not await outage.wait(until):
                    raise unavailable(exc) from exc
        if self._scope is not None:
            self.repo = self._factory(self.executor, self._scope)
        return self

    async def _start(self) -> None:
        """Takes a connection and begins the transaction, naming the tenant."""
        pool = self._db.pool or await self._db.open()
        conn = self._conn = await self._acquire(pool)
        self.executor = self._executor(conn)
        begin = _begin_sql(self._scope, self._snapshot, self.opening)
        self.opened = await self._control(conn, begin, "BEGIN")

    async def _acquire(self, pool: asyncpg.Pool) -> asyncpg.Connection:
        # No timer on the wait for a connection: the call's deadline bounds it.
        return await pool.acquire()

    def _executor(self, conn: asyncpg.Connection) -> Executor:
        return Executor(conn)

    async def _control(self, conn: asyncpg.Connection, sql: str, name: str) -> str:
        """Runs a transaction control statement (`name` is what it does: BEGIN, COMMIT,
        ROLLBACK; `sql` may carry the tenant, and statements sent along); its command tag."""
        status: str = await conn.execute(sql)
        return status

    def send_with_commit(self, sql: str) -> None:
        """`sql` (a statement as text, its values written as `sql_literal`s) is sent in COMMIT's
        message, before it: a last write that costs no round trip of its own."""
        self._closing.append(sql)

    async def commit(self) -> None:
        assert self._conn is not None
        try:
            await self._control(self._conn, "; ".join([*self._closing, "COMMIT"]), "COMMIT")
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
                await self._control(conn, "ROLLBACK", "ROLLBACK")
            except (Exception, asyncio.CancelledError):
                reusable = False
        # A connection the server dropped is handed back by asyncpg itself as it closes.
        with contextlib.suppress(asyncpg.InterfaceError):
            if not reusable or (failed and conn.is_closed()):
                conn.terminate()
            pool = self._db.pool
            if pool is not None:
                await pool.release(conn)
