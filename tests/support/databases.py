"""Databases: the migration head a fresh database ends at (scratch databases: bench.scratch)."""

from __future__ import annotations

from typing import Any


def head_revision(definition: Any) -> str:
    """The newest migration of a service (tests must not pin it: revisions get added)."""
    from alembic.script import ScriptDirectory

    from common.migrations import alembic_config

    config = alembic_config("", definition.migrations_dir, definition.version_table)
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head
