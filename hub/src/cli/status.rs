//! `keyfleet status`: where every FleetSecret (or one) stands: revision, counts, rollout, the
//! earliest expiry of the Key Vault versions it serves, its conditions and the clusters lagging
//! behind. `--fail-on` turns conditions into exit code 5 (after printing), for CI jobs and cron.

use std::io::Write;

use keyfleet_proto::v1;
use serde_json::{Value, json};

use super::output::{
    Table, key_versions, revision_text, secret_status_json, timestamp, timestamp_json, write_secret_statuses,
    write_structured,
};
use super::{CliError, Client, call};
use crate::config::{FailOn, OutputFormat};

/// `keyfleet status [NAME]`: one row per FleetSecret; with a NAME also its sources, pins and
/// lagging clusters.
pub(super) async fn status(
    client: &mut Client,
    fleet_secret: Option<String>,
    lagging: u32,
    output: OutputFormat,
    fail_on: &[FailOn],
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let response = print_status(client, fleet_secret, lagging, output, out).await?;
    let held = failing_conditions(&response.fleet_secrets, fail_on);
    if held.is_empty() {
        Ok(())
    } else {
        Err(CliError::Conditions { held })
    }
}

/// `fleetsecret/type` of every condition `fail_on` names, in output order.
fn failing_conditions(secrets: &[v1::FleetSecretStatus], fail_on: &[FailOn]) -> Vec<String> {
    let matches = |kind: &str| {
        fail_on.iter().any(|fail| match fail {
            FailOn::NearExpiry => kind == "NearExpiry" || kind == "Expired",
            FailOn::Expired => kind == "Expired",
            FailOn::Paused => kind == "Paused",
            FailOn::Lagging => kind == "Lagging",
        })
    };
    secrets
        .iter()
        .flat_map(|secret| {
            secret
                .conditions
                .iter()
                .filter(|condition| matches(&condition.r#type))
                .map(|condition| format!("{}/{}", secret.name, condition.r#type))
        })
        .collect()
}

async fn print_status(
    client: &mut Client,
    fleet_secret: Option<String>,
    lagging: u32,
    output: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<v1::GetStatusResponse, CliError> {
    let action = match &fleet_secret {
        Some(name) => format!("status of fleetsecret {name:?}"),
        None => "status".to_owned(),
    };
    let request = v1::GetStatusRequest {
        fleet_secret: fleet_secret.clone().unwrap_or_default(),
        lagging_limit: lagging,
    };
    let response = call(action, client.get_status(request)).await?;
    if output != OutputFormat::Table {
        let values: Vec<Value> = response.fleet_secrets.iter().map(status_json).collect();
        match fleet_secret {
            Some(_) if values.len() == 1 => write_structured(&values[0], output, out),
            _ => write_structured(&Value::Array(values), output, out),
        }?;
        return Ok(response);
    }
    let mut table = Table::new(&[
        "FLEETSECRET",
        "REVISION",
        "TARGETED",
        "APPLIED",
        "PENDING",
        "ERROR",
        "OFFLINE",
        "ROLLOUT",
        "EXPIRES",
        "CONDITIONS",
        "DRIFT",
        "LAGGING",
    ]);
    for secret in &response.fleet_secrets {
        table.row(vec![
            secret.name.clone(),
            revision_text(secret.revision),
            secret.targeted.to_string(),
            secret.applied.to_string(),
            secret.pending.to_string(),
            secret.error.to_string(),
            secret.offline.to_string(),
            rollout_text(secret.rollout.as_ref()),
            timestamp(secret.expires.as_ref()),
            conditions_text(secret),
            drift_text(secret),
            lagging_text(secret),
        ]);
    }
    table.write(out)?;
    for secret in &response.fleet_secrets {
        let reason = secret
            .rollout
            .as_ref()
            .map(|rollout| rollout.reason.as_str())
            .unwrap_or("");
        if !reason.is_empty() {
            writeln!(out, "{}: {reason}", secret.name)?;
        }
        for condition in &secret.conditions {
            if condition.r#type != "Paused" {
                writeln!(
                    out,
                    "{}: {}: {}",
                    secret.name, condition.r#type, condition.message
                )?;
            }
        }
    }
    if fleet_secret.is_none() {
        return Ok(response);
    }
    for secret in &response.fleet_secrets {
        if !secret.sources.is_empty() {
            let sources = key_versions(
                secret
                    .sources
                    .iter()
                    .map(|source| (source.remote_key.as_str(), source.version.as_str())),
            );
            writeln!(out, "\nSources: {sources}")?;
            let mut table = Table::new(&["KEY", "VERSION", "EXPIRES", "NOT BEFORE"]);
            for source in &secret.sources {
                table.row(vec![
                    source.remote_key.clone(),
                    source.version.clone(),
                    timestamp(source.expires.as_ref()),
                    timestamp(source.not_before.as_ref()),
                ]);
            }
            table.write(out)?;
        }
        if !secret.pins.is_empty() {
            writeln!(out, "Pinned:  {}", pins_text(secret))?;
        }
        if secret.lagging.is_empty() {
            continue;
        }
        writeln!(out, "\nLagging clusters (oldest first):")?;
        write_secret_statuses("CLUSTER", &secret.lagging, |lag| &lag.cluster, out)?;
    }
    Ok(response)
}

/// The condition types, comma-separated, or `-`.
fn conditions_text(secret: &v1::FleetSecretStatus) -> String {
    if secret.conditions.is_empty() {
        return "-".to_owned();
    }
    secret
        .conditions
        .iter()
        .map(|condition| condition.r#type.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The FleetSecret's pins as `key@version, …`.
pub(super) fn pins_text(status: &v1::FleetSecretStatus) -> String {
    key_versions(
        status
            .pins
            .iter()
            .map(|pin| (pin.remote_key.as_str(), pin.version.as_str())),
    )
}

/// `state (wave N/M)`, the state alone without waves, or `-` without a rollout.
pub(super) fn rollout_text(rollout: Option<&v1::RolloutStatus>) -> String {
    match rollout {
        None => "-".to_owned(),
        Some(rollout) if rollout.waves == 0 => rollout.state.clone(),
        Some(rollout) => format!(
            "{} (wave {}/{})",
            rollout.state,
            rollout.current_wave + 1,
            rollout.waves
        ),
    }
}

/// The first three lagging clusters and how many more.
fn lagging_text(secret: &v1::FleetSecretStatus) -> String {
    let names: Vec<&str> = secret
        .lagging
        .iter()
        .take(3)
        .map(|lag| lag.cluster.as_str())
        .collect();
    if names.is_empty() {
        return "-".to_owned();
    }
    let more = secret.lagging.len().saturating_sub(names.len());
    if more > 0 {
        format!("{} (+{more})", names.join(","))
    } else {
        names.join(",")
    }
}

/// A FleetSecret's status as `-o json|yaml` prints it.
/// Drift reported in the last 24 hours, and how much of it was not repaired.
fn drift_text(secret: &v1::FleetSecretStatus) -> String {
    match (secret.drift, secret.drift_unrepaired) {
        (reported, 0) => reported.to_string(),
        (reported, unrepaired) => format!("{reported} ({unrepaired} unrepaired)"),
    }
}

fn status_json(status: &v1::FleetSecretStatus) -> Value {
    let rollout = status.rollout.as_ref();
    json!({
        "name": status.name,
        "revision": status.revision,
        "sources": status.sources.iter().map(|s| json!({
            "remoteKey": s.remote_key,
            "version": s.version,
            "expires": timestamp_json(s.expires.as_ref()),
            "notBefore": timestamp_json(s.not_before.as_ref()),
        })).collect::<Vec<_>>(),
        "expires": timestamp_json(status.expires.as_ref()),
        "nearExpiryThresholdSeconds": status.near_expiry_threshold_seconds,
        "conditions": status.conditions.iter().map(|c| json!({"type": c.r#type, "message": c.message})).collect::<Vec<_>>(),
        "targeted": status.targeted,
        "applied": status.applied,
        "pending": status.pending,
        "error": status.error,
        "offline": status.offline,
        "rollout": {
            "state": rollout.map(|r| r.state.as_str()).unwrap_or("none"),
            "currentWave": rollout.map_or(0, |r| r.current_wave),
            "waves": rollout.map_or(0, |r| r.waves),
            "reason": rollout.map(|r| r.reason.as_str()).unwrap_or(""),
        },
        "lagging": status.lagging.iter().map(secret_status_json).collect::<Vec<_>>(),
        "pins": status.pins.iter().map(|p| json!({"remoteKey": p.remote_key, "version": p.version})).collect::<Vec<_>>(),
        "drift": status.drift,
        "driftUnrepaired": status.drift_unrepaired,
    })
}
