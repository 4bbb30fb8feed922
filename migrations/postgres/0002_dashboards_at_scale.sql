-- Dashboards that stay fast at 10,000 clusters × 50 fleet secrets (500,000 status rows):
-- 1. `sync_status.lagging` (stored, generated) gives the planner real statistics for "not on the
--    desired revision" (a comparison of two columns has none), and the partial index on it holds
--    only the lagging rows.
-- 2. `sync_rollup` keeps the per (fleet secret, desired revision) counters of keyfleet_rollout,
--    maintained by statement-level triggers from the rows each status statement changed
--    (transition tables): a 10,000-row batch adds one aggregate over its own rows, and the view
--    reads ~one row per fleet secret instead of every status row.
-- 3. keyfleet_rollout.offline counts the clusters that are not on the revision yet AND have no
--    stream (the ones a rollout waits for), from the lagging rows only.
-- 4. keyfleet_cluster_sync aggregates only the lagging rows (its `fleet_secrets` column is gone:
--    counting every row per cluster is the 500,000-row scan this migration removes).

ALTER TABLE sync_status
    ADD COLUMN lagging boolean
    GENERATED ALWAYS AS (applied_revision IS DISTINCT FROM desired_revision) STORED;
DROP VIEW keyfleet_lagging;
DROP VIEW keyfleet_cluster_sync;
DROP VIEW keyfleet_rollout;
DROP INDEX sync_status_lagging;
CREATE INDEX sync_status_lagging ON sync_status (updated_at) WHERE lagging;

CREATE TABLE sync_rollup (
    fleet_secret     text        NOT NULL,
    revision         bigint      NOT NULL,
    targeted         bigint      NOT NULL,
    applied          bigint      NOT NULL,
    pending          bigint      NOT NULL,
    error            bigint      NOT NULL,
    -- First and last acknowledgement of the revision (kept when rows later move on).
    first_applied_at timestamptz,
    last_applied_at  timestamptz,
    PRIMARY KEY (fleet_secret, revision),
    -- (No CHECK >= 0: an upsert checks its proposed row, which here carries negative deltas.)
    CHECK (applied + pending + error = targeted)
);

-- Categories (as in keyfleet_rollout): applied = on the desired revision and state applied;
-- error = state error; pending = everything else.
CREATE FUNCTION keyfleet_sync_rollup() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO sync_rollup AS r
            (fleet_secret, revision, targeted, applied, pending, error, first_applied_at, last_applied_at)
        SELECT n.fleet_secret, n.desired_revision, count(*),
               count(*) FILTER (WHERE NOT n.lagging AND n.state = 'applied'),
               count(*) FILTER (WHERE n.state <> 'error' AND (n.lagging OR n.state <> 'applied')),
               count(*) FILTER (WHERE n.state = 'error'),
               min(n.applied_at) FILTER (WHERE NOT n.lagging),
               max(n.applied_at) FILTER (WHERE NOT n.lagging)
        FROM new_rows n
        GROUP BY n.fleet_secret, n.desired_revision
        ORDER BY n.fleet_secret, n.desired_revision
        ON CONFLICT (fleet_secret, revision) DO UPDATE SET
            targeted = r.targeted + excluded.targeted,
            applied = r.applied + excluded.applied,
            pending = r.pending + excluded.pending,
            error = r.error + excluded.error,
            first_applied_at = LEAST(r.first_applied_at, excluded.first_applied_at),
            last_applied_at = GREATEST(r.last_applied_at, excluded.last_applied_at);
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO sync_rollup AS r
            (fleet_secret, revision, targeted, applied, pending, error, first_applied_at, last_applied_at)
        SELECT d.fleet_secret, d.revision, sum(d.n), sum(d.a), sum(d.p), sum(d.e), min(d.at), max(d.at)
        FROM (
            SELECT n.fleet_secret, n.desired_revision AS revision, 1 AS n,
                   (NOT n.lagging AND n.state = 'applied')::int AS a,
                   (n.state <> 'error' AND (n.lagging OR n.state <> 'applied'))::int AS p,
                   (n.state = 'error')::int AS e,
                   CASE WHEN NOT n.lagging THEN n.applied_at END AS at
            FROM new_rows n
            UNION ALL
            SELECT o.fleet_secret, o.desired_revision, -1,
                   -(NOT o.lagging AND o.state = 'applied')::int,
                   -(o.state <> 'error' AND (o.lagging OR o.state <> 'applied'))::int,
                   -(o.state = 'error')::int,
                   NULL
            FROM old_rows o
        ) d
        GROUP BY d.fleet_secret, d.revision
        ORDER BY d.fleet_secret, d.revision
        ON CONFLICT (fleet_secret, revision) DO UPDATE SET
            targeted = r.targeted + excluded.targeted,
            applied = r.applied + excluded.applied,
            pending = r.pending + excluded.pending,
            error = r.error + excluded.error,
            first_applied_at = LEAST(r.first_applied_at, excluded.first_applied_at),
            last_applied_at = GREATEST(r.last_applied_at, excluded.last_applied_at);
    ELSE
        UPDATE sync_rollup AS r SET
            targeted = r.targeted - d.n,
            applied = r.applied - d.a,
            pending = r.pending - d.p,
            error = r.error - d.e
        FROM (
            SELECT o.fleet_secret, o.desired_revision AS revision, count(*) AS n,
                   count(*) FILTER (WHERE NOT o.lagging AND o.state = 'applied') AS a,
                   count(*) FILTER (WHERE o.state <> 'error' AND (o.lagging OR o.state <> 'applied')) AS p,
                   count(*) FILTER (WHERE o.state = 'error') AS e
            FROM old_rows o
            GROUP BY o.fleet_secret, o.desired_revision
        ) d
        WHERE r.fleet_secret = d.fleet_secret AND r.revision = d.revision;
    END IF;
    DELETE FROM sync_rollup WHERE targeted = 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER sync_rollup_insert AFTER INSERT ON sync_status
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keyfleet_sync_rollup();
CREATE TRIGGER sync_rollup_update AFTER UPDATE ON sync_status
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keyfleet_sync_rollup();
CREATE TRIGGER sync_rollup_delete AFTER DELETE ON sync_status
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keyfleet_sync_rollup();

