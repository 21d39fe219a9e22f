"""Checks on request text and JSON that both services apply before anything reaches the database."""

from __future__ import annotations

import math
import re
import sys
from typing import Any

from common.errors import FieldViolation
from common.limits import field_bytes

NUL = "\x00"
NUL_MESSAGE = "must not contain NUL characters"
UNICODE_MESSAGE = "must be valid Unicode (no lone surrogates)"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def canonical_uuid(value: str) -> str | None:
    """`value` in the canonical 8-4-4-4-12 form, lower-case; None when it is not a UUID so
    written (braces, URNs and bare hex are refused, as they are in ids)."""
    return value.lower() if _UUID.fullmatch(value) else None


def text_violations(
    value: str | None, field: str, max_length: int | None = None
) -> list[FieldViolation]:
    """PostgreSQL text cannot hold NUL: it is refused as a field violation, not a database error.

    `max_length` (characters) keeps indexed text under PostgreSQL's b-tree entry limit.
    """
    if value is None:
        return []
    if NUL in value:
        return [FieldViolation(field, NUL_MESSAGE)]
    if max_length is not None and len(value) > max_length:
        return [FieldViolation(field, f"must be at most {max_length} characters")]
    return []


# The largest finite double: a JSON integer beyond it has no google.protobuf.Value form.
_DOUBLE_MAX = sys.float_info.max


def _scalar_problem(item: Any) -> str | None:
    if isinstance(item, str):
        if NUL in item:
            return NUL_MESSAGE
        if not item.isascii() and not _is_unicode(item):
            return UNICODE_MESSAGE
    elif isinstance(item, float):
        if not math.isfinite(item):
            return "numbers must be finite"
    elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > _DOUBLE_MAX:
        return "numbers must fit a double"
    return None


def _is_unicode(text: str) -> bool:
    """False for a lone surrogate (a JSON "\\ud800" escape), which UTF-8 cannot encode."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _json_problem(value: Any, max_depth: int | None) -> str | None:
    """What makes `value` unstorable (iteratively: its depth is not known yet), or None."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            if max_depth is not None and depth > max_depth:
                return f"must nest at most {max_depth} levels deep"
            if isinstance(item, dict):
                for key in item:
                    if problem := _scalar_problem(key):
                        return problem
                stack.extend((child, depth) for child in item.values())
            else:
                stack.extend((child, depth) for child in item)
        elif problem := _scalar_problem(item):
            return problem
    return None


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _value_size(value: Any) -> int:
    """Bytes of `value` encoded as a google.protobuf.Value (recursive: check depth first)."""
    if isinstance(value, str):
        return field_bytes(_utf8_length(value))
    if isinstance(value, bool) or value is None:
        return 2  # bool_value or null_value: a tag and a one-byte varint
    if isinstance(value, int | float):
        return 9  # number_value: a tag and a fixed 64-bit double
    if isinstance(value, list):
        return field_bytes(sum(field_bytes(_value_size(child)) for child in value))
    entries = (
        field_bytes(field_bytes(_utf8_length(key)) + field_bytes(_value_size(child)))
        for key, child in value.items()
    )
    return field_bytes(sum(entries))


def json_encoded_size(value: Any) -> int:
    """Bytes `value` takes as a google.protobuf.Value field's payload; 0 for None (absent)."""
    return 0 if value is None else _value_size(value)


def json_problem(
    value: Any, max_bytes: int | None = None, max_depth: int | None = None
) -> str | None:
    """Why `value` cannot be stored and read back within the limits, or None: a NUL (jsonb
    refuses it), a number with no finite double form, a lone surrogate, or too deep or too
    large as the google.protobuf.Value every read answers with."""
    problem = _json_problem(value, max_depth)
    if problem is None and max_bytes is not None and json_encoded_size(value) > max_bytes:
        problem = f"must be at most {max_bytes} bytes encoded"
    return problem


def json_violations(
    value: Any, field: str, max_bytes: int | None = None, max_depth: int | None = None
) -> list[FieldViolation]:
    """JSON that PostgreSQL's jsonb (and strict JSON) can store and a read can answer with."""
    problem = json_problem(value, max_bytes, max_depth)
    return [FieldViolation(field, problem)] if problem else []
