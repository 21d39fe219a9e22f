"""academic_years_request_ids: the answers of Create, Update, Delete, BatchDelete and the import
when sent with a request id (AIP-155), kept for their retries.

Revision ID: 0006
Revises: 0005
Create Date: 2027-02-02

What common.idempotency.create_store makes (progress revision 0004 makes the same for its
writes): a new table keyed by organization, user, method and request id, which the caller sees
only its own rows of; and academic_years_request_ids_purge, a SECURITY DEFINER function of the
migrating role deleting expired answers of every tenant, EXECUTE revoked from PUBLIC
(`migrate` grants it to the app role). Nothing in use is locked. Downgrade drops them: a kept
answer only spares a retry, and a retry after the downgrade applies again.
"""

from alembic import op

from common.idempotency import create_store, drop_store

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_store(op.get_bind(), "academic_years_request_ids")


def downgrade() -> None:
    drop_store(op.get_bind(), "academic_years_request_ids")
