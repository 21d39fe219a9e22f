"""The `user_progress` table, with the original Sequelize names."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Enum,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)

from common.db import JSON_TYPE, UUID_TYPE, UtcDateTime
from common.idempotency import request_ids_table
from progress_service.domain import PROGRESS_TYPE_VALUES

metadata = MetaData()

PROGRESS_TYPE_ENUM = Enum(
    *PROGRESS_TYPE_VALUES, name="enum_user_progress_progress_type", create_constraint=True
)

# Keyed within the organization (migration 0003): every unique key contains the distribution
# column Citus needs, and an import hash taken in one organization is free in every other.
user_progress = Table(
    "user_progress",
    metadata,
    Column("id", UUID_TYPE, nullable=False),
    Column("progress_type", PROGRESS_TYPE_ENUM, nullable=False),
    Column("item_id", Text, nullable=False),
    Column("value", Text),
    Column("score", Integer),
    Column("metadata", JSON_TYPE),
    Column("importHash", String(255)),
    Column("organizationId", UUID_TYPE, nullable=False),
    Column("campusId", UUID_TYPE),
    Column("userId", UUID_TYPE, nullable=False),
    Column("createdById", UUID_TYPE, nullable=False),
    Column("updatedById", UUID_TYPE),
    Column("createdAt", UtcDateTime, nullable=False),
    Column("updatedAt", UtcDateTime, nullable=False),
    Column("deletedAt", UtcDateTime),
    PrimaryKeyConstraint("organizationId", "id", name="user_progress_pkey"),
)

LIVE = text('"deletedAt" IS NULL')

Index(
    "user_progress_org_import_hash_key",
    user_progress.c.organizationId,
    user_progress.c.importHash,
    unique=True,
)
# One live row per (organization, user, type, item): the target of the atomic upsert. The user
# leads, so a global-access caller's rows of one item are found by it too.
Index(
    "user_progress_owner_item_key",
    user_progress.c.userId,
    user_progress.c.progress_type,
    user_progress.c.item_id,
    user_progress.c.organizationId,
    unique=True,
    postgresql_where=LIVE,
)
# Serves the list: a user's rows of one type, newest first.
Index(
    "user_progress_user_type_created",
    user_progress.c.userId,
    user_progress.c.progress_type,
    user_progress.c.createdAt.desc(),
    user_progress.c.id.desc(),
    postgresql_where=LIVE,
)

# Answers of writes sent with a request id (migration 0004, common.idempotency).
request_ids = request_ids_table("progress_request_ids", metadata)
