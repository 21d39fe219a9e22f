"""The name filter within one organization reads that organization's part of a trigram index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

Why: the pg_trgm index of 0003 holds every organization's names, so a caller's name filter
found the matches of all organizations and then kept its own (EXPLAIN on the bench's 1M years:
a BitmapAnd of 11,100 trigram matches with the organization's 10,000 rows, for 111 results):
its cost grew with the table, not with the organization. A GIN index on ("organizationId",
name gin_trgm_ops) (btree_gin gives uuid a GIN operator class) reads only the caller's
organization. The 0003 index stays: a global-access caller's name filter spans every
organization.

Safe on a live table: CREATE EXTENSION IF NOT EXISTS btree_gin (trusted since PostgreSQL 13,
present in the embedded server; no table lock), then CREATE INDEX CONCURRENTLY (SHARE UPDATE
EXCLUSIVE: reads and writes go on; a build left invalid is built again on the next run).
Downgrade drops the index concurrently and keeps btree_gin (other objects may use it).
"""

from common import online_ddl as ddl

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "academic_years_org_name_trgm"


def upgrade() -> None:
    with ddl.online() as bind:
        bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS btree_gin")
        ddl.create_index(
            bind,
            INDEX,
            "academic_years",
            '"organizationId", name gin_trgm_ops',
            using="gin",
            where='"deletedAt" IS NULL',
        )


def downgrade() -> None:
    with ddl.online() as bind:
        ddl.drop_index(bind, INDEX)
