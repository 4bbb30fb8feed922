//! `keyfleet history`, `drift`, `audit`, `rollout history` and `rollout undo`: what happened,
//! read from the hub's history and audit log (any replica answers the same).

use std::io::Write;

use chrono::{DateTime, Utc};
use keyfleet_proto::v1;
use serde_json::{Value, json};

use super::output::{Table, dash, revision_text, timestamp, timestamp_json, write_structured};
use super::{CliError, Client, call};
use crate::config::{AuditArgs, DriftArgs, HistoryArgs, OutputFormat};

fn since_proto(since: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    since.map(|at| prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    })
}

/// `keyfleet history FLEETSECRET [--cluster C] [--since D]`.
pub(super) async fn history(
    client: &mut Client,
    args: HistoryArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let request = v1::ListHistoryRequest {
        fleet_secret: args.fleet_secret.clone(),
        cluster: args.cluster.unwrap_or_default(),
        since: since_proto(args.since),
        limit: args.limit,
    };
    let entries = call(
        format!("history of fleetsecret {:?}", args.fleet_secret),
        client.list_history(request),
    )
    .await?
    .entries;
    if args.output != OutputFormat::Table {
        let values: Vec<Value> = entries
            .iter()
            .map(|entry| {
                json!({
                    "at": timestamp_json(entry.at.as_ref()),
                    "cluster": entry.cluster,
                    "fleetSecret": entry.fleet_secret,
                    "revision": entry.revision,
                    "outcome": entry.outcome,
                    "error": (!entry.error.is_empty()).then_some(&entry.error),
                    "replica": entry.replica,
                })
            })
            .collect();
        return write_structured(&Value::Array(values), args.output, out);
    }
    let mut table = Table::new(&["TIME", "CLUSTER", "REVISION", "OUTCOME", "REPLICA", "ERROR"]);
    for entry in &entries {
        table.row(vec![
            timestamp(entry.at.as_ref()),
            entry.cluster.clone(),
            revision_text(entry.revision),
            entry.outcome.clone(),
            entry.replica.clone(),
            dash(&entry.error),
        ]);
    }
    table.write(out)
}

/// `keyfleet drift [--fleet-secret F] [--cluster C] [--since D]`.
pub(super) async fn drift(
    client: &mut Client,
    args: DriftArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let request = v1::ListHistoryRequest {
        fleet_secret: args.fleet_secret.unwrap_or_default(),
        cluster: args.cluster.unwrap_or_default(),
        since: since_proto(args.since),
        limit: args.limit,
    };
    let entries = call("list drift".to_owned(), client.list_drift(request))
        .await?
        .entries;
    if args.output != OutputFormat::Table {
        let values: Vec<Value> = entries
            .iter()
            .map(|entry| {
                json!({
                    "at": timestamp_json(entry.at.as_ref()),
                    "cluster": entry.cluster,
                    "fleetSecret": entry.fleet_secret,
                    "namespace": entry.namespace,
                    "kind": entry.kind,
                    "restoredRevision": entry.revision,
                    "repaired": entry.repaired,
                    "failure": (!entry.failure.is_empty()).then_some(&entry.failure),
                    "replica": entry.replica,
                })
            })
            .collect();
        return write_structured(&Value::Array(values), args.output, out);
    }
    let mut table = Table::new(&["TIME", "CLUSTER", "FLEETSECRET", "NAMESPACE", "DRIFT", "REPAIRED"]);
    for entry in &entries {
        table.row(vec![
            timestamp(entry.at.as_ref()),
            entry.cluster.clone(),
            entry.fleet_secret.clone(),
            entry.namespace.clone(),
            entry.kind.clone(),
            if entry.repaired {
                format!("yes, revision {}", revision_text(entry.revision))
            } else {
                format!("NO: {}", entry.failure)
            },
        ]);
    }
    table.write(out)
}

