-- The lagging status rows, kept apart (measured at 10,000 clusters × 50 fleet secrets with 20,000
-- lagging rows: fetching them from `sync_status` through its partial index costs one random heap
-- page per row, 70–100 ms; from this table, a few MB read in order, a few ms).
-- `sync_lagging` holds exactly the `sync_status` rows whose `lagging` is true, maintained by
-- statement-level triggers from the rows each status statement changed (as `sync_rollup` is): the
-- write cost follows the lagging rows, and the dashboard views read only this table.

CREATE TABLE sync_lagging (
    cluster_id       uuid        NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    -- Copied from clusters (names never change) so "oldest first, then by name" is an index order:
    -- a rotation stamps many rows with the same time.
    -- Byte order ("C"): names are DNS-1123 (ASCII), and sorting 20,000 of them by the database's
    -- locale costs more than the rest of the query.
    cluster_name     text        COLLATE "C" NOT NULL,
    fleet_secret     text        COLLATE "C" NOT NULL,
    desired_revision bigint      NOT NULL,
    applied_revision bigint,
    state            text        NOT NULL,
    last_error       text,
    attempts         integer     NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (cluster_id, fleet_secret)
);
CREATE INDEX sync_lagging_oldest ON sync_lagging (updated_at, cluster_name, fleet_secret);
-- Every rotation passes the whole fleet through this table (pending, then acked): vacuum it after a
-- fixed number of dead rows rather than a fraction of its (small) live size.
ALTER TABLE sync_lagging SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
                              autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 10000);

CREATE FUNCTION keyfleet_sync_lagging() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM sync_lagging l
        USING old_rows o
        WHERE o.lagging AND l.cluster_id = o.cluster_id AND l.fleet_secret = o.fleet_secret;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO sync_lagging
            (cluster_id, cluster_name, fleet_secret, desired_revision, applied_revision, state,
             last_error, attempts, updated_at)
        SELECT n.cluster_id, c.name, n.fleet_secret, n.desired_revision, n.applied_revision,
               n.state, n.last_error, n.attempts, n.updated_at
        FROM new_rows n
        JOIN clusters c ON c.id = n.cluster_id
        WHERE n.lagging;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER sync_lagging_insert AFTER INSERT ON sync_status
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keyfleet_sync_lagging();
CREATE TRIGGER sync_lagging_update AFTER UPDATE ON sync_status
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keyfleet_sync_lagging();
CREATE TRIGGER sync_lagging_delete AFTER DELETE ON sync_status
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION keyfleet_sync_lagging();

-- Rows written before this migration.
INSERT INTO sync_lagging
    (cluster_id, cluster_name, fleet_secret, desired_revision, applied_revision, state, last_error,
     attempts, updated_at)
SELECT s.cluster_id, c.name, s.fleet_secret, s.desired_revision, s.applied_revision, s.state,
       s.last_error, s.attempts, s.updated_at
FROM sync_status s
JOIN clusters c ON c.id = s.cluster_id
WHERE s.lagging;

-- The views, same names and columns, now over `sync_lagging` (dropped and created again: the
-- `cluster` column of keyfleet_lagging takes the "C" collation).
DROP VIEW keyfleet_lagging;
DROP VIEW keyfleet_cluster_sync;
DROP VIEW keyfleet_rollout;
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
           FROM sync_lagging s
           JOIN clusters c ON c.id = s.cluster_id
           WHERE c.connected_replica IS NULL
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
           FROM sync_lagging s
           GROUP BY s.cluster_id) l
       ON l.cluster_id = c.id;

CREATE VIEW keyfleet_lagging AS
SELECT s.cluster_name AS cluster,
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
FROM sync_lagging s
JOIN clusters c ON c.id = s.cluster_id
ORDER BY s.updated_at, s.cluster_name, s.fleet_secret;
