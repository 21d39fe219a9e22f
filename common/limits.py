"""Protobuf sizes, for limits on what is stored: what a response carries of it, in bytes."""

from __future__ import annotations


def varint_bytes(value: int) -> int:
    """Bytes of `value` (not negative) as a protobuf varint."""
    return max(1, (value.bit_length() + 6) // 7)


def field_bytes(payload: int) -> int:
    """A length-delimited field (string, bytes, message) with a 1-byte tag (field 1-15)."""
    return 1 + varint_bytes(payload) + payload


def clip(text: str | None, max_chars: int) -> tuple[str | None, bool]:
    """`text` cut to `max_chars` characters, and whether it was longer (a read of a row
    stored before today's limits)."""
    if text is None or len(text) <= max_chars:
        return text, False
    return text[:max_chars], True
