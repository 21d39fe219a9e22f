"""user_progress table, its owner-item unique index and its list index.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from common.db import JSON_TYPE, UUID_TYPE, UtcDateTime
from common.migrations import table_exists

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

LIVE = sa.text('"deletedAt" IS NULL')
PROGRESS_TYPE = sa.Enum(
    "sign_learned", "zone_checkin", name="enum_user_progress_progress_type", create_constraint=True
)


def upgrade() -> None:
    # An existing database from the original backend already has the table: adopt it.
    if not table_exists("user_progress"):
        op.create_table(
            "user_progress",
            sa.Column("id", UUID_TYPE, primary_key=True),
            sa.Column("progress_type", PROGRESS_TYPE, nullable=False),
            sa.Column("item_id", sa.Text, nullable=False),
            sa.Column("value", sa.Text),
            sa.Column("score", sa.Integer),
            sa.Column("metadata", JSON_TYPE),
            sa.Column("importHash", sa.String(255), unique=True),
            sa.Column("organizationId", UUID_TYPE, nullable=False),
            sa.Column("campusId", UUID_TYPE),
            sa.Column("userId", UUID_TYPE, nullable=False),
            sa.Column("createdById", UUID_TYPE, nullable=False),
            sa.Column("updatedById", UUID_TYPE),
            sa.Column("createdAt", UtcDateTime, nullable=False),
            sa.Column("updatedAt", UtcDateTime, nullable=False),
            sa.Column("deletedAt", UtcDateTime),
        )
    op.create_index(
        "user_progress_owner_item_key",
        "user_progress",
        ["organizationId", "userId", "progress_type", "item_id"],
        unique=True,
        postgresql_where=LIVE,
        if_not_exists=True,
    )
    op.create_index(
        "user_progress_user_type_created",
        "user_progress",
        ["userId", "progress_type", sa.text('"createdAt" DESC'), sa.text("id DESC")],
        postgresql_where=LIVE,
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("user_progress_user_type_created", table_name="user_progress")
    op.drop_index("user_progress_owner_item_key", table_name="user_progress")
    op.drop_table("user_progress")
    sa.Enum(name="enum_user_progress_progress_type").drop(op.get_bind(), checkfirst=True)
