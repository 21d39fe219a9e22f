"""Row-level security on academic_years: the caller's organization, all for global access.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from alembic import op

from common import rls

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLE, POLICY = "academic_years", "academic_years_tenant"


def upgrade() -> None:
    rls.enable(op.get_bind(), TABLE, POLICY, rls.organization_scope())


def downgrade() -> None:
    rls.disable(op.get_bind(), TABLE, POLICY)
