"""Typed CSV cell parsers: each takes the non-empty cell text and returns a value or raises."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

from common.validation import canonical_uuid, json_problem

CellParser = Callable[[str], Any]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_INT = re.compile(r"[+-]?\d{1,10}")
_BOOLS = {"true": True, "1": True, "false": False, "0": False}


class CellError(ValueError):
    """The cell's text is not a valid value; the message says what is expected."""


def text(value: str) -> str:
    return value


def uuid_text(value: str) -> str:
    """A UUID in its canonical 8-4-4-4-12 form, returned lower-case."""
    canonical = canonical_uuid(value)
    if canonical is None:
        raise CellError("must be a UUID")
    return canonical


def date(value: str) -> dt.date:
    """Strictly YYYY-MM-DD, and a real calendar day."""
    if _DATE.fullmatch(value) is None:
        raise CellError("must be a date as YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CellError("is not a calendar date") from None


def boolean(value: str) -> bool:
    """true/false/1/0 in any case."""
    try:
        return _BOOLS[value.lower()]
    except KeyError:
        raise CellError("must be true, false, 1 or 0") from None


def int32(value: str) -> int:
    if _INT.fullmatch(value) is None:
        raise CellError("must be an integer")
    number = int(value)
    if not INT32_MIN <= number <= INT32_MAX:
        raise CellError("is out of the 32-bit integer range")
    return number


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def json_text(value: str) -> str | None:
    """Any JSON value jsonb stores, as compact JSON text; JSON null is None (stored as NULL)."""
    return _json(value, None, None)


def bounded_json(max_bytes: int, max_depth: int) -> CellParser:
    """`json_text` within the limits a read answers with (encoded size, nesting depth)."""

    def parse(value: str) -> str | None:
        return _json(value, max_bytes, max_depth)

    return parse


def bounded_text(max_chars: int) -> CellParser:
    """Text of at most `max_chars` characters."""

    def parse(value: str) -> str:
        if len(value) > max_chars:
            raise CellError(f"must be at most {max_chars} characters")
        return value

    return parse


def _json(value: str, max_bytes: int | None, max_depth: int | None) -> str | None:
    try:
        parsed = json.loads(value, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise CellError("must be a JSON text") from None
    if parsed is None:
        return None
    if problem := json_problem(parsed, max_bytes, max_depth):  # e.g. a \u0000 escape
        raise CellError(problem)
    return json.dumps(parsed, separators=(",", ":"), ensure_ascii=False)
