-- keyfleet store, Postgres dialect. Never edit an applied migration: add 0002_… instead.
-- No column holds a secret value: credentials and tokens are stored as SHA-256 digests, Key Vault
-- versions as ids + digests, specs as canonical YAML (which never holds a value).

CREATE TABLE clusters (
    id                uuid        PRIMARY KEY,
    name              text        NOT NULL UNIQUE CHECK (name <> ''),
    labels            jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    state             text        NOT NULL DEFAULT 'pending'
                                  CHECK (state IN ('pending', 'active', 'revoked')),
    credential_sha256 bytea       CHECK (octet_length(credential_sha256) = 32),
    agent_version     text,
    connected_replica text,
    connected_at      timestamptz,
    last_seen         timestamptz,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    CHECK (state <> 'revoked' OR credential_sha256 IS NULL)
);
-- matchLabels push-down (labels @> '{"env":"prod"}').
CREATE INDEX clusters_labels ON clusters USING gin (labels jsonb_path_ops);
CREATE UNIQUE INDEX clusters_credential ON clusters (credential_sha256)
    WHERE credential_sha256 IS NOT NULL;
CREATE INDEX clusters_connected_replica ON clusters (connected_replica)
    WHERE connected_replica IS NOT NULL;

CREATE TABLE enrollment_tokens (
    token_sha256 bytea       PRIMARY KEY CHECK (octet_length(token_sha256) = 32),
    cluster_id   uuid        NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz,
    created_at   timestamptz NOT NULL
);
CREATE INDEX enrollment_tokens_cluster ON enrollment_tokens (cluster_id);

-- SecretStore and FleetSecret specs (canonical YAML).
CREATE TABLE specs (
    kind       text        NOT NULL CHECK (kind IN ('SecretStore', 'FleetSecret')),
    name       text        NOT NULL CHECK (name <> ''),
    yaml       text        NOT NULL,
    generation bigint      NOT NULL CHECK (generation >= 1),
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (kind, name)
);

-- Key Vault secret versions: ids and digests only.
CREATE TABLE secret_versions (
    store       text        NOT NULL,
    name        text        NOT NULL,
    version     text        NOT NULL,
    sha256      bytea       NOT NULL CHECK (octet_length(sha256) = 32),
    enabled     boolean     NOT NULL,
    created_at  timestamptz,
    expires_at  timestamptz,
    not_before  timestamptz,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (store, name, version)
);

-- Rendered revisions; the number is global and increasing across fleet secrets.
CREATE TABLE revisions (
    revision        bigserial   PRIMARY KEY,
    fleet_secret    text        NOT NULL,
    sha256          bytea       NOT NULL CHECK (octet_length(sha256) = 32),
    spec_generation bigint      NOT NULL CHECK (spec_generation >= 0),
    -- [[remote key, Key Vault version], …]
    sources         jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(sources) = 'array'),
    created_at      timestamptz NOT NULL
);
CREATE INDEX revisions_fleet_secret ON revisions (fleet_secret, revision DESC);

-- Sync status of every (cluster, fleet secret); written in batches, updated in place.
CREATE TABLE sync_status (
    cluster_id       uuid        NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    fleet_secret     text        NOT NULL,
    desired_revision bigint      NOT NULL CHECK (desired_revision >= 0),
    applied_revision bigint      CHECK (applied_revision >= 0),
    applied_sha256   bytea       CHECK (octet_length(applied_sha256) = 32),
    state            text        NOT NULL
                                 CHECK (state IN ('pending', 'applied', 'error', 'undelivered')),
    last_error       text        CHECK (octet_length(last_error) <= 1024),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    updated_at       timestamptz NOT NULL,
    applied_at       timestamptz,
    PRIMARY KEY (cluster_id, fleet_secret)
) WITH (fillfactor = 70);
CREATE INDEX sync_status_fleet_secret ON sync_status (fleet_secret, desired_revision);
-- Only the lagging rows: small when the fleet is in sync.
CREATE INDEX sync_status_lagging ON sync_status (updated_at)
    WHERE applied_revision IS DISTINCT FROM desired_revision;

