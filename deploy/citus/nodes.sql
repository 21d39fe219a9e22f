-- The compose profile's cluster: the coordinator and two workers (docker-compose.yml, `citus`).
-- Re-runnable: citus_add_node returns the existing node's id for a node added before.
CREATE EXTENSION IF NOT EXISTS citus;
SELECT citus_set_coordinator_host('citus-coordinator', 5432);
SELECT citus_add_node('citus-worker-1', 5432);
SELECT citus_add_node('citus-worker-2', 5432);
