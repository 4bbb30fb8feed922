//! History use cases: when clusters got revisions (and refusals), repaired drift, the audit log,
//! a FleetSecret's rollout history, and `rollout undo` (pin the previous revision's versions).

use chrono::{DateTime, Utc};

use super::status::FleetSecretStatus;
use super::{Admin, AdminError, invalid, require_name};
use crate::store::{AuditEvent, AuditQuery, ChangeKind, DriftRow, HistoryQuery, HistoryRow};

/// Rows returned when the request names no limit.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;
/// Most rows one call returns.
pub const MAX_HISTORY_LIMIT: u32 = 10_000;
/// Revisions `rollout history` shows.
const ROLLOUT_HISTORY_REVISIONS: usize = 20;
/// Audit events `rollout history` shows.
const ROLLOUT_HISTORY_EVENTS: usize = 100;

/// One revision in a FleetSecret's rollout history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionHistory {
    /// Revision number.
    pub revision: u64,
    /// (remote key, Key Vault version) it was rendered from.
    pub sources: Vec<(String, String)>,
    /// When the hub recorded it.
    pub created: DateTime<Utc>,
    /// Clusters that applied it.
    pub applied: u32,
    /// Clusters that refused it.
    pub refused: u32,
    /// First time a cluster applied it.
    pub first_applied: Option<DateTime<Utc>>,
    /// Last time a cluster applied it.
    pub last_applied: Option<DateTime<Utc>>,
}

/// A FleetSecret's rollout history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutHistory {
    /// Newest first.
    pub revisions: Vec<RevisionHistory>,
    /// Audit events about it (pins, pauses, waves, undo), newest first.
    pub events: Vec<AuditEvent>,
}

/// The limit a request asked for, checked.
pub(crate) fn limit(requested: u32) -> Result<u32, AdminError> {
    match requested {
        0 => Ok(DEFAULT_HISTORY_LIMIT),
        n if n > MAX_HISTORY_LIMIT => Err(invalid("limit", format!("{n} is more than {MAX_HISTORY_LIMIT}"))),
        n => Ok(n),
    }
}

impl Admin {
    /// History rows, newest first.
    pub async fn history(&self, mut query: HistoryQuery) -> Result<Vec<HistoryRow>, AdminError> {
        query.limit = limit(query.limit)?;
        Ok(self.store.history(&query).await?)
    }

    /// Repaired drift, newest first.
    pub async fn drift(&self, mut query: HistoryQuery) -> Result<Vec<DriftRow>, AdminError> {
        query.limit = limit(query.limit)?;
        Ok(self.store.drift(&query).await?)
    }

    /// Audit events, newest first.
    pub async fn audit(&self, mut query: AuditQuery) -> Result<Vec<AuditEvent>, AdminError> {
        query.limit = limit(query.limit)?;
        Ok(self.store.audit_events(&query).await?)
    }

    /// The revisions of `name` (newest first) with how far each was applied, and the audit
    /// events about it.
    pub async fn rollout_history(&self, name: &str) -> Result<RolloutHistory, AdminError> {
        require_name("fleet_secret", name)?;
        self.fleet_secret(name).await?;
        let mut revisions = Vec::new();
        let mut next = self
            .store
            .latest_revisions()
            .await?
            .into_iter()
            .find(|revision| revision.fleet_secret == name);
        while let Some(revision) = next {
            if revisions.len() >= ROLLOUT_HISTORY_REVISIONS {
                break;
            }
            next = self.store.revision_before(name, revision.revision).await?;
            revisions.push(RevisionHistory {
                revision: revision.revision,
                sources: revision.sources,
                created: revision.created,
                applied: 0,
                refused: 0,
                first_applied: None,
                last_applied: None,
            });
        }
        // Distinct clusters per revision, aggregated by the store (never the rows themselves).
        let reach = self.store.revision_reach(name).await?;
        for revision in &mut revisions {
            let found = reach.get(&revision.revision).copied().unwrap_or_default();
            revision.applied = found.applied;
            revision.refused = found.refused;
            revision.first_applied = found.first_applied;
            revision.last_applied = found.last_applied;
        }
        let subject = format!("fleetsecret/{name}");
        let events = self
            .store
            .audit_events(&AuditQuery {
                limit: MAX_HISTORY_LIMIT,
                ..AuditQuery::default()
            })
            .await?
            .into_iter()
            .filter(|event| {
                event.subject == subject
                    || event.subject.starts_with(&format!("{subject}/"))
                    || event.subject.starts_with(&format!("{subject} "))
            })
            .take(ROLLOUT_HISTORY_EVENTS)
            .collect();
        Ok(RolloutHistory { revisions, events })
    }

    /// Pins every Key Vault secret of `name` to the versions of the revision before the
    /// current one: a rollback in one call.
    pub async fn undo_rollout(&self, actor: &str, name: &str) -> Result<FleetSecretStatus, AdminError> {
        require_name("fleet_secret", name)?;
        self.fleet_secret(name).await?;
        let current = self
            .store
            .latest_revisions()
            .await?
            .into_iter()
            .find(|revision| revision.fleet_secret == name)
            .ok_or_else(|| {
                AdminError::FailedPrecondition(format!("fleetsecret {name:?} has no revision yet"))
            })?;
        let mut previous = self.store.revision_before(name, current.revision).await?;
        // A revision with the same versions (a spec change, or a pin already undone) is not a
        // step back: go further until the versions differ.
        while let Some(candidate) = &previous
            && candidate.sources == current.sources
        {
            previous = self.store.revision_before(name, candidate.revision).await?;
        }
        let previous = previous.ok_or_else(|| {
            AdminError::FailedPrecondition(format!(
                "fleetsecret {name:?}: no earlier revision with other Key Vault versions than revision {}",
                current.revision
            ))
        })?;
        for (remote_key, version) in &previous.sources {
            self.store.set_pin(name, remote_key, version).await?;
        }
        self.record(
            actor,
            Some(ChangeKind::Pin),
            "rollout.undo",
            &format!(
                "fleetsecret/{name} revision {} -> versions of revision {}",
                current.revision, previous.revision
            ),
        )
        .await?;
        self.status_of(name).await
    }
}