-- Change log that replicas tail by cursor (NOTIFY keyfleet_changes is only a wake-up).
CREATE TABLE changes (
    seq     bigserial   PRIMARY KEY,
    kind    text        NOT NULL CHECK (kind IN ('spec', 'revision', 'cluster', 'pin', 'rollout')),
    subject text        NOT NULL,
    at      timestamptz NOT NULL
);

CREATE TABLE pins (
    fleet_secret text        NOT NULL,
    remote_key   text        NOT NULL,
    version      text        NOT NULL CHECK (version <> ''),
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (fleet_secret, remote_key)
);

CREATE TABLE rollouts (
    fleet_secret text        PRIMARY KEY,
    revision     bigint      NOT NULL REFERENCES revisions (revision),
    current_wave integer     NOT NULL CHECK (current_wave >= 0),
    paused       boolean     NOT NULL,
    reason       text        NOT NULL,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX rollouts_revision ON rollouts (revision);

-- Who did what to which subject, when. Never values.
CREATE TABLE audit_events (
    id      bigserial   PRIMARY KEY,
    actor   text        NOT NULL,
    action  text        NOT NULL,
    subject text        NOT NULL,
    at      timestamptz NOT NULL
);

-- Dashboards (stable names, documented in docs/dashboards.md).

-- Per fleet secret and desired revision: how far the rollout got.
CREATE VIEW keyfleet_rollout AS
SELECT s.fleet_secret,
       s.desired_revision AS revision,
       count(*) AS targeted,
       count(*) FILTER (WHERE s.applied_revision = s.desired_revision AND s.state = 'applied') AS applied,
       count(*) FILTER (WHERE s.state IN ('pending', 'undelivered')
                          OR (s.state = 'applied' AND s.applied_revision IS DISTINCT FROM s.desired_revision)) AS pending,
       count(*) FILTER (WHERE s.state = 'error') AS error,
       count(*) FILTER (WHERE c.connected_replica IS NULL) AS offline,
       min(s.applied_at) FILTER (WHERE s.applied_revision = s.desired_revision) AS first_applied_at,
       max(s.applied_at) FILTER (WHERE s.applied_revision = s.desired_revision) AS last_applied_at
FROM sync_status s
JOIN clusters c ON c.id = s.cluster_id
GROUP BY s.fleet_secret, s.desired_revision;

-- Per cluster: in sync or not, how long it has lagged, its newest error, liveness.
CREATE VIEW keyfleet_cluster_sync AS
SELECT c.id AS cluster_id,
       c.name AS cluster,
       c.state,
       c.connected_replica,
       c.connected_replica IS NOT NULL AS online,
       c.last_seen,
       count(s.fleet_secret) AS fleet_secrets,
       count(s.fleet_secret) FILTER (WHERE s.applied_revision IS DISTINCT FROM s.desired_revision) AS lagging,
       count(s.fleet_secret) FILTER (WHERE s.state = 'error') AS errors,
       count(s.fleet_secret) FILTER (WHERE s.applied_revision IS DISTINCT FROM s.desired_revision) = 0 AS in_sync,
       extract(epoch FROM now() - min(s.updated_at)
           FILTER (WHERE s.applied_revision IS DISTINCT FROM s.desired_revision))::double precision AS lag_seconds,
       (SELECT e.last_error FROM sync_status e
         WHERE e.cluster_id = c.id AND e.state = 'error' AND e.last_error IS NOT NULL
         ORDER BY e.updated_at DESC LIMIT 1) AS last_error
FROM clusters c
LEFT JOIN sync_status s ON s.cluster_id = c.id
GROUP BY c.id;

-- Every (cluster, fleet secret) not on its desired revision, oldest first.
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
WHERE s.applied_revision IS DISTINCT FROM s.desired_revision
ORDER BY s.updated_at, c.name, s.fleet_secret;
