-- keyfleet_expiry: per FleetSecret, the Key Vault versions its newest revision was rendered from
-- (one row per remote key) with Key Vault's `exp` and `nbf`, for the Admin API's expiry
-- conditions and for dashboards (docs/dashboards.md). A revision records (remote key, version)
-- without its SecretStore, so the version is matched by (name, version): Key Vault version ids
-- are random 128-bit ids, and two SecretStores on one vault record the same attributes (min/max
-- below keep one row). Deleted FleetSecrets are left out. expires_at/not_before are NULL when the
-- version has none (or was not recorded yet).
CREATE VIEW keyfleet_expiry AS
SELECT r.fleet_secret,
       r.revision,
       src.remote_key,
       src.version,
       v.expires_at,
       v.not_before,
       v.seen_at,
       date_part('epoch', v.expires_at - now()) AS expires_in_seconds
FROM (SELECT DISTINCT ON (fleet_secret) fleet_secret, revision, sources
      FROM revisions ORDER BY fleet_secret, revision DESC) r
CROSS JOIN LATERAL (SELECT e ->> 0 AS remote_key, e ->> 1 AS version
                    FROM jsonb_array_elements(r.sources) e) src
LEFT JOIN LATERAL (SELECT min(sv.expires_at) AS expires_at,
                          max(sv.not_before) AS not_before,
                          min(sv.recorded_at) AS seen_at
                   FROM secret_versions sv
                   WHERE sv.name = src.remote_key AND sv.version = src.version) v ON true
WHERE EXISTS (SELECT 1 FROM specs s WHERE s.kind = 'FleetSecret' AND s.name = r.fleet_secret);

-- Lookups by (name, version) without the store.
CREATE INDEX secret_versions_name_version ON secret_versions (name, version);
