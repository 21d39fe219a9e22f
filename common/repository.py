"""The repository base: every read, update and delete starts from one readable scope."""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import ColumnElement, Table, and_, bindparam

from common.db.executor import Executor
from common.db.types import UUID_TYPE
from common.tenancy import TenantScope

SCOPE_ORGANIZATION = "scope_org"
SCOPE_USER = "scope_user"


def readable(
    table: Table, global_access: bool, *, owned_by_user: bool = False
) -> ColumnElement[bool]:
    """The one tenancy clause of a tenant table: its live rows, of the caller's organization
    unless it has global access, and of the caller alone when the table's rows are per user."""
    t = table
    clauses: list[ColumnElement[bool]] = [t.c.deletedAt.is_(None)]
    if not global_access:
        clauses.append(t.c.organizationId == bindparam(SCOPE_ORGANIZATION, type_=UUID_TYPE))
    if owned_by_user:
        clauses.append(t.c.userId == bindparam(SCOPE_USER, type_=UUID_TYPE))
    return and_(*clauses)


class TenantRepository:
    """A tenant table seen through a caller's scope.

    `readable(global_access)` is the table's one tenancy clause: its live rows, of the caller's
    organization unless it has global access, and of the caller alone when `owned_by_user`.
    Statements are built once per shape with it (bind parameters `scope_org`, `scope_user`);
    `self.scope_binds` holds the values to run them with for this caller.
    """

    table: ClassVar[Table]
    owned_by_user: ClassVar[bool] = False

    def __init__(self, executor: Executor, scope: TenantScope) -> None:
        self.db = executor
        self.scope = scope
        self.global_access = scope.global_access
        binds: dict[str, Any] = {}
        if not scope.global_access:
            binds[SCOPE_ORGANIZATION] = scope.organization_id
        if self.owned_by_user:
            binds[SCOPE_USER] = scope.user_id
        self.scope_binds = binds

    @classmethod
    def readable(cls, global_access: bool) -> ColumnElement[bool]:
        return readable(cls.table, global_access, owned_by_user=cls.owned_by_user)

    def binds(self, **values: Any) -> dict[str, Any]:
        """This caller's scope values plus a statement's own."""
        return {**self.scope_binds, **values}
