//! Postgres backend: compile-time checked `query!`/`query_as!` (offline data in `.sqlx/`).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::{Migrate as _, Migrator};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection as _, PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::{
    AppliedMigration, AuditEvent, CHANGES_CHANNEL, Change, ChangeKind, Cluster, ClusterLiveness, Leadership,
    NewRevision, PgLeadership, PinRecord, RevisionRecord, RolloutRecord, SecretVersionRecord, SpecAction,
    SpecKind, SpecOutcome, SpecWrite, StatusBind, StoreError, StoredSpec, SyncStatus, TokenState,
    change_kind, cluster_state, labels_from_json, labels_json, sha256, sources_from_json, sources_json,
    spec_kind, sync_state, to_i64, to_u32, to_u64,
};
use crate::domain::{ClusterId, Labels, Sha256};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// How often a held leadership checks its connection.
const LEADER_PING: Duration = Duration::from_secs(2);

pub(super) async fn connect(url: &str) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?)
}

pub(super) async fn migrate(pool: &PgPool) -> Result<Vec<AppliedMigration>, StoreError> {
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

// --- clusters ---

struct ClusterRow {
    id: Uuid,
    name: String,
    labels: serde_json::Value,
    state: String,
    agent_version: Option<String>,
    connected_replica: Option<String>,
    last_seen: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl TryFrom<ClusterRow> for Cluster {
    type Error = StoreError;

    fn try_from(row: ClusterRow) -> Result<Self, StoreError> {
        Ok(Cluster {
            id: ClusterId(row.id),
            name: row.name,
            labels: labels_from_json(row.labels)?,
            state: cluster_state(&row.state)?,
            agent_version: row.agent_version,
            connected_replica: row.connected_replica,
            last_seen: row.last_seen,
            created: row.created_at,
        })
    }
}

pub(super) async fn create_cluster(
    pool: &PgPool,
    id: ClusterId,
    name: &str,
    labels: &Labels,
    now: DateTime<Utc>,
) -> Result<Cluster, StoreError> {
    let row = sqlx::query_as!(
        ClusterRow,
        r#"INSERT INTO clusters (id, name, labels, state, created_at, updated_at)
           VALUES ($1, $2, $3, 'pending', $4, $4)
           ON CONFLICT (name) DO NOTHING
           RETURNING id, name, labels, state, agent_version, connected_replica, last_seen,
                     created_at"#,
        id.0,
        name,
        labels_json(labels),
        now,
    )
    .fetch_optional(pool)
    .await?;
    row.ok_or_else(|| StoreError::AlreadyExists {
        what: format!("cluster {name:?}"),
    })?
    .try_into()
}

pub(super) async fn cluster_by_name(pool: &PgPool, name: &str) -> Result<Option<Cluster>, StoreError> {
    sqlx::query_as!(
        ClusterRow,
        r#"SELECT id, name, labels, state, agent_version, connected_replica, last_seen, created_at
           FROM clusters WHERE name = $1"#,
        name,
    )
    .fetch_optional(pool)
    .await?
    .map(Cluster::try_from)
    .transpose()
}

pub(super) async fn cluster_by_id(pool: &PgPool, id: ClusterId) -> Result<Option<Cluster>, StoreError> {
    sqlx::query_as!(
        ClusterRow,
        r#"SELECT id, name, labels, state, agent_version, connected_replica, last_seen, created_at
           FROM clusters WHERE id = $1"#,
        id.0,
    )
    .fetch_optional(pool)
    .await?
    .map(Cluster::try_from)
    .transpose()
}

pub(super) async fn list_clusters(
    pool: &PgPool,
    match_labels: Option<&BTreeMap<String, String>>,
) -> Result<Vec<Cluster>, StoreError> {
    let filter = match_labels.map(labels_json);
    sqlx::query_as!(
        ClusterRow,
        r#"SELECT id, name, labels, state, agent_version, connected_replica, last_seen, created_at
           FROM clusters
           WHERE $1::jsonb IS NULL OR labels @> $1::jsonb
           ORDER BY name"#,
        filter,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(Cluster::try_from)
    .collect()
}

pub(super) async fn cluster_liveness(pool: &PgPool) -> Result<Vec<ClusterLiveness>, StoreError> {
    Ok(
        sqlx::query!("SELECT id, connected_replica, last_seen FROM clusters")
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| ClusterLiveness {
                id: ClusterId(row.id),
                connected_replica: row.connected_replica,
                last_seen: row.last_seen,
            })
            .collect(),
    )
}

pub(super) async fn set_cluster_labels(
    pool: &PgPool,
    id: ClusterId,
    labels: &Labels,
    now: DateTime<Utc>,
) -> Result<Option<Cluster>, StoreError> {
    sqlx::query_as!(
        ClusterRow,
        r#"UPDATE clusters SET labels = $2, updated_at = $3 WHERE id = $1
           RETURNING id, name, labels, state, agent_version, connected_replica, last_seen,
                     created_at"#,
        id.0,
        labels_json(labels),
        now,
    )
    .fetch_optional(pool)
    .await?
    .map(Cluster::try_from)
    .transpose()
}

pub(super) async fn revoke_cluster(
    pool: &PgPool,
    id: ClusterId,
    now: DateTime<Utc>,
) -> Result<Option<Cluster>, StoreError> {
    let mut tx = pool.begin().await?;
    let row = sqlx::query_as!(
        ClusterRow,
        r#"UPDATE clusters SET state = 'revoked', credential_sha256 = NULL, updated_at = $2
           WHERE id = $1
           RETURNING id, name, labels, state, agent_version, connected_replica, last_seen,
                     created_at"#,
        id.0,
        now,
    )
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE enrollment_tokens SET expires_at = LEAST(expires_at, $2)
         WHERE cluster_id = $1 AND used_at IS NULL",
        id.0,
        now,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    row.map(Cluster::try_from).transpose()
}

// --- enrollment and credentials ---

pub(super) async fn issue_enrollment_token(
    pool: &PgPool,
    cluster: ClusterId,
    token_hash: &Sha256,
    expires: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "INSERT INTO enrollment_tokens (token_sha256, cluster_id, expires_at, created_at)
         SELECT $1, id, $3, $4 FROM clusters WHERE id = $2 AND state <> 'revoked'",
        &token_hash.0[..],
        cluster.0,
        expires,
        now,
    )
    .execute(pool)
    .await
    .map_err(|error| unique_to_exists(error, "enrollment token"))?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn consume_enrollment_token(
    pool: &PgPool,
    token_hash: &Sha256,
    now: DateTime<Utc>,
) -> Result<Option<ClusterId>, StoreError> {
    let row = sqlx::query!(
        "UPDATE enrollment_tokens t SET used_at = $2
         WHERE t.token_sha256 = $1 AND t.used_at IS NULL AND t.expires_at > $2
           AND EXISTS (SELECT 1 FROM clusters c WHERE c.id = t.cluster_id AND c.state <> 'revoked')
         RETURNING t.cluster_id",
        &token_hash.0[..],
        now,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| ClusterId(row.cluster_id)))
}

pub(super) async fn token_state(
    pool: &PgPool,
    token_hash: &Sha256,
) -> Result<Option<TokenState>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT t.used_at IS NOT NULL AS "used!", t.expires_at, c.state AS "cluster_state!"
           FROM enrollment_tokens t JOIN clusters c ON c.id = t.cluster_id
           WHERE t.token_sha256 = $1"#,
        &token_hash.0[..],
    )
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(TokenState {
            used: row.used,
            expires: row.expires_at,
            cluster_state: cluster_state(&row.cluster_state)?,
        })
    })
    .transpose()
}

