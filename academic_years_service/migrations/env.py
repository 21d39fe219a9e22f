"""Alembic environment for the academic years service."""

from academic_years_service.tables import metadata
from common.migrations import run_env

run_env(metadata)
