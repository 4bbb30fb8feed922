//! The seam between the store's logic and its two backends. Each table's statements that run
//! inside a larger unit of work are a small trait (`ClusterSql`, `SpecSql`, …) that the backend's
//! table file implements in its own SQL; the transactions and batches that string them together
//! are written once here, generic over the backend's `sqlx::Database`.
//! **Invariant:** every transaction of the store is opened and committed in this file.

use std::collections::HashSet;
use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Database, Pool};

use super::convert::{StatusBind, to_i64, to_u64};
use super::{
    AppliedMigration, ChangeKind, Cluster, NewRevision, SpecAction, SpecKind, SpecOutcome, SpecWrite,
    StoreError,
};
use crate::domain::{ClusterId, DigestKeys};

/// A backend: its migrations, and every table's statements that the shared logic composes.
pub(super) trait Dialect:
    ClusterSql + TokenSql + SpecSql + RevisionSql + StatusSql + ChangeSql + AuditSql
{
    /// The backend's migrations (`migrations/postgres` or `migrations/sqlite`).
    fn migrator() -> &'static Migrator;
}

/// `clusters`: the statement revoking a cluster.
pub(super) trait ClusterSql: Database {
    /// The backend's cluster row; decoded only after the transaction that read it commits, so
    /// a row that does not decode still leaves the cluster revoked.
    type ClusterRow: TryInto<Cluster, Error = StoreError> + Send;