/// `keyfleet audit [--actor A] [--since D]`.
pub(super) async fn audit(
    client: &mut Client,
    args: AuditArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let request = v1::ListAuditRequest {
        actor: args.actor.unwrap_or_default(),
        since: since_proto(args.since),
        limit: args.limit,
    };
    let events = call("read the audit log".to_owned(), client.list_audit(request))
        .await?
        .events;
    if args.output != OutputFormat::Table {
        let values: Vec<Value> = events.iter().map(audit_json).collect();
        return write_structured(&Value::Array(values), args.output, out);
    }
    write_audit_table(&events, out)
}

fn audit_json(event: &v1::AuditEvent) -> Value {
    json!({
        "at": timestamp_json(event.at.as_ref()),
        "actor": event.actor,
        "action": event.action,
        "subject": event.subject,
    })
}

fn write_audit_table(events: &[v1::AuditEvent], out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let mut table = Table::new(&["TIME", "ACTOR", "ACTION", "SUBJECT"]);
    for event in events {
        table.row(vec![
            timestamp(event.at.as_ref()),
            event.actor.clone(),
            event.action.clone(),
            event.subject.clone(),
        ]);
    }
    table.write(out)
}

fn versions_text(sources: &[v1::SourceVersion]) -> String {
    if sources.is_empty() {
        return "-".to_owned();
    }
    sources
        .iter()
        .map(|source| format!("{}@{}", source.remote_key, source.version))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `keyfleet rollout history NAME`.
pub(super) async fn rollout_history(
    client: &mut Client,
    name: &str,
    output: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let response = call(
        format!("rollout history of fleetsecret {name:?}"),
        client.rollout_history(v1::RolloutRequest {
            fleet_secret: name.to_owned(),
        }),
    )
    .await?;
    if output != OutputFormat::Table {
        let value = json!({
            "revisions": response.revisions.iter().map(|revision| json!({
                "revision": revision.revision,
                "sources": revision.sources.iter().map(|source| json!({
                    "remoteKey": source.remote_key, "version": source.version,
                })).collect::<Vec<_>>(),
                "created": timestamp_json(revision.created.as_ref()),
                "applied": revision.applied,
                "refused": revision.refused,
                "firstApplied": timestamp_json(revision.first_applied.as_ref()),
                "lastApplied": timestamp_json(revision.last_applied.as_ref()),
            })).collect::<Vec<_>>(),
            "events": response.events.iter().map(audit_json).collect::<Vec<_>>(),
        });
        return write_structured(&value, output, out);
    }
    let mut table = Table::new(&[
        "REVISION",
        "CREATED",
        "APPLIED",
        "REFUSED",
        "LAST APPLIED",
        "KEY VAULT VERSIONS",
    ]);
    for revision in &response.revisions {
        table.row(vec![
            revision.revision.to_string(),
            timestamp(revision.created.as_ref()),
            revision.applied.to_string(),
            revision.refused.to_string(),
            timestamp(revision.last_applied.as_ref()),
            versions_text(&revision.sources),
        ]);
    }
    table.write(out)?;
    if !response.events.is_empty() {
        writeln!(out)?;
        write_audit_table(&response.events, out)?;
    }
    Ok(())
}

/// `keyfleet rollout undo NAME`.
pub(super) async fn undo(
    client: &mut Client,
    name: &str,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let status = call(
        format!("undo the rollout of fleetsecret {name:?}"),
        client.undo_rollout(v1::RolloutRequest {
            fleet_secret: name.to_owned(),
        }),
    )
    .await?;
    let pins: Vec<String> = status
        .pins
        .iter()
        .map(|pin| format!("{}@{}", pin.remote_key, pin.version))
        .collect();
    writeln!(
        out,
        "fleetsecret/{name} rolled back: pinned {} (keyfleet unpin {name} follows the latest again)",
        pins.join(", ")
    )?;
    writeln!(
        out,
        "revision {}: {}/{} applied",
        revision_text(status.revision),
        status.applied,
        status.targeted
    )?;
    Ok(())
}
