"""SQL for `user_progress`; every statement is scoped to the caller's organization and user."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Row, and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from common.auth import Principal
from common.db import new_id, upsert_insert, utcnow
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


class UserProgressRepository:
    """The caller's own live rows, and nothing else, are reachable through this object."""

    def __init__(self, conn: AsyncConnection, principal: Principal) -> None:
        self._conn = conn
        self._principal = principal
        self._user_id = require_user_id(principal)
        self._organization_id = get_organization_id_or_global(principal)

    def _scope(self) -> ColumnElement[bool]:
        clauses = [t.c.userId == self._user_id, t.c.deletedAt.is_(None)]
        if self._organization_id is not None:
            clauses.append(t.c.organizationId == self._organization_id)
        return and_(*clauses)

    def _matching(self, progress_type: str, item_id: str | None) -> ColumnElement[bool]:
        clauses = [self._scope(), t.c.progress_type == progress_type]
        if item_id is not None:
            clauses.append(t.c.item_id == item_id)
        return and_(*clauses)

    async def upsert(self, data: UserProgressInput) -> tuple[UserProgress, bool]:
        """One atomic INSERT … ON CONFLICT; returns the row and whether it was created."""
        now = utcnow()
        insert = upsert_insert(self._conn, t).values(
            id=new_id(),
            progress_type=data.progress_type,
            item_id=data.item_id,
            value=data.value,
            score=data.score,
            metadata=data.metadata,
            organizationId=require_organization_id(self._principal),
            campusId=self._principal.campus_id,
            userId=self._user_id,
            createdById=self._user_id,
            updatedById=self._user_id,
            createdAt=now,
            updatedAt=now,
        )
        excluded = insert.excluded
        statement = insert.on_conflict_do_update(
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
        ).returning(*_COLUMNS)
        row = (await self._conn.execute(statement)).one()
        record = _to_domain(row)
        return record, record.created_at == now

    async def list(
        self, progress_type: str, item_id: str | None, page: PageRequest
    ) -> tuple[list[UserProgress], int]:
        where = self._matching(progress_type, item_id)
        count = await self._conn.scalar(select(func.count()).select_from(t).where(where))
        result = await self._conn.execute(
            select(*_COLUMNS)
            .where(where)
            .order_by(t.c.createdAt.desc(), t.c.id.desc())
            .limit(page.limit)
            .offset(page.offset)
        )
        return [_to_domain(row) for row in result], int(count or 0)

    async def soft_delete(self, progress_type: str, item_id: str) -> int:
        now = utcnow()
        result = await self._conn.execute(
            update(t)
            .where(self._matching(progress_type, item_id))
            .values(deletedAt=now, updatedAt=now, updatedById=self._user_id)
        )
        return int(result.rowcount)
