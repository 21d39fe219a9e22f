"""Academic years as the service layer sees them, free of protobuf and SQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from common import permissions

T = TypeVar("T")

NOT_FOUND_CODE = "academic_yearsNotFound"

READ = permissions.READ_ACADEMIC_YEARS
CREATE = permissions.CREATE_ACADEMIC_YEARS
UPDATE = permissions.UPDATE_ACADEMIC_YEARS
DELETE = permissions.DELETE_ACADEMIC_YEARS

# Names are b-tree indexed: 500 characters (at most 2000 bytes) stays under PostgreSQL's limit.
# A read cuts a longer name (stored before the limit, or in another slice's table) to it.
MAX_NAME_LENGTH = 500


@dataclass(frozen=True, slots=True)
class AcademicYearInput:
    """A request's fields as given; None means absent (and an update leaves it alone)."""

    id: str | None = None
    name: str | None = None
    start_date: str | None = None
    end_date: str | None = None
    current: bool | None = None
    organization_id: str | None = None


@dataclass(frozen=True, slots=True)
class AcademicYearValues:
    """Validated values to write; None means "not written" (create stores NULL/defaults)."""

    id: str | None = None
    name: str | None = None
    start_date: dt.date | None = None
    end_date: dt.date | None = None
    current: bool | None = None
    organization_id: str | None = None
    fields: frozenset[str] = frozenset()  # which of the above were given


@dataclass(frozen=True, slots=True)
class Reference:
    id: str
    name: str | None


@dataclass(frozen=True, slots=True)
class AcademicYear:
    id: str
    name: str | None
    start_date: dt.date | None
    end_date: dt.date | None
    current: bool
    organization_id: str
    created_by_id: str | None
    updated_by_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    deleted_at: dt.datetime | None
    version: int  # incremented by every write; the etag is derived from it
    organization: Reference | None = None
    classes: list[Reference] = field(default_factory=list)
    timetables: list[Reference] = field(default_factory=list)
    # Fields a read cut short (see `service.as_read`).
    truncated: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Bounds(Generic[T]):
    """An inclusive range; None is an open end. `upper_exclusive` marks a half-open upper end."""

    lower: T | None = None
    upper: T | None = None
    upper_exclusive: bool = False


@dataclass(frozen=True, slots=True)
class Ordering:
    field: str = "createdAt"
    descending: bool = True


@dataclass(frozen=True, slots=True)
class FilterRequest:
    """The filter as the request gives it; an empty string means "no filter"."""

    id: str = ""
    name: str = ""
    calendar_start: str = ""
    calendar_end: str = ""
    start_date_range: tuple[str, ...] = ()
    end_date_range: tuple[str, ...] = ()
    created_at_range: tuple[str, ...] = ()
    active: bool | None = None
    current: bool | None = None
    organization: str = ""
    field: str = ""
    sort: str = ""


@dataclass(frozen=True, slots=True)
class AcademicYearFilter:
    """Every filter of List, Count and Export, already validated."""

    id: str | None = None
    name: str | None = None
    calendar: Bounds[dt.date] | None = None
    start_date: Bounds[dt.date] | None = None
    end_date: Bounds[dt.date] | None = None
    created_at: Bounds[dt.datetime] | None = None
    current: bool | None = None
    organizations: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[AcademicYear]
    count: int  # 0 when the caller skipped counting
    next_page_token: str = ""  # empty on the last page


@dataclass(frozen=True, slots=True)
class Suggestion:
    id: str
    label: str | None


@dataclass(frozen=True, slots=True)
class ImportSummary:
    rows_read: int
    created: int
    skipped: int
