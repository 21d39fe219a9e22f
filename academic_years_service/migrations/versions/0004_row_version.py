"""A row version on academic_years, for etags: every write increments it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

Why: Update and Delete were last-writer-wins; an etag (AIP-154) lets a caller write only the
row it read. The etag is derived from this counter and the row's id, not from "updatedAt",
which two writes in one microsecond (or under a clock step) can share.

Safe on a live table: ADD COLUMN with a constant default is a catalog change (PostgreSQL 11+
stores the default instead of rewriting the rows), taken under ACCESS EXCLUSIVE for an
instant, waiting at most common.online_ddl.LOCK_TIMEOUT and retried. Existing rows read as
version 1. Old code keeps working beside it: its writes leave the version as it is, so an
etag read before such a write stays valid (which only matters while both run).
"""

from common import online_ddl as ddl

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with ddl.online() as bind:
        ddl.brief(
            bind,
            'ALTER TABLE academic_years ADD COLUMN IF NOT EXISTS "version" bigint NOT NULL '
            "DEFAULT 1",
        )


def downgrade() -> None:
    with ddl.online() as bind:
        ddl.brief(bind, 'ALTER TABLE academic_years DROP COLUMN IF EXISTS "version"')
