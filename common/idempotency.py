"""Request ids (AIP-155): a write's answer kept under the id its caller chose for it, so that a
retry of the write is answered with that answer instead of being applied again.

The key is (organization, caller, method, request id): an id is the caller's own, and another
user's or organization's equal id is another operation. The first call with a key claims it
(INSERT … ON CONFLICT DO NOTHING) in the same transaction as its write and stores its answer
there before committing; so the claim, the write and the answer commit together or not at all.
The claim goes in the transaction's BEGIN message and the answer in its COMMIT message, as
text with literal values (as the tenant settings do, common.db.uow): a write with a request id
costs no round trip more than one without, which in the benchmark was most of the id's cost.
A concurrent call with the same key waits on the key's unique index until that transaction
ends: after a commit it reads the stored answer, after a rollback its own claim goes through
and it does the work. A retry never writes: it is answered with the stored bytes, whatever
happened to the row since. Only answers are stored, never errors (an error rolls the claim
back, and a retry is tried afresh). A digest of the request is stored with the answer: the
same id with another request is INVALID_ARGUMENT naming the id.

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
    and_,
    bindparam,
    func,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import insert

from common import rls
from common.db import UUID_TYPE, Database, Executor, UnitOfWork, UtcDateTime, is_unavailable
from common.db.uow import RepositoryFactory, sql_literal
from common.errors import FieldViolation, ValidationError
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
CLAIMED = "INSERT 0 1"  # the claim's command tag when it took the key
# A claim that found the key taken, then the row gone (purged in between), claims again.
CLAIM_ATTEMPTS = 3
# What the app role needs on a store (the purge runs as the function's owner).
APP_PRIVILEGES = "SELECT, INSERT, UPDATE"

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
    def claimed_digest(self) -> bytes:
        """The digest a claim is stored with: a unary request's; none for a stream, whose
        answer brings its digest along (a claim is seen by others only with its answer)."""
        return self._digest

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
        # NULL only inside the claiming transaction: it is set before that one commits.
        Column("response", LargeBinary),
        Column("createdAt", UtcDateTime, nullable=False),
        PrimaryKeyConstraint(
            "organizationId", "userId", "method", "requestId", name=f"{name}_pkey"
        ),
        Index(f"{name}_created", "createdAt"),
    )


def purge_function(table: str) -> str:
    return f"{table}_purge"


class RequestIds:
    """One service's store: claims, stored answers and their purge, on `table`
    (`request_ids_table`)."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.function = purge_function(table.name)

    @cached_property
    def _key(self) -> Any:
        c = self.table.c
        return and_(
            c.organizationId == bindparam("k_org", type_=UUID_TYPE),
            c.userId == bindparam("k_user", type_=UUID_TYPE),
            c.method == bindparam("k_method"),
            c.requestId == bindparam("k_id", type_=UUID_TYPE),
        )

    @cached_property
    def claim_statement(self) -> Executable:
        values = {
            "organizationId": bindparam("k_org", type_=UUID_TYPE),
            "userId": bindparam("k_user", type_=UUID_TYPE),
            "method": bindparam("k_method"),
            "requestId": bindparam("k_id", type_=UUID_TYPE),
            "digest": bindparam("digest", type_=LargeBinary),
            "createdAt": func.now(),
        }
        return (
            insert(self.table)
            .values(values)
            .on_conflict_do_nothing(index_elements=list(self.table.primary_key.columns))
            .returning(literal(1))
        )

    @cached_property
    def lookup_statement(self) -> Executable:
        c = self.table.c
        return select(c.digest, c.response).where(self._key)

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

    def unit_of_work(
        self,
        db: Database,
        scope: TenantScope,
        repository: RepositoryFactory[R],
        once: Once[Any, Any] | None,
    ) -> UnitOfWork[R]:
        """The write's unit of work, its BEGIN carrying `once`'s claim (`opening`)."""
        return db.unit_of_work(scope, repository, opening=self.opening(scope, once))

    def opening(self, scope: TenantScope, once: Once[Any, Any] | None) -> str:
        """The claim, sent in the write's BEGIN message (`db.unit_of_work(…, opening=…)`) so
        that it costs no round trip of its own; "" without a request id. As text: the ids are
        ones the token verifier and `checked_id` made canonical UUIDs, the method one of ours,
        the digest hex; each is written as a literal regardless."""
        if once is None or once.key is None:
            return ""
        key = self._literals(scope, once.key)
        return (
            f'INSERT INTO "{self.table.name}" ("organizationId", "userId", method, "requestId", '  # noqa: S608
            f'digest, "createdAt") VALUES ({key["organizationId"]}, {key["userId"]}, '
            f"{key['method']}, {key['requestId']}, {_hex(once.claimed_digest)}, now()) "
            "ON CONFLICT DO NOTHING"
        )

    def answer_statement(
        self, scope: TenantScope, key: RequestKey, response: bytes, digest: bytes
    ) -> str:
        """The answer's UPDATE, sent in COMMIT's message (values as in `opening`)."""
        where = " AND ".join(f'"{c}" = {v}' for c, v in self._literals(scope, key).items())
        return (
            f'UPDATE "{self.table.name}" SET response = {_hex(response)}, '  # noqa: S608
            f"digest = {_hex(digest)} WHERE {where}"
        )

    @staticmethod
    def _literals(scope: TenantScope, key: RequestKey) -> dict[str, str]:
        binds = RequestIds._binds(scope, key)
        names = ("organizationId", "userId", "method", "requestId")
        return {
            name: sql_literal(str(value)) for name, value in zip(names, binds.values(), strict=True)
        }

    async def run(
        self,
        uow: UnitOfWork[Any],
        scope: TenantScope,
        once: Once[T, Any] | None,
        work: Callable[[], Awaitable[T]],
    ) -> T | Stored:
        """`work()` inside `uow`, once per request id: the stored answer when the id was used
        before; else `work()`'s result, whose answer goes with the commit. Without a request
        id, just `work()`. `uow` was opened with `opening(scope, once)`."""
        if once is None or once.key is None:
            return await work()
        if uow.opened != CLAIMED:
            stored = await self._settle(uow.executor, once, self._binds(scope, once.key))
            if stored is not None:
                return stored
        result = await work()
        answer = self.answer_statement(scope, once.key, once.encode(result), await once.digest())
        uow.send_with_commit(answer)
        return result

    async def _settle(
        self, executor: Executor, once: Once[Any, Any], binds: dict[str, Any]
    ) -> Stored | None:
        """After a claim that found its key taken: the answer stored under it; or None once
        this transaction holds the key (the row was purged meanwhile, and claimed again)."""
        assert once.key is not None
        for _ in range(CLAIM_ATTEMPTS):
            found = await executor.row(self.lookup_statement, binds)
            if found is not None:
                if found["digest"] != await once.digest():
                    reused = "was used for a different request: send a new id for a new operation"
                    field = once.key.field
                    raise ValidationError([FieldViolation(field, reused)], reason=REUSED_REASON)
                if found["response"] is None:
                    raise RuntimeError(f"{self.table.name}: a committed claim without an answer")
                return Stored(bytes(found["response"]))
            if await executor.row(self.claim_statement, {**binds, "digest": once.claimed_digest}):
                return None
        raise RuntimeError(f"{self.table.name}: the key was taken and gone {CLAIM_ATTEMPTS} times")

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
        '"requestId" uuid NOT NULL, digest bytea NOT NULL, response bytea, '
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
