"""academic_years, the reference tables Get reads where absent, and their indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-24

Index choices: every read skips soft-deleted rows and (for all but global-access callers) stays in
one organization, so the indexes are partial on live rows and lead with "organizationId".
(organizationId, createdAt DESC, id DESC) returns the default order, tie-break included, without a
sort, so a page costs its size; (organizationId, name) serves autocomplete and name ordering.
A name substring cannot use a b-tree; a pg_trgm index would, but needs an extension we do not
assume. Get reads classes and timetables by "academic_yearId", hence an index on each.
"""

import sqlalchemy as sa
from alembic import op

from common.db import UUID_TYPE, UtcDateTime
from common.migrations import table_exists

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LIVE = sa.text('"deletedAt" IS NULL')


def _create_reference_tables() -> None:
    # Owned by other slices of the original backend: created only for a stand-alone database.
    if not table_exists("organizations"):
        op.create_table(
            "organizations",
            sa.Column("id", UUID_TYPE, primary_key=True),
            sa.Column("name", sa.Text),
            sa.Column("createdAt", UtcDateTime),
            sa.Column("updatedAt", UtcDateTime),
            sa.Column("deletedAt", UtcDateTime),
        )
    for name in ("classes", "timetables"):
        if not table_exists(name):
            op.create_table(
                name,
                sa.Column("id", UUID_TYPE, primary_key=True),
                sa.Column("name", sa.Text),
                sa.Column("academic_yearId", UUID_TYPE),
                sa.Column("organizationId", UUID_TYPE),
                sa.Column("deletedAt", UtcDateTime),
            )
        op.create_index(f"{name}_academic_year_id", name, ["academic_yearId"], if_not_exists=True)


def upgrade() -> None:
    # An existing database from the original backend already has the table: adopt it.
    if not table_exists("academic_years"):
        op.create_table(
            "academic_years",
            sa.Column("id", UUID_TYPE, primary_key=True),
            sa.Column("name", sa.Text),
            sa.Column("start_date", sa.Date),
            sa.Column("end_date", sa.Date),
            sa.Column("current", sa.Boolean, nullable=False, server_default=sa.false()),
            sa.Column("importHash", sa.String(255), unique=True),
            sa.Column("organizationId", UUID_TYPE),
            sa.Column("createdById", UUID_TYPE),
            sa.Column("updatedById", UUID_TYPE),
            sa.Column("createdAt", UtcDateTime, nullable=False),
            sa.Column("updatedAt", UtcDateTime, nullable=False),
            sa.Column("deletedAt", UtcDateTime),
        )
    op.create_index(
        "academic_years_org_created",
        "academic_years",
        ["organizationId", sa.text('"createdAt" DESC'), sa.text("id DESC")],
        postgresql_where=LIVE,
        if_not_exists=True,
    )
    op.create_index(
        "academic_years_org_name",
        "academic_years",
        ["organizationId", "name"],
        postgresql_where=LIVE,
        if_not_exists=True,
    )
    _create_reference_tables()


def downgrade() -> None:
    # The reference tables may predate this service, so they are left in place.
    op.drop_index("academic_years_org_name", table_name="academic_years")
    op.drop_index("academic_years_org_created", table_name="academic_years")
    op.drop_table("academic_years")
