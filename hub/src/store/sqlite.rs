//! SQLite backend: runtime-bound `sqlx::query` (the checked macros need one `DATABASE_URL` at
//! build time, which is the Postgres one). The conformance tests in `tests.rs` prove this SQL.
//!
//! Dialect: ids are hyphenated TEXT, times fixed-width TEXT `YYYY-MM-DDTHH:MM:SS.ffffffZ` (text
//! order is time order), digests BLOB, labels and sources JSON TEXT.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::{Migrate as _, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row as _, SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{
    AppliedMigration, AuditEvent, Change, ChangeKind, Cluster, ClusterLiveness, NewRevision, PinRecord,
    RevisionRecord, RolloutRecord, SecretVersionRecord, SpecAction, SpecKind, SpecOutcome, SpecWrite,
    StatusBind, StoreError, StoredSpec, SyncStatus, TokenState, change_kind, cluster_state, labels_json,
    sha256, sources_json, spec_kind, sync_state, to_u32, to_u64,
};
use crate::domain::{ClusterId, Labels, Sha256};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// SQLite's default limit of bound parameters per statement (SQLITE_MAX_VARIABLE_NUMBER).
const MAX_BINDS: usize = 32_766;
/// Bound parameters per status row.
const STATUS_BINDS: usize = 9;

pub(super) async fn connect(url: &str) -> Result<SqlitePool, StoreError> {
    let memory = url.contains(":memory:") || url.contains("mode=memory");
    let mut options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let pool = if memory {
        // Every connection to `:memory:` is a database of its own: keep exactly one, forever.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
    } else {
        options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        SqlitePoolOptions::new().max_connections(8)
    };
    Ok(pool.connect_with(options).await?)
}

pub(super) async fn migrate(pool: &SqlitePool) -> Result<Vec<AppliedMigration>, StoreError> {
    let before: HashSet<i64> = {
        let mut conn = pool.acquire().await?;
        conn.ensure_migrations_table(&MIGRATOR.table_name).await?;
        conn.list_applied_migrations(&MIGRATOR.table_name)
            .await?
            .into_iter()
            .map(|migration| migration.version)
            .collect()
    };
    MIGRATOR.run(pool).await?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !before.contains(&m.version))
        .map(|m| AppliedMigration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect())
}

/// Fixed-width UTC text: sorts like time, parsed by SQLite's date functions.
fn ts(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_ts(text: &str, what: &'static str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|at| at.with_timezone(&Utc))
        .map_err(|_| StoreError::Corrupt { what })
}

fn opt_ts(row: &SqliteRow, column: &str, what: &'static str) -> Result<Option<DateTime<Utc>>, StoreError> {
    row.try_get::<Option<String>, _>(column)?
        .map(|text| parse_ts(&text, what))
        .transpose()
}

fn req_ts(row: &SqliteRow, column: &str, what: &'static str) -> Result<DateTime<Utc>, StoreError> {
    parse_ts(&row.try_get::<String, _>(column)?, what)
}

fn uuid(row: &SqliteRow, column: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(&row.try_get::<String, _>(column)?)
        .map_err(|_| StoreError::Corrupt { what: "cluster id" })
}

fn id_text(id: ClusterId) -> String {
    id.0.hyphenated().to_string()
}

fn labels_text(labels: &Labels) -> String {
    labels_json(labels).to_string()
}

// --- clusters ---

const CLUSTER_COLUMNS: &str =
    "id, name, labels, state, agent_version, connected_replica, last_seen, created_at";

fn cluster(row: &SqliteRow) -> Result<Cluster, StoreError> {
    Ok(Cluster {
        id: ClusterId(uuid(row, "id")?),
        name: row.try_get("name")?,
        labels: serde_json::from_str(&row.try_get::<String, _>("labels")?).map_err(|_| {
            StoreError::Corrupt {
                what: "cluster labels",
            }
        })?,
        state: cluster_state(&row.try_get::<String, _>("state")?)?,
        agent_version: row.try_get("agent_version")?,
        connected_replica: row.try_get("connected_replica")?,
        last_seen: opt_ts(row, "last_seen", "cluster last_seen")?,
        created: req_ts(row, "created_at", "cluster created_at")?,
    })
}

pub(super) async fn create_cluster(
    pool: &SqlitePool,
    id: ClusterId,
    name: &str,
    labels: &Labels,
    now: DateTime<Utc>,
) -> Result<Cluster, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO clusters (id, name, labels, state, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?4)
         ON CONFLICT (name) DO NOTHING
         RETURNING {CLUSTER_COLUMNS}"
    )))
    .bind(id_text(id))
    .bind(name)
    .bind(labels_text(labels))
    .bind(ts(now))
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => cluster(&row),
        None => Err(StoreError::AlreadyExists {
            what: format!("cluster {name:?}"),
        }),
    }
}

