//! Values both backends bind and read back, checked and converted once: times truncated to the
//! database's microseconds, integers range-checked, enums and JSON columns parsed, status rows
//! prepared for one upsert. **Invariant:** a value that does not decode is `Corrupt`, never a panic.

use chrono::{DateTime, SubsecRound as _, Utc};

use super::{ChangeKind, MAX_ERROR_BYTES, SpecKind, StatusRow, StoreError};
use crate::domain::{ClusterState, DigestKeyId, DigestKeys, Labels, Sha256, StoredDigest, SyncState};

/// What `consume_enrollment_token` reads back to say why a token was refused.
pub(super) struct TokenState {
    /// The cluster the token enrolls.
    pub(super) cluster: crate::domain::ClusterId,
    /// When it was consumed, if it was.
    pub(super) used_at: Option<DateTime<Utc>>,
    pub(super) expires: DateTime<Utc>,
    pub(super) cluster_state: ClusterState,
}

/// Database times have microsecond precision: truncate so what is read back equals what was
/// written.
pub(super) fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// The current time, truncated like every stored time.
pub(super) fn now() -> DateTime<Utc> {
    micros(Utc::now())
}

/// A count or number bound as BIGINT; above `i64::MAX` it is `OutOfRange`.
pub(super) fn to_i64(value: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what })
}

/// A BIGINT read back as a count; negative is `Corrupt`.
pub(super) fn to_u64(value: i64, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt { what })
}

/// An integer column read back as a `u32`; out of range is `Corrupt`.
pub(super) fn to_u32(value: i64, what: &'static str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt { what })
}

/// A digest column: exactly 32 bytes, else `Corrupt`.
pub(super) fn sha256(bytes: &[u8], what: &'static str) -> Result<Sha256, StoreError> {
    Sha256::from_slice(bytes).ok_or(StoreError::Corrupt { what })
}

/// A digest of secret material and its key column: keyed under `key`, or plain when the key is
/// NULL (written before migration 0006). Not 32 bytes is `Corrupt`.
pub(super) fn stored_digest(
    bytes: &[u8],
    key: Option<String>,
    what: &'static str,
) -> Result<StoredDigest, StoreError> {
    let digest = sha256(bytes, what)?;
    Ok(match key {
        Some(key) => StoredDigest::Keyed {
            key: DigestKeyId::from_stored(key),
            mac: digest.0,
        },
        None => StoredDigest::Unkeyed(digest),
    })
}

/// The key column of a digest about to be written.
pub(super) fn digest_key(digest: &StoredDigest) -> Option<String> {
    digest.key().map(|key| key.as_str().to_owned())
}

/// The `clusters.state` text.
pub(super) fn cluster_state(text: &str) -> Result<ClusterState, StoreError> {
    match text {
        "pending" => Ok(ClusterState::Pending),
        "active" => Ok(ClusterState::Active),
        "revoked" => Ok(ClusterState::Revoked),
        _ => Err(StoreError::Corrupt {
            what: "cluster state",
        }),
    }
}

/// The `sync_status.state` text.
pub(super) fn sync_state(text: &str) -> Result<SyncState, StoreError> {
    match text {
        "pending" => Ok(SyncState::Pending),
        "applied" => Ok(SyncState::Applied),
        "error" => Ok(SyncState::Error),
        "undelivered" => Ok(SyncState::Undelivered),
        _ => Err(StoreError::Corrupt { what: "sync state" }),
    }
}

/// The `specs.kind` text.
pub(super) fn spec_kind(text: &str) -> Result<SpecKind, StoreError> {
    SpecKind::parse(text).ok_or(StoreError::Corrupt { what: "spec kind" })
}

/// The `changes.kind` text.
pub(super) fn change_kind(text: &str) -> Result<ChangeKind, StoreError> {
    ChangeKind::parse(text).ok_or(StoreError::Corrupt { what: "change kind" })
}

/// Labels as the JSON object both backends store.
pub(super) fn labels_json(labels: &Labels) -> serde_json::Value {
    serde_json::Value::Object(
        labels
            .iter()
            .map(|(key, value)| (key.clone(), serde_json::Value::String(value.clone())))
            .collect(),
    )
}

/// Labels from their JSON object.
pub(super) fn labels_from_json(value: serde_json::Value) -> Result<Labels, StoreError> {
    serde_json::from_value(value).map_err(|_| StoreError::Corrupt {
        what: "cluster labels",
    })
}

/// A revision's sources as the JSON array of `[remote key, version]` pairs both backends
/// store.
pub(super) fn sources_json(sources: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Array(
        sources
            .iter()
            .map(|(key, version)| {
                serde_json::Value::Array(vec![
                    serde_json::Value::String(key.clone()),
                    serde_json::Value::String(version.clone()),
                ])
            })
            .collect(),
    )
}

/// A revision's sources from their JSON array.
pub(super) fn sources_from_json(value: serde_json::Value) -> Result<Vec<(String, String)>, StoreError> {
    serde_json::from_value(value).map_err(|_| StoreError::Corrupt {
        what: "revision sources",
    })
}

/// Cuts an agent's error to [`MAX_ERROR_BYTES`] on a character boundary.
pub(super) fn truncate_error(text: &str) -> String {
    crate::domain::truncate_utf8(text, MAX_ERROR_BYTES).to_owned()
}

/// A status row checked and converted for binding.
pub(super) struct StatusBind {
    pub(super) cluster: uuid::Uuid,
    pub(super) fleet_secret: String,
    pub(super) desired_revision: i64,
    pub(super) applied_revision: Option<i64>,
    /// Keyed with the current key.
    pub(super) applied_sha256: Option<Vec<u8>>,
    pub(super) applied_digest_key: Option<String>,
    pub(super) state: &'static str,
    pub(super) last_error: Option<String>,
    pub(super) attempts: i32,
    pub(super) at: DateTime<Utc>,
}

/// Checks ranges, truncates errors, and keeps the last row of each (cluster, fleet secret) so the
/// single upsert never touches a row twice. The applied digest is keyed with `keys`' current key.
pub(super) fn prepare_status_rows(
    rows: &[StatusRow],
    keys: &DigestKeys,
) -> Result<Vec<StatusBind>, StoreError> {
    let mut last = std::collections::HashMap::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        last.insert((row.cluster, row.fleet_secret.as_str()), index);
    }
    let mut out = Vec::with_capacity(last.len());
    // A batch is mostly acks of the same revision: key each distinct digest once (an HMAC each).
    let mut keyed: std::collections::HashMap<Sha256, StoredDigest> = std::collections::HashMap::new();
    for (index, row) in rows.iter().enumerate() {
        if last.get(&(row.cluster, row.fleet_secret.as_str())) != Some(&index) {
            continue;
        }
        let applied = row
            .applied_sha256
            .map(|plain| keyed.entry(plain).or_insert_with(|| keys.key(&plain)).clone());
        out.push(StatusBind {
            cluster: row.cluster.0,
            fleet_secret: row.fleet_secret.clone(),
            desired_revision: to_i64(row.desired_revision, "desired revision")?,
            applied_revision: row
                .applied_revision
                .map(|revision| to_i64(revision, "applied revision"))
                .transpose()?,
            applied_sha256: applied.as_ref().map(|digest| digest.bytes().to_vec()),
            applied_digest_key: applied.as_ref().and_then(digest_key),
            state: row.state.as_str(),
            last_error: row.last_error.as_deref().map(truncate_error),
            attempts: i32::try_from(row.attempts).map_err(|_| StoreError::OutOfRange { what: "attempts" })?,
            at: micros(row.at),
        });
    }
    Ok(out)
}
