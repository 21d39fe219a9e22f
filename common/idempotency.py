"""Request ids (AIP-155): a write's answer kept under the id its caller chose for it, so that a
retry of the write is answered with that answer instead of being applied again.

The key is (organization, caller, method, request id): an id is the caller's own, and another
user's or organization's equal id is another operation. A write with an id stores its answer
under the key in its own transaction, sent with the COMMIT (one message, as text with literal
values, as the tenant settings are sent with BEGIN, common.db.uow): the write and its answer
commit together or not at all, at no round trip more than the write alone. When the key is
taken already, the answer's INSERT fails on the key's unique index and the write rolls back;
the stored answer is read and given instead. So a retry never writes, whatever happened to the
row since; and of concurrent calls with one key, the later ones wait on the unique index for
the first one's transaction: after its commit they roll back and answer with its answer, after
its rollback one of them stores its own. A retry whose write is refused (a Delete of a year the
first call deleted, a Create of an id it took, an etag it moved past) is answered the same way.
A streamed write (a CSV import) looks for a stored answer first, in its BEGIN message, so that
a retry is answered before its file is read. Only answers are stored, never errors: a retry of
a failed write is tried afresh. A digest of the request is stored with the answer: the same id
with another request is INVALID_ARGUMENT naming the id.

Answers are kept `REQUEST_ID_TTL_SECONDS` (a day by default) and then purged by each server
in batches (`Purger`), by a SECURITY DEFINER function that each store's migration creates:
the services' role is under row-level security and sees only its caller's rows, while the purge
deletes expired rows of every tenant. The function deletes by `ctid` at most a batch of the
oldest expired rows per transaction, skipping rows locked by someone else, so it holds its locks
for milliseconds and never waits for a writer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, TypeVar

import asyncpg
from google.protobuf.message import Message
from sqlalchemy import (
    Column,
    Executable,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    bindparam,
    func,
    select,
)

from common import rls
from common.db import UUID_TYPE, Database, Executor, UnitOfWork, UtcDateTime, is_unavailable
from common.db.uow import RepositoryFactory, sql_literal
from common.errors import FieldViolation, ServiceError, UnavailableError, ValidationError
from common.tenancy import TenantScope
from common.validation import canonical_uuid

log = logging.getLogger("idempotency")

T = TypeVar("T")
R = TypeVar("R")
M = TypeVar("M", bound=Message)

# A violation names the field as a REST caller spells it: its JSON name (as every field here).
FIELD = "requestId"
METADATA_KEY = "request-id"
# A caller without an organization (global access) keys its ids under this one.
NO_ORGANIZATION = "00000000-0000-0000-0000-000000000000"
# An import's request is its stream, which a retry is answered without reading: its digest is
# of the file's first bytes only (a different file under a reused id is caught by its start).
IMPORT_HEAD_BYTES = 64 * 1024
REUSED_REASON = "REQUEST_ID_REUSED"
STORED = "SELECT 1"  # `exists_statement`'s command tag when an answer is stored
# A write whose answer found the key taken, and then no answer under it (purged in between),
# is written again.
WRITE_ATTEMPTS = 3
# What the app role needs on a store (the purge runs as the function's owner).
APP_PRIVILEGES = "SELECT, INSERT"

PURGE_BATCH = 1000
PURGE_PAUSE_SECONDS = 0.05  # between two batches of one purge: let the writers through
PURGE_MAX_INTERVAL_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A write's request id, checked, and the method it names."""

    method: str
    request_id: str
    field: str = FIELD  # how the caller names it, for the errors


@dataclass(frozen=True, slots=True)
class Stored:
    """The answer a first call stored, as the bytes of its response message."""

    response: bytes


def checked_id(value: str, field: str) -> str:
    """The request id in canonical form; INVALID_ARGUMENT naming `field` unless a UUID."""
    canonical = canonical_uuid(value)
    if canonical is None:
        raise ValidationError.field(field, "must be a UUID (AIP-155), new for each operation")
    return canonical


