"""How much of a stored row a progress read loads and answers with (see `service.as_read`)."""

from __future__ import annotations

from dataclasses import dataclass

from common.config import Limits
from progress_service.validation import MAX_ITEM_ID_LENGTH

# The fields a read may cut short (older rows; see `service.as_read`).
TRUNCATABLE = ("item_id", "value", "metadata")
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
