-- Digests of secret material are keyed (docs/security.md, "Digests of secret values"): the
-- `sha256` columns of `secret_versions` and `revisions` and `sync_status.applied_sha256` hold
-- HMAC-SHA256(digest key, plain SHA-256), so a low-entropy value cannot be guessed offline from
-- the database. The new columns name the key (8 hex characters derived from it). NULL: a plain
-- digest written before this migration (or by an older replica during a rolling upgrade); the hub
-- keys those rows at its next start (`Store::key_unkeyed_digests`), as the migration cannot: the
-- key never reaches the database. No index: finding them is one scan per start, and an index on
-- `sync_status.applied_digest_key` would end its HOT updates.
ALTER TABLE secret_versions
    ADD COLUMN digest_key text CHECK (digest_key ~ '^[0-9a-f]{8}$');
ALTER TABLE revisions
    ADD COLUMN digest_key text CHECK (digest_key ~ '^[0-9a-f]{8}$');
ALTER TABLE sync_status
    ADD COLUMN applied_digest_key text CHECK (applied_digest_key ~ '^[0-9a-f]{8}$'),
    ADD CHECK (applied_digest_key IS NULL OR applied_sha256 IS NOT NULL);
