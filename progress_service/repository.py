"""SQL for `user_progress`; every statement is scoped to the caller's organization and user."""

from __future__ import annotations

from collections.abc import AsyncIterable, Sequence
from functools import cache
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Executable,
    Integer,
    Row,
    Select,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    func,
    literal,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.ext.asyncio import AsyncConnection

from common.auth import Principal
from common.csvstream import formula_safe
from common.csvstream.staging import (
    drop_staging,
    random_uuid,
    row_timestamp,
    stage,
)
from common.db import (
    UUID_TYPE,
    Connection,
    driver_fetch,
    driver_statement,
    new_id,
    upsert_insert,
    utcnow,
)
from common.pagination import PageRequest
from common.tenancy import get_organization_id_or_global, require_organization_id, require_user_id
from progress_service.domain import UserProgress, UserProgressInput
from progress_service.tables import user_progress as t

_COLUMNS = (
    t.c.id,
    t.c.progress_type,
    t.c.item_id,
    t.c.value,
    t.c.score,
    t.c["metadata"],
    t.c.organizationId,
    t.c.campusId,
    t.c.userId,
    t.c.createdAt,
    t.c.updatedAt,
)
_CONFLICT_KEY = (t.c.organizationId, t.c.userId, t.c.progress_type, t.c.item_id)


def _to_domain(row: Row[Any] | Sequence[Any]) -> UserProgress:
    return UserProgress(*row)


def _from_record(r: Sequence[Any]) -> UserProgress:
    """An asyncpg record of `_COLUMNS` (UUIDs as uuid.UUID, JSON decoded) as the domain row."""
    campus = r[7]
    return UserProgress(
        str(r[0]), r[1], r[2], r[3], r[4], r[5], str(r[6]),
        None if campus is None else str(campus), str(r[8]), r[9], r[10],
    )  # fmt: skip


# Statements are built once, with bind parameters, for each shape a call can take: building
# them per call (and hashing their cache keys) cost more than running them on the hot paths.
def _owner_scope(user_id: Any, organization_id: Any) -> list[ColumnElement[bool]]:
    """The caller's live rows: its own, in its organization unless it has global access."""
    clauses = [t.c.userId == user_id, t.c.deletedAt.is_(None)]
    if organization_id is not None:
        clauses.append(t.c.organizationId == organization_id)
    return clauses


def _matching(with_org: bool, with_item: bool) -> ColumnElement[bool]:
    clauses = _owner_scope(bindparam("b_user"), bindparam("b_org") if with_org else None)
    clauses.append(t.c.progress_type == bindparam("b_type"))
    if with_item:
        clauses.append(t.c.item_id == bindparam("b_item"))
    return and_(*clauses)


@cache
def _count_statement(with_org: bool, with_item: bool) -> Executable:
    return select(func.count()).select_from(t).where(_matching(with_org, with_item))


@cache
def _page_statement(with_org: bool, with_item: bool) -> Executable:
    return (
        select(*_COLUMNS)
        .where(_matching(with_org, with_item))
        .order_by(t.c.createdAt.desc(), t.c.id.desc())
        .limit(bindparam("b_limit"))
        .offset(bindparam("b_offset"))
    )


@cache
def _soft_delete_statement(with_org: bool) -> Executable:
    return (
        update(t)
        .where(_matching(with_org, with_item=True))
        .values(
            deletedAt=bindparam("b_now"),
            updatedAt=bindparam("b_now"),
            updatedById=bindparam("b_user"),
        )
    )


_UPSERT_VALUES = (
    "id",
    "progress_type",
    "item_id",
    "value",
    "score",
    "metadata",
    "organizationId",
    "campusId",
    "userId",
    "createdById",
    "updatedById",
    "createdAt",
    "updatedAt",
)


