"""The benchmark's bare baseline sends exactly the SQL the services compile, so that a ratio
against it measures the code path and never a different query."""

from __future__ import annotations

import re
from typing import Any

import pytest

from academic_years_service import statements
from academic_years_service.domain import AcademicYearFilter, Ordering
from academic_years_service.tables import classes, timetables
from bench import baseline, baseline_ay
from common.auth import Principal
from common.db import compile_statement
from common.db.uow import _begin_sql
from common.tenancy import tenant_scope
from progress_service.repository import UserProgressRepository as Progress


def same(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


NAME_SHAPE, _ = statements.filter_binds(AcademicYearFilter(name="x"))
PAIRS: list[tuple[str, str, Any]] = [
    ("progress upsert", baseline.UPSERT_SQL, Progress._upsert_statement()),
    ("progress count", baseline.COUNT_SQL, Progress._count_statement(False, False)),
    ("progress list", baseline.LIST_SQL, Progress._keyset_statement(False, False, False)),
    ("progress delete", baseline.DELETE_SQL, Progress._soft_delete_statement(False)),
    ("years count", baseline_ay.COUNT_SQL, statements.count_statement(False, NAME_SHAPE)),
    (
        "years page",
        baseline_ay.PAGE_SQL,
        statements.keyset_statement(False, NAME_SHAPE, Ordering(), None),
    ),
    ("years get", baseline_ay.GET_SQL, statements.get_statement(False)),
    ("classes", baseline_ay.CLASSES_SQL, statements.references_statement(classes)),
    ("timetables", baseline_ay.TIMETABLES_SQL, statements.references_statement(timetables)),
]


@pytest.mark.parametrize(("name", "hand_written", "statement"), PAIRS, ids=[p[0] for p in PAIRS])
def test_the_baseline_sends_the_services_sql(name: str, hand_written: str, statement: Any) -> None:
    assert same(hand_written) == same(compile_statement(statement).sql), name


def test_the_baseline_begins_like_a_unit_of_work() -> None:
    org, user = "0b7e6c7e-3f0a-4a55-9d8e-1d2f3a4b5c6d", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
    scope = tenant_scope(Principal(user, org, None, False, frozenset()))
    assert same(baseline_ay.BEGIN_SQL.format(org=org, user=user)) == same(_begin_sql(scope))
