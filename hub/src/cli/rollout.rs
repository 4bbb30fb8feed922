//! `keyfleet rollout pause|resume|pin|unpin` and the `pin`/`unpin` shortcuts: steer a FleetSecret's
//! rollout, then print where it stands.

use std::io::Write;

use keyfleet_proto::v1;

use super::output::revision_text;
use super::status::{pins_text, rollout_text};
use super::{CliError, Client, call};
use crate::config::{PinTarget, RolloutCommand, UnpinTarget};

/// `keyfleet rollout …`.
pub(super) async fn rollout(
    client: &mut Client,
    command: RolloutCommand,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        RolloutCommand::Pause { name } => {
            let status = call(
                format!("pause rollout of {name:?}"),
                client.pause_rollout(rollout_request(&name)),
            )
            .await?;
            writeln!(out, "fleetsecret/{name} rollout paused")?;
            write_rollout_line(&status, out)
        }
        RolloutCommand::Resume { name } => {
            let status = call(
                format!("resume rollout of {name:?}"),
                client.resume_rollout(rollout_request(&name)),
            )
            .await?;
            writeln!(out, "fleetsecret/{name} rollout resumed")?;
            write_rollout_line(&status, out)
        }
        RolloutCommand::Pin(target) => pin(client, target, out).await,
        RolloutCommand::Unpin(target) => unpin(client, target, out).await,
    }
}

fn rollout_request(name: &str) -> v1::RolloutRequest {
    v1::RolloutRequest {
        fleet_secret: name.to_owned(),
    }
}

/// `keyfleet pin` / `rollout pin`: hold a Key Vault secret of the FleetSecret at one version.
pub(super) async fn pin(
    client: &mut Client,
    target: PinTarget,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let request = v1::PinVersionRequest {
        fleet_secret: target.name.clone(),
        remote_key: target.key.clone().unwrap_or_default(),
        version: target.version.clone(),
    };
    let status = call(
        format!("pin fleetsecret {:?}", target.name),
        client.pin_version(request),
    )
    .await?;
    writeln!(out, "fleetsecret/{} pinned: {}", target.name, pins_text(&status))?;
    write_rollout_line(&status, out)
}

/// `keyfleet unpin` / `rollout unpin`: follow the latest versions again.
pub(super) async fn unpin(
    client: &mut Client,
    target: UnpinTarget,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let request = v1::UnpinVersionRequest {
        fleet_secret: target.name.clone(),
        remote_key: target.key.clone().unwrap_or_default(),
    };
    let status = call(
        format!("unpin fleetsecret {:?}", target.name),
        client.unpin_version(request),
    )
    .await?;
    let what = target.key.as_deref().unwrap_or("every key");
    writeln!(out, "fleetsecret/{} unpinned ({what})", target.name)?;
    write_rollout_line(&status, out)
}

/// The revision, how far it is applied and the rollout state after a rollout command.
fn write_rollout_line(status: &v1::FleetSecretStatus, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    writeln!(
        out,
        "revision {}: {}/{} applied, rollout {}",
        revision_text(status.revision),
        status.applied,
        status.targeted,
        rollout_text(status.rollout.as_ref())
    )?;
    if let Some(reason) = status
        .rollout
        .as_ref()
        .map(|rollout| &rollout.reason)
        .filter(|r| !r.is_empty())
    {
        writeln!(out, "reason: {reason}")?;
    }
    Ok(())
}