pub(super) async fn set_cluster_credential(
    pool: &PgPool,
    id: ClusterId,
    credential_hash: &Sha256,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "UPDATE clusters SET credential_sha256 = $2, state = 'active', updated_at = $3
         WHERE id = $1 AND state <> 'revoked'",
        id.0,
        &credential_hash.0[..],
        now,
    )
    .execute(pool)
    .await
    .map_err(|error| unique_to_exists(error, "cluster credential"))?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn active_credentials(pool: &PgPool) -> Result<Vec<(Sha256, ClusterId)>, StoreError> {
    sqlx::query!(
        r#"SELECT credential_sha256 AS "credential_sha256!", id FROM clusters
           WHERE state = 'active' AND credential_sha256 IS NOT NULL ORDER BY id"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok((
            sha256(&row.credential_sha256, "credential hash")?,
            ClusterId(row.id),
        ))
    })
    .collect()
}

pub(super) async fn record_connect(
    pool: &PgPool,
    id: ClusterId,
    replica: &str,
    agent_version: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "UPDATE clusters SET connected_replica = $2, agent_version = $3, connected_at = $4,
                last_seen = $4
         WHERE id = $1",
        id.0,
        replica,
        agent_version,
        at,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn record_disconnect(
    pool: &PgPool,
    id: ClusterId,
    replica: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "UPDATE clusters
         SET connected_replica = CASE WHEN connected_replica = $2 THEN NULL
                                      ELSE connected_replica END,
             last_seen = GREATEST(last_seen, $3)
         WHERE id = $1",
        id.0,
        replica,
        at,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

pub(super) async fn touch_last_seen(
    pool: &PgPool,
    ids: &[ClusterId],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.0).collect();
    sqlx::query!(
        "UPDATE clusters SET last_seen = GREATEST(last_seen, $2) WHERE id = ANY($1)",
        &ids[..],
        at,
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn clear_replica(
    pool: &PgPool,
    replica: &str,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let result = sqlx::query!(
        "UPDATE clusters SET connected_replica = NULL, last_seen = GREATEST(last_seen, $2)
         WHERE connected_replica = $1",
        replica,
        now,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

// --- specs ---

pub(super) async fn upsert_spec(
    pool: &PgPool,
    kind: SpecKind,
    name: &str,
    yaml: &str,
    now: DateTime<Utc>,
) -> Result<(u64, SpecAction), StoreError> {
    upsert_spec_on(&mut *pool.acquire().await?, kind, name, yaml, now).await
}

pub(super) async fn apply_specs(
    pool: &PgPool,
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
    // NOTIFY is delivered at commit, with the rows it announces.
    tx.commit().await?;
    Ok(outcomes)
}

async fn upsert_spec_on(
    conn: &mut PgConnection,
    kind: SpecKind,
    name: &str,
    yaml: &str,
    now: DateTime<Utc>,
) -> Result<(u64, SpecAction), StoreError> {
    let written = sqlx::query_scalar!(
        "INSERT INTO specs (kind, name, yaml, generation, created_at, updated_at)
         VALUES ($1, $2, $3, 1, $4, $4)
         ON CONFLICT (kind, name) DO UPDATE
           SET yaml = excluded.yaml, generation = specs.generation + 1,
               updated_at = excluded.updated_at
           WHERE specs.yaml <> excluded.yaml
         RETURNING generation",
        kind.as_str(),
        name,
        yaml,
        now,
    )
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
    let generation = sqlx::query_scalar!(
        "SELECT generation FROM specs WHERE kind = $1 AND name = $2",
        kind.as_str(),
        name,
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::Conflict(format!("{} {name:?} was deleted concurrently", kind.as_str())))?;
    Ok((to_u64(generation, "spec generation")?, SpecAction::Unchanged))
}

pub(super) async fn list_specs(pool: &PgPool) -> Result<Vec<StoredSpec>, StoreError> {
    sqlx::query!("SELECT kind, name, yaml, generation, updated_at FROM specs ORDER BY kind, name")
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|row| {
            Ok(StoredSpec {
                kind: spec_kind(&row.kind)?,
                name: row.name,
                yaml: row.yaml,
                generation: to_u64(row.generation, "spec generation")?,
                updated: row.updated_at,
            })
        })
        .collect()
}

pub(super) async fn delete_spec(pool: &PgPool, kind: SpecKind, name: &str) -> Result<bool, StoreError> {
    let result = sqlx::query!(
        "DELETE FROM specs WHERE kind = $1 AND name = $2",
        kind.as_str(),
        name
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

// --- versions and revisions ---

pub(super) async fn upsert_secret_version(
    pool: &PgPool,
    v: &SecretVersionRecord,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO secret_versions
           (store, name, version, sha256, enabled, created_at, expires_at, not_before, recorded_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (store, name, version) DO UPDATE
           SET sha256 = excluded.sha256, enabled = excluded.enabled,
               created_at = excluded.created_at, expires_at = excluded.expires_at,
               not_before = excluded.not_before, recorded_at = excluded.recorded_at",
        v.store,
        v.name,
        v.version,
        &v.sha256.0[..],
        v.enabled,
        v.created,
        v.expires,
        v.not_before,
        now,
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn upsert_revision(
    pool: &PgPool,
    r: &NewRevision,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let generation = to_i64(r.spec_generation, "spec generation")?;
    let mut tx = pool.begin().await?;
    // Serialise writers of the same fleet secret for the read-then-insert below.
    sqlx::query!(
        r#"SELECT 1 AS "locked!" FROM pg_advisory_xact_lock(hashtextextended('keyfleet revision ' || $1, 0))"#,
        r.fleet_secret,
    )
    .fetch_one(&mut *tx)
    .await?;
    let latest = sqlx::query!(
        "SELECT revision, sha256, spec_generation FROM revisions
         WHERE fleet_secret = $1 ORDER BY revision DESC LIMIT 1",
        r.fleet_secret,
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(latest) = latest
        && latest.sha256 == r.sha256.0
        && latest.spec_generation == generation
    {
        tx.commit().await?;
        return to_u64(latest.revision, "revision");
    }
    let revision = sqlx::query_scalar!(
        "INSERT INTO revisions (fleet_secret, sha256, spec_generation, sources, created_at)
         VALUES ($1, $2, $3, $4, $5) RETURNING revision",
        r.fleet_secret,
        &r.sha256.0[..],
        generation,
        sources_json(&r.sources),
        now,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    to_u64(revision, "revision")
}

pub(super) async fn latest_revisions(pool: &PgPool) -> Result<Vec<RevisionRecord>, StoreError> {
    sqlx::query!(
        "SELECT DISTINCT ON (fleet_secret)
                fleet_secret, revision, sha256, spec_generation, sources, created_at
         FROM revisions ORDER BY fleet_secret, revision DESC"
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok(RevisionRecord {
            fleet_secret: row.fleet_secret,
            revision: to_u64(row.revision, "revision")?,
            sha256: sha256(&row.sha256, "revision sha256")?,
            spec_generation: to_u64(row.spec_generation, "spec generation")?,
            sources: sources_from_json(row.sources)?,
            created: row.created_at,
        })
    })
    .collect()
}

pub(super) async fn revision_before(
    pool: &PgPool,
    fleet_secret: &str,
    below: i64,
) -> Result<Option<RevisionRecord>, StoreError> {
    sqlx::query!(
        "SELECT fleet_secret, revision, sha256, spec_generation, sources, created_at
         FROM revisions WHERE fleet_secret = $1 AND revision < $2
         ORDER BY revision DESC LIMIT 1",
        fleet_secret,
        below,
    )
    .fetch_optional(pool)
    .await?
    .map(|row| {
        Ok(RevisionRecord {
            fleet_secret: row.fleet_secret,
            revision: to_u64(row.revision, "revision")?,
            sha256: sha256(&row.sha256, "revision sha256")?,
            spec_generation: to_u64(row.spec_generation, "spec generation")?,
            sources: sources_from_json(row.sources)?,
            created: row.created_at,
        })
    })
    .transpose()
}

// --- pins and rollouts ---

pub(super) async fn set_pin(
    pool: &PgPool,
    fleet_secret: &str,
    remote_key: &str,
    version: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO pins (fleet_secret, remote_key, version, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (fleet_secret, remote_key) DO UPDATE
           SET version = excluded.version, updated_at = excluded.updated_at",
        fleet_secret,
        remote_key,
        version,
        now,
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn remove_pins(
    pool: &PgPool,
    fleet_secret: &str,
    remote_key: Option<&str>,
) -> Result<u64, StoreError> {
    let result = sqlx::query!(
        "DELETE FROM pins WHERE fleet_secret = $1 AND ($2::text IS NULL OR remote_key = $2)",
        fleet_secret,
        remote_key,
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

pub(super) async fn pins(pool: &PgPool) -> Result<Vec<PinRecord>, StoreError> {
    Ok(sqlx::query_as!(
        PinRecord,
        "SELECT fleet_secret, remote_key, version FROM pins ORDER BY fleet_secret, remote_key"
    )
    .fetch_all(pool)
    .await?)
}

pub(super) async fn set_rollout(
    pool: &PgPool,
    r: &RolloutRecord,
    revision: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let wave = i32::try_from(r.current_wave).map_err(|_| StoreError::OutOfRange { what: "rollout wave" })?;
    sqlx::query!(
        "INSERT INTO rollouts (fleet_secret, revision, current_wave, paused, reason, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (fleet_secret) DO UPDATE
           SET revision = excluded.revision, current_wave = excluded.current_wave,
               paused = excluded.paused, reason = excluded.reason,
               updated_at = excluded.updated_at",
        r.fleet_secret,
        revision,
        wave,
        r.paused,
        r.reason,
        now,
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn rollouts(pool: &PgPool) -> Result<Vec<RolloutRecord>, StoreError> {
    sqlx::query!(
        "SELECT fleet_secret, revision, current_wave, paused, reason FROM rollouts
         ORDER BY fleet_secret"
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok(RolloutRecord {
            fleet_secret: row.fleet_secret,
            revision: to_u64(row.revision, "rollout revision")?,
            current_wave: to_u32(i64::from(row.current_wave), "rollout wave")?,
            paused: row.paused,
            reason: row.reason,
        })
    })
    .collect()
}

// --- sync status ---

pub(super) async fn upsert_status_batch(
    pool: &PgPool,
    rows: &[StatusBind],
) -> Result<(u64, u64), StoreError> {
    let clusters: Vec<Uuid> = rows.iter().map(|r| r.cluster).collect();
    let fleet_secrets: Vec<String> = rows.iter().map(|r| r.fleet_secret.clone()).collect();
    let desired: Vec<i64> = rows.iter().map(|r| r.desired_revision).collect();
    let applied: Vec<Option<i64>> = rows.iter().map(|r| r.applied_revision).collect();
    let applied_sha: Vec<Option<Vec<u8>>> = rows.iter().map(|r| r.applied_sha256.clone()).collect();
    let states: Vec<String> = rows.iter().map(|r| r.state.to_owned()).collect();
    let errors: Vec<Option<String>> = rows.iter().map(|r| r.last_error.clone()).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
    let at: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    let result = sqlx::query!(
        r#"INSERT INTO sync_status AS s
             (cluster_id, fleet_secret, desired_revision, applied_revision, applied_sha256, state,
              last_error, attempts, updated_at, applied_at)
           SELECT u.cluster_id, u.fleet_secret, u.desired_revision, u.applied_revision,
                  u.applied_sha256, u.state, u.last_error, u.attempts, u.updated_at,
                  CASE WHEN u.state = 'applied' THEN u.updated_at END
           FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[], $5::bytea[], $6::text[],
                       $7::text[], $8::int4[], $9::timestamptz[])
                AS u(cluster_id, fleet_secret, desired_revision, applied_revision, applied_sha256,
                     state, last_error, attempts, updated_at)
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
                    AND (s.applied_revision IS DISTINCT FROM excluded.applied_revision
                         OR s.applied_at IS NULL)
               THEN excluded.updated_at
               ELSE s.applied_at END"#,
        &clusters[..],
        &fleet_secrets[..],
        &desired[..],
        &applied[..] as &[Option<i64>],
        &applied_sha[..] as &[Option<Vec<u8>>],
        &states[..],
        &errors[..] as &[Option<String>],
        &attempts[..],
        &at[..],
    )
    .execute(pool)
    .await
    .map_err(|error| fk_to_not_found(error, "cluster of a status row"))?;
    Ok((result.rows_affected(), 1))
}

/// `VACUUM` of the lagging copy, skipped when another replica's vacuum holds it. Not a prepared
/// statement (VACUUM runs outside a transaction block). Without ownership of the table Postgres
/// only warns and skips it.
pub(super) async fn vacuum_lagging(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql("VACUUM (SKIP_LOCKED) sync_lagging")
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn delete_status(
    pool: &PgPool,
    cluster: ClusterId,
    fleet_secret: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM sync_status WHERE cluster_id = $1 AND fleet_secret = $2",
        cluster.0,
        fleet_secret,
    )
    .execute(pool)
    .await?;
    Ok(())
}

struct StatusRecord {
    cluster_id: Uuid,
    cluster_name: String,
    fleet_secret: String,
    desired_revision: i64,
    applied_revision: Option<i64>,
    applied_sha256: Option<Vec<u8>>,
    state: String,
    last_error: Option<String>,
    attempts: i32,
    updated_at: DateTime<Utc>,
    applied_at: Option<DateTime<Utc>>,
}

impl TryFrom<StatusRecord> for SyncStatus {
    type Error = StoreError;

    fn try_from(row: StatusRecord) -> Result<Self, StoreError> {
        Ok(SyncStatus {
            cluster: ClusterId(row.cluster_id),
            cluster_name: row.cluster_name,
            fleet_secret: row.fleet_secret,
            desired_revision: to_u64(row.desired_revision, "desired revision")?,
            applied_revision: row
                .applied_revision
                .map(|revision| to_u64(revision, "applied revision"))
                .transpose()?,
            applied_sha256: row
                .applied_sha256
                .map(|bytes| sha256(&bytes, "applied sha256"))
                .transpose()?,
            state: sync_state(&row.state)?,
            last_error: row.last_error,
            attempts: to_u32(i64::from(row.attempts), "attempts")?,
            updated: row.updated_at,
            applied_at: row.applied_at,
        })
    }
}

fn statuses(rows: Vec<StatusRecord>) -> Result<Vec<SyncStatus>, StoreError> {
    rows.into_iter().map(SyncStatus::try_from).collect()
}

pub(super) async fn status_for_cluster(pool: &PgPool, id: ClusterId) -> Result<Vec<SyncStatus>, StoreError> {
    statuses(
        sqlx::query_as!(
            StatusRecord,
            r#"SELECT s.cluster_id, c.name AS "cluster_name!", s.fleet_secret, s.desired_revision,
                      s.applied_revision, s.applied_sha256, s.state, s.last_error, s.attempts,
                      s.updated_at, s.applied_at
               FROM sync_status s JOIN clusters c ON c.id = s.cluster_id
               WHERE s.cluster_id = $1
               ORDER BY s.fleet_secret"#,
            id.0,
        )
        .fetch_all(pool)
        .await?,
    )
}

pub(super) async fn status_for_fleet_secret(
    pool: &PgPool,
    name: &str,
) -> Result<Vec<SyncStatus>, StoreError> {
    statuses(
        sqlx::query_as!(
            StatusRecord,
            r#"SELECT s.cluster_id, c.name AS "cluster_name!", s.fleet_secret, s.desired_revision,
                      s.applied_revision, s.applied_sha256, s.state, s.last_error, s.attempts,
                      s.updated_at, s.applied_at
               FROM sync_status s JOIN clusters c ON c.id = s.cluster_id
               WHERE s.fleet_secret = $1
               ORDER BY c.name"#,
            name,
        )
        .fetch_all(pool)
        .await?,
    )
}

pub(super) async fn status_served_elsewhere(
    pool: &PgPool,
    name: &str,
    replica: &str,
) -> Result<Vec<SyncStatus>, StoreError> {
    statuses(
        sqlx::query_as!(
            StatusRecord,
            r#"SELECT s.cluster_id, c.name AS "cluster_name!", s.fleet_secret, s.desired_revision,
                      s.applied_revision, s.applied_sha256, s.state, s.last_error, s.attempts,
                      s.updated_at, s.applied_at
               FROM sync_status s JOIN clusters c ON c.id = s.cluster_id
               WHERE s.fleet_secret = $1 AND c.connected_replica IS DISTINCT FROM $2"#,
            name,
            replica,
        )
        .fetch_all(pool)
        .await?,
    )
}

pub(super) async fn all_status(pool: &PgPool) -> Result<Vec<SyncStatus>, StoreError> {
    statuses(
        sqlx::query_as!(
            StatusRecord,
            r#"SELECT s.cluster_id, c.name AS "cluster_name!", s.fleet_secret, s.desired_revision,
                      s.applied_revision, s.applied_sha256, s.state, s.last_error, s.attempts,
                      s.updated_at, s.applied_at
               FROM sync_status s JOIN clusters c ON c.id = s.cluster_id
               ORDER BY c.name, s.fleet_secret"#,
        )
        .fetch_all(pool)
        .await?,
    )
}

pub(super) async fn lagging(
    pool: &PgPool,
    fleet_secret: Option<&str>,
    limit: i64,
) -> Result<Vec<SyncStatus>, StoreError> {
    statuses(
        sqlx::query_as!(
            StatusRecord,
            r#"SELECT s.cluster_id, c.name AS "cluster_name!", s.fleet_secret, s.desired_revision,
                      s.applied_revision, s.applied_sha256, s.state, s.last_error, s.attempts,
                      s.updated_at, s.applied_at
               FROM sync_status s JOIN clusters c ON c.id = s.cluster_id
               WHERE s.lagging AND ($1::text IS NULL OR s.fleet_secret = $1)
               ORDER BY s.updated_at, c.name, s.fleet_secret
               LIMIT $2"#,
            fleet_secret,
            limit,
        )
        .fetch_all(pool)
        .await?,
    )
}

// --- change log ---

pub(super) async fn append_change(
    pool: &PgPool,
    kind: ChangeKind,
    subject: &str,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    append_change_on(&mut *pool.acquire().await?, kind, subject, now).await
}

async fn append_change_on(
    conn: &mut PgConnection,
    kind: ChangeKind,
    subject: &str,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    // One statement: the row and its wake-up commit together.
    Ok(sqlx::query_scalar!(
        r#"WITH inserted AS (
             INSERT INTO changes (kind, subject, at) VALUES ($1, $2, $3) RETURNING seq)
           SELECT inserted.seq AS "seq!"
           FROM inserted CROSS JOIN LATERAL pg_notify('keyfleet_changes', inserted.seq::text) AS n"#,
        kind.as_str(),
        subject,
        now,
    )
    .fetch_one(&mut *conn)
    .await?)
}

pub(super) async fn changes_since(pool: &PgPool, cursor: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
    sqlx::query!(
        "SELECT seq, kind, subject, at FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        cursor,
        limit,
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| {
        Ok(Change {
            seq: row.seq,
            kind: change_kind(&row.kind)?,
            subject: row.subject,
            at: row.at,
        })
    })
    .collect()
}

pub(super) async fn latest_change(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        // Past the horizon even when pruning emptied the log, so a new reader's cursor is valid.
        sqlx::query_scalar!(
            r#"SELECT GREATEST(COALESCE((SELECT max(seq) FROM changes), 0),
                               COALESCE((SELECT pruned_through FROM change_horizon), 0)) AS "seq!""#
        )
        .fetch_one(pool)
        .await?,
    )
}

pub(super) async fn prune_changes(
    pool: &PgPool,
    older_than: DateTime<Utc>,
    keep: i64,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    // The newest entry old enough, never one of the `keep` newest.
    let cutoff = sqlx::query_scalar!(
        "SELECT max(seq) FROM changes
         WHERE at < $1 AND seq <= (SELECT COALESCE(max(seq), 0) FROM changes) - $2",
        older_than,
        keep,
    )
    .fetch_one(&mut *tx)
    .await?;
    let Some(cutoff) = cutoff else {
        return Ok(0);
    };
    let pruned = sqlx::query!("DELETE FROM changes WHERE seq <= $1", cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query!(
        "INSERT INTO change_horizon (id, pruned_through) VALUES (true, $1)
         ON CONFLICT (id) DO UPDATE
         SET pruned_through = GREATEST(change_horizon.pruned_through, excluded.pruned_through)",
        cutoff,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(pruned)
}

pub(super) async fn change_horizon(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar!(r#"SELECT COALESCE((SELECT pruned_through FROM change_horizon), 0) AS "seq!""#)
            .fetch_one(pool)
            .await?,
    )
}

/// LISTENs on a connection of its own (a one-connection pool, so the store's pool keeps all of
/// its connections) and turns notifications into coalesced wake-ups. Ends when the receiver is
/// dropped.
pub(super) async fn spawn_listener(pool: &PgPool, sender: mpsc::Sender<()>) -> Result<(), StoreError> {
    let listen_pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut listener = PgListener::connect_with(&listen_pool).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                () = sender.closed() => break,
            };
            match received {
                Ok(Some(_notification)) => {
                    failures = 0;
                    let _ = sender.try_send(());
                }
                Ok(None) => {
                    // Eager reconnect: the connection is back and LISTENs again; notifications
                    // sent meanwhile are lost, so wake the reader to re-read from its cursor.
                    tracing::info!(channel = CHANGES_CHANNEL, "change listener reconnected");
                    let _ = sender.try_send(());
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let backoff = Duration::from_millis(100)
                        .saturating_mul(2u32.saturating_pow(failures.min(6)))
                        .min(Duration::from_secs(5));
                    tracing::warn!(%error, ?backoff, "change listener failed; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = sender.closed() => break,
                    }
                    // Re-LISTEN first (this reconnects), then wake: never re-read before LISTEN.
                    if listener.listen(CHANGES_CHANNEL).await.is_ok() {
                        let _ = sender.try_send(());
                    }
                }
            }
        }
        drop(listener);
        listen_pool.close().await;
    });
    Ok(())
}

// --- leader election ---

pub(super) async fn try_lead(pool: &PgPool, key: &str) -> Result<Option<Leadership>, StoreError> {
    let options = pool.connect_options();
    let mut conn = PgConnection::connect_with(&options).await?;
    let row = sqlx::query!(
        r#"SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS "locked!",
                  pg_backend_pid() AS "pid!""#,
        key,
    )
    .fetch_one(&mut conn)
    .await?;
    if !row.locked {
        conn.close().await?;
        return Ok(None);
    }
    let (stop, stopped) = oneshot::channel();
    let (lost_sender, lost) = watch::channel(false);
    let task = tokio::spawn(hold_leadership(conn, key.to_owned(), stopped, lost_sender));
    tracing::info!(key, "leadership acquired");
    Ok(Some(Leadership {
        inner: Some(PgLeadership {
            stop: Some(stop),
            lost,
            task,
            backend_pid: row.pid,
        }),
    }))
}

/// Keeps the lock's connection, pings it, and releases the lock when told (or the guard drops).
async fn hold_leadership(
    mut conn: PgConnection,
    key: String,
    mut stop: oneshot::Receiver<()>,
    lost: watch::Sender<bool>,
) {
    let mut ping = tokio::time::interval(LEADER_PING);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => {
                let unlocked = sqlx::query_scalar!(
                    r#"SELECT pg_advisory_unlock(hashtextextended($1, 0)) AS "unlocked!""#,
                    key,
                )
                .fetch_one(&mut conn)
                .await;
                if let Err(error) = unlocked {
                    tracing::warn!(%error, key, "cannot release leadership; closing its connection");
                }
                let _ = conn.close().await;
                tracing::info!(key, "leadership released");
                return;
            }
            _ = ping.tick() => {
                if let Err(error) = conn.ping().await {
                    tracing::warn!(%error, key, "leadership lost: its connection failed");
                    let _ = lost.send(true);
                    return;
                }
            }
        }
    }
}

// --- audit ---

pub(super) async fn append_audit(
    pool: &PgPool,
    actor: &str,
    action: &str,
    subject: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    append_audit_on(&mut *pool.acquire().await?, actor, action, subject, at).await
}

async fn append_audit_on(
    conn: &mut PgConnection,
    actor: &str,
    action: &str,
    subject: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO audit_events (actor, action, subject, at) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        subject,
        at,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn audit(pool: &PgPool, limit: i64) -> Result<Vec<AuditEvent>, StoreError> {
    Ok(sqlx::query_as!(
        AuditEvent,
        "SELECT actor, action, subject, at FROM audit_events ORDER BY id DESC LIMIT $1",
        limit,
    )
    .fetch_all(pool)
    .await?)
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
