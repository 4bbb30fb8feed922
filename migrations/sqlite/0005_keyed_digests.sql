-- Digests of secret material are keyed (docs/security.md, "Digests of secret values"): the
-- `sha256` columns of `secret_versions` and `revisions` and `sync_status.applied_sha256` hold
-- HMAC-SHA256(digest key, plain SHA-256). The new columns name the key (8 hex characters derived
-- from it). NULL: a plain digest written before this migration; the hub keys those rows at its
-- next start (`Store::key_unkeyed_digests`): the key never reaches the database.
-- (Numbered 0005: 0003 is the change-log horizon and 0004 is reserved for another change.)
ALTER TABLE secret_versions ADD COLUMN digest_key TEXT CHECK (length(digest_key) = 8);
ALTER TABLE revisions ADD COLUMN digest_key TEXT CHECK (length(digest_key) = 8);
ALTER TABLE sync_status ADD COLUMN applied_digest_key TEXT
    CHECK (applied_digest_key IS NULL
           OR (length(applied_digest_key) = 8 AND applied_sha256 IS NOT NULL));
