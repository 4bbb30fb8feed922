-- Any replica, the same answers: what only the Key Vault leader can do (poll now, fetch on an
-- Event Grid notification) is asked through `poll_requests`, and what only the leader knows (how
-- each store's last poll went) is published in `store_polls`. Names and counts only, no value.

-- A request of any replica to the leader: poll `store` ('' = every store) now, or fetch
-- `secret` of `vault` (an Event Grid notification). The leader completes it (done_at) with what
-- it polled; the requester reads the row back. Rows older than an hour are pruned by the leader.
CREATE TABLE poll_requests (
    id           bigserial   PRIMARY KEY,
    store        text        NOT NULL DEFAULT '',
    vault        text        NOT NULL DEFAULT '',
    secret       text        NOT NULL DEFAULT '',
    requested_by text        NOT NULL,
    requested_at timestamptz NOT NULL,
    done_at      timestamptz,
    done_by      text,
    stores       text,
    new_versions integer,
    error        text
);
CREATE INDEX poll_requests_open ON poll_requests (id) WHERE done_at IS NULL;

-- The last poll of each SecretStore, as the leader saw it.
CREATE TABLE store_polls (
    store           text        PRIMARY KEY,
    replica         text        NOT NULL,
    polled_at       timestamptz NOT NULL,
    healthy         boolean     NOT NULL,
    last_error      text        NOT NULL DEFAULT '',
    last_success_at timestamptz
);
