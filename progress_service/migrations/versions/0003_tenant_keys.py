"""Tenant-keyed user_progress: every key contains "organizationId".

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-12

Why: a table-wide UNIQUE "importHash" let one organization learn that another holds a hash,
and Citus enforces a primary key or UNIQUE index only when it contains the distribution column
("organizationId", see docs/scaling.md). The upsert's key (organization, user, type, item)
contains it already; the primary key and the import hash now do too. The upsert's key is
rebuilt as (user, type, item, organization): the same key, which now also serves a
global-access caller's list of one item (the user's rows in every organization).

Safe on a live table. Every step is its own transaction (autocommit), so a lock lasts as long
as its statement; steps marked "instant" take ACCESS EXCLUSIVE, give up after
common.online_ddl.LOCK_TIMEOUT rather than queue traffic behind them, and are retried. A failed
run leaves the table usable and a re-run finishes the job:

1. refuse (changing nothing) if a row has no "organizationId" (only a table adopted from the
   original backend can have one: revision 0001 creates the column NOT NULL);
2. "organizationId" NOT NULL where it is not yet: CHECK … NOT VALID (instant), VALIDATE (SHARE
   UPDATE EXCLUSIVE: one scan, reads and writes go on), SET NOT NULL (instant), DROP the check;
3. CREATE UNIQUE INDEX CONCURRENTLY ("organizationId", id) and ("organizationId", "importHash")
   (SHARE UPDATE EXCLUSIVE: writes go on);
4. the primary key becomes ("organizationId", id) USING the first (instant), and the old UNIQUE
   ("importHash") is dropped (instant);
5. user_progress_owner_item_key rebuilt in its new column order: CREATE UNIQUE INDEX
   CONCURRENTLY under a new name, DROP INDEX CONCURRENTLY the old one (the upsert's ON CONFLICT
   finds either, as both are on the same columns), RENAME (an instant).

Downgrade undoes 3 to 5 the same way, and refuses (changing nothing) when rows written since
hold a hash in two organizations. "organizationId" stays NOT NULL, as revision 0001 made it.
"""

from common import online_ddl as ddl

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLE = "user_progress"
KEY = ["organizationId", "id"]
BUILT_KEY = "user_progress_org_id_key"  # renamed user_progress_pkey when it becomes the key
IMPORT_HASH_KEY = "user_progress_org_import_hash_key"
OWNER_KEY = "user_progress_owner_item_key"
LIVE = '"deletedAt" IS NULL'


def upgrade() -> None:
    with ddl.online() as bind:
        ddl.refuse_nulls(
            bind,
            TABLE,
            "organizationId",
            "set it from the user's organization or delete those rows, since a row of no "
            "organization is visible to no school and cannot be placed on a shard.",
        )
        ddl.set_not_null(bind, TABLE, "organizationId")
        key = ddl.primary_key(bind, TABLE)
        if key is None or key[1] != KEY:
            ddl.create_index(bind, BUILT_KEY, TABLE, '"organizationId", id', unique=True)
        ddl.create_index(
            bind, IMPORT_HASH_KEY, TABLE, '"organizationId", "importHash"', unique=True
        )
        ddl.replace_primary_key(bind, TABLE, KEY, BUILT_KEY)
        for name in ddl.unique_constraints_on(bind, TABLE, ["importHash"]):
            ddl.drop_constraint(bind, TABLE, name)
        owner = ["userId", "progress_type", "item_id", "organizationId"]
        ddl.rebuild_index(bind, OWNER_KEY, TABLE, owner, unique=True, where=LIVE)


def downgrade() -> None:
    with ddl.online() as bind:
        ddl.refuse_duplicates(
            bind, TABLE, ["importHash"], "the table-wide key of revision 0002 cannot hold them."
        )
        key = ddl.primary_key(bind, TABLE)
        if key is None or key[1] != ["id"]:
            ddl.create_index(bind, "user_progress_id_key", TABLE, "id", unique=True)
        ddl.replace_primary_key(bind, TABLE, ["id"], "user_progress_id_key")
        if not ddl.unique_constraints_on(bind, TABLE, ["importHash"]):
            hash_key = "user_progress_importHash_key"
            ddl.create_index(bind, hash_key, TABLE, '"importHash"', unique=True)
            ddl.brief(
                bind,
                f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{hash_key}" UNIQUE USING INDEX "{hash_key}"',
            )
        ddl.drop_index(bind, IMPORT_HASH_KEY)
        owner = ["organizationId", "userId", "progress_type", "item_id"]
        ddl.rebuild_index(bind, OWNER_KEY, TABLE, owner, unique=True, where=LIVE)
