//! The store: inventory, enrollment, specs, Key Vault versions (ids and digests), revisions, sync
//! status, change log, pins, rollouts, audit. One API ([`Store`]) over two backends:
//! - Postgres (`postgres://…`), the production store, with compile-time checked `query!` macros
//!   (`.sqlx/` is committed; `scripts/checks/sqlx.sh` fails when it is stale);
//! - SQLite (`sqlite://PATH`, `sqlite::memory:`), the embedded default, with runtime-bound
//!   `sqlx::query` (the macros check against one `DATABASE_URL`, which is the Postgres one); the
//!   same conformance tests (`store/tests.rs`) prove both.
//!
//! Layers: this file checks arguments and picks the backend; `dialect` holds the transactions and
//! batches written once over the per-table traits that `postgres/` and `sqlite/` implement (one
//! file per table, each backend in its own SQL); `convert` the values both bind and read back.
//!
//! **Invariants:** only this module names sqlx; it returns the records of [`records`], never rows;
//! no column can hold a secret value (only SHA-256 digests of random tokens and credentials, and
//! keyed digests of values and revisions: [`DigestKeys`], written with the current key, never a
//! plain digest of secret material);
//! status writes are one statement per batch; `NOTIFY keyfleet_changes` is only a wake-up, the
//! change log is the truth.

pub mod bench;
mod convert;
mod dialect;
mod error;
mod governance;
mod history;
mod leadership;
mod polls;
mod postgres;
mod records;
mod sqlite;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use self::convert::{micros, now, prepare_status_rows, to_i64};
use crate::domain::{ClusterId, ClusterState, DigestKeys, LabelSelector, Labels, Sha256};

pub use error::StoreError;
pub use governance::{RolloutCounts, ServedVersion};
pub use history::{
    AuditQuery, DriftCount, DriftEntry, DriftRow, HistoryEntry, HistoryOutcome, HistoryQuery, HistoryRow,
};
pub use leadership::Leadership;
pub use polls::{PollAsk, PollRequest, PollResult, StorePoll};
pub use records::{
    AppliedMigration, AuditEvent, Change, ChangeKind, Cluster, ClusterLiveness, KeyedRows, NewRevision,
    PinRecord, RevisionRecord, RolloutRecord, SecretVersionRecord, SpecAction, SpecKind, SpecOutcome,
    SpecWrite, StatusRow, StoredSpec, SyncStatus, TokenRejection,
};

/// The Postgres channel `append_change` notifies and `change_wakeups` listens on.
pub(crate) const CHANGES_CHANNEL: &str = "keyfleet_changes";

/// The Postgres channel each status write notifies (after it committed) and `change_wakeups`
/// listens on too: a replica whose rollout waits for clusters another replica serves learns of
/// their acks when they are written, not on its next tail tick.
pub(crate) const STATUS_CHANNEL: &str = "keyfleet_status";

/// What [`Store::change_wakeups`] hands the engine. Wake-ups coalesce (capacity 1 each).
#[derive(Debug)]
pub struct Wakeups {
    /// "Read the change log from your cursor."
    pub changes: mpsc::Receiver<()>,
    /// "Some replica wrote status rows": re-read other replicas' status if a wave waits on them.
    pub status: mpsc::Receiver<()>,
}

/// Agents' error strings are cut to this many bytes (on a character boundary).
pub(crate) const MAX_ERROR_BYTES: usize = 1024;

/// The active backend and its pool.
#[derive(Clone)]
enum Backend {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// Handle to the store; cheap to clone (a connection pool).
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    /// Keys every digest of secret material it writes, and verifies what it reads.
    digest_keys: Arc<DigestKeys>,
    status_statements: Arc<AtomicU64>,
    /// Status rows written since `sync_lagging` was last vacuumed here (Postgres).
    lagging_churn: Arc<AtomicU64>,
    /// `VACUUM sync_lagging` run by this store (Postgres).
    lagging_vacuums: Arc<AtomicU64>,
}