-- Rows written before this migration.
INSERT INTO sync_rollup
    (fleet_secret, revision, targeted, applied, pending, error, first_applied_at, last_applied_at)
SELECT s.fleet_secret, s.desired_revision, count(*),
       count(*) FILTER (WHERE NOT s.lagging AND s.state = 'applied'),
       count(*) FILTER (WHERE s.state <> 'error' AND (s.lagging OR s.state <> 'applied')),
       count(*) FILTER (WHERE s.state = 'error'),
       min(s.applied_at) FILTER (WHERE NOT s.lagging),
       max(s.applied_at) FILTER (WHERE NOT s.lagging)
FROM sync_status s
GROUP BY s.fleet_secret, s.desired_revision;

CREATE VIEW keyfleet_rollout AS
SELECT r.fleet_secret,
       r.revision,
       r.targeted,
       r.applied,
       r.pending,
       r.error,
       coalesce(o.offline, 0) AS offline,
       r.first_applied_at,
       r.last_applied_at
FROM sync_rollup r
LEFT JOIN (SELECT s.fleet_secret, s.desired_revision, count(*) AS offline
           FROM sync_status s
           JOIN clusters c ON c.id = s.cluster_id
           WHERE s.lagging AND c.connected_replica IS NULL
           GROUP BY s.fleet_secret, s.desired_revision) o
       ON o.fleet_secret = r.fleet_secret AND o.desired_revision = r.revision;

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
       extract(epoch FROM now() - l.oldest)::double precision AS lag_seconds,
       l.last_error
FROM clusters c
LEFT JOIN (SELECT s.cluster_id,
                  count(*) AS lagging,
                  count(*) FILTER (WHERE s.state = 'error') AS errors,
                  min(s.updated_at) AS oldest,
                  (array_agg(s.last_error ORDER BY s.updated_at DESC)
                       FILTER (WHERE s.state = 'error' AND s.last_error IS NOT NULL))[1] AS last_error
           FROM sync_status s
           WHERE s.lagging
           GROUP BY s.cluster_id) l
       ON l.cluster_id = c.id;

CREATE VIEW keyfleet_lagging AS
SELECT c.name AS cluster,
       s.cluster_id,
       s.fleet_secret,
       s.desired_revision,
       s.applied_revision,
       s.state,
       s.last_error,
       s.attempts,
       s.updated_at,
       extract(epoch FROM now() - s.updated_at)::double precision AS lag_seconds,
       c.connected_replica IS NOT NULL AS online
FROM sync_status s
JOIN clusters c ON c.id = s.cluster_id
WHERE s.lagging
ORDER BY s.updated_at, c.name, s.fleet_secret;
