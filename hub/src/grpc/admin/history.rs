//! Wire input and conversions of the history RPCs (`ListHistory`, `ListDrift`, `ListAudit`,
//! `RolloutHistory`): a `since` timestamp checked, domain rows to proto.

use chrono::{DateTime, Utc};
use keyfleet_proto::v1;
use tonic::Status;

use super::timestamp;
use crate::store::{AuditEvent, AuditQuery, DriftRow, HistoryQuery, HistoryRow};
use crate::sync::admin::RolloutHistory;

/// A request's `since`, checked.
fn since(field: &str, value: Option<prost_types::Timestamp>) -> Result<Option<DateTime<Utc>>, Status> {
    value
        .map(|at| {
            let nanos = u32::try_from(at.nanos)
                .map_err(|_| Status::invalid_argument(format!("{field}: negative nanos")))?;
            DateTime::from_timestamp(at.seconds, nanos)
                .ok_or_else(|| Status::invalid_argument(format!("{field}: out of range")))
        })
        .transpose()
}

/// `ListHistory` / `ListDrift` request → query.
pub(super) fn history_query(request: v1::ListHistoryRequest) -> Result<HistoryQuery, Status> {
    Ok(HistoryQuery {
        fleet_secret: Some(request.fleet_secret).filter(|name| !name.is_empty()),
        cluster: Some(request.cluster).filter(|name| !name.is_empty()),
        since: since("since", request.since)?,
        limit: request.limit,
    })
}

/// `ListAudit` request → query.
pub(super) fn audit_query(request: v1::ListAuditRequest) -> Result<AuditQuery, Status> {
    Ok(AuditQuery {
        actor: Some(request.actor).filter(|actor| !actor.is_empty()),
        since: since("since", request.since)?,
        limit: request.limit,
    })
}

pub(super) fn history_proto(row: HistoryRow) -> v1::HistoryEntry {
    v1::HistoryEntry {
        cluster: row.cluster,
        fleet_secret: row.fleet_secret,
        revision: row.revision,
        outcome: row.outcome.as_str().to_owned(),
        error: row.error.unwrap_or_default(),
        replica: row.replica,
        at: Some(timestamp(row.at)),
    }
}

pub(super) fn drift_proto(row: DriftRow) -> v1::DriftEntry {
    v1::DriftEntry {
        cluster: row.cluster,
        fleet_secret: row.fleet_secret,
        namespace: row.namespace,
        kind: row.kind,
        revision: row.revision,
        replica: row.replica,
        at: Some(timestamp(row.at)),
        repaired: row.failure.is_none(),
        failure: row.failure.unwrap_or_default(),
    }
}

pub(super) fn audit_proto(event: AuditEvent) -> v1::AuditEvent {
    v1::AuditEvent {
        actor: event.actor,
        action: event.action,
        subject: event.subject,
        at: Some(timestamp(event.at)),
    }
}

pub(super) fn rollout_history_proto(history: RolloutHistory) -> v1::RolloutHistoryResponse {
    v1::RolloutHistoryResponse {
        revisions: history
            .revisions
            .into_iter()
            .map(|revision| v1::RevisionHistory {
                revision: revision.revision,
                sources: revision
                    .sources
                    .into_iter()
                    .map(|(remote_key, version)| v1::SourceVersion {
                        remote_key,
                        version,
                        ..v1::SourceVersion::default()
                    })
                    .collect(),
                created: Some(timestamp(revision.created)),
                applied: revision.applied,
                refused: revision.refused,
                first_applied: revision.first_applied.map(timestamp),
                last_applied: revision.last_applied.map(timestamp),
            })
            .collect(),
        events: history.events.into_iter().map(audit_proto).collect(),
    }
}
