"""Checks on request text and JSON that both services apply before anything reaches the database."""

from __future__ import annotations

import math
from typing import Any

from common.errors import FieldViolation

NUL = "\x00"
NUL_MESSAGE = "must not contain NUL characters"


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


def _json_problem(value: Any) -> str | None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if NUL in item:
                return NUL_MESSAGE
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "numbers must be finite"
        elif isinstance(item, dict):
            for key, child in item.items():
                if NUL in key:
                    return NUL_MESSAGE
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def json_violations(value: Any, field: str) -> list[FieldViolation]:
    """JSON that PostgreSQL's jsonb (and strict JSON) can store: no NUL, no NaN or infinity."""
    problem = _json_problem(value)
    return [FieldViolation(field, problem)] if problem else []