@cache
def _upsert_statement(dialect: str) -> Executable:
    """One atomic INSERT … ON CONFLICT on the connection's dialect. PostgreSQL draws the new
    row's id itself (`gen_random_uuid()`): one value less to make, encode and send per call."""
    values: dict[str, Any] = {
        name: bindparam(name, type_=t.c[name].type) for name in _UPSERT_VALUES
    }
    insert: PgInsert | SqliteInsert = sqlite.insert(t)
    if dialect == "postgresql":
        values["id"] = func.gen_random_uuid()
        insert = postgresql.insert(t)
    return _on_conflict_update(insert.values(values)).returning(*_COLUMNS)


def _on_conflict_update(insert: PgInsert | SqliteInsert) -> PgInsert | SqliteInsert:
    """The upsert rule shared by one row and a CSV import: a live key's row takes the new
    value, score, metadata and campus; its creation stays as it was."""
    excluded = insert.excluded
    return insert.on_conflict_do_update(
        index_elements=_CONFLICT_KEY,
        index_where=t.c.deletedAt.is_(None),
        set_={
            "value": excluded.value,
            "score": excluded.score,
            "metadata": excluded["metadata"],
            "campusId": excluded.campusId,
            "updatedById": excluded.updatedById,
            "updatedAt": excluded.updatedAt,
        },
    )


