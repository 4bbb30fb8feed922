-- keyfleet store, SQLite dialect (same tables, columns and views as migrations/postgres).
-- Never edit an applied migration: add 0002_… instead.
-- Dialect mapping: uuid → TEXT (hyphenated), timestamptz → TEXT `YYYY-MM-DDTHH:MM:SS.ffffffZ`
-- (fixed width, so text order is time order), bytea → BLOB, jsonb → TEXT (JSON), boolean →
-- INTEGER 0/1, bigserial → INTEGER PRIMARY KEY AUTOINCREMENT (never reused).
-- No column holds a secret value: only digests, ids and canonical spec YAML.

CREATE TABLE clusters (
    id                TEXT    PRIMARY KEY CHECK (length(id) = 36),
    name              TEXT    NOT NULL UNIQUE CHECK (name <> ''),
    labels            TEXT    NOT NULL DEFAULT '{}'
                              CHECK (json_valid(labels) AND json_type(labels) = 'object'),
    state             TEXT    NOT NULL DEFAULT 'pending'
                              CHECK (state IN ('pending', 'active', 'revoked')),
    credential_sha256 BLOB    CHECK (length(credential_sha256) = 32),
    agent_version     TEXT,
    connected_replica TEXT,
    connected_at      TEXT,
    last_seen         TEXT,
    created_at        TEXT    NOT NULL,
    updated_at        TEXT    NOT NULL,
    CHECK (state <> 'revoked' OR credential_sha256 IS NULL)
);
CREATE UNIQUE INDEX clusters_credential ON clusters (credential_sha256)
    WHERE credential_sha256 IS NOT NULL;
CREATE INDEX clusters_connected_replica ON clusters (connected_replica)
    WHERE connected_replica IS NOT NULL;

CREATE TABLE enrollment_tokens (
    token_sha256 BLOB PRIMARY KEY CHECK (length(token_sha256) = 32),
    cluster_id   TEXT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    expires_at   TEXT NOT NULL,
    used_at      TEXT,
    created_at   TEXT NOT NULL
);
CREATE INDEX enrollment_tokens_cluster ON enrollment_tokens (cluster_id);

CREATE TABLE specs (
    kind       TEXT    NOT NULL CHECK (kind IN ('SecretStore', 'FleetSecret')),
    name       TEXT    NOT NULL CHECK (name <> ''),
    yaml       TEXT    NOT NULL,
    generation INTEGER NOT NULL CHECK (generation >= 1),
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE secret_versions (
    store       TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    sha256      BLOB    NOT NULL CHECK (length(sha256) = 32),
    enabled     INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    created_at  TEXT,
    expires_at  TEXT,
    not_before  TEXT,
    recorded_at TEXT    NOT NULL,
    PRIMARY KEY (store, name, version)
);

CREATE TABLE revisions (
    revision        INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet_secret    TEXT    NOT NULL,
    sha256          BLOB    NOT NULL CHECK (length(sha256) = 32),
    spec_generation INTEGER NOT NULL CHECK (spec_generation >= 0),
    sources         TEXT    NOT NULL DEFAULT '[]'
                            CHECK (json_valid(sources) AND json_type(sources) = 'array'),
    created_at      TEXT    NOT NULL
);
CREATE INDEX revisions_fleet_secret ON revisions (fleet_secret, revision DESC);

CREATE TABLE sync_status (
    cluster_id       TEXT    NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    fleet_secret     TEXT    NOT NULL,
    desired_revision INTEGER NOT NULL CHECK (desired_revision >= 0),
    applied_revision INTEGER CHECK (applied_revision >= 0),
    applied_sha256   BLOB    CHECK (length(applied_sha256) = 32),
    state            TEXT    NOT NULL
                             CHECK (state IN ('pending', 'applied', 'error', 'undelivered')),
    last_error       TEXT    CHECK (length(CAST(last_error AS BLOB)) <= 1024),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    updated_at       TEXT    NOT NULL,
    applied_at       TEXT,
    PRIMARY KEY (cluster_id, fleet_secret)
) WITHOUT ROWID;
CREATE INDEX sync_status_fleet_secret ON sync_status (fleet_secret, desired_revision);
CREATE INDEX sync_status_lagging ON sync_status (updated_at)
    WHERE applied_revision IS NOT desired_revision;

CREATE TABLE changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT    NOT NULL CHECK (kind IN ('spec', 'revision', 'cluster', 'pin', 'rollout')),
    subject TEXT    NOT NULL,
    at      TEXT    NOT NULL
);