class _Head:
    """The digest of a client stream's first IMPORT_HEAD_BYTES (all of a shorter stream),
    taken as the import reads it, so that nothing waits for it; or read for it alone by a
    retry, which reads no further."""

    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self._seen = 0

    def _take(self, chunk: bytes) -> None:
        wanted = IMPORT_HEAD_BYTES - self._seen
        if wanted > 0:
            self._hash.update(chunk[:wanted])
            self._seen += min(len(chunk), wanted)

    async def passing(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            self._take(chunk)
            yield chunk

    async def digest(self) -> bytes:
        while self._seen < IMPORT_HEAD_BYTES:
            chunk = await anext(self._stream, None)
            if chunk is None:
                break
            self._take(chunk)
        return self._hash.digest()


class Once(Generic[T, M]):
    """One call's request id (or none) and its answer's message: how the servicer's `render`
    turns the service's result into it, and how stored bytes are read back as one; and the
    digest of the request, which tells a reused id apart.

    The servicer builds it (`unary`, `streamed`), the service hands it to `RequestIds.run`,
    and the servicer answers with `answer(result)`."""

    __slots__ = ("_digest", "_head", "_message", "_render", "_rendered", "key")

    def __init__(
        self,
        key: RequestKey | None,
        render: Callable[[T], M],
        message: Callable[[bytes], M],
        digest: bytes = b"",
    ) -> None:
        self.key = key
        self._render = render
        self._message = message
        self._rendered: M | None = None
        self._digest = digest
        self._head: _Head | None = None

    @classmethod
    def unary(
        cls, method: str, request: Any, render: Callable[[T], M], message: type[M]
    ) -> Once[T, M]:
        """For a request message with a `request_id` field; its digest is of the whole
        request, deterministically serialized."""
        value: str = request.request_id
        if not value:
            return cls(None, render, message.FromString)
        key = RequestKey(method, checked_id(value, FIELD))
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).digest()
        return cls(key, render, message.FromString, digest)

    @classmethod
    def streamed(
        cls,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        render: Callable[[T], M],
        message: type[M],
    ) -> Once[T, M]:
        """For a client stream, whose id comes as `request-id` metadata; its digest is of the
        stream's head (`read_through`)."""
        value = next((v for k, v in metadata or () if k == METADATA_KEY), "")
        text = value.decode() if isinstance(value, bytes) else value
        key = RequestKey(method, checked_id(text, METADATA_KEY), METADATA_KEY) if text else None
        return cls(key, render, message.FromString)

    def read_through(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """The stream of a streamed write, its head taken into the digest as it passes."""
        if self.key is None:
            return aiter(chunks)
        self._head = _Head(aiter(chunks))
        return self._head.passing()

    @property
    def is_stream(self) -> bool:
        """A client stream's write (`read_through`): a retry is answered before it is read."""
        return self._head is not None

    async def digest(self) -> bytes:
        """The request's digest; a stream's once its head has been read (a stream that the
        write did not read is read that far, and no further)."""
        if self._head is not None:
            return await self._head.digest()
        return self._digest

    def encode(self, result: T) -> bytes:
        """The answer to store for `result` (kept for `answer`, which then has it at hand)."""
        self._rendered = self._render(result)
        return self._rendered.SerializeToString()

    def answer(self, result: T | Stored) -> M:
        """The response message: a stored answer read back, or `result` rendered."""
        if isinstance(result, Stored):
            return self._message(result.response)
        if self._rendered is not None:
            return self._rendered
        return self._render(result)


def request_ids_table(name: str, metadata: MetaData) -> Table:
    """A service's store of answers, keyed within the organization like every tenant table."""
    return Table(
        name,
        metadata,
        Column("organizationId", UUID_TYPE, nullable=False),
        Column("userId", UUID_TYPE, nullable=False),
        Column("method", Text, nullable=False),
        Column("requestId", UUID_TYPE, nullable=False),
        Column("digest", LargeBinary, nullable=False),
        Column("response", LargeBinary, nullable=False),
        Column("createdAt", UtcDateTime, nullable=False),
        PrimaryKeyConstraint(
            "organizationId", "userId", "method", "requestId", name=f"{name}_pkey"
        ),
        Index(f"{name}_created", "createdAt"),
    )


def purge_function(table: str) -> str:
    return f"{table}_purge"


class RequestIds:
    """One service's store: stored answers, the writes that store them, and their purge, on
    `table` (`request_ids_table`)."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.function = purge_function(table.name)

    @cached_property
    def lookup_statement(self) -> Executable:
        c = self.table.c
        return select(c.digest, c.response).where(
            c.organizationId == bindparam("k_org", type_=UUID_TYPE),
            c.userId == bindparam("k_user", type_=UUID_TYPE),
            c.method == bindparam("k_method"),
            c.requestId == bindparam("k_id", type_=UUID_TYPE),
        )

    @cached_property
    def purge_statement(self) -> Executable:
        return select(getattr(func, self.function)(bindparam("ttl"), bindparam("batch")))

    @staticmethod
    def _binds(scope: TenantScope, key: RequestKey) -> dict[str, Any]:
        return {
            "k_org": scope.principal.organization_id or NO_ORGANIZATION,
            "k_user": scope.user_id,
            "k_method": key.method,
            "k_id": key.request_id,
        }

    def _literals(self, scope: TenantScope, key: RequestKey) -> dict[str, str]:
        names = ("organizationId", "userId", "method", "requestId")
        values = self._binds(scope, key).values()
        return {name: sql_literal(str(v)) for name, v in zip(names, values, strict=True)}

    def answer_statement(
        self, scope: TenantScope, key: RequestKey, response: bytes, digest: bytes
    ) -> str:
        """The answer's INSERT, sent in COMMIT's message so that it costs no round trip of its
        own. As text: the ids are ones the token verifier and `checked_id` made canonical
        UUIDs, the method one of ours, the bytes hex; each is written as a literal regardless."""
        key_values = ", ".join(self._literals(scope, key).values())
        return (
            f'INSERT INTO "{self.table.name}" ("organizationId", "userId", method, "requestId", '  # noqa: S608
            f'digest, response, "createdAt") VALUES ({key_values}, {_hex(digest)}, '
            f"{_hex(response)}, now())"
        )

    def exists_statement(self, scope: TenantScope, key: RequestKey) -> str:
        """Whether an answer is stored under `key` (its command tag: SELECT 1 or SELECT 0),
        sent in BEGIN's message; literals as in `answer_statement`."""
        where = " AND ".join(f'"{c}" = {v}' for c, v in self._literals(scope, key).items())
        return f'SELECT 1 FROM "{self.table.name}" WHERE {where}'  # noqa: S608

    async def write(
        self,
        db: Database,
        scope: TenantScope,
        repository: RepositoryFactory[R],
        once: Once[T, Any] | None,
        work: Callable[[UnitOfWork[R]], Awaitable[T]],
    ) -> T | Stored:
        """`work(uow)` in a unit of work for `scope`, committed; with a request id (`once`),
        once: the answer goes in with the commit, and a key already taken (before, or by a
        concurrent call that commits first) rolls this write back and answers the stored
        answer. A streamed write's stored answer is found before the stream is read."""
        if once is None or once.key is None:
            async with db.unit_of_work(scope, repository) as uow:
                result = await work(uow)
                await uow.commit()
            return result
        for _ in range(WRITE_ATTEMPTS):
            try:
                return await self._write_once(db, scope, repository, once, work)
            except Exception as error:
                if not self._maybe_answered(error):
                    raise
                stored = await self._stored(db, scope, once)
                if stored is not None:
                    return stored
                if not self._taken(error):
                    raise  # the write's own error, and no answer to give instead
                # The key was taken, and purged before it could be read: write again.
        raise RuntimeError(f"{self.table.name}: the key was taken and gone {WRITE_ATTEMPTS} times")

    async def _write_once(
        self,
        db: Database,
        scope: TenantScope,
        repository: RepositoryFactory[R],
        once: Once[T, Any],
        work: Callable[[UnitOfWork[R]], Awaitable[T]],
    ) -> T | Stored:
        assert once.key is not None
        opening = self.exists_statement(scope, once.key) if once.is_stream else ""
        async with db.unit_of_work(scope, repository, opening=opening) as uow:
            if opening and uow.opened == STORED:
                stored = await self._read(uow.executor, scope, once)
                if stored is not None:
                    return stored
            result = await work(uow)
            response, digest = once.encode(result), await once.digest()
            uow.send_with_commit(self.answer_statement(scope, once.key, response, digest))
            await uow.commit()
        return result

    def _taken(self, error: BaseException) -> bool:
        """`error` is the answer's INSERT finding its key taken."""
        return (
            isinstance(error, asyncpg.UniqueViolationError)
            and error.constraint_name == f"{self.table.name}_pkey"
        )

    def _maybe_answered(self, error: BaseException) -> bool:
        """A write that failed so may be a retry: its key taken, or the write refused (a retried
        Delete finds its year gone, a retried Create its id taken, …)."""
        if isinstance(error, UnavailableError):
            return False
        return isinstance(error, ServiceError) or self._taken(error)

    async def _stored(
        self, db: Database, scope: TenantScope, once: Once[Any, Any]
    ) -> Stored | None:
        async with db.unit_of_work(scope, _no_repository) as uow:
            return await self._read(uow.executor, scope, once)

    async def _read(
        self, executor: Executor, scope: TenantScope, once: Once[Any, Any]
    ) -> Stored | None:
        """The answer stored under `once`'s key, if any; INVALID_ARGUMENT naming the id when
        it was stored for another request."""
        assert once.key is not None
        found = await executor.row(self.lookup_statement, self._binds(scope, once.key))
        if found is None:
            return None
        if found["digest"] != await once.digest():
            reused = "was used for a different request: send a new id for a new operation"
            raise ValidationError([FieldViolation(once.key.field, reused)], reason=REUSED_REASON)
        return Stored(bytes(found["response"]))

    async def purge(self, db: Database, ttl_seconds: int, batch: int = PURGE_BATCH) -> int:
        """Deletes the answers older than `ttl_seconds`, of every tenant, a batch per
        transaction until fewer than a batch are left; how many."""
        total = 0
        while True:
            async with db.unit_of_work(None, _no_repository) as uow:
                params = {"ttl": ttl_seconds, "batch": batch}
                deleted = int(await uow.executor.scalar(self.purge_statement, params))
                await uow.commit()
            total += deleted
            if deleted < batch:
                return total
            await asyncio.sleep(PURGE_PAUSE_SECONDS)


def _no_repository(*_: Any) -> None:
    return None


def _hex(data: bytes) -> str:
    return f"decode('{data.hex()}', 'hex')"


class Purger:
    """Purges every store of a server every `interval` seconds (a fifth of the TTL, at most
    five minutes, each wait jittered by ±20% so that replicas spread out), from a task that
    logs and carries on when a purge fails."""

    def __init__(self, db: Database, stores: Sequence[RequestIds], ttl_seconds: int) -> None:
        self._db = db
        self._stores = tuple(stores)
        self._ttl = ttl_seconds
        self.interval = min(ttl_seconds / 5, PURGE_MAX_INTERVAL_SECONDS)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._stores and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval * random.uniform(0.8, 1.2))
            await self.purge_all()

    async def purge_all(self) -> int:
        """One purge of every store; failures are logged, not raised."""
        total = 0
        for store in self._stores:
            try:
                deleted = await store.purge(self._db, self._ttl)
            except Exception as exc:
                level = logging.INFO if is_unavailable(exc) else logging.WARNING
                log.log(
                    level,
                    "request id purge failed",
                    extra={"table": store.table.name},
                    exc_info=level == logging.WARNING,
                )
                continue
            if deleted:
                log.info(
                    "expired request ids purged", extra={"table": store.table.name, "rows": deleted}
                )
            total += deleted
        return total