class UserProgressRepository:
    """The caller's own live rows, and nothing else, are reachable through this object."""

    def __init__(self, conn: Connection, principal: Principal) -> None:
        """`conn` from `Database.transaction`, or for the hot paths (upsert, list, soft_delete)
        from `Database.driver_transaction`, which runs their Core statements on asyncpg."""
        self._any = conn
        self._principal = principal
        self._user_id = require_user_id(principal)
        self._organization_id = get_organization_id_or_global(principal)

    @property
    def _conn(self) -> AsyncConnection:
        if not isinstance(self._any, AsyncConnection):
            raise TypeError("this statement runs through SQLAlchemy: use Database.transaction")
        return self._any

    def _scope(self) -> ColumnElement[bool]:
        return and_(*_owner_scope(self._user_id, self._organization_id))

    def _binds(self, progress_type: str) -> dict[str, Any]:
        """Bind values for the caller's scope; the organization only when not global."""
        scope = {"b_user": self._user_id, "b_type": progress_type}
        if self._organization_id is not None:
            scope["b_org"] = self._organization_id
        return scope

    async def upsert(self, data: UserProgressInput) -> tuple[UserProgress, bool]:
        """One atomic INSERT … ON CONFLICT; returns the row and whether it was created."""
        now = utcnow()
        values = {
            "progress_type": data.progress_type,
            "item_id": data.item_id,
            "value": data.value,
            "score": data.score,
            "metadata": data.metadata,
            "organizationId": require_organization_id(self._principal),
            "campusId": self._principal.campus_id,
            "userId": self._user_id,
            "createdById": self._user_id,
            "updatedById": self._user_id,
            "createdAt": now,
            "updatedAt": now,
        }
        if isinstance(self._any, AsyncConnection):
            dialect = self._any.dialect.name
            if dialect != "postgresql":
                values["id"] = new_id()
            statement = _upsert_statement(dialect)
            record = _to_domain((await self._any.execute(statement, values)).one())
        else:
            (found,) = await driver_fetch(self._any, _upsert_statement("postgresql"), values)
            record = _from_record(found)
        return record, record.created_at == now

    async def list(
        self, progress_type: str, item_id: str | None, page: PageRequest
    ) -> tuple[list[UserProgress], int]:
        shape = (self._organization_id is not None, item_id is not None)
        params = self._binds(progress_type)
        if item_id is not None:
            params["b_item"] = item_id
        paged = {**params, "b_limit": page.limit, "b_offset": page.offset}
        if not isinstance(self._any, AsyncConnection):
            ((count,),) = await driver_fetch(self._any, _count_statement(*shape), params)
            rows = await driver_fetch(self._any, _page_statement(*shape), paged)
            return [_from_record(r) for r in rows], int(count)
        count = await self._any.scalar(_count_statement(*shape), params)
        result = await self._any.execute(_page_statement(*shape), paged)
        return [_to_domain(row) for row in result], int(count or 0)

    async def soft_delete(self, progress_type: str, item_id: str) -> int:
        params = self._binds(progress_type) | {"b_item": item_id, "b_now": utcnow()}
        statement = _soft_delete_statement(self._organization_id is not None)
        if not isinstance(self._any, AsyncConnection):
            compiled = driver_statement(statement)
            status: str = await self._any.execute(compiled.sql, *compiled.args(params))
            return int(status.rsplit(" ", 1)[-1])  # "UPDATE n"
        result = await self._any.execute(statement, params)
        return int(result.rowcount)

    async def stage_import(self, batches: AsyncIterable[Sequence[tuple[Any, ...]]]) -> Table:
        """A staging table holding every row of the upload, in `CSV_COLUMNS` order."""
        return await stage(
            self._conn,
            batches,
            Column("progress_type", Text),
            Column("item_id", Text),
            Column("value", Text),
            Column("score", Integer),
            Column("metadata", Text),
        )

    async def apply_import(self, staging: Table) -> tuple[int, int]:
        """Upserts the last staged row of each (type, item) in one statement; (created, updated)."""
        s = staging.c
        ranked = select(
            s.row_index,
            s.progress_type,
            s.item_id,
            s.value,
            s.score,
            s["metadata"],
            func.row_number()
            .over(partition_by=(s.progress_type, s.item_id), order_by=s.row_index.desc())
            .label("rank"),
        ).subquery("ranked")
        latest = select(ranked).where(ranked.c.rank == 1).subquery("latest")
        organization_id = require_organization_id(self._principal)
        existing = await self._conn.scalar(
            select(func.count())
            .select_from(latest)
            .join(
                t,
                and_(
                    t.c.organizationId == organization_id,
                    t.c.userId == self._user_id,
                    t.c.deletedAt.is_(None),
                    t.c.progress_type == cast(latest.c.progress_type, t.c.progress_type.type),
                    t.c.item_id == latest.c.item_id,
                ),
            )
        )
        result = await self._conn.execute(self._upsert_from(latest, organization_id))
        await drop_staging(self._conn, staging)
        updated = int(existing or 0)
        return int(result.rowcount) - updated, updated

    def _upsert_from(self, latest: Any, organization_id: str) -> Any:
        now, pg = utcnow(), self._conn.dialect.name == "postgresql"
        metadata = cast(latest.c["metadata"], JSONB) if pg else latest.c["metadata"]
        stamp = row_timestamp(self._conn, now, latest.c.row_index)
        source = select(
            random_uuid(self._conn),
            cast(latest.c.progress_type, t.c.progress_type.type),
            latest.c.item_id,
            latest.c.value,
            latest.c.score,
            metadata,
            literal(organization_id, UUID_TYPE),
            literal(self._principal.campus_id, UUID_TYPE),
            literal(self._user_id, UUID_TYPE),
            literal(self._user_id, UUID_TYPE),
            literal(self._user_id, UUID_TYPE),
            stamp,
            stamp,
        ).where(literal(True))
        insert = upsert_insert(self._conn, t).from_select(
            [
                "id", "progress_type", "item_id", "value", "score", "metadata",
                "organizationId", "campusId", "userId", "createdById", "updatedById",
                "createdAt", "updatedAt",
            ],
            source,
        )  # fmt: skip
        return _on_conflict_update(insert)

    def export_statement(self, progress_type: str | None) -> Select[Any]:
        where = self._scope()
        if progress_type is not None:
            where = and_(where, t.c.progress_type == progress_type)
        return (
            select(
                type_coerce(t.c.progress_type, Text),
                formula_safe(t.c.item_id),
                formula_safe(t.c.value),
                t.c.score,
                type_coerce(t.c["metadata"], Text),
            )
            .where(where)
            .order_by(t.c.createdAt, t.c.id)
        )