CREATE TABLE pins (
    fleet_secret TEXT NOT NULL,
    remote_key   TEXT NOT NULL,
    version      TEXT NOT NULL CHECK (version <> ''),
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (fleet_secret, remote_key)
);

CREATE TABLE rollouts (
    fleet_secret TEXT    PRIMARY KEY,
    revision     INTEGER NOT NULL REFERENCES revisions (revision),
    current_wave INTEGER NOT NULL CHECK (current_wave >= 0),
    paused       INTEGER NOT NULL CHECK (paused IN (0, 1)),
    reason       TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL
);
CREATE INDEX rollouts_revision ON rollouts (revision);

CREATE TABLE audit_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    subject TEXT    NOT NULL,
    at      TEXT    NOT NULL
);

-- Dashboards (same names and columns as on Postgres; see docs/dashboards.md).

CREATE VIEW keyfleet_rollout AS
SELECT s.fleet_secret,
       s.desired_revision AS revision,
       count(*) AS targeted,
       count(*) FILTER (WHERE s.applied_revision = s.desired_revision AND s.state = 'applied') AS applied,
       count(*) FILTER (WHERE s.state IN ('pending', 'undelivered')
                          OR (s.state = 'applied' AND s.applied_revision IS NOT s.desired_revision)) AS pending,
       count(*) FILTER (WHERE s.state = 'error') AS error,
       count(*) FILTER (WHERE c.connected_replica IS NULL) AS offline,
       min(s.applied_at) FILTER (WHERE s.applied_revision = s.desired_revision) AS first_applied_at,
       max(s.applied_at) FILTER (WHERE s.applied_revision = s.desired_revision) AS last_applied_at
FROM sync_status s
JOIN clusters c ON c.id = s.cluster_id
GROUP BY s.fleet_secret, s.desired_revision;

CREATE VIEW keyfleet_cluster_sync AS
SELECT c.id AS cluster_id,
       c.name AS cluster,
       c.state,
       c.connected_replica,
       c.connected_replica IS NOT NULL AS online,
       c.last_seen,
       count(s.fleet_secret) AS fleet_secrets,
       count(s.fleet_secret) FILTER (WHERE s.applied_revision IS NOT s.desired_revision) AS lagging,
       count(s.fleet_secret) FILTER (WHERE s.state = 'error') AS errors,
       count(s.fleet_secret) FILTER (WHERE s.applied_revision IS NOT s.desired_revision) = 0 AS in_sync,
       (julianday('now') - julianday(min(s.updated_at)
           FILTER (WHERE s.applied_revision IS NOT s.desired_revision))) * 86400.0 AS lag_seconds,
       (SELECT e.last_error FROM sync_status e
         WHERE e.cluster_id = c.id AND e.state = 'error' AND e.last_error IS NOT NULL
         ORDER BY e.updated_at DESC LIMIT 1) AS last_error
FROM clusters c
LEFT JOIN sync_status s ON s.cluster_id = c.id
GROUP BY c.id;

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
       (julianday('now') - julianday(s.updated_at)) * 86400.0 AS lag_seconds,
       c.connected_replica IS NOT NULL AS online
FROM sync_status s
JOIN clusters c ON c.id = s.cluster_id
WHERE s.applied_revision IS NOT s.desired_revision
ORDER BY s.updated_at, c.name, s.fleet_secret;
