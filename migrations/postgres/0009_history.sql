-- Fleet history: when each cluster got each revision of each FleetSecret (and each refusal), and
-- each drift an agent repaired (a Secret edited, deleted or taken over behind its back). Append
-- only, written in batches by every replica's history writer (one statement per table per batch),
-- pruned by the Key Vault leader after the retention (30 days). Names, revisions and the agents'
-- error texts only, never a value.
CREATE TABLE sync_history (
    id           bigserial   PRIMARY KEY,
    cluster_id   uuid        NOT NULL,
    fleet_secret text        NOT NULL,
    revision     bigint      NOT NULL CHECK (revision >= 0),
    outcome      text        NOT NULL CHECK (outcome IN ('applied', 'refused', 'removed')),
    error        text,
    replica      text        NOT NULL,
    at           timestamptz NOT NULL
);
CREATE INDEX sync_history_fleet_secret ON sync_history (fleet_secret, at DESC);
CREATE INDEX sync_history_cluster ON sync_history (cluster_id, at DESC);
CREATE INDEX sync_history_at ON sync_history (at);

CREATE TABLE drift_events (
    id           bigserial   PRIMARY KEY,
    cluster_id   uuid        NOT NULL,
    fleet_secret text        NOT NULL,
    namespace    text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('modified', 'deleted', 'unspecified')),
    revision     bigint      NOT NULL CHECK (revision >= 0),
    -- Why the agent could not repair the Secret; NULL when it did.
    failure      text,
    replica      text        NOT NULL,
    at           timestamptz NOT NULL
);
CREATE INDEX drift_events_at ON drift_events (at DESC);
CREATE INDEX drift_events_cluster ON drift_events (cluster_id, at DESC);

-- For dashboards: every drift (repaired, or not and why) with the cluster's name (a removed
-- cluster's rows keep its id only).
CREATE VIEW keyfleet_drift AS
SELECT d.at, d.cluster_id, c.name AS cluster, d.fleet_secret, d.namespace, d.kind, d.revision,
       d.failure IS NULL AS repaired, d.failure
FROM drift_events d
LEFT JOIN clusters c ON c.id = d.cluster_id;