pub(super) async fn cluster_by_name(pool: &SqlitePool, name: &str) -> Result<Option<Cluster>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {CLUSTER_COLUMNS} FROM clusters WHERE name = ?1"
    )))
    .bind(name)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(cluster)
    .transpose()
}

pub(super) async fn cluster_by_id(pool: &SqlitePool, id: ClusterId) -> Result<Option<Cluster>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {CLUSTER_COLUMNS} FROM clusters WHERE id = ?1"
    )))
    .bind(id_text(id))
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(cluster)
    .transpose()
}

pub(super) async fn list_clusters(
    pool: &SqlitePool,
    match_labels: Option<&BTreeMap<String, String>>,
) -> Result<Vec<Cluster>, StoreError> {
    // Every (key, value) of the filter must be among the cluster's labels.
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {CLUSTER_COLUMNS} FROM clusters c
         WHERE ?1 IS NULL OR NOT EXISTS (
           SELECT 1 FROM json_each(?1) m
           WHERE NOT EXISTS (SELECT 1 FROM json_each(c.labels) l
                             WHERE l.key = m.key AND l.value = m.value))
         ORDER BY name"
    )))
    .bind(match_labels.map(labels_text))
    .fetch_all(pool)
    .await?
    .iter()
    .map(cluster)
    .collect()
}

pub(super) async fn cluster_liveness(pool: &SqlitePool) -> Result<Vec<ClusterLiveness>, StoreError> {
    sqlx::query("SELECT id, connected_replica, last_seen FROM clusters")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(ClusterLiveness {
                id: ClusterId(uuid(row, "id")?),
                connected_replica: row.try_get("connected_replica")?,
                last_seen: opt_ts(row, "last_seen", "cluster last_seen")?,
            })
        })
        .collect()
}

pub(super) async fn set_cluster_labels(
    pool: &SqlitePool,
    id: ClusterId,
    labels: &Labels,
    now: DateTime<Utc>,
) -> Result<Option<Cluster>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE clusters SET labels = ?2, updated_at = ?3 WHERE id = ?1 RETURNING {CLUSTER_COLUMNS}"
    )))
    .bind(id_text(id))
    .bind(labels_text(labels))
    .bind(ts(now))
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(cluster)
    .transpose()
}

pub(super) async fn revoke_cluster(
    pool: &SqlitePool,
    id: ClusterId,
    now: DateTime<Utc>,
) -> Result<Option<Cluster>, StoreError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "UPDATE clusters SET state = 'revoked', credential_sha256 = NULL, updated_at = ?2
         WHERE id = ?1 RETURNING {CLUSTER_COLUMNS}"
    )))
    .bind(id_text(id))
    .bind(ts(now))
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE enrollment_tokens SET expires_at = min(expires_at, ?2)
         WHERE cluster_id = ?1 AND used_at IS NULL",
    )
    .bind(id_text(id))
    .bind(ts(now))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    row.as_ref().map(cluster).transpose()
}

// --- enrollment and credentials ---

