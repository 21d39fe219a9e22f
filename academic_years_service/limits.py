"""How much of stored rows an academic-years read answers with (see `service.as_read`)."""

from __future__ import annotations

from common.config import Limits

# The fields a read may cut short.
TRUNCATABLE = ("name", "organization", "classes_academic_year", "timetables_academic_year")
DEFAULT_MAX_REFERENCES = Limits().academic_year_max_references
