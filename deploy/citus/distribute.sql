-- Turns the migrated tables into Citus tables; see docs/scaling.md for why each is what it is.
-- Run on the coordinator after both services' migrations, as a role that owns the tables:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f deploy/citus/distribute.sql
-- Re-runnable: a table that is a Citus table already is left alone. Run it again after a
-- migration that adds a table. tests/common/test_citus_rules.py checks, on the migrated
-- catalog, the rules each line relies on.
CREATE EXTENSION IF NOT EXISTS citus;

-- The tenant settings the row-level security policies read are SET LOCAL in each
-- transaction; the shards' copies of the policies read them on the workers.
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET citus.propagate_set_commands = local', current_database());
END $$;

-- Reference tables: small, read by every organization's queries, copied to every node.
SELECT create_reference_table('organizations')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'organizations'::regclass);
SELECT create_reference_table('classes')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'classes'::regclass);
SELECT create_reference_table('timetables')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'timetables'::regclass);

-- Distributed tables: sharded by organization, colocated, so one organization's rows of both
-- tables live on the same node and every tenant statement runs on one shard.
SELECT create_distributed_table('academic_years', 'organizationId')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'academic_years'::regclass);
SELECT create_distributed_table('user_progress', 'organizationId', colocate_with => 'academic_years')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'user_progress'::regclass);

-- The request-id stores (common.idempotency): keyed by organization like the rest and colocated,
-- so a write's claim, its rows and its stored answer sit on one node (one transaction there).
-- Their purge functions delete by ctid, which runs on a shard, not across them: on Citus run
-- the purge on the shards (docs/scaling.md).
SELECT create_distributed_table('progress_request_ids', 'organizationId', colocate_with => 'academic_years')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'progress_request_ids'::regclass);
SELECT create_distributed_table('academic_years_request_ids', 'organizationId', colocate_with => 'academic_years')
WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = 'academic_years_request_ids'::regclass);
