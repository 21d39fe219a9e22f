"""EXPLAIN ANALYZE of what the paging and filter cases run, through the services' own code.

The services are built in this process on a database whose units of work explain each read
before running it, so the plans are those of the statements the services compile (no copy of
their SQL to drift), on the benchmark's data, with the values the cases send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from sqlalchemy import Executable

from academic_years_service.domain import FilterRequest
from academic_years_service.service import AcademicYearsService
from bench import data
from common.auth import Principal
from common.db import Database, Executor, Record, UnitOfWork, compile_statement
from common.db.executor import NO_PARAMS
from common.db.uow import R
from progress_service.service import UserProgressService

EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "
# The cases whose plans a run prints and keeps in results.json (docs/benchmarks.md shows them).
PLANNED = (
    "ay.list-name-filter",
    "ay.count@global",
    "ay.list-skip@global",
    "page.first@deep",
    "page.last-token@deep",
    "page.last-offset@deep",
)


class _ExplainingExecutor(Executor):
    """Explains every read it runs (EXPLAIN ANALYZE runs it too), then runs it for its rows."""

    __slots__ = ("plans",)

    def __init__(self, conn: asyncpg.Connection, plans: list[str]) -> None:
        super().__init__(conn)
        self.plans = plans

    async def _explain(self, statement: Executable, params: Mapping[str, Any]) -> None:
        c = compile_statement(statement)
        lines = await self.conn.fetch(EXPLAIN + c.sql, *c.args(params))
        self.plans.append("\n".join(r[0] for r in lines))

    async def rows(
        self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS
    ) -> list[Record]:
        await self._explain(statement, params)
        return await super().rows(statement, params)

    async def row(
        self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS
    ) -> Record | None:
        await self._explain(statement, params)
        return await super().row(statement, params)

    async def scalar(self, statement: Executable, params: Mapping[str, Any] = NO_PARAMS) -> Any:
        await self._explain(statement, params)
        return await super().scalar(statement, params)


class _ExplainingUnit(UnitOfWork[R]):
    def _executor(self, conn: asyncpg.Connection) -> Executor:
        db = self._db
        assert isinstance(db, _ExplainingDatabase)
        return _ExplainingExecutor(conn, db.plans)


class _ExplainingDatabase(Database):
    """A database whose units of work explain their reads into `plans` (cleared per case)."""

    plans: list[str]
    unit_class = _ExplainingUnit


def _principal(
    user: str, org: str | None, permissions: list[str], everyone: bool = False
) -> Principal:
    return Principal(user, org, None, everyone, frozenset(permissions))


async def explain_cases(
    dsn: str, walks: dict[str, Any], selected: Callable[[str], bool]
) -> dict[str, list[str]]:
    """The plans of each selected case in PLANNED, in the order its call runs its statements.
    `walks` tells the deep caller's page count (keyset_cases); without it the deep cases are
    left out."""
    if not any(map(selected, PLANNED)):
        return {}
    db = _ExplainingDatabase(dsn, pool_size=1, application_name="bench/plans")
    db.plans = []
    years, progress = AcademicYearsService(db), UserProgressService(db)
    read = ["READ_ACADEMIC_YEARS"]
    staff = _principal(data.user_id(0), data.ay_org_id(0), read)
    everyone = _principal(data.user_id(0), None, read, everyone=True)
    deep = _principal(data.user_id(data.DEEP_USER), data.user_org_id(data.DEEP_USER), [])

    cases: dict[str, Callable[[], Awaitable[Any]]] = {
        "ay.list-name-filter": lambda: years.list_page(staff, FilterRequest(name="year 42"), 10, 0),
        "ay.count@global": lambda: years.count(everyone, FilterRequest()),
        "ay.list-skip@global": lambda: years.list_page(everyone, FilterRequest(), 10, 0, "", True),
    }
    pages = walks.get("pages", 0)
    if pages:
        limit = walks["limit"]

        async def last_by_token() -> Any:
            token = ""
            for _ in range(pages - 1):  # walk to the last page; only its own plans are kept
                page = await progress.list(deep, "sign_learned", None, limit, 0, token, True)
                token = page.next_page_token
            db.plans.clear()
            return await progress.list(deep, "sign_learned", None, limit, 0, token, True)

        cases["page.first@deep"] = lambda: progress.list(
            deep, "sign_learned", None, limit, 0, "", True
        )
        cases["page.last-token@deep"] = last_by_token
        cases["page.last-offset@deep"] = lambda: progress.list(
            deep, "sign_learned", None, limit, pages - 1, "", True
        )
    found = {}
    try:
        for name, call in cases.items():
            if not selected(name):
                continue
            db.plans.clear()
            await call()
            found[name] = list(db.plans)
    finally:
        await db.dispose()
    return found