/// Status rows written between two `VACUUM sync_lagging` of one store (Postgres): about one per
/// fleet-wide rotation at 10,000 clusters (its pending rows and its acks).
///
/// Every rotation passes the fleet through `sync_lagging` (inserted pending, deleted when acked).
/// Autovacuum looks at a table at most once a minute (`autovacuum_naptime`), so rotations in
/// quick succession would each add their 10,000 row versions to the table and it never shrinks
/// again: measured, 54 MB for 20,000 live rows after 50 back-to-back rotations, and every view
/// reading it 3–4 × slower. A plain VACUUM takes no lock that blocks reads or writes.
pub(crate) const LAGGING_VACUUM_ROWS: u64 = 20_000;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend()).finish()
    }
}

/// Runs a backend's own statement: `backend!(self, TABLE::OP(args))` calls
/// `postgres::TABLE::OP(pool, args)` or `sqlite::TABLE::OP(pool, args)`.
macro_rules! backend {
    ($self:ident, $table:ident :: $op:ident ( $($arg:expr),* $(,)? )) => {
        match &$self.backend {
            Backend::Postgres(pool) => postgres::$table::$op(pool, $($arg),*).await,
            Backend::Sqlite(pool) => sqlite::$table::$op(pool, $($arg),*).await,
        }
    };
}

/// Runs logic written once: `shared!(self.OP(args))` calls `dialect::OP(pool, args)`, generic over
/// the database of the active backend's pool.
macro_rules! shared {
    ($self:ident . $op:ident ( $($arg:expr),* $(,)? )) => {
        match &$self.backend {
            Backend::Postgres(pool) => dialect::$op(pool, $($arg),*).await,
            Backend::Sqlite(pool) => dialect::$op(pool, $($arg),*).await,
        }
    };
}