pub(super) async fn issue_enrollment_token(
    pool: &SqlitePool,
    cluster: ClusterId,
    token_hash: &Sha256,
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "INSERT INTO enrollment_tokens (token_sha256, cluster_id, expires_at, created_at)
         SELECT ?1, id, ?3, ?4 FROM clusters WHERE id = ?2 AND state <> 'revoked'",
    )
    .bind(&token_hash.0[..])
    .bind(id_text(cluster))
    .bind(ts(expires))
    .bind(ts(now))
    .execute(pool)
    .await
    .map_err(|error| unique_to_exists(error, "enrollment token"))?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn consume_enrollment_token(
    pool: &SqlitePool,
    token_hash: &Sha256,
    now: DateTime<Utc>,
) -> Result<Option<ClusterId>, StoreError> {
    let row = sqlx::query(
        "UPDATE enrollment_tokens AS t SET used_at = ?2
         WHERE t.token_sha256 = ?1 AND t.used_at IS NULL AND t.expires_at > ?2
           AND EXISTS (SELECT 1 FROM clusters c WHERE c.id = t.cluster_id AND c.state <> 'revoked')
         RETURNING cluster_id",
    )
    .bind(&token_hash.0[..])
    .bind(ts(now))
    .fetch_optional(pool)
    .await?;
    row.map(|row| uuid(&row, "cluster_id").map(ClusterId)).transpose()
}

pub(super) async fn token_state(
    pool: &SqlitePool,
    token_hash: &Sha256,
) -> Result<Option<TokenState>, StoreError> {
    let row = sqlx::query(
        "SELECT t.used_at IS NOT NULL AS used, t.expires_at, c.state AS cluster_state
         FROM enrollment_tokens t JOIN clusters c ON c.id = t.cluster_id
         WHERE t.token_sha256 = ?1",
    )
    .bind(&token_hash.0[..])
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(TokenState {
            used: row.try_get("used")?,
            expires: req_ts(&row, "expires_at", "token expires_at")?,
            cluster_state: cluster_state(&row.try_get::<String, _>("cluster_state")?)?,
        })
    })
    .transpose()
}

pub(super) async fn set_cluster_credential(
    pool: &SqlitePool,
    id: ClusterId,
    credential_hash: &Sha256,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE clusters SET credential_sha256 = ?2, state = 'active', updated_at = ?3
         WHERE id = ?1 AND state <> 'revoked'",
    )
    .bind(id_text(id))
    .bind(&credential_hash.0[..])
    .bind(ts(now))
    .execute(pool)
    .await
    .map_err(|error| unique_to_exists(error, "cluster credential"))?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn active_credentials(pool: &SqlitePool) -> Result<Vec<(Sha256, ClusterId)>, StoreError> {
    sqlx::query(
        "SELECT credential_sha256, id FROM clusters
         WHERE state = 'active' AND credential_sha256 IS NOT NULL ORDER BY id",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok((
            sha256(
                &row.try_get::<Vec<u8>, _>("credential_sha256")?,
                "credential hash",
            )?,
            ClusterId(uuid(row, "id")?),
        ))
    })
    .collect()
}

