"""Databases: the test server, a scratch database on it, and the migration head."""

from __future__ import annotations

import os
from typing import Any

from common.config import LOCAL_DATA_DIR
from common.db import embedded

TEST_SERVER_DIR = LOCAL_DATA_DIR / "test-postgres"


def test_server_url() -> str:
    """TEST_DATABASE_URL, or the embedded test server's (started on first use, stopped when
    the process that started it exits)."""
    return os.environ.get("TEST_DATABASE_URL") or embedded.ensure(
        "postgres", data_dir=TEST_SERVER_DIR
    )


def head_revision(definition: Any) -> str:
    """The newest migration of a service (tests must not pin it: revisions get added)."""
    from alembic.script import ScriptDirectory

    from common.migrations import alembic_config

    config = alembic_config("", definition.migrations_dir, definition.version_table)
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head
