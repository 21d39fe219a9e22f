"""The permission names tokens carry: the one list the services check and `common.token` mints."""

from __future__ import annotations

READ_ACADEMIC_YEARS = "READ_ACADEMIC_YEARS"
CREATE_ACADEMIC_YEARS = "CREATE_ACADEMIC_YEARS"
UPDATE_ACADEMIC_YEARS = "UPDATE_ACADEMIC_YEARS"
DELETE_ACADEMIC_YEARS = "DELETE_ACADEMIC_YEARS"

# The progress service needs no permission: every caller owns its own rows.
KNOWN: tuple[str, ...] = (
    READ_ACADEMIC_YEARS,
    CREATE_ACADEMIC_YEARS,
    UPDATE_ACADEMIC_YEARS,
    DELETE_ACADEMIC_YEARS,
)