pub(super) async fn record_connect(
    pool: &SqlitePool,
    id: ClusterId,
    replica: &str,
    agent_version: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE clusters SET connected_replica = ?2, agent_version = ?3, connected_at = ?4,
                last_seen = ?4
         WHERE id = ?1",
    )
    .bind(id_text(id))
    .bind(replica)
    .bind(agent_version)
    .bind(ts(at))
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn record_disconnect(
    pool: &SqlitePool,
    id: ClusterId,
    replica: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query(
        "UPDATE clusters
         SET connected_replica = CASE WHEN connected_replica = ?2 THEN NULL
                                      ELSE connected_replica END,
             last_seen = max(coalesce(last_seen, ?3), ?3)
         WHERE id = ?1",
    )
    .bind(id_text(id))
    .bind(replica)
    .bind(ts(at))
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn touch_last_seen(
    pool: &SqlitePool,
    ids: &[ClusterId],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    // One statement, one bind for the ids (a JSON array), whatever their number.
    let ids = serde_json::Value::Array(
        ids.iter()
            .map(|id| serde_json::Value::String(id_text(*id)))
            .collect(),
    );
    sqlx::query(
        "UPDATE clusters SET last_seen = max(coalesce(last_seen, ?2), ?2)
         WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(ids.to_string())
    .bind(ts(at))
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn clear_replica(
    pool: &SqlitePool,
    replica: &str,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let result = sqlx::query(
        "UPDATE clusters SET connected_replica = NULL, last_seen = max(coalesce(last_seen, ?2), ?2)
         WHERE connected_replica = ?1",
    )
    .bind(replica)
    .bind(ts(now))
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

// --- specs ---

pub(super) async fn upsert_spec(
    pool: &SqlitePool,
    kind: SpecKind,
    name: &str,
    yaml: &str,
    now: DateTime<Utc>,
) -> Result<(u64, SpecAction), StoreError> {
    upsert_spec_on(&mut *pool.acquire().await?, kind, name, yaml, now).await
}

pub(super) async fn apply_specs(
    pool: &SqlitePool,
    specs: &[SpecWrite<'_>],
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Vec<SpecOutcome>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut outcomes = Vec::with_capacity(specs.len());
    for spec in specs {
        let (generation, action) = upsert_spec_on(&mut tx, spec.kind, spec.name, spec.yaml, now).await?;
        if action != SpecAction::Unchanged {
            let subject = spec.subject();
            append_change_on(&mut tx, ChangeKind::Spec, &subject, now).await?;
            append_audit_on(
                &mut tx,
                actor,
                &format!("spec.{}", action.as_str()),
                &subject,
                now,
            )
            .await?;
        }
        outcomes.push(SpecOutcome { generation, action });
    }
    tx.commit().await?;
    Ok(outcomes)
}

async fn upsert_spec_on(
    conn: &mut SqliteConnection,
    kind: SpecKind,
    name: &str,
    yaml: &str,
    now: DateTime<Utc>,
) -> Result<(u64, SpecAction), StoreError> {
    let written: Option<i64> = sqlx::query_scalar(
        "INSERT INTO specs (kind, name, yaml, generation, created_at, updated_at)
         VALUES (?1, ?2, ?3, 1, ?4, ?4)
         ON CONFLICT (kind, name) DO UPDATE
           SET yaml = excluded.yaml, generation = specs.generation + 1,
               updated_at = excluded.updated_at
           WHERE specs.yaml <> excluded.yaml
         RETURNING generation",
    )
    .bind(kind.as_str())
    .bind(name)
    .bind(yaml)
    .bind(ts(now))
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(generation) = written {
        let action = if generation == 1 {
            SpecAction::Created
        } else {
            SpecAction::Configured
        };
        return Ok((to_u64(generation, "spec generation")?, action));
    }
    let generation: i64 = sqlx::query_scalar("SELECT generation FROM specs WHERE kind = ?1 AND name = ?2")
        .bind(kind.as_str())
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| {
            StoreError::Conflict(format!("{} {name:?} was deleted concurrently", kind.as_str()))
        })?;
    Ok((to_u64(generation, "spec generation")?, SpecAction::Unchanged))
}

pub(super) async fn list_specs(pool: &SqlitePool) -> Result<Vec<StoredSpec>, StoreError> {
    sqlx::query("SELECT kind, name, yaml, generation, updated_at FROM specs ORDER BY kind, name")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(StoredSpec {
                kind: spec_kind(&row.try_get::<String, _>("kind")?)?,
                name: row.try_get("name")?,
                yaml: row.try_get("yaml")?,
                generation: to_u64(row.try_get("generation")?, "spec generation")?,
                updated: req_ts(row, "updated_at", "spec updated_at")?,
            })
        })
        .collect()
}

pub(super) async fn delete_spec(pool: &SqlitePool, kind: SpecKind, name: &str) -> Result<bool, StoreError> {
    let result = sqlx::query("DELETE FROM specs WHERE kind = ?1 AND name = ?2")
        .bind(kind.as_str())
        .bind(name)
        .execute(pool)
        .await?;
    Ok(result.rows_affected() == 1)
}

// --- versions and revisions ---

pub(super) async fn upsert_secret_version(
    pool: &SqlitePool,
    v: &SecretVersionRecord,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO secret_versions
           (store, name, version, sha256, enabled, created_at, expires_at, not_before, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (store, name, version) DO UPDATE
           SET sha256 = excluded.sha256, enabled = excluded.enabled,
               created_at = excluded.created_at, expires_at = excluded.expires_at,
               not_before = excluded.not_before, recorded_at = excluded.recorded_at",
    )
    .bind(&v.store)
    .bind(&v.name)
    .bind(&v.version)
    .bind(&v.sha256.0[..])
    .bind(v.enabled)
    .bind(v.created.map(ts))
    .bind(v.expires.map(ts))
    .bind(v.not_before.map(ts))
    .bind(ts(now))
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn upsert_revision(
    pool: &SqlitePool,
    r: &NewRevision,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let generation = super::to_i64(r.spec_generation, "spec generation")?;
    // The INSERT (even when it inserts nothing) takes SQLite's write lock first, so the read
    // below sees what the insert decided against.
    let mut tx = pool.begin().await?;
    let inserted: Option<i64> = sqlx::query_scalar(
        "INSERT INTO revisions (fleet_secret, sha256, spec_generation, sources, created_at)
         SELECT ?1, ?2, ?3, ?4, ?5
         WHERE NOT EXISTS (
           SELECT 1 FROM (SELECT sha256, spec_generation FROM revisions WHERE fleet_secret = ?1
                          ORDER BY revision DESC LIMIT 1) AS latest
           WHERE latest.sha256 = ?2 AND latest.spec_generation = ?3)
         RETURNING revision",
    )
    .bind(&r.fleet_secret)
    .bind(&r.sha256.0[..])
    .bind(generation)
    .bind(sources_json(&r.sources).to_string())
    .bind(ts(now))
    .fetch_optional(&mut *tx)
    .await?;
    let revision = match inserted {
        Some(revision) => revision,
        None => {
            sqlx::query_scalar(
                "SELECT revision FROM revisions WHERE fleet_secret = ?1
                 ORDER BY revision DESC LIMIT 1",
            )
            .bind(&r.fleet_secret)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    to_u64(revision, "revision")
}

pub(super) async fn latest_revisions(pool: &SqlitePool) -> Result<Vec<RevisionRecord>, StoreError> {
    sqlx::query(
        "SELECT r.fleet_secret, r.revision, r.sha256, r.spec_generation, r.sources, r.created_at
         FROM revisions r
         WHERE r.revision = (SELECT max(revision) FROM revisions WHERE fleet_secret = r.fleet_secret)
         ORDER BY r.fleet_secret",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(revision_record)
    .collect()
}

pub(super) async fn revision_before(
    pool: &SqlitePool,
    fleet_secret: &str,
    below: i64,
) -> Result<Option<RevisionRecord>, StoreError> {
    sqlx::query(
        "SELECT fleet_secret, revision, sha256, spec_generation, sources, created_at
         FROM revisions WHERE fleet_secret = ?1 AND revision < ?2
         ORDER BY revision DESC LIMIT 1",
    )
    .bind(fleet_secret)
    .bind(below)
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(revision_record)
    .transpose()
}

fn revision_record(row: &SqliteRow) -> Result<RevisionRecord, StoreError> {
    Ok(RevisionRecord {
        fleet_secret: row.try_get("fleet_secret")?,
        revision: to_u64(row.try_get("revision")?, "revision")?,
        sha256: sha256(&row.try_get::<Vec<u8>, _>("sha256")?, "revision sha256")?,
        spec_generation: to_u64(row.try_get("spec_generation")?, "spec generation")?,
        sources: serde_json::from_str(&row.try_get::<String, _>("sources")?).map_err(|_| {
            StoreError::Corrupt {
                what: "revision sources",
            }
        })?,
        created: req_ts(row, "created_at", "revision created_at")?,
    })
}

// --- pins and rollouts ---

pub(super) async fn set_pin(
    pool: &SqlitePool,
    fleet_secret: &str,
    remote_key: &str,
    version: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO pins (fleet_secret, remote_key, version, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (fleet_secret, remote_key) DO UPDATE
           SET version = excluded.version, updated_at = excluded.updated_at",
    )
    .bind(fleet_secret)
    .bind(remote_key)
    .bind(version)
    .bind(ts(now))
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn remove_pins(
    pool: &SqlitePool,
    fleet_secret: &str,
    remote_key: Option<&str>,
) -> Result<u64, StoreError> {
    let result = sqlx::query("DELETE FROM pins WHERE fleet_secret = ?1 AND (?2 IS NULL OR remote_key = ?2)")
        .bind(fleet_secret)
        .bind(remote_key)
        .execute(pool)
        .await?;
    Ok(result.rows_affected())
}

pub(super) async fn pins(pool: &SqlitePool) -> Result<Vec<PinRecord>, StoreError> {
    sqlx::query("SELECT fleet_secret, remote_key, version FROM pins ORDER BY fleet_secret, remote_key")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(PinRecord {
                fleet_secret: row.try_get("fleet_secret")?,
                remote_key: row.try_get("remote_key")?,
                version: row.try_get("version")?,
            })
        })
        .collect()
}

pub(super) async fn set_rollout(
    pool: &SqlitePool,
    r: &RolloutRecord,
    revision: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rollouts (fleet_secret, revision, current_wave, paused, reason, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (fleet_secret) DO UPDATE
           SET revision = excluded.revision, current_wave = excluded.current_wave,
               paused = excluded.paused, reason = excluded.reason,
               updated_at = excluded.updated_at",
    )
    .bind(&r.fleet_secret)
    .bind(revision)
    .bind(i64::from(r.current_wave))
    .bind(r.paused)
    .bind(&r.reason)
    .bind(ts(now))
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn rollouts(pool: &SqlitePool) -> Result<Vec<RolloutRecord>, StoreError> {
    sqlx::query(
        "SELECT fleet_secret, revision, current_wave, paused, reason FROM rollouts
         ORDER BY fleet_secret",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok(RolloutRecord {
            fleet_secret: row.try_get("fleet_secret")?,
            revision: to_u64(row.try_get("revision")?, "rollout revision")?,
            current_wave: to_u32(row.try_get("current_wave")?, "rollout wave")?,
            paused: row.try_get("paused")?,
            reason: row.try_get("reason")?,
        })
    })
    .collect()
}

// --- sync status ---

const STATUS_UPSERT_HEAD: &str = "INSERT INTO sync_status AS s
   (cluster_id, fleet_secret, desired_revision, applied_revision, applied_sha256, state,
    last_error, attempts, updated_at, applied_at)
 SELECT column1, column2, column3, column4, column5, column6, column7, column8, column9,
        CASE WHEN column6 = 'applied' THEN column9 END
 FROM (VALUES ";

// `WHERE true` resolves the INSERT … SELECT … ON CONFLICT parsing ambiguity.
const STATUS_UPSERT_TAIL: &str = ") WHERE true
 ON CONFLICT (cluster_id, fleet_secret) DO UPDATE SET
   desired_revision = excluded.desired_revision,
   applied_revision = excluded.applied_revision,
   applied_sha256 = excluded.applied_sha256,
   state = excluded.state,
   last_error = excluded.last_error,
   attempts = excluded.attempts,
   updated_at = excluded.updated_at,
   applied_at = CASE
     WHEN excluded.state = 'applied'
          AND (s.applied_revision IS NOT excluded.applied_revision OR s.applied_at IS NULL)
     THEN excluded.updated_at
     ELSE s.applied_at END";

pub(super) async fn upsert_status_batch(
    pool: &SqlitePool,
    rows: &[StatusBind],
) -> Result<(u64, u64), StoreError> {
    let per_statement = MAX_BINDS / STATUS_BINDS;
    let mut tx = pool.begin().await?;
    let mut written = 0;
    let mut statements = 0;
    for chunk in rows.chunks(per_statement) {
        let mut sql =
            String::with_capacity(STATUS_UPSERT_HEAD.len() + STATUS_UPSERT_TAIL.len() + chunk.len() * 20);
        sql.push_str(STATUS_UPSERT_HEAD);
        for index in 0..chunk.len() {
            if index > 0 {
                sql.push(',');
            }
            sql.push_str("(?,?,?,?,?,?,?,?,?)");
        }
        sql.push_str(STATUS_UPSERT_TAIL);
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for row in chunk {
            query = query
                .bind(row.cluster.hyphenated().to_string())
                .bind(row.fleet_secret.clone())
                .bind(row.desired_revision)
                .bind(row.applied_revision)
                .bind(row.applied_sha256.clone())
                .bind(row.state)
                .bind(row.last_error.clone())
                .bind(row.attempts)
                .bind(ts(row.at));
        }
        let result = query
            .execute(&mut *tx)
            .await
            .map_err(|error| fk_to_not_found(error, "cluster of a status row"))?;
        written += result.rows_affected();
        statements += 1;
    }
    tx.commit().await?;
    Ok((written, statements))
}

pub(super) async fn delete_status(
    pool: &SqlitePool,
    cluster: ClusterId,
    fleet_secret: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM sync_status WHERE cluster_id = ?1 AND fleet_secret = ?2")
        .bind(id_text(cluster))
        .bind(fleet_secret)
        .execute(pool)
        .await?;
    Ok(())
}

const STATUS_SELECT: &str = "SELECT s.cluster_id, c.name AS cluster_name, s.fleet_secret,
        s.desired_revision, s.applied_revision, s.applied_sha256, s.state, s.last_error,
        s.attempts, s.updated_at, s.applied_at
 FROM sync_status s JOIN clusters c ON c.id = s.cluster_id";

fn status(row: &SqliteRow) -> Result<SyncStatus, StoreError> {
    Ok(SyncStatus {
        cluster: ClusterId(uuid(row, "cluster_id")?),
        cluster_name: row.try_get("cluster_name")?,
        fleet_secret: row.try_get("fleet_secret")?,
        desired_revision: to_u64(row.try_get("desired_revision")?, "desired revision")?,
        applied_revision: row
            .try_get::<Option<i64>, _>("applied_revision")?
            .map(|revision| to_u64(revision, "applied revision"))
            .transpose()?,
        applied_sha256: row
            .try_get::<Option<Vec<u8>>, _>("applied_sha256")?
            .map(|bytes| sha256(&bytes, "applied sha256"))
            .transpose()?,
        state: sync_state(&row.try_get::<String, _>("state")?)?,
        last_error: row.try_get("last_error")?,
        attempts: to_u32(row.try_get("attempts")?, "attempts")?,
        updated: req_ts(row, "updated_at", "status updated_at")?,
        applied_at: opt_ts(row, "applied_at", "status applied_at")?,
    })
}

pub(super) async fn status_for_cluster(
    pool: &SqlitePool,
    id: ClusterId,
) -> Result<Vec<SyncStatus>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "{STATUS_SELECT} WHERE s.cluster_id = ?1 ORDER BY s.fleet_secret"
    )))
    .bind(id_text(id))
    .fetch_all(pool)
    .await?
    .iter()
    .map(status)
    .collect()
}

