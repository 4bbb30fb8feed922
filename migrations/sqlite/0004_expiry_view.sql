-- Same view, columns and meaning as migrations/postgres/0007 (keyfleet_expiry): per FleetSecret,
-- the Key Vault versions its newest revision was rendered from, with `exp` and `nbf`.
CREATE VIEW keyfleet_expiry AS
SELECT r.fleet_secret,
       r.revision,
       json_extract(e.value, '$[0]') AS remote_key,
       json_extract(e.value, '$[1]') AS version,
       (SELECT min(sv.expires_at) FROM secret_versions sv
         WHERE sv.name = json_extract(e.value, '$[0]') AND sv.version = json_extract(e.value, '$[1]')) AS expires_at,
       (SELECT max(sv.not_before) FROM secret_versions sv
         WHERE sv.name = json_extract(e.value, '$[0]') AND sv.version = json_extract(e.value, '$[1]')) AS not_before,
       (SELECT min(sv.recorded_at) FROM secret_versions sv
         WHERE sv.name = json_extract(e.value, '$[0]') AND sv.version = json_extract(e.value, '$[1]')) AS seen_at,
       (julianday((SELECT min(sv.expires_at) FROM secret_versions sv
                    WHERE sv.name = json_extract(e.value, '$[0]')
                      AND sv.version = json_extract(e.value, '$[1]'))) - julianday('now')) * 86400.0
           AS expires_in_seconds
FROM revisions r, json_each(r.sources) e
WHERE r.revision = (SELECT max(x.revision) FROM revisions x WHERE x.fleet_secret = r.fleet_secret)
  AND EXISTS (SELECT 1 FROM specs s WHERE s.kind = 'FleetSecret' AND s.name = r.fleet_secret);

CREATE INDEX secret_versions_name_version ON secret_versions (name, version);
