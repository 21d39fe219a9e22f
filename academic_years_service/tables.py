"""`academic_years` and the reference tables Get reads, with the original Sequelize names."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Date, Index, MetaData, String, Table, Text, false, text

from common.db import UUID_TYPE, UtcDateTime

metadata = MetaData()

LIVE = text('"deletedAt" IS NULL')

academic_years = Table(
    "academic_years",
    metadata,
    Column("id", UUID_TYPE, primary_key=True),
    Column("name", Text),
    Column("start_date", Date),
    Column("end_date", Date),
    Column("current", Boolean, nullable=False, server_default=false()),
    Column("importHash", String(255), unique=True),
    Column("organizationId", UUID_TYPE),
    Column("createdById", UUID_TYPE),
    Column("updatedById", UUID_TYPE),
    Column("createdAt", UtcDateTime, nullable=False),
    Column("updatedAt", UtcDateTime, nullable=False),
    Column("deletedAt", UtcDateTime),
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

# The default order (newest first) within one organization, read straight off the index.
Index(
    "academic_years_org_created",
    academic_years.c.organizationId,
    academic_years.c.createdAt.desc(),
    academic_years.c.id.desc(),
    postgresql_where=LIVE,
)
# Autocomplete and name ordering within one organization.
Index(
    "academic_years_org_name",
    academic_years.c.organizationId,
    academic_years.c.name,
    postgresql_where=LIVE,
)
# Get's association queries.
Index("classes_academic_year_id", classes.c.academic_yearId)
Index("timetables_academic_year_id", timetables.c.academic_yearId)