pub(super) async fn status_for_fleet_secret(
    pool: &SqlitePool,
    name: &str,
) -> Result<Vec<SyncStatus>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "{STATUS_SELECT} WHERE s.fleet_secret = ?1 ORDER BY c.name"
    )))
    .bind(name)
    .fetch_all(pool)
    .await?
    .iter()
    .map(status)
    .collect()
}

pub(super) async fn status_served_elsewhere(
    pool: &SqlitePool,
    name: &str,
    replica: &str,
) -> Result<Vec<SyncStatus>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "{STATUS_SELECT} WHERE s.fleet_secret = ?1 AND c.connected_replica IS NOT ?2"
    )))
    .bind(name)
    .bind(replica)
    .fetch_all(pool)
    .await?
    .iter()
    .map(status)
    .collect()
}

pub(super) async fn all_status(pool: &SqlitePool) -> Result<Vec<SyncStatus>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "{STATUS_SELECT} ORDER BY c.name, s.fleet_secret"
    )))
    .fetch_all(pool)
    .await?
    .iter()
    .map(status)
    .collect()
}

pub(super) async fn lagging(
    pool: &SqlitePool,
    fleet_secret: Option<&str>,
    limit: i64,
) -> Result<Vec<SyncStatus>, StoreError> {
    sqlx::query(AssertSqlSafe(format!(
        "{STATUS_SELECT}
         WHERE s.applied_revision IS NOT s.desired_revision
           AND (?1 IS NULL OR s.fleet_secret = ?1)
         ORDER BY s.updated_at, c.name, s.fleet_secret
         LIMIT ?2"
    )))
    .bind(fleet_secret)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(status)
    .collect()
}

