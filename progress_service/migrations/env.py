"""Alembic environment for the progress service."""

from common.migrations import run_env
from progress_service.tables import metadata

run_env(metadata)
