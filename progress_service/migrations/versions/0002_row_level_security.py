"""Row-level security on user_progress: the caller's own rows in its organization (PostgreSQL).

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

TABLE, POLICY = "user_progress", "user_progress_tenant"
# Progress rows are private to their user even for global access, which only lifts the
# organization filter (the service's own scope, enforced once more by the database).
PREDICATE = f'{rls.organization_scope()} AND "userId" = {rls.USER}'


def upgrade() -> None:
    rls.enable(op.get_bind(), TABLE, POLICY, PREDICATE)


def downgrade() -> None:
    rls.disable(op.get_bind(), TABLE, POLICY)