def create_store(bind: Any, table: str) -> None:
    """The migration of a store (revision-time DDL, kept as it was created): the table, its
    purge index, its row-level security (the caller's own rows) and its purge function. A new
    table: no lock on any table in use."""
    schema = bind.exec_driver_sql("SELECT current_schema()").scalar()
    bind.exec_driver_sql(
        f'CREATE TABLE "{table}" ('
        '"organizationId" uuid NOT NULL, "userId" uuid NOT NULL, method text NOT NULL, '
        '"requestId" uuid NOT NULL, digest bytea NOT NULL, response bytea NOT NULL, '
        '"createdAt" timestamptz NOT NULL, '
        f'CONSTRAINT "{table}_pkey" PRIMARY KEY ("organizationId", "userId", method, "requestId"))'
    )
    bind.exec_driver_sql(f'CREATE INDEX "{table}_created" ON "{table}" ("createdAt")')
    predicate = f'{rls.organization_scope()} AND "userId" = {rls.USER}'
    rls.enable(bind, table, f"{table}_caller", predicate)
    function, qualified = purge_function(table), f'"{schema}"."{table}"'
    expired = '"createdAt" < now() - make_interval(secs => ttl_seconds)'
    # Identifiers are the migrations' own constants, never input.
    bind.exec_driver_sql(
        f'CREATE FUNCTION "{function}"(ttl_seconds integer, batch integer) RETURNS integer '  # noqa: S608
        "LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ "
        f"WITH gone AS (DELETE FROM {qualified} WHERE ctid = ANY (ARRAY("
        f"SELECT ctid FROM {qualified} WHERE {expired} "
        'ORDER BY "createdAt" LIMIT batch FOR UPDATE SKIP LOCKED)) RETURNING 1) '
        "SELECT count(*)::integer FROM gone $$"
    )
    bind.exec_driver_sql(f'REVOKE ALL ON FUNCTION "{function}"(integer, integer) FROM PUBLIC')


def drop_store(bind: Any, table: str) -> None:
    bind.exec_driver_sql(f'DROP FUNCTION IF EXISTS "{purge_function(table)}"(integer, integer)')
    bind.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"')
