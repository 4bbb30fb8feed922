-- Same tables and view as migrations/postgres/0009: sync history and repaired drift.
CREATE TABLE sync_history (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id   TEXT    NOT NULL CHECK (length(cluster_id) = 36),
    fleet_secret TEXT    NOT NULL,
    revision     INTEGER NOT NULL CHECK (revision >= 0),
    outcome      TEXT    NOT NULL CHECK (outcome IN ('applied', 'refused', 'removed')),
    error        TEXT,
    replica      TEXT    NOT NULL,
    at           TEXT    NOT NULL
);
CREATE INDEX sync_history_fleet_secret ON sync_history (fleet_secret, at DESC);
CREATE INDEX sync_history_cluster ON sync_history (cluster_id, at DESC);
CREATE INDEX sync_history_at ON sync_history (at);

CREATE TABLE drift_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id   TEXT    NOT NULL CHECK (length(cluster_id) = 36),
    fleet_secret TEXT    NOT NULL,
    namespace    TEXT    NOT NULL,
    kind         TEXT    NOT NULL CHECK (kind IN ('modified', 'deleted', 'unspecified')),
    revision     INTEGER NOT NULL CHECK (revision >= 0),
    -- Why the agent could not repair the Secret; NULL when it did.
    failure      TEXT,
    replica      TEXT    NOT NULL,
    at           TEXT    NOT NULL
);
CREATE INDEX drift_events_at ON drift_events (at DESC);
CREATE INDEX drift_events_cluster ON drift_events (cluster_id, at DESC);

CREATE VIEW keyfleet_drift AS
SELECT d.at, d.cluster_id, c.name AS cluster, d.fleet_secret, d.namespace, d.kind, d.revision,
       d.failure IS NULL AS repaired, d.failure
FROM drift_events d
LEFT JOIN clusters c ON c.id = d.cluster_id;
