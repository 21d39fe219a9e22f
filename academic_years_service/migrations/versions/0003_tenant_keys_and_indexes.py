"""Tenant-keyed academic_years: NOT NULL organization, keys within it, and the List indexes.

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-12

Why: a table-wide UNIQUE "importHash" and primary key "id" let one organization learn that
another holds a hash or an id (an import skipped the row, a create answered ALREADY_EXISTS);
Citus enforces a key only when it contains the distribution column ("organizationId", see
docs/scaling.md); and List's filters and sorts had no index but the default order's.

Safe on a live table. Every step is its own transaction (autocommit), so a lock lasts as long
as its statement; steps marked "instant" take ACCESS EXCLUSIVE, give up after
common.online_ddl.LOCK_TIMEOUT rather than queue traffic behind them, and are retried. A failed
run leaves the table usable and a re-run finishes the job:

1. refuse (changing nothing) if a row has no "organizationId", or if another table's foreign
   key depends on the primary key on "id" alone;
2. "organizationId" NOT NULL: CHECK … NOT VALID (instant), VALIDATE (SHARE UPDATE EXCLUSIVE:
   one scan, reads and writes go on), SET NOT NULL (instant: the valid check spares the scan),
   DROP the check (instant);
3. CREATE EXTENSION IF NOT EXISTS pg_trgm (trusted since PostgreSQL 13);
4. CREATE [UNIQUE] INDEX CONCURRENTLY (SHARE UPDATE EXCLUSIVE, writes go on) for the new keys
   ("organizationId", id) and ("organizationId", "importHash") and for List: one b-tree per sort
   field within an organization (the field, then id for ties), one on ("createdAt" DESC, id DESC)
   for a global-access caller's default order, and a pg_trgm GIN on name for the substring filter
   and autocomplete; all but the keys partial on live rows, as every read skips deleted ones;
5. the primary key becomes ("organizationId", id) USING the index built in 4 (instant), and the
   old UNIQUE ("importHash") is dropped (instant);
6. DROP INDEX CONCURRENTLY the ("organizationId", name) index that (…, name, id) replaces.

Downgrade undoes each step the same way, and refuses (changing nothing) when rows written since
hold an id or hash in two organizations, which the old table-wide keys would not allow. It keeps
pg_trgm installed (other objects may use it).
"""

from common import online_ddl as ddl

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE = "academic_years"
LIVE = '"deletedAt" IS NULL'
KEY = ["organizationId", "id"]
BUILT_KEY = "academic_years_org_id_key"  # renamed academic_years_pkey when it becomes the key
IMPORT_HASH_KEY = "academic_years_org_import_hash_key"
# List's indexes, partial on live rows: name -> (columns, method).
INDEXES = {
    "academic_years_org_name_id": ('"organizationId", name, id', "btree"),
    "academic_years_org_start": ('"organizationId", start_date, id', "btree"),
    "academic_years_org_end": ('"organizationId", end_date, id', "btree"),
    "academic_years_org_updated": ('"organizationId", "updatedAt", id', "btree"),
    "academic_years_org_current": ('"organizationId", current, id', "btree"),
    "academic_years_created": ('"createdAt" DESC, id DESC', "btree"),
    "academic_years_name_trgm": ("name gin_trgm_ops", "gin"),
}
REPLACED = "academic_years_org_name"


def _refuse_dependents(bind: object) -> None:
    dependents = ddl.scalar(
        bind,
        "SELECT string_agg(conrelid::regclass::text || '.' || conname, ', ') "
        "FROM pg_constraint WHERE contype = 'f' AND confrelid = 'academic_years'::regclass "
        "AND conrelid <> confrelid",
    )
    if dependents:
        raise ddl.MigrationRefused(
            f"foreign keys depend on academic_years' primary key on id alone ({dependents}); "
            'make each reference ("organizationId", <column>) → academic_years '
            '("organizationId", id), or drop it, then run the migration again. '
            "Nothing was changed."
        )


def upgrade() -> None:
    with ddl.online() as bind:
        ddl.refuse_nulls(
            bind,
            TABLE,
            "organizationId",
            'assign each to its school (UPDATE academic_years SET "organizationId" = … '
            "WHERE id = …) or delete it, since a year of no organization is visible to no "
            "school and cannot be placed on a shard.",
        )
        key = ddl.primary_key(bind, TABLE)
        if key is None or key[1] != KEY:
            _refuse_dependents(bind)
        ddl.set_not_null(bind, TABLE, "organizationId")
        bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")

        if key is None or key[1] != KEY:
            ddl.create_index(bind, BUILT_KEY, TABLE, '"organizationId", id', unique=True)
        ddl.create_index(
            bind, IMPORT_HASH_KEY, TABLE, '"organizationId", "importHash"', unique=True
        )
        for name, (columns, method) in INDEXES.items():
            ddl.create_index(bind, name, TABLE, columns, using=method, where=LIVE)

        ddl.replace_primary_key(bind, TABLE, KEY, BUILT_KEY)
        for name in ddl.unique_constraints_on(bind, TABLE, ["importHash"]):
            ddl.drop_constraint(bind, TABLE, name)
        ddl.drop_index(bind, REPLACED)


def downgrade() -> None:
    with ddl.online() as bind:
        why = "the table-wide key of revision 0002 cannot hold them."
        ddl.refuse_duplicates(bind, TABLE, ["id"], why)
        ddl.refuse_duplicates(bind, TABLE, ["importHash"], why)
        ddl.create_index(
            bind, REPLACED, TABLE, '"organizationId", name', where=LIVE
        )  # before the indexes that replaced it go
        key = ddl.primary_key(bind, TABLE)
        if key is None or key[1] != ["id"]:
            ddl.create_index(bind, "academic_years_id_key", TABLE, "id", unique=True)
        ddl.replace_primary_key(bind, TABLE, ["id"], "academic_years_id_key")
        if not ddl.unique_constraints_on(bind, TABLE, ["importHash"]):
            hash_key = "academic_years_importHash_key"
            ddl.create_index(bind, hash_key, TABLE, '"importHash"', unique=True)
            ddl.brief(
                bind,
                f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{hash_key}" UNIQUE USING INDEX "{hash_key}"',
            )
        for name in [IMPORT_HASH_KEY, *INDEXES]:
            ddl.drop_index(bind, name)
        ddl.brief(bind, f'ALTER TABLE "{TABLE}" ALTER COLUMN "organizationId" DROP NOT NULL')
