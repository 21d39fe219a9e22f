"""`academic_years` and the reference tables Get reads, with the original Sequelize names."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    false,
    text,
)

from common.db import UUID_TYPE, UtcDateTime
from common.idempotency import request_ids_table

metadata = MetaData()

LIVE = text('"deletedAt" IS NULL')

# Keyed within the organization (migration 0003): an id or import hash taken in one organization
# is free in every other, and every unique key contains the distribution column Citus needs.
academic_years = Table(
    "academic_years",
    metadata,
    Column("id", UUID_TYPE, nullable=False),
    Column("name", Text),
    Column("start_date", Date),
    Column("end_date", Date),
    Column("current", Boolean, nullable=False, server_default=false()),
    Column("importHash", String(255)),
    Column("organizationId", UUID_TYPE, nullable=False),
    Column("createdById", UUID_TYPE),
    Column("updatedById", UUID_TYPE),
    Column("createdAt", UtcDateTime, nullable=False),
    Column("updatedAt", UtcDateTime, nullable=False),
    Column("deletedAt", UtcDateTime),
    # Incremented by every write (migration 0004); the etag is derived from it.
    Column("version", BigInteger, nullable=False, server_default=text("1")),
    PrimaryKeyConstraint("organizationId", "id", name="academic_years_pkey"),
)

# Owned by other slices of the backend; this service only reads them.
organizations = Table(
    "organizations",
    metadata,
    Column("id", UUID_TYPE, primary_key=True),
    Column("name", Text),
    Column("createdAt", UtcDateTime),
    Column("updatedAt", UtcDateTime),
    Column("deletedAt", UtcDateTime),
)


def _yearly(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("id", UUID_TYPE, primary_key=True),
        Column("name", Text),
        Column("academic_yearId", UUID_TYPE),
        Column("organizationId", UUID_TYPE),
        Column("deletedAt", UtcDateTime),
    )


classes = _yearly("classes")
timetables = _yearly("timetables")

y = academic_years
# An import skips a row whose hash its organization holds already, deleted rows included.
Index("academic_years_org_import_hash_key", y.c.organizationId, y.c.importHash, unique=True)
# The default order (newest first) within one organization, read straight off the index; also
# the createdAt range filter.
Index(
    "academic_years_org_created",
    y.c.organizationId,
    y.c.createdAt.desc(),
    y.c.id.desc(),
    postgresql_where=LIVE,
)
# One per sort field within an organization, id breaking ties: each serves its order both ways
# (and so keyset pages), and the date ones the date-range and calendar filters. Sorting by id
# reads the primary key.
for _name, _column in (
    ("academic_years_org_name_id", y.c.name),  # autocomplete too
    ("academic_years_org_start", y.c.start_date),
    ("academic_years_org_end", y.c.end_date),
    ("academic_years_org_updated", y.c.updatedAt),
    ("academic_years_org_current", y.c.current),
):
    Index(_name, y.c.organizationId, _column, y.c.id, postgresql_where=LIVE)
# A global-access caller's default order, over every organization.
Index("academic_years_created", y.c.createdAt.desc(), y.c.id.desc(), postgresql_where=LIVE)
# The case-insensitive substring filter and autocomplete within one organization (pg_trgm,
# with btree_gin for the uuid), and across all of them for a global-access caller.
Index(
    "academic_years_org_name_trgm",
    y.c.organizationId,
    y.c.name,
    postgresql_using="gin",
    postgresql_ops={"name": "gin_trgm_ops"},
    postgresql_where=LIVE,
)
Index(
    "academic_years_name_trgm",
    y.c.name,
    postgresql_using="gin",
    postgresql_ops={"name": "gin_trgm_ops"},
    postgresql_where=LIVE,
)
# Get's association queries.
Index("classes_academic_year_id", classes.c.academic_yearId)
Index("timetables_academic_year_id", timetables.c.academic_yearId)

# Answers of writes sent with a request id (migration 0006, common.idempotency).
request_ids = request_ids_table("academic_years_request_ids", metadata)
