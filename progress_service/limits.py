"""The largest responses of the progress service under a set of limits (see common.limits)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import Limits
from common.limits import (
    INT32_FIELD_BYTES,
    TIMESTAMP_BYTES,
    UUID_CHARS,
    ResponseBound,
    field_bytes,
    names_field_bytes,
    text_field_bytes,
)
from common.pagination import MAX_LIMIT
from progress_service.domain import PROGRESS_TYPE_VALUES
from progress_service.validation import MAX_ITEM_ID_LENGTH

# The fields a read may cut short (older rows; see `service.as_read`).
TRUNCATABLE = ("item_id", "value", "metadata")
SETTINGS = (
    "PROGRESS_VALUE_MAX_CHARS",
    "PROGRESS_METADATA_MAX_BYTES",
    "PROGRESS_METADATA_MAX_DEPTH",
)


# PostgreSQL prints a jsonb number in full (5e-324 takes 326 characters, 9 bytes as a Value):
# jsonb's text of metadata within the byte limit is shorter than this many characters a byte.
JSONB_CHARS_PER_BYTE = 40


@dataclass(frozen=True, slots=True)
class ReadCaps:
    """The most characters of each unbounded column a List keeps: item_id and value are cut
    to theirs, and metadata whose JSON text is longer than `metadata_chars` (no metadata
    within the limits is that long) is left out. A List loads one character more of each,
    to see which passed their cap, and never the rest."""

    item_chars: int
    value_chars: int
    metadata_chars: int


def read_caps(limits: Limits) -> ReadCaps:
    return ReadCaps(
        item_chars=MAX_ITEM_ID_LENGTH,
        value_chars=limits.progress_value_max_chars,
        metadata_chars=JSONB_CHARS_PER_BYTE * limits.progress_metadata_max_bytes,
    )


DEFAULT_CAPS = read_caps(Limits())


def row_bytes(limits: Limits) -> int:
    """A UserProgress with every field at its largest."""
    return (
        field_bytes(UUID_CHARS)  # id
        + field_bytes(max(len(t) for t in PROGRESS_TYPE_VALUES))
        + text_field_bytes(MAX_ITEM_ID_LENGTH)
        + text_field_bytes(limits.progress_value_max_chars)
        + INT32_FIELD_BYTES  # score
        + field_bytes(limits.progress_metadata_max_bytes)
        + 3 * field_bytes(UUID_CHARS)  # organization, campus, user
        + 2 * field_bytes(TIMESTAMP_BYTES)  # created, updated
        + names_field_bytes(TRUNCATABLE)
    )


def metadata_levels(limits: Limits) -> int:
    """Message levels of the deepest metadata: a Value, then per object a Struct, its entry
    and the entry's Value (an array takes two: ListValue and Value)."""
    return 1 + 3 * limits.progress_metadata_max_depth


def response_bounds(limits: Limits) -> list[ResponseBound]:
    """A List page at the largest limit; every other response carries one row or none."""
    page = MAX_LIMIT * field_bytes(row_bytes(limits)) + INT32_FIELD_BYTES  # rows, count
    levels = 2 + metadata_levels(limits)  # the response, a row, its metadata
    return [ResponseBound(f"ListUserProgress at limit {MAX_LIMIT}", page, levels, SETTINGS)]
