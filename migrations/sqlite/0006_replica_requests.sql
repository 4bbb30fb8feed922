-- Same tables as migrations/postgres/0008: requests to the Key Vault leader and the last poll of
-- each SecretStore. A SQLite hub is one replica (always the leader); the tables keep the code
-- paths the same.

CREATE TABLE poll_requests (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    store        TEXT    NOT NULL DEFAULT '',
    vault        TEXT    NOT NULL DEFAULT '',
    secret       TEXT    NOT NULL DEFAULT '',
    requested_by TEXT    NOT NULL,
    requested_at TEXT    NOT NULL,
    done_at      TEXT,
    done_by      TEXT,
    stores       TEXT,
    new_versions INTEGER,
    error        TEXT
);
CREATE INDEX poll_requests_open ON poll_requests (id) WHERE done_at IS NULL;

CREATE TABLE store_polls (
    store           TEXT    PRIMARY KEY,
    replica         TEXT    NOT NULL,
    polled_at       TEXT    NOT NULL,
    healthy         INTEGER NOT NULL,
    last_error      TEXT    NOT NULL DEFAULT '',
    last_success_at TEXT
);
