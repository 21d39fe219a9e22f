"""The old REST body of deleteByIds, `{"data": [ids]}`, through a real server."""

from __future__ import annotations

import grpc
import pytest
from academic_years.v1 import academic_years_pb2 as pb

from tests.conftest import Harness
from tests.support.academic_years import count, create, staff, stub
from tests.support.callers import Caller, expect_error

pytestmark = pytest.mark.asyncio


async def batch_delete(h: Harness, caller: Caller, **fields: list[str]) -> int:
    request = pb.BatchDeleteAcademicYearsRequest(**fields)
    response = await stub(h).BatchDeleteAcademicYears(request, metadata=caller.md)
    return response.deleted_count


async def test_ids_in_data_are_deleted_with_those_in_ids(academic_years: Harness) -> None:
    caller = staff()
    a, b, c = [(await create(academic_years, caller, name=n)).id for n in "abc"]
    assert await batch_delete(academic_years, caller, data=[a]) == 1
    assert await batch_delete(academic_years, caller, ids=[b], data=[c, b]) == 2
    assert await count(academic_years, caller) == 0


async def test_ids_in_data_are_checked_like_ids(academic_years: Harness) -> None:
    caller = staff()
    year = await create(academic_years, caller, name="kept")
    error = await expect_error(
        batch_delete(academic_years, caller, ids=[year.id], data=["not-a-uuid"]),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert [field for field, _ in error.violations] == ["data[0]"]
    too_many = {"ids": [year.id] * 600, "data": [year.id] * 401}
    error = await expect_error(
        batch_delete(academic_years, caller, **too_many), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error.violations[0][0] == "ids"
    assert await count(academic_years, caller) == 1
    # Out of scope in `data` is ignored, as in `ids`.
    assert await batch_delete(academic_years, staff(), data=[year.id]) == 0
