-- The change log is pruned by the leader (entries older than the retention, always keeping the
-- newest ones). `change_horizon.pruned_through` is the last sequence number pruned: a replica whose
-- cursor is below it may have missed entries and reloads everything instead of tailing.
CREATE TABLE change_horizon (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_through INTEGER NOT NULL CHECK (pruned_through >= 0)
);
CREATE INDEX changes_at ON changes (at);