// --- change log ---

pub(super) async fn append_change(
    pool: &SqlitePool,
    kind: ChangeKind,
    subject: &str,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    append_change_on(&mut *pool.acquire().await?, kind, subject, now).await
}

async fn append_change_on(
    conn: &mut SqliteConnection,
    kind: ChangeKind,
    subject: &str,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("INSERT INTO changes (kind, subject, at) VALUES (?1, ?2, ?3) RETURNING seq")
            .bind(kind.as_str())
            .bind(subject)
            .bind(ts(now))
            .fetch_one(&mut *conn)
            .await?,
    )
}

pub(super) async fn changes_since(
    pool: &SqlitePool,
    cursor: i64,
    limit: i64,
) -> Result<Vec<Change>, StoreError> {
    sqlx::query("SELECT seq, kind, subject, at FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2")
        .bind(cursor)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(Change {
                seq: row.try_get("seq")?,
                kind: change_kind(&row.try_get::<String, _>("kind")?)?,
                subject: row.try_get("subject")?,
                at: req_ts(row, "at", "change at")?,
            })
        })
        .collect()
}

pub(super) async fn latest_change(pool: &SqlitePool) -> Result<i64, StoreError> {
    // Past the horizon even when pruning emptied the log, so a new reader's cursor is valid.
    Ok(sqlx::query_scalar(
        "SELECT max(COALESCE((SELECT max(seq) FROM changes), 0),
                    COALESCE((SELECT pruned_through FROM change_horizon), 0))",
    )
    .fetch_one(pool)
    .await?)
}

