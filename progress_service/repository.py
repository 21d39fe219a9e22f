"""SQL for `user_progress`: the caller's own live rows, and nothing else, are reachable."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Executable,
    Select,
    Text,
    and_,
    bindparam,
    cast,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import Insert, insert

from common import keyset
from common.db import Record, utcnow
from common.idempotency import RequestIds
from common.pagination import PageRequest
from common.repository import TenantRepository
from progress_service.domain import UserProgress, UserProgressInput
from progress_service.limits import DEFAULT_CAPS, ReadCaps
from progress_service.tables import request_ids
from progress_service.tables import user_progress as t

# Answers kept under request ids, written in the same transactions as these rows.
REQUEST_IDS = RequestIds(request_ids)

COLUMNS = (
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
# The list's one order, newest first; `user_progress_user_type_created` reads it.
LIST_ORDER = keyset.SortKey("createdAt", descending=True)


def to_domain(record: Record) -> UserProgress:
    """The row mapper of writes: a record of `COLUMNS` (ids arrive as text, JSON decoded)."""
    return UserProgress(*record)


def _capped(column: ColumnElement[str], chars: int, name: str) -> ColumnElement[str]:
    """The first `chars` + 1 characters of `column`: enough to see it is longer than `chars`.
    The number is written into the statement, which is built and compiled once per cap."""
    return func.left(column, literal_column(str(chars + 1))).label(name)


def listed_columns(caps: ReadCaps) -> tuple[ColumnElement[Any], ...]:
    """`COLUMNS` with item_id, value and metadata (as JSON text) loaded only up to `caps`."""
    return (
        t.c.id,
        t.c.progress_type,
        _capped(t.c.item_id, caps.item_chars, "item_id"),
        _capped(t.c.value, caps.value_chars, "value"),
        t.c.score,
        _capped(cast(t.c["metadata"], Text), caps.metadata_chars, "metadata"),
        *COLUMNS[6:],
    )


def listed_to_domain(record: Record, caps: ReadCaps) -> UserProgress:
    """A record of `listed_columns`; metadata past its cap is left out and named as cut (the
    service cuts the texts: `service.as_read`)."""
    # Built in one go: a mapped row copied by dataclasses.replace cost a list page of 10 more
    # than its statements' Python (bench list-cpu).
    # Unpacked by position (the order of `listed_columns`), which mypy can check.
    id_, progress_type, item_id, value, score, text, org, campus, user, created, updated = record
    metadata: Any = None
    truncated: tuple[str, ...] = ()
    if text is not None:
        if len(text) > caps.metadata_chars:
            truncated = ("metadata",)
        else:
            metadata = json.loads(text)
    return UserProgress(
        id_,
        progress_type,
        item_id,
        value,
        score,
        metadata,
        org,
        campus,
        user,
        created,
        updated,
        truncated,
    )


def on_conflict_update(statement: Insert) -> Insert:
    """The upsert rule shared by one row and a CSV import: a live key's row takes the new
    value, score, metadata and campus; its creation stays as it was."""
    excluded = statement.excluded
    return statement.on_conflict_do_update(
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


# Statements are built once, with bind parameters, for each shape a call can take (global
# access or not, an item or not): building them per call cost more than running them.
class UserProgressRepository(TenantRepository):
    table = t
    owned_by_user = True

    @classmethod
    def _matching(cls, global_access: bool, with_item: bool) -> ColumnElement[bool]:
        clauses = [cls.readable(global_access), t.c.progress_type == bindparam("b_type")]
        if with_item:
            clauses.append(t.c.item_id == bindparam("b_item"))
        return and_(*clauses)

    @classmethod
    @cache
    def _count_statement(cls, global_access: bool, with_item: bool) -> Select[Any]:
        return select(func.count()).select_from(t).where(cls._matching(global_access, with_item))

    @classmethod
    @cache
    def _page_statement(
        cls, global_access: bool, with_item: bool, caps: ReadCaps = DEFAULT_CAPS
    ) -> Select[Any]:
        """A page by number (OFFSET), for callers that still send `page`."""
        return (
            select(*listed_columns(caps))
            .where(cls._matching(global_access, with_item))
            .order_by(*keyset.order_by(t, LIST_ORDER))
            .limit(bindparam("limit"))
            .offset(bindparam("b_offset"))
        )

    @classmethod
    @cache
    def _keyset_statement(
        cls, global_access: bool, with_item: bool, after: bool, caps: ReadCaps = DEFAULT_CAPS
    ) -> Select[Any]:
        """The first page, or the page after the position bound in `k_value`/`k_id`; no
        column loaded beyond `caps`. (The order has no NULLs: one branch, on the table.)"""
        where = [cls._matching(global_access, with_item)]
        region = keyset.VALUE if after else None
        return keyset.page(t, where, LIST_ORDER, region, lambda _table: listed_columns(caps))

    @classmethod
    @cache
    def _soft_delete_statement(cls, global_access: bool) -> Executable:
        return (
            update(t)
            .where(cls._matching(global_access, with_item=True))
            .values(deletedAt=bindparam("b_now"), updatedAt=bindparam("b_now"))
            .values(updatedById=bindparam("scope_user"))
        )

    @staticmethod
    @cache
    def _upsert_statement() -> Executable:
        """One atomic INSERT … ON CONFLICT; the server draws the new row's id."""
        values: dict[str, Any] = {
            name: bindparam(name, type_=t.c[name].type) for name in _UPSERT_VALUES
        }
        values["id"] = func.gen_random_uuid()
        return on_conflict_update(insert(t).values(values)).returning(*COLUMNS)

    async def upsert(self, data: UserProgressInput) -> tuple[UserProgress, bool]:
        """Creates or updates the caller's row; returns it and whether it was created."""
        now, user = utcnow(), self.scope.user_id
        values = {
            "progress_type": data.progress_type,
            "item_id": data.item_id,
            "value": data.value,
            "score": data.score,
            "metadata": data.metadata,
            "organizationId": self.scope.writable_organization(),
            "campusId": self.scope.campus_id,
            "userId": user,
            "createdById": user,
            "updatedById": user,
            "createdAt": now,
            "updatedAt": now,
        }
        record = await self.db.row(self._upsert_statement(), values)
        assert record is not None  # RETURNING of an upsert always gives the row
        progress = to_domain(record)
        return progress, progress.created_at == now

    async def list(
        self,
        progress_type: str,
        item_id: str | None,
        page: PageRequest,
        position: list[Any] | None,
        caps: ReadCaps = DEFAULT_CAPS,
        *,
        counted: bool = True,
    ) -> tuple[list[UserProgress], int | None, list[Any] | None]:
        """One page of the caller's rows, by number (OFFSET) or after `position` (keyset), no
        column loaded beyond `caps`; the count before paging unless not `counted`; and where
        the next page starts, unless this is the last."""
        shape = (self.global_access, item_id is not None)
        params = self.binds(b_type=progress_type, b_item=item_id, limit=page.limit + 1)
        count = None
        if counted:
            count = int(await self.db.scalar(self._count_statement(*shape), params))
        if page.offset:
            statement = self._page_statement(*shape, caps)
            params["b_offset"] = page.offset
        else:
            if position is not None:
                params.update(keyset.resume(t, LIST_ORDER, position)[1])
            statement = self._keyset_statement(*shape, position is not None, caps)
        records = await self.db.rows(statement, params)
        more = len(records) > page.limit
        records = records[: page.limit]
        last = keyset.position(records[-1], LIST_ORDER) if more else None
        return [listed_to_domain(r, caps) for r in records], count, last

    async def soft_delete(self, progress_type: str, item_id: str) -> int:
        params = self.binds(b_type=progress_type, b_item=item_id, b_now=utcnow())
        return await self.db.execute(self._soft_delete_statement(self.global_access), params)


_UPSERT_VALUES = (
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