impl Store {
    /// `postgres://…` or `sqlite://PATH` / `sqlite::memory:` (file created if missing, WAL mode).
    /// Digests are keyed with a random key of this process until [`Store::with_digest_keys`]
    /// gives the hub's keys: enough for tools and tests that never compare a stored digest across
    /// processes; `serve` always gives its keys.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(postgres::connect(url).await?)
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite(sqlite::connect(url).await?)
        } else {
            return Err(StoreError::UnsupportedUrl);
        };
        Ok(Store {
            backend,
            digest_keys: Arc::new(DigestKeys::generate().0),
            status_statements: Arc::new(AtomicU64::new(0)),
            lagging_churn: Arc::new(AtomicU64::new(0)),
            lagging_vacuums: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The same store, keying digests with `keys` (every replica of a fleet holds the same).
    #[must_use]
    pub fn with_digest_keys(mut self, keys: DigestKeys) -> Store {
        self.digest_keys = Arc::new(keys);
        self
    }

    /// The keys digests are written and verified with: the engine checks a reproduced revision
    /// against its recorded digest with [`DigestKeys::matches`].
    pub fn digest_keys(&self) -> &DigestKeys {
        &self.digest_keys
    }

    /// Keys every digest still stored plain (rows written before migration 0006, or by an older
    /// replica during a rolling upgrade) with the current key; returns how many rows per table.
    /// `serve` runs it at every start (one scan of each table; idempotent, safe with replicas).
    pub async fn key_unkeyed_digests(&self) -> Result<KeyedRows, StoreError> {
        backend!(self, digests::key_unkeyed(&self.digest_keys))
    }

    /// Applies the pending migrations of this backend (`migrations/postgres` or `migrations/sqlite`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.migrate_report().await.map(drop)
    }

    /// Like [`Store::migrate`], and returns the migrations this call applied (oldest first).
    pub async fn migrate_report(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        let applied = shared!(self.migrate())?;
        for migration in &applied {
            tracing::info!(
                backend = self.backend(),
                version = migration.version,
                description = %migration.description,
                "migration applied"
            );
        }
        Ok(applied)
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// Closes the pool: waits for checked-out connections to come back.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Postgres(pool) => pool.close().await,
            Backend::Sqlite(pool) => pool.close().await,
        }
    }

    /// Statements `upsert_status_batch` executed since this store was connected (for benchmarks:
    /// 1 per call on Postgres, 1 per 3,276 rows on SQLite).
    pub fn status_statements(&self) -> u64 {
        self.status_statements.load(Ordering::Relaxed)
    }

    /// Times this store vacuumed `sync_lagging` (Postgres; see [`LAGGING_VACUUM_ROWS`]).
    pub fn lagging_vacuums(&self) -> u64 {
        self.lagging_vacuums.load(Ordering::Relaxed)
    }

    // --- clusters ---

    /// Adds a cluster in state pending. `AlreadyExists` when the name is taken.
    pub async fn create_cluster(&self, name: &str, labels: &Labels) -> Result<Cluster, StoreError> {
        let id = ClusterId(uuid::Uuid::new_v4());
        backend!(self, clusters::create_cluster(id, name, labels, now()))
    }

    /// The cluster with this name.
    pub async fn cluster_by_name(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        backend!(self, clusters::cluster_by_name(name))
    }

    /// The cluster with this id.
    pub async fn cluster_by_id(&self, id: ClusterId) -> Result<Option<Cluster>, StoreError> {
        backend!(self, clusters::cluster_by_id(id))
    }

    /// Id, serving replica and last-seen time of every cluster, unordered: a narrow read for
    /// polling liveness (new and removed clusters come through the change log).
    pub async fn cluster_liveness(&self) -> Result<Vec<ClusterLiveness>, StoreError> {
        backend!(self, clusters::cluster_liveness())
    }

    /// Sorted by name. matchLabels pushed down (jsonb @> on PG); full selector applied exactly.
    pub async fn list_clusters(&self, selector: Option<&LabelSelector>) -> Result<Vec<Cluster>, StoreError> {
        let match_labels = selector.map(|s| &s.match_labels).filter(|m| !m.is_empty());
        let mut clusters: Vec<Cluster> = backend!(self, clusters::list_clusters(match_labels))?;
        if let Some(selector) = selector {
            clusters.retain(|cluster| selector.matches(&cluster.labels));
        }
        Ok(clusters)
    }

    /// Replaces the labels of a cluster.
    pub async fn set_cluster_labels(&self, id: ClusterId, labels: &Labels) -> Result<Cluster, StoreError> {
        backend!(self, clusters::set_cluster_labels(id, labels, now()))?.ok_or_else(|| cluster_not_found(id))
    }

    /// state = revoked, credential hash cleared, pending tokens invalidated, and a `cluster` change
    /// appended, all in one transaction.
    pub async fn revoke_cluster(&self, id: ClusterId) -> Result<Cluster, StoreError> {
        shared!(self.revoke_cluster(id, now()))?.ok_or_else(|| cluster_not_found(id))
    }

    // --- enrollment and credentials (only hashes are stored) ---

    /// Records a single-use enrollment token (its hash) for a cluster. `NotFound` for an unknown
    /// cluster, `Conflict` for a revoked one, `AlreadyExists` for a hash already issued.
    pub async fn issue_enrollment_token(
        &self,
        cluster: ClusterId,
        token_hash: &Sha256,
        expires: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let issued = backend!(
            self,
            enrollment::issue_enrollment_token(cluster, token_hash, micros(expires), now())
        )?;
        if issued {
            return Ok(());
        }
        match self.cluster_by_id(cluster).await? {
            None => Err(cluster_not_found(cluster)),
            Some(found) if found.state == ClusterState::Revoked => Err(StoreError::Conflict(format!(
                "cluster {:?} is revoked",
                found.name
            ))),
            Some(found) => Err(StoreError::Conflict(format!(
                "cannot issue a token for cluster {:?}",
                found.name
            ))),
        }
    }

    /// Atomic, single use: exactly one of two concurrent callers gets Ok(cluster).
    pub async fn consume_enrollment_token(
        &self,
        token_hash: &Sha256,
        now: DateTime<Utc>,
    ) -> Result<Result<ClusterId, TokenRejection>, StoreError> {
        let now = micros(now);
        if let Some(cluster) = backend!(self, enrollment::consume_enrollment_token(token_hash, now))? {
            return Ok(Ok(cluster));
        }
        let Some(token) = backend!(self, enrollment::token_state(token_hash))? else {
            return Ok(Err(TokenRejection::Unknown));
        };
        let rejection = if token.cluster_state == ClusterState::Revoked {
            TokenRejection::ClusterRevoked
        } else if token.used_at.is_some() {
            TokenRejection::Used
        } else if token.expires <= now {
            TokenRejection::Expired
        } else {
            // Unused and unexpired but not consumed: only possible when the cluster was revoked
            // and un-revoked between the two statements, which the store never does.
            TokenRejection::Used
        };
        Ok(Err(rejection))
    }

    /// The cluster of an enrollment token consumed at or after `since`, when that cluster is not
    /// revoked: an agent whose enrollment reply was lost retries with the same token, and the hub
    /// then issues it a fresh credential (replacing the undelivered one).
    pub async fn recently_consumed_token(
        &self,
        token_hash: &Sha256,
        since: DateTime<Utc>,
    ) -> Result<Option<ClusterId>, StoreError> {
        let Some(token) = backend!(self, enrollment::token_state(token_hash))? else {
            return Ok(None);
        };
        let recent = token.used_at.is_some_and(|used| used >= micros(since));
        Ok((recent && token.cluster_state != ClusterState::Revoked).then_some(token.cluster))
    }

    /// Sets the credential hash and state = active (refused for a revoked cluster: Conflict).
    pub async fn set_cluster_credential(
        &self,
        id: ClusterId,
        credential_hash: &Sha256,
    ) -> Result<(), StoreError> {
        if backend!(self, clusters::set_cluster_credential(id, credential_hash, now()))? {
            return Ok(());
        }
        match self.cluster_by_id(id).await? {
            None => Err(cluster_not_found(id)),
            Some(found) => Err(StoreError::Conflict(format!(
                "cluster {:?} is revoked",
                found.name
            ))),
        }
    }

    /// Credential hash → cluster for every active cluster (the hub keeps this index in memory).
    pub async fn active_credentials(&self) -> Result<Vec<(Sha256, ClusterId)>, StoreError> {
        backend!(self, clusters::active_credentials())
    }

    /// Records that `replica` holds the cluster's stream now.
    pub async fn record_connect(
        &self,
        id: ClusterId,
        replica: &str,
        agent_version: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if backend!(
            self,
            clusters::record_connect(id, replica, agent_version, micros(at))
        )? {
            Ok(())
        } else {
            Err(cluster_not_found(id))
        }
    }

    /// Clears connected_replica only if it still equals `replica`.
    pub async fn record_disconnect(
        &self,
        id: ClusterId,
        replica: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if backend!(self, clusters::record_disconnect(id, replica, micros(at)))? {
            Ok(())
        } else {
            Err(cluster_not_found(id))
        }
    }

    /// One statement for the whole slice (coarse liveness refresh).
    pub async fn touch_last_seen(&self, ids: &[ClusterId], at: DateTime<Utc>) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        backend!(self, clusters::touch_last_seen(ids, micros(at)))
    }

    /// Clears connected_replica for every cluster held by `replica` (startup after a crash).
    pub async fn clear_replica(&self, replica: &str) -> Result<u64, StoreError> {
        backend!(self, clusters::clear_replica(replica, now()))
    }

    // --- specs ---

    /// Creates or updates a spec; the generation starts at 1 and grows on each change of YAML.
    pub async fn upsert_spec(
        &self,
        kind: SpecKind,
        name: &str,
        yaml: &str,
    ) -> Result<(u64, SpecAction), StoreError> {
        shared!(self.upsert_spec(kind, name, yaml, now()))
    }

    /// Applies several specs all or nothing, in ONE transaction: each is upserted as
    /// [`Store::upsert_spec`] does, and each one that changed appends its change-log row
    /// (`spec`, [`SpecWrite::subject`]) and its audit row (`actor`, `spec.<action>`, subject) in the
    /// same transaction. On any error nothing is written (no spec, no change, no audit row).
    /// Outcomes are in the order of `specs`.
    pub async fn apply_specs(
        &self,
        specs: &[SpecWrite<'_>],
        actor: &str,
    ) -> Result<Vec<SpecOutcome>, StoreError> {
        shared!(self.apply_specs(specs, actor, now()))
    }

    /// Every spec, by kind (`FleetSecret` before `SecretStore`) then name.
    pub async fn list_specs(&self) -> Result<Vec<StoredSpec>, StoreError> {
        backend!(self, specs::list_specs())
    }

    /// Whether a spec was deleted.
    pub async fn delete_spec(&self, kind: SpecKind, name: &str) -> Result<bool, StoreError> {
        backend!(self, specs::delete_spec(kind, name))
    }

    // --- Key Vault versions and revisions ---

    /// Records (or refreshes) one Key Vault version: id, digest and attributes.
    pub async fn upsert_secret_version(&self, v: &SecretVersionRecord) -> Result<(), StoreError> {
        let v = SecretVersionRecord {
            created: v.created.map(micros),
            expires: v.expires.map(micros),
            not_before: v.not_before.map(micros),
            ..v.clone()
        };
        let digest = self.digest_keys.key(&v.sha256);
        backend!(self, revisions::upsert_secret_version(&v, &digest, now()))
    }

    /// Idempotent on (fleet_secret, digest, spec_generation): returns the existing number when the
    /// same content is the fleet secret's newest revision, else a new globally increasing number
    /// (so content that comes back after another revision gets a new, higher number and stays
    /// the newest). The newest revision's digest compares under any key held (after a key
    /// rotation the same content keeps its number); a new row is keyed with the current key.
    pub async fn upsert_revision(&self, r: &NewRevision) -> Result<u64, StoreError> {
        i64::try_from(r.spec_generation).map_err(|_| StoreError::OutOfRange {
            what: "spec generation",
        })?;
        shared!(self.upsert_revision(r, &self.digest_keys, now()))
    }

    /// The newest revision of every fleet secret, by fleet secret name.
    pub async fn latest_revisions(&self) -> Result<Vec<RevisionRecord>, StoreError> {
        backend!(self, revisions::latest_revisions())
    }

    /// The newest revision of `fleet_secret` numbered below `below`: the one before a given
    /// revision (what clusters beyond a rollout's current wave keep).
    pub async fn revision_before(
        &self,
        fleet_secret: &str,
        below: u64,
    ) -> Result<Option<RevisionRecord>, StoreError> {
        let below = i64::try_from(below).map_err(|_| StoreError::OutOfRange { what: "revision" })?;
        backend!(self, revisions::revision_before(fleet_secret, below))
    }

    // --- pins and rollouts ---

    /// Pins a remote key of a fleet secret to a Key Vault version.
    pub async fn set_pin(
        &self,
        fleet_secret: &str,
        remote_key: &str,
        version: &str,
    ) -> Result<(), StoreError> {
        backend!(self, rollouts::set_pin(fleet_secret, remote_key, version, now()))
    }

    /// Removes one pin (`Some(remote_key)`) or every pin of a fleet secret; returns how many.
    pub async fn remove_pins(&self, fleet_secret: &str, remote_key: Option<&str>) -> Result<u64, StoreError> {
        backend!(self, rollouts::remove_pins(fleet_secret, remote_key))
    }

    /// Every pin, by fleet secret then remote key.
    pub async fn pins(&self) -> Result<Vec<PinRecord>, StoreError> {
        backend!(self, rollouts::pins())
    }

    /// Creates or replaces the rollout of a fleet secret. `NotFound` when the revision does not
    /// exist.
    pub async fn set_rollout(&self, r: &RolloutRecord) -> Result<(), StoreError> {
        let revision = to_i64(r.revision, "rollout revision")?;
        backend!(self, rollouts::set_rollout(r, revision, now())).map_err(|error| match error {
            StoreError::Database(sqlx::Error::Database(db)) if db.is_foreign_key_violation() => {
                StoreError::NotFound {
                    what: format!("revision {}", r.revision),
                }
            }
            other => other,
        })
    }

    /// Every rollout, by fleet secret.
    pub async fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        backend!(self, rollouts::rollouts())
    }

    // --- sync status ---

    /// ONE statement per call (unnest on Postgres, one multi-row INSERT … ON CONFLICT on SQLite,
    /// chunked only above SQLite's bind limit). Upsert on (cluster, fleet_secret); when the same
    /// pair appears twice, the later row wins. Returns the number of rows written.
    pub async fn upsert_status_batch(&self, rows: &[StatusRow]) -> Result<u64, StoreError> {
        let rows = prepare_status_rows(rows, &self.digest_keys)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let (written, statements) = shared!(self.upsert_status_batch(&rows))?;
        self.status_statements.fetch_add(statements, Ordering::Relaxed);
        if let Backend::Postgres(pool) = &self.backend {
            // Other replicas' waves may wait for these rows. The rows are committed either way:
            // a lost notification only leaves them to the readers' next tail tick.
            // (One `pg_notify` per flush; `status_statements` counts the upserts only.)
            if let Err(error) = postgres::changes::notify_status(pool).await {
                tracing::debug!(%error, "status notification not sent");
            }
            let churn = self.lagging_churn.fetch_add(written, Ordering::Relaxed) + written;
            if churn >= LAGGING_VACUUM_ROWS {
                self.lagging_churn.store(0, Ordering::Relaxed);
                self.vacuum_lagging(pool).await;
            }
        }
        Ok(written)
    }

    /// Reclaims the rows acks removed from `sync_lagging` (see [`LAGGING_VACUUM_ROWS`]). The
    /// status write already succeeded: a failure is logged, and autovacuum remains.
    async fn vacuum_lagging(&self, pool: &sqlx::PgPool) {
        let started = std::time::Instant::now();
        match postgres::status::vacuum_lagging(pool).await {
            Ok(()) => {
                self.lagging_vacuums.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "vacuumed sync_lagging"
                );
            }
            Err(error) => tracing::warn!(error = %error, "cannot vacuum sync_lagging; autovacuum will"),
        }
    }

    /// Forgets the status of a (cluster, fleet secret) (e.g. it is no longer targeted).
    pub async fn delete_status(&self, cluster: ClusterId, fleet_secret: &str) -> Result<(), StoreError> {
        backend!(self, status::delete_status(cluster, fleet_secret))
    }

    /// Status rows of one cluster, by fleet secret.
    pub async fn status_for_cluster(&self, id: ClusterId) -> Result<Vec<SyncStatus>, StoreError> {
        backend!(self, status::status_for_cluster(id))
    }

    /// Status rows of one fleet secret, by cluster name.
    pub async fn status_for_fleet_secret(&self, name: &str) -> Result<Vec<SyncStatus>, StoreError> {
        backend!(self, status::status_for_fleet_secret(name))
    }

    /// Status rows of one fleet secret whose cluster the store does not show connected to
    /// `replica` (served by another replica, or by none): what another replica may have recorded.
    /// Unordered.
    pub async fn status_served_elsewhere(
        &self,
        name: &str,
        replica: &str,
    ) -> Result<Vec<SyncStatus>, StoreError> {
        backend!(self, status::status_served_elsewhere(name, replica))
    }

    /// Every status row, by cluster name then fleet secret.
    pub async fn all_status(&self) -> Result<Vec<SyncStatus>, StoreError> {
        backend!(self, status::all_status())
    }

    /// Rows not on their desired revision, oldest first (by last write, then cluster name).
    pub async fn lagging(
        &self,
        fleet_secret: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SyncStatus>, StoreError> {
        backend!(self, status::lagging(fleet_secret, i64::from(limit)))
    }

    // --- change log ---

    /// Appends to the change log; on Postgres also `NOTIFY keyfleet_changes` in the same statement.
    pub async fn append_change(&self, kind: ChangeKind, subject: &str) -> Result<i64, StoreError> {
        shared!(self.append_change(kind, subject, now()))
    }

    /// Entries after `cursor`, oldest first, at most `limit`.
    pub async fn changes_since(&self, cursor: i64, limit: u32) -> Result<Vec<Change>, StoreError> {
        backend!(self, changes::changes_since(cursor, i64::from(limit)))
    }

    /// The newest sequence number (0 when the log is empty).
    pub async fn latest_change(&self) -> Result<i64, StoreError> {
        backend!(self, changes::latest_change())
    }

    /// What the status views read beyond their own rows, as two numbers that move whenever it
    /// moves: the newest change-log sequence number, and a generation the store bumps on every
    /// write of sync status rows, clusters or drift events (migration `status_generation`). While
    /// both stand still, a status view computed earlier is still exact.
    pub async fn status_inputs(&self) -> Result<(i64, i64), StoreError> {
        backend!(self, changes::status_inputs())
    }

    /// Deletes change-log entries appended before `older_than`, always keeping the `keep` newest,
    /// and moves the horizon ([`Store::change_horizon`]) past them. Returns the entries deleted.
    pub async fn prune_changes(&self, older_than: DateTime<Utc>, keep: u32) -> Result<u64, StoreError> {
        shared!(self.prune_changes(older_than, i64::from(keep)))
    }

    /// The last sequence number pruned (0 when never): a reader whose cursor is below it may have
    /// missed entries and must reload everything rather than tail.
    pub async fn change_horizon(&self) -> Result<i64, StoreError> {
        backend!(self, changes::change_horizon())
    }

    /// PG: a task that LISTENs `keyfleet_changes` and `keyfleet_status` and sends () on the
    /// matching receiver per notification (and on both once after each reconnect, after
    /// re-LISTEN). SQLite: receivers that are never signalled (one process: nobody else writes).
    /// A change wake-up means "read the log from your cursor"; a status wake-up only hurries a
    /// read the tail tick would make anyway.
    pub async fn change_wakeups(&self) -> Result<Wakeups, StoreError> {
        let (changes, changes_rx) = mpsc::channel(1);
        let (status, status_rx) = mpsc::channel(1);
        match &self.backend {
            Backend::Postgres(pool) => postgres::changes::spawn_listener(pool, changes, status).await?,
            Backend::Sqlite(_) => {
                // Single node: keep the senders alive with the receivers so they read as "no
                // wake-up yet" rather than "closed".
                tokio::spawn(async move {
                    tokio::join!(changes.closed(), status.closed());
                });
            }
        }
        Ok(Wakeups {
            changes: changes_rx,
            status: status_rx,
        })
    }

    // --- leader election ---

    /// PG: session advisory lock on a dedicated connection held by the returned guard; dropping
    /// the guard (or losing the connection) releases it; `Leadership::lost()` resolves when it is
    /// lost. SQLite: always Some.
    pub async fn try_lead(&self, key: &str) -> Result<Option<Leadership>, StoreError> {
        match &self.backend {
            Backend::Postgres(pool) => postgres::leader::try_lead(pool, key).await,
            Backend::Sqlite(_) => Ok(Some(Leadership::single_node())),
        }
    }

    // --- audit ---

    /// Appends an audit event (names only, never values).
    pub async fn append_audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        shared!(self.append_audit(actor, action, subject, micros(at)))
    }

    /// The newest `limit` audit events, newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        backend!(self, audit::audit(i64::from(limit)))
    }
}

fn cluster_not_found(id: ClusterId) -> StoreError {
    StoreError::NotFound {
        what: format!("cluster {id}"),
    }
}
