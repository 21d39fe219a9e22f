"""Progress records as the service layer sees them, free of protobuf and SQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# Any JSON value; None (absent, or JSON null) is stored as SQL NULL.
JsonValue = Any


class ProgressType(StrEnum):
    SIGN_LEARNED = "sign_learned"
    ZONE_CHECKIN = "zone_checkin"


PROGRESS_TYPE_VALUES = tuple(t.value for t in ProgressType)


@dataclass(frozen=True, slots=True)
class UserProgressInput:
    progress_type: str
    item_id: str
    value: str | None = None
    score: int | None = None
    metadata: JsonValue = None


@dataclass(frozen=True, slots=True)
class UserProgress:
    id: str
    progress_type: str
    item_id: str
    value: str | None
    score: int | None
    metadata: JsonValue
    organization_id: str
    campus_id: str | None
    user_id: str
    created_at: dt.datetime
    updated_at: dt.datetime
    # Fields a read cut short: the row was stored before today's limits (see `as_read`).
    truncated: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[UserProgress]
    count: int  # 0 when the caller skipped counting
    next_page_token: str = ""  # empty on the last page


@dataclass(frozen=True, slots=True)
class ImportSummary:
    rows_read: int
    created: int
    updated: int
    skipped: int
