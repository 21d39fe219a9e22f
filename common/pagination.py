"""Page size and offset from a request's `limit` and 0-based `page` (`resolvePagination`)."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import FieldViolation, ValidationError

DEFAULT_LIMIT = 10
MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    offset: int


def resolve_pagination(limit: int | None, page: int | None) -> PageRequest:
    """0 or absent limit means the default; above the cap is capped; negatives are refused."""
    violations = []
    if limit is not None and limit < 0:
        violations.append(FieldViolation("limit", "must not be negative"))
    if page is not None and page < 0:
        violations.append(FieldViolation("page", "must not be negative"))
    if violations:
        raise ValidationError(violations)
    size = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
    return PageRequest(limit=size, offset=(page or 0) * size)
