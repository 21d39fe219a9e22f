"""The largest responses of the academic-years service under a set of limits (see
common.limits), and how much of other slices' rows a read carries."""

from __future__ import annotations

from academic_years_service.domain import MAX_NAME_LENGTH
from common.config import Limits
from common.limits import (
    BOOL_FIELD_BYTES,
    INT32_FIELD_BYTES,
    TIMESTAMP_BYTES,
    UUID_CHARS,
    ResponseBound,
    field_bytes,
    names_field_bytes,
    text_field_bytes,
)
from common.pagination import MAX_LIMIT

DATE_CHARS = len("YYYY-MM-DD")
# The fields a read may cut short (see `service.as_read`).
TRUNCATABLE = ("name", "organization", "classes_academic_year", "timetables_academic_year")
SETTINGS = ("ACADEMIC_YEARS_GET_MAX_REFERENCES",)
DEFAULT_MAX_REFERENCES = Limits().academic_year_max_references


def reference_bytes() -> int:
    """A Reference (an organization, class or timetable) with its name at its longest."""
    return field_bytes(UUID_CHARS) + text_field_bytes(MAX_NAME_LENGTH)


def year_bytes() -> int:
    """An AcademicYear with every field at its largest, without its associations."""
    return (
        field_bytes(UUID_CHARS)  # id
        + text_field_bytes(MAX_NAME_LENGTH)
        + 2 * field_bytes(DATE_CHARS)  # start, end
        + BOOL_FIELD_BYTES  # current
        + 3 * field_bytes(UUID_CHARS)  # organization, created by, updated by
        + 3 * field_bytes(TIMESTAMP_BYTES)  # created, updated, deleted
        + names_field_bytes(TRUNCATABLE)
    )


def response_bounds(limits: Limits) -> list[ResponseBound]:
    """Get with its associations at their longest; List and Autocomplete pages at the largest
    limit. Create, Update and Delete answer one year without associations."""
    references = 2 * limits.academic_year_max_references  # classes and timetables
    get = year_bytes() + (1 + references) * field_bytes(reference_bytes())
    page = MAX_LIMIT * field_bytes(year_bytes()) + INT32_FIELD_BYTES  # rows, count
    suggestions = MAX_LIMIT * field_bytes(reference_bytes())  # {id, label} is a Reference's size
    return [
        ResponseBound("GetAcademicYear", get, 3, SETTINGS),  # year, reference / timestamp
        ResponseBound(f"ListAcademicYears at limit {MAX_LIMIT}", page, 3, ()),
        ResponseBound(f"AutocompleteAcademicYears at limit {MAX_LIMIT}", suggestions, 2, ()),
    ]
