"""academic_years_request_ids: answers kept under their request ids (AIP-155).

Revision ID: 0005
Revises: 0004
Create Date: 2027-02-02

A new table (common.idempotency.create_store): its creation locks no table in use, so it runs
in the migration's transaction. Keyed ("organizationId", "userId", method, "requestId") like
every tenant table (docs/scaling.md); row-level security gives a caller its own rows; the
SECURITY DEFINER function academic_years_request_ids_purge, owned by the role that migrates, deletes
expired rows of every tenant in batches (EXECUTE revoked from PUBLIC; `migrate` grants it to
the app role). Downgrade drops both: stored answers are only a retry's convenience.
"""

from alembic import op

from common import idempotency

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLE = "academic_years_request_ids"


def upgrade() -> None:
    idempotency.create_store(op.get_bind(), TABLE)


def downgrade() -> None:
    idempotency.drop_store(op.get_bind(), TABLE)
