-- Same view columns as migrations/postgres/0002: keyfleet_rollout.offline counts the clusters not
-- on the revision yet that have no stream; keyfleet_cluster_sync aggregates only lagging rows (its
-- `fleet_secrets` column is gone). SQLite aggregates on the fly (small installs); Postgres keeps
-- a trigger-maintained rollup.

DROP VIEW keyfleet_rollout;
DROP VIEW keyfleet_cluster_sync;

-- Covering index: the per-revision counts read only this index, never the table.
CREATE INDEX sync_status_rollout
    ON sync_status (fleet_secret, desired_revision, state, applied_revision, applied_at);

CREATE VIEW keyfleet_rollout AS
SELECT a.fleet_secret,
       a.revision,
       a.targeted,
       a.applied,
       a.pending,
       a.error,
       coalesce(o.offline, 0) AS offline,
       a.first_applied_at,
       a.last_applied_at
FROM (SELECT s.fleet_secret,
             s.desired_revision AS revision,
             count(*) AS targeted,
             count(*) FILTER (WHERE s.applied_revision = s.desired_revision AND s.state = 'applied') AS applied,
             count(*) FILTER (WHERE s.state <> 'error'
                                AND (s.applied_revision IS NOT s.desired_revision OR s.state <> 'applied')) AS pending,
             count(*) FILTER (WHERE s.state = 'error') AS error,
             min(s.applied_at) FILTER (WHERE s.applied_revision = s.desired_revision) AS first_applied_at,
             max(s.applied_at) FILTER (WHERE s.applied_revision = s.desired_revision) AS last_applied_at
      FROM sync_status s
      GROUP BY s.fleet_secret, s.desired_revision) a
LEFT JOIN (SELECT s.fleet_secret, s.desired_revision, count(*) AS offline
           FROM sync_status s
           JOIN clusters c ON c.id = s.cluster_id
           WHERE s.applied_revision IS NOT s.desired_revision AND c.connected_replica IS NULL
           GROUP BY s.fleet_secret, s.desired_revision) o
       ON o.fleet_secret = a.fleet_secret AND o.desired_revision = a.revision;

CREATE VIEW keyfleet_cluster_sync AS
SELECT c.id AS cluster_id,
       c.name AS cluster,
       c.state,
       c.connected_replica,
       c.connected_replica IS NOT NULL AS online,
       c.last_seen,
       coalesce(l.lagging, 0) AS lagging,
       coalesce(l.errors, 0) AS errors,
       l.lagging IS NULL AS in_sync,
       (julianday('now') - julianday(l.oldest)) * 86400.0 AS lag_seconds,
       (SELECT e.last_error FROM sync_status e
         WHERE e.cluster_id = c.id AND e.state = 'error' AND e.last_error IS NOT NULL
           AND e.applied_revision IS NOT e.desired_revision
         ORDER BY e.updated_at DESC LIMIT 1) AS last_error
FROM clusters c
LEFT JOIN (SELECT s.cluster_id,
                  count(*) AS lagging,
                  count(*) FILTER (WHERE s.state = 'error') AS errors,
                  min(s.updated_at) AS oldest
           FROM sync_status s
           WHERE s.applied_revision IS NOT s.desired_revision
           GROUP BY s.cluster_id) l
       ON l.cluster_id = c.id;
