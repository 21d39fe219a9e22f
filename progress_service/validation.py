"""What a progress input must be before it is stored: the rules the RPCs and CSV share."""

from __future__ import annotations

from common.config import Limits
from common.errors import FieldViolation, ValidationError
from common.validation import NUL, json_violations, text_violations
from progress_service.domain import PROGRESS_TYPE_VALUES, UserProgressInput

MAX_ITEM_ID_LENGTH = 512


def check_progress_type(value: str, field: str) -> list[FieldViolation]:
    if value not in PROGRESS_TYPE_VALUES:
        return [FieldViolation(field, f"must be one of {', '.join(PROGRESS_TYPE_VALUES)}")]
    return []


def clean_item_id(value: str, field: str, violations: list[FieldViolation]) -> str:
    """Trimmed item id; records a violation when it is empty, too long or holds a NUL."""
    item_id = value.strip()
    if NUL in item_id:
        violations.extend(text_violations(item_id, field))
    elif not item_id:
        violations.append(FieldViolation(field, "must not be empty"))
    elif len(item_id) > MAX_ITEM_ID_LENGTH:
        violations.append(FieldViolation(field, f"must be at most {MAX_ITEM_ID_LENGTH} characters"))
    return item_id


def validate_input(
    data: UserProgressInput, limits: Limits, prefix: str = "data."
) -> UserProgressInput:
    """The input as it will be stored, or a ValidationError naming every bad field."""
    violations = check_progress_type(data.progress_type, f"{prefix}progress_type")
    item_id = clean_item_id(data.item_id, f"{prefix}item_id", violations)
    violations += text_violations(data.value, f"{prefix}value", limits.progress_value_max_chars)
    violations += json_violations(
        data.metadata,
        f"{prefix}metadata",
        limits.progress_metadata_max_bytes,
        limits.progress_metadata_max_depth,
    )
    if violations:
        raise ValidationError(violations)
    return UserProgressInput(data.progress_type, item_id, data.value, data.score, data.metadata)
