"""Strict parsing of the wire's strings (ids, dates, ranges) into typed values."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from academic_years_service.domain import (
    MAX_NAME_LENGTH,
    AcademicYearFilter,
    Bounds,
    FilterRequest,
)
from common.errors import FieldViolation
from common.validation import text_violations

T = TypeVar("T")

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
ONE_DAY = dt.timedelta(days=1)


def uuid(value: str, field: str, violations: list[FieldViolation]) -> str | None:
    """A canonical (lower-case, hyphenated) UUID, or None after recording a violation."""
    if _UUID.fullmatch(value):
        return value.lower()
    violations.append(FieldViolation(field, "must be a UUID"))
    return None


def date(value: str, field: str, violations: list[FieldViolation]) -> dt.date | None:
    if _DATE.fullmatch(value):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    violations.append(FieldViolation(field, "must be a date as YYYY-MM-DD"))
    return None


def date_or_none(value: str | None, field: str, violations: list[FieldViolation]) -> dt.date | None:
    return None if value is None else date(value, field, violations)


def timestamp(value: str, field: str, violations: list[FieldViolation]) -> dt.datetime | None:
    """An RFC 3339 timestamp (with its offset), as aware UTC."""
    if _TIMESTAMP.fullmatch(value):
        text = value.upper().replace("Z", "+00:00")
        # fromisoformat takes at most microseconds; RFC 3339 allows more digits.
        text = re.sub(r"(\.[0-9]{6})[0-9]+", r"\1", text)
        try:
            return dt.datetime.fromisoformat(text).astimezone(dt.UTC)
        except (ValueError, OverflowError):  # OverflowError: the offset leaves years 1-9999
            pass
    violations.append(FieldViolation(field, "must be a date or an RFC 3339 timestamp"))
    return None


def _range(
    values: Sequence[str],
    field: str,
    violations: list[FieldViolation],
    parse: Callable[[str, str, list[FieldViolation]], T | None],
) -> tuple[T | None, T | None] | None:
    """`[from, to]` with empty (or missing) ends open; None when both ends are open."""
    if len(values) > 2:
        violations.append(FieldViolation(field, "takes at most two values: [from, to]"))
        return None
    ends = [v.strip() for v in values] + ["", ""]
    lower = parse(ends[0], f"{field}[0]", violations) if ends[0] else None
    upper = parse(ends[1], f"{field}[1]", violations) if ends[1] else None
    if lower is None and upper is None:
        return None
    return lower, upper


def date_range(
    values: Sequence[str], field: str, violations: list[FieldViolation]
) -> Bounds[dt.date] | None:
    ends = _range(values, field, violations, date)
    return None if ends is None else Bounds(*ends)


def _instant(
    value: str, field: str, violations: list[FieldViolation]
) -> tuple[dt.datetime, bool] | None:
    """A created-at bound as aware UTC, and whether it was given as a bare date."""
    if _DATE.fullmatch(value):
        day = date(value, field, violations)
        return None if day is None else (dt.datetime.combine(day, dt.time(), dt.UTC), True)
    moment = timestamp(value, field, violations)
    return None if moment is None else (moment, False)


def created_range(
    values: Sequence[str], field: str, violations: list[FieldViolation]
) -> Bounds[dt.datetime] | None:
    """Dates are whole UTC days: a date as upper bound includes all of that day."""
    ends = _range(values, field, violations, _instant)
    if ends is None:
        return None
    lower = ends[0][0] if ends[0] else None
    upper = ends[1]
    if upper is not None and upper[1]:
        if upper[0].date() == dt.date.max:  # no day after it: the bound is open
            return None if lower is None else Bounds(lower, None)
        return Bounds(lower, upper[0] + ONE_DAY, upper_exclusive=True)
    return Bounds(lower, upper[0] if upper else None)


def organizations(value: str, violations: list[FieldViolation]) -> tuple[str, ...] | None:
    parts = [p.strip() for p in value.split("|") if p.strip()]
    ids = [uuid(p, "organization", violations) for p in parts]
    clean = tuple(sorted({i for i in ids if i is not None}))
    return clean or None


def _name_filter(value: str, violations: list[FieldViolation]) -> str | None:
    violations.extend(text_violations(value, "name", MAX_NAME_LENGTH))
    return value or None


def filter_from(request: FilterRequest, violations: list[FieldViolation]) -> AcademicYearFilter:
    """The validated filter; `active` is accepted and dropped (there is no such column).

    Violations name each field by the JSON name a REST caller sent (`start_dateRange`,
    `createdAtRange`, ...); tests/test_field_paths.py fails on a proto name that differs."""
    start = end = None
    if request.calendar_start:
        start = date(request.calendar_start, "calendarStart", violations)
    if request.calendar_end:
        end = date(request.calendar_end, "calendarEnd", violations)
    calendar = Bounds(start, end) if start is not None and end is not None else None
    return AcademicYearFilter(
        id=uuid(request.id, "id", violations) if request.id else None,
        name=_name_filter(request.name, violations),
        calendar=calendar,
        start_date=date_range(request.start_date_range, "start_dateRange", violations),
        end_date=date_range(request.end_date_range, "end_dateRange", violations),
        created_at=created_range(request.created_at_range, "createdAtRange", violations),
        current=request.current,
        organizations=organizations(request.organization, violations)
        if request.organization
        else None,
    )
