"""The strict parsers behind academic-years ids, dates and ranges."""

from __future__ import annotations

import datetime as dt

import pytest

from academic_years_service import parsing
from common.errors import FieldViolation

UTC = dt.UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05Z", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02t03:04:05z", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2024-01-02 03:04:05+02:00", dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=UTC)),
        ("2024-01-02T03:04:05.123456789Z", dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)),
        ("2024-01-02T03:04:05", None),
        ("2024-01-02T03:04Z", None),
        ("2024-02-30T00:00:00Z", None),
        ("١٢٣٤-01-02T03:04:05Z", None),
    ],
)
def test_timestamps_are_rfc_3339_with_an_offset(text: str, expected: dt.datetime | None) -> None:
    violations: list[FieldViolation] = []
    assert parsing.timestamp(text, "f", violations) == expected
    assert bool(violations) is (expected is None)


@pytest.mark.parametrize(
    "text", ["2024-1-02", "20240102", "2024-02-29x", " 2024-02-29", "٢٠٢٤-01-01"]
)
def test_dates_are_strict(text: str) -> None:
    violations: list[FieldViolation] = []
    assert parsing.date(text, "d", violations) is None
    assert violations == [FieldViolation("d", "must be a date as YYYY-MM-DD")]


def test_uuids_are_canonical_and_lower_cased() -> None:
    violations: list[FieldViolation] = []
    value = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"
    assert parsing.uuid(value, "id", violations) == value.lower()
    for bad in ("{" + value + "}", value.replace("-", ""), "urn:uuid:" + value):
        assert parsing.uuid(bad, "id", violations) is None
    assert len(violations) == 3


def test_created_range_with_a_date_upper_bound_covers_the_whole_day() -> None:
    bounds = parsing.created_range(["2024-01-01", "2024-01-31"], "r", [])
    assert bounds is not None
    assert bounds.lower == dt.datetime(2024, 1, 1, tzinfo=UTC)
    assert (bounds.upper, bounds.upper_exclusive) == (dt.datetime(2024, 2, 1, tzinfo=UTC), True)
    open_lower = parsing.created_range(["", "2024-01-31T12:00:00Z"], "r", [])
    assert open_lower is not None and open_lower.lower is None
    assert (open_lower.upper, open_lower.upper_exclusive) == (
        dt.datetime(2024, 1, 31, 12, tzinfo=UTC),
        False,
    )
    assert parsing.created_range(["", ""], "r", []) is None
