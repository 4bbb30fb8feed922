//! Fleet history (`sync_history`, `drift_events`, `audit_events` read back): what each cluster got
//! and when, each refusal, each drift an agent repaired, and who did what. Append only, batched by
//! the history writer (`crate::history`), pruned by the Key Vault leader. Names, revisions and the
//! agents' error texts only, never a value.

use chrono::{DateTime, Utc};

use super::{AuditEvent, Backend, Store, StoreError, postgres, sqlite};
use crate::domain::ClusterId;

/// What a cluster did with a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HistoryOutcome {
    /// Acknowledged (applied) it.
    Applied,
    /// Refused it (NACK).
    Refused,
    /// Removed the FleetSecret's Secrets (no longer targeted).
    Removed,
}

impl HistoryOutcome {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Refused => "refused",
            Self::Removed => "removed",
        }
    }

    pub(super) fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "applied" => Ok(Self::Applied),
            "refused" => Ok(Self::Refused),
            "removed" => Ok(Self::Removed),
            _ => Err(StoreError::Corrupt {
                what: "history outcome",
            }),
        }
    }
}

/// One history entry to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The cluster.
    pub cluster: ClusterId,
    /// The FleetSecret.
    pub fleet_secret: String,
    /// The revision (0 for a removal).
    pub revision: u64,
    /// What happened.
    pub outcome: HistoryOutcome,
    /// The refusal's code and message (never a value), for `Refused`.
    pub error: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// One repaired drift to append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriftEntry {
    /// The cluster.
    pub cluster: ClusterId,
    /// The FleetSecret.
    pub fleet_secret: String,
    /// Namespace of the Secret.
    pub namespace: String,
    /// `modified`, `deleted` or `unspecified`.
    pub kind: &'static str,
    /// Revision the agent restored (or tried to).
    pub revision: u64,
    /// Why the agent could not repair it (`None`: repaired).
    pub failure: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A history row as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryRow {
    /// Cluster name (its id when the cluster was deleted since).
    pub cluster: String,
    /// The FleetSecret.
    pub fleet_secret: String,
    /// The revision.
    pub revision: u64,
    /// What happened.
    pub outcome: HistoryOutcome,
    /// Why it was refused.
    pub error: Option<String>,
    /// Replica that served the cluster.
    pub replica: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A drift row as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriftRow {
    /// Cluster name (its id when the cluster was deleted since).
    pub cluster: String,
    /// The FleetSecret.
    pub fleet_secret: String,
    /// Namespace.
    pub namespace: String,
    /// `modified`, `deleted` or `unspecified`.
    pub kind: String,
    /// Revision restored (or tried).
    pub revision: u64,
    /// Why the agent could not repair it (`None`: repaired).
    pub failure: Option<String>,
    /// Replica that served the cluster.
    pub replica: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// Drift of one FleetSecret since a time: reported, and of them not repaired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriftCount {
    /// Drift reports.
    pub reported: u32,
    /// Of them, Secrets the agent could not repair.
    pub unrepaired: u32,
}

/// How far one revision of a FleetSecret got, from its history: distinct clusters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevisionReach {
    /// Clusters that applied it.
    pub applied: u32,
    /// Clusters that refused it.
    pub refused: u32,
    /// First time a cluster applied it.
    pub first_applied: Option<DateTime<Utc>>,
    /// Last time a cluster applied it.
    pub last_applied: Option<DateTime<Utc>>,
}

/// Which history rows to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only this FleetSecret.
    pub fleet_secret: Option<String>,
    /// Only this cluster (by name).
    pub cluster: Option<String>,
    /// Only rows at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many rows, newest first.
    pub limit: u32,
}

/// Which audit events to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only events of this actor.
    pub actor: Option<String>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many, newest first.
    pub limit: u32,
}

macro_rules! on_backend {
    ($self:ident, $op:ident ( $($arg:expr),* $(,)? )) => {
        match &$self.backend {
            Backend::Postgres(pool) => postgres::history::$op(pool, $($arg),*).await,
            Backend::Sqlite(pool) => sqlite::history::$op(pool, $($arg),*).await,
        }
    };
}

impl Store {
    /// Appends history and drift entries served by `replica`: one statement per non-empty table.
    pub async fn record_history(
        &self,
        replica: &str,
        history: &[HistoryEntry],
        drift: &[DriftEntry],
    ) -> Result<(), StoreError> {
        if !history.is_empty() {
            on_backend!(self, append_history(replica, history))?;
        }
        if !drift.is_empty() {
            on_backend!(self, append_drift(replica, drift))?;
        }
        Ok(())
    }

    /// History rows, newest first.
    pub async fn history(&self, query: &HistoryQuery) -> Result<Vec<HistoryRow>, StoreError> {
        on_backend!(self, history(query))
    }

    /// Repaired drift, newest first (`fleet_secret` is ignored only when `None`).
    pub async fn drift(&self, query: &HistoryQuery) -> Result<Vec<DriftRow>, StoreError> {
        on_backend!(self, drift(query))
    }

    /// Drift reported per FleetSecret since `since` (the `DRIFT` column of `keyfleet status`).
    pub async fn drift_counts(
        &self,
        since: DateTime<Utc>,
    ) -> Result<std::collections::BTreeMap<String, DriftCount>, StoreError> {
        on_backend!(self, drift_counts(since))
    }

    /// Audit events, newest first.
    pub async fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        on_backend!(self, audit_events(query))
    }

    /// Per revision of `fleet_secret`: distinct clusters that applied and refused it, and when
    /// it was first and last applied (one aggregate over the history, in the store).
    pub async fn revision_reach(
        &self,
        fleet_secret: &str,
    ) -> Result<std::collections::BTreeMap<u64, RevisionReach>, StoreError> {
        on_backend!(self, revision_reach(fleet_secret))
    }

    /// Deletes history and drift older than `older_than`; how many rows.
    pub async fn prune_history(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        on_backend!(self, prune_history(older_than))
    }
}
