"""The one rule that ties stored-field limits to the response: the worst case fits, with room.

Every field a caller can store is bounded (`config.Limits`), and so is everything a read sends
back of rows it did not write (see each service's `limits.py`). From those bounds each service
computes its largest possible responses in protobuf bytes and nesting levels; `check_responses`
refuses, at start-up, a configuration under which one of them might not fit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from common.config import ConfigError

# A response may take at most this share of the message limit: the rest is room for what the
# arithmetic does not see (gRPC framing, a field added to a message later).
BUDGET_NUMERATOR, BUDGET_DENOMINATOR = 3, 4
# Protobuf decoders (upb, C++, Java) refuse a message nested deeper than this by default.
PROTOBUF_MAX_DEPTH = 100
# UTF-8 takes at most 4 bytes per character; limits in characters are counted at that.
MAX_UTF8_BYTES_PER_CHAR = 4

UUID_CHARS = 36
# A Timestamp at its largest: seconds as a 10-byte varint, nanos as a 5-byte one, two tags.
TIMESTAMP_BYTES = 1 + 10 + 1 + 5
# An int32 field at its largest: a negative value is a 10-byte varint.
INT32_FIELD_BYTES = 1 + 10
BOOL_FIELD_BYTES = 1 + 1


def varint_bytes(value: int) -> int:
    """Bytes of `value` (not negative) as a protobuf varint."""
    return max(1, (value.bit_length() + 6) // 7)


def field_bytes(payload: int) -> int:
    """A length-delimited field (string, bytes, message) with a 1-byte tag (field 1-15)."""
    return 1 + varint_bytes(payload) + payload


def text_field_bytes(max_chars: int) -> int:
    """A string field of at most `max_chars` characters, each at its widest in UTF-8."""
    return field_bytes(MAX_UTF8_BYTES_PER_CHAR * max_chars)


def names_field_bytes(names: Iterable[str]) -> int:
    """A repeated string field holding each of `names` (ASCII field names)."""
    return sum(field_bytes(len(name)) for name in names)


@dataclass(frozen=True, slots=True)
class ResponseBound:
    """The largest a response can be under the limits, and the settings that drive it."""

    response: str
    bytes: int
    levels: int  # message nesting levels, the response itself counted as one
    settings: tuple[str, ...]


def budget(max_message_bytes: int) -> int:
    return max_message_bytes * BUDGET_NUMERATOR // BUDGET_DENOMINATOR


def check_responses(bounds: Iterable[ResponseBound], max_message_bytes: int) -> None:
    """ConfigError naming the first response that might not fit, and what to lower."""
    room = budget(max_message_bytes)
    for bound in bounds:
        hint = f": lower {' or '.join(bound.settings)}" if bound.settings else ""
        if bound.bytes > room:
            raise ConfigError(
                f"{bound.response} could reach {bound.bytes} bytes under these limits, more "
                f"than {BUDGET_NUMERATOR}/{BUDGET_DENOMINATOR} of the {max_message_bytes}-byte "
                f"message limit ({room}){hint}"
            )
        if bound.levels > PROTOBUF_MAX_DEPTH:
            raise ConfigError(
                f"{bound.response} could nest {bound.levels} messages deep, more than the "
                f"{PROTOBUF_MAX_DEPTH} protobuf decoders accept{hint}"
            )


def clip(text: str | None, max_chars: int) -> tuple[str | None, bool]:
    """`text` cut to `max_chars` characters, and whether it was longer (a read of a row
    stored before today's limits)."""
    if text is None or len(text) <= max_chars:
        return text, False
    return text[:max_chars], True