    /// state = revoked, credential hash cleared; the row, or None for an unknown cluster.
    fn revoke_cluster(
        conn: &mut Self::Connection,
        id: ClusterId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<Self::ClusterRow>, StoreError>> + Send;
}

/// `enrollment_tokens`: the statement invalidating a revoked cluster's tokens.
pub(super) trait TokenSql: Database {
    /// Makes every unused token of `cluster` expire at `now` at the latest.
    fn expire_tokens(
        conn: &mut Self::Connection,
        cluster: ClusterId,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// `specs`: the two statements of an upsert, alone or in an all-or-nothing apply.
pub(super) trait SpecSql: Database {
    /// Inserts at generation 1 or, when the YAML differs, bumps the generation; the generation
    /// written, None when the stored YAML is the same (nothing written).
    fn write_spec(
        conn: &mut Self::Connection,
        kind: SpecKind,
        name: &str,
        yaml: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// The stored generation of a spec, None when there is none.
    fn spec_generation(
        conn: &mut Self::Connection,
        kind: SpecKind,
        name: &str,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
}

/// `revisions`: the idempotent insert, inside the transaction [`upsert_revision`] opens.
pub(super) trait RevisionSql: Database {
    /// The fleet secret's newest revision number when it has this digest and generation, else
    /// the number of a new row; serialises writers of the same fleet secret in its own way.
    /// `keys` compare the newest revision's digest with `r.sha256` (under any key held, so a
    /// key rotation never makes the same content a new revision); a new row is written with
    /// `r.sha256` keyed with the current key.
    fn upsert_revision(
        conn: &mut Self::Connection,
        r: &NewRevision,
        keys: &DigestKeys,
        generation: i64,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
}

/// `sync_status`: the multi-row upsert.
pub(super) trait StatusSql: Database {
    /// The most rows one statement can bind.
    const STATUS_ROWS_PER_STATEMENT: usize;

    /// Upserts `rows` (at most [`StatusSql::STATUS_ROWS_PER_STATEMENT`], no pair twice) in ONE
    /// statement; returns the rows written.
    fn upsert_status(
        conn: &mut Self::Connection,
        rows: &[StatusBind],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// `changes` and `change_horizon`: appending, and the three steps of pruning.
pub(super) trait ChangeSql: Database {
    /// Appends an entry (on Postgres with its `NOTIFY`, in the same statement); its sequence number.
    fn append_change(
        conn: &mut Self::Connection,
        kind: ChangeKind,
        subject: &str,
        now: DateTime<Utc>,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;

    /// The newest entry older than `older_than` that is not one of the `keep` newest.
    fn prune_cutoff(
        conn: &mut Self::Connection,
        older_than: DateTime<Utc>,
        keep: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Deletes every entry up to `cutoff`; returns how many.
    fn delete_changes_through(
        conn: &mut Self::Connection,
        cutoff: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Moves the horizon up to `cutoff` (never down).
    fn raise_horizon(
        conn: &mut Self::Connection,
        cutoff: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// `audit_events`: the append, alone or in an all-or-nothing apply.
pub(super) trait AuditSql: Database {
    /// Appends one event.
    fn append_audit(
        conn: &mut Self::Connection,
        actor: &str,
        action: &str,
        subject: &str,
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Applies the pending migrations; returns those this call applied (oldest first).
pub(super) async fn migrate<DB: Dialect>(pool: &Pool<DB>) -> Result<Vec<AppliedMigration>, StoreError>
where
    DB::Connection: Migrate,
{
    let migrator = DB::migrator();
    let before: HashSet<i64> = {
        let mut conn = pool.acquire().await?;
        conn.ensure_migrations_table(&migrator.table_name).await?;
        conn.list_applied_migrations(&migrator.table_name)
            .await?
            .into_iter()
            .map(|migration| migration.version)
            .collect()
    };
    migrator.run(pool).await?;
    Ok(migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !before.contains(&m.version))
        .map(|m| AppliedMigration {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect())
}

/// Revokes a cluster, expires its unused tokens and appends the `cluster` change that tells every
/// replica, in one transaction (a revocation other replicas never hear of would leave the cluster
/// streaming there); None for an unknown one.
pub(super) async fn revoke_cluster<DB: Dialect>(
    pool: &Pool<DB>,
    id: ClusterId,
    now: DateTime<Utc>,
) -> Result<Option<Cluster>, StoreError> {
    let mut tx = pool.begin().await?;
    let Some(row) = DB::revoke_cluster(&mut tx, id, now).await? else {
        return Ok(None);
    };
    let cluster: Cluster = row.try_into()?;
    DB::expire_tokens(&mut tx, id, now).await?;
    DB::append_change(
        &mut tx,
        ChangeKind::Cluster,
        &format!("cluster/{}", cluster.name),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(cluster))
}

/// One spec upsert on its own.
pub(super) async fn upsert_spec<DB: Dialect>(
    pool: &Pool<DB>,
    kind: SpecKind,
    name: &str,
    yaml: &str,
    now: DateTime<Utc>,
) -> Result<(u64, SpecAction), StoreError> {
    upsert_spec_on::<DB>(&mut *pool.acquire().await?, kind, name, yaml, now).await
}

/// Writes a spec unless its YAML is unchanged, and says which it was.
async fn upsert_spec_on<DB: Dialect>(
    conn: &mut DB::Connection,
    kind: SpecKind,
    name: &str,
    yaml: &str,
    now: DateTime<Utc>,
) -> Result<(u64, SpecAction), StoreError> {
    if let Some(generation) = DB::write_spec(conn, kind, name, yaml, now).await? {
        let action = if generation == 1 {
            SpecAction::Created
        } else {
            SpecAction::Configured
        };
        return Ok((to_u64(generation, "spec generation")?, action));
    }
    let generation = DB::spec_generation(conn, kind, name).await?.ok_or_else(|| {
        StoreError::Conflict(format!("{} {name:?} was deleted concurrently", kind.as_str()))
    })?;
    Ok((to_u64(generation, "spec generation")?, SpecAction::Unchanged))
}

/// Every spec, and for each one that changed its change-log and audit rows, in ONE transaction.
pub(super) async fn apply_specs<DB: Dialect>(
    pool: &Pool<DB>,
    specs: &[SpecWrite<'_>],
    actor: &str,
    now: DateTime<Utc>,
) -> Result<Vec<SpecOutcome>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut outcomes = Vec::with_capacity(specs.len());
    for spec in specs {
        let (generation, action) =
            upsert_spec_on::<DB>(&mut tx, spec.kind, spec.name, spec.yaml, now).await?;
        if action != SpecAction::Unchanged {
            let subject = spec.subject();
            DB::append_change(&mut tx, ChangeKind::Spec, &subject, now).await?;
            DB::append_audit(
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
    // NOTIFY (Postgres) is delivered at commit, with the rows it announces.
    tx.commit().await?;
    Ok(outcomes)
}

/// The revision's number, new or existing, decided and written in one transaction.
pub(super) async fn upsert_revision<DB: Dialect>(
    pool: &Pool<DB>,
    r: &NewRevision,
    keys: &DigestKeys,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let generation = to_i64(r.spec_generation, "spec generation")?;
    let mut tx = pool.begin().await?;
    let revision = DB::upsert_revision(&mut tx, r, keys, generation, now).await?;
    tx.commit().await?;
    to_u64(revision, "revision")
}

/// Upserts prepared status rows: one statement when they fit one (atomic by itself, so no
/// transaction around it), else one per [`StatusSql::STATUS_ROWS_PER_STATEMENT`] rows in one
/// transaction. Returns (rows written, statements run).
pub(super) async fn upsert_status_batch<DB: Dialect>(
    pool: &Pool<DB>,
    rows: &[StatusBind],
) -> Result<(u64, u64), StoreError> {
    if rows.len() <= DB::STATUS_ROWS_PER_STATEMENT {
        let written = DB::upsert_status(&mut *pool.acquire().await?, rows).await?;
        return Ok((written, 1));
    }
    let mut tx = pool.begin().await?;
    let mut written = 0;
    let mut statements = 0;
    for chunk in rows.chunks(DB::STATUS_ROWS_PER_STATEMENT) {
        written += DB::upsert_status(&mut tx, chunk).await?;
        statements += 1;
    }
    tx.commit().await?;
    Ok((written, statements))
}

/// One change-log entry on its own.
pub(super) async fn append_change<DB: Dialect>(
    pool: &Pool<DB>,
    kind: ChangeKind,
    subject: &str,
    now: DateTime<Utc>,
) -> Result<i64, StoreError> {
    DB::append_change(&mut *pool.acquire().await?, kind, subject, now).await
}

/// Deletes old entries and moves the horizon past them in one transaction; returns how many.
pub(super) async fn prune_changes<DB: Dialect>(
    pool: &Pool<DB>,
    older_than: DateTime<Utc>,
    keep: i64,
) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let Some(cutoff) = DB::prune_cutoff(&mut tx, older_than, keep).await? else {
        return Ok(0);
    };
    let pruned = DB::delete_changes_through(&mut tx, cutoff).await?;
    DB::raise_horizon(&mut tx, cutoff).await?;
    tx.commit().await?;
    Ok(pruned)
}

/// One audit event on its own.
pub(super) async fn append_audit<DB: Dialect>(
    pool: &Pool<DB>,
    actor: &str,
    action: &str,
    subject: &str,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    DB::append_audit(&mut *pool.acquire().await?, actor, action, subject, at).await
}