pub(super) async fn prune_changes(
    pool: &SqlitePool,
    older_than: DateTime<Utc>,
    keep: i64,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    // The newest entry old enough, never one of the `keep` newest.
    let cutoff: Option<i64> = sqlx::query_scalar(
        "SELECT max(seq) FROM changes
         WHERE at < ?1 AND seq <= (SELECT COALESCE(max(seq), 0) FROM changes) - ?2",
    )
    .bind(ts(older_than))
    .bind(keep)
    .fetch_one(&mut *tx)
    .await?;
    let Some(cutoff) = cutoff else {
        return Ok(0);
    };
    let pruned = sqlx::query("DELETE FROM changes WHERE seq <= ?1")
        .bind(cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query(
        "INSERT INTO change_horizon (id, pruned_through) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET pruned_through = max(pruned_through, excluded.pruned_through)",
    )
    .bind(cutoff)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(pruned)
}

pub(super) async fn change_horizon(pool: &SqlitePool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE((SELECT pruned_through FROM change_horizon), 0)")
            .fetch_one(pool)
            .await?,
    )
}

// --- audit ---

pub(super) async fn append_audit(
    pool: &SqlitePool,
    actor: &str,
    action: &str,
    subject: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    append_audit_on(&mut *pool.acquire().await?, actor, action, subject, at).await
}

async fn append_audit_on(
    conn: &mut SqliteConnection,
    actor: &str,
    action: &str,
    subject: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO audit_events (actor, action, subject, at) VALUES (?1, ?2, ?3, ?4)")
        .bind(actor)
        .bind(action)
        .bind(subject)
        .bind(ts(at))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn audit(pool: &SqlitePool, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
    sqlx::query("SELECT actor, action, subject, at FROM audit_events ORDER BY id DESC LIMIT ?1")
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(AuditEvent {
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                subject: row.try_get("subject")?,
                at: req_ts(row, "at", "audit at")?,
            })
        })
        .collect()
}

fn unique_to_exists(error: sqlx::Error, what: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::AlreadyExists {
            what: what.to_owned(),
        },
        _ => StoreError::Database(error),
    }
}

fn fk_to_not_found(error: sqlx::Error, what: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound {
            what: what.to_owned(),
        },
        _ => StoreError::Database(error),
    }
}
