"""Page size and start from a request's `limit` and 0-based `page` (`resolvePagination`), or
its `page_token` (keyset paging, `common.pagetoken`)."""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import FieldViolation, ValidationError

DEFAULT_LIMIT = 10
MAX_LIMIT = 100


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    offset: int
    # Set: the page after the position this token holds (offset is 0).
    token: str = ""


def resolve_pagination(limit: int | None, page: int | None, page_token: str = "") -> PageRequest:
    """0 or absent limit means the default; above the cap is capped; negatives are refused;
    `page` and `page_token` are two ways to say where the page starts: one at a time."""
    violations = []
    if limit is not None and limit < 0:
        violations.append(FieldViolation("limit", "must not be negative"))
    if page is not None and page < 0:
        violations.append(FieldViolation("page", "must not be negative"))
    if page_token and page:
        violations.append(FieldViolation("pageToken", "cannot be combined with page"))
    if violations:
        raise ValidationError(violations)
    size = min(limit or DEFAULT_LIMIT, MAX_LIMIT)
    return PageRequest(limit=size, offset=(page or 0) * size, token=page_token)
