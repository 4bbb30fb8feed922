//! `keyfleet rollout status|pause|resume|pin|unpin` and the `pin`/`unpin` shortcuts: follow or
//! steer a FleetSecret's rollout, then print where it stands.

use std::io::Write;
use std::time::Duration;

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
        RolloutCommand::Status { name, watch, timeout } => status(client, &name, watch, timeout, out).await,
        RolloutCommand::History { name, output } => {
            super::history::rollout_history(client, &name, output, out).await
        }
        RolloutCommand::Undo { name } => super::history::undo(client, &name, out).await,
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

/// How often `rollout status --watch` asks the hub (status rows are batched; a second is finer
/// than they move).
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Why a rollout is not complete; each has its own exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unfinished {
    /// Paused by hand or by the error rate (the reason).
    Paused(String),
    /// Every targeted cluster answered and some refused the revision: nothing more will happen
    /// without a change.
    Failed {
        /// Clusters whose last answer was an error.
        errors: u32,
    },
    /// Still progressing (clusters pending or offline).
    Progressing,
    /// `--timeout` passed while it was still progressing.
    TimedOut(Duration),
}

impl Unfinished {
    /// 5 paused, 6 failed, 7 not complete.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Paused(_) => 5,
            Self::Failed { .. } => 6,
            Self::Progressing | Self::TimedOut(_) => 7,
        }
    }
}

impl std::fmt::Display for Unfinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Paused(reason) if reason.is_empty() => write!(f, "is paused"),
            Self::Paused(reason) => write!(f, "is paused: {reason}"),
            Self::Failed { errors } => write!(f, "failed: {errors} cluster(s) refused the revision"),
            Self::Progressing => write!(f, "is not complete"),
            Self::TimedOut(after) => {
                write!(f, "is not complete after {}", humantime::format_duration(*after))
            }
        }
    }
}

/// Where a rollout stands: `Ok` when every targeted cluster holds the current revision.
fn outcome(status: &v1::FleetSecretStatus) -> Result<(), Unfinished> {
    let state = status.rollout.as_ref().map(|rollout| rollout.state.as_str());
    if state == Some("paused") {
        let reason = status
            .rollout
            .as_ref()
            .map(|rollout| rollout.reason.clone())
            .unwrap_or_default();
        return Err(Unfinished::Paused(reason));
    }
    if status.revision > 0 && status.applied == status.targeted {
        return Ok(());
    }
    let answered = status.pending == 0 && status.offline == 0;
    if status.revision > 0 && answered && status.error > 0 && status.applied + status.error >= status.targeted
    {
        return Err(Unfinished::Failed { errors: status.error });
    }
    Err(Unfinished::Progressing)
}

/// One progress line: revision, wave, and the counts.
fn progress_line(status: &v1::FleetSecretStatus) -> String {
    format!(
        "revision {}: {}, {}/{} applied, {} pending, {} failed, {} offline",
        revision_text(status.revision),
        rollout_text(status.rollout.as_ref()),
        status.applied,
        status.targeted,
        status.pending,
        status.error,
        status.offline
    )
}

/// `keyfleet rollout status NAME [--watch [--timeout D]]`.
async fn status(
    client: &mut Client,
    name: &str,
    watch: bool,
    timeout: Option<Duration>,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let started = tokio::time::Instant::now();
    let mut last_line = String::new();
    loop {
        let response = call(
            format!("status of fleetsecret {name:?}"),
            client.get_status(v1::GetStatusRequest {
                fleet_secret: name.to_owned(),
                lagging_limit: 1,
            }),
        )
        .await?;
        let Some(status) = response
            .fleet_secrets
            .into_iter()
            .find(|status| status.name == name)
        else {
            return Err(CliError::Hub {
                action: format!("status of fleetsecret {name:?}"),
                status: tonic::Status::not_found(format!("fleetsecret {name:?} not found")),
            });
        };
        let line = progress_line(&status);
        if line != last_line {
            writeln!(out, "{line}")?;
            out.flush()?;
            last_line = line;
        }
        let unfinished = match outcome(&status) {
            Ok(()) => {
                writeln!(out, "fleetsecret/{name}: rollout complete")?;
                return Ok(());
            }
            Err(Unfinished::Progressing) if watch => None,
            Err(other) => Some(other),
        };
        if let Some(outcome) = unfinished {
            return Err(CliError::Rollout {
                name: name.to_owned(),
                outcome,
            });
        }
        let mut pause = WATCH_INTERVAL;
        if let Some(timeout) = timeout {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(CliError::Rollout {
                    name: name.to_owned(),
                    outcome: Unfinished::TimedOut(timeout),
                });
            }
            pause = pause.min(left);
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        state: &str,
        targeted: u32,
        applied: u32,
        pending: u32,
        error: u32,
        offline: u32,
    ) -> v1::FleetSecretStatus {
        v1::FleetSecretStatus {
            name: "regcred".to_owned(),
            revision: 3,
            targeted,
            applied,
            pending,
            error,
            offline,
            rollout: Some(v1::RolloutStatus {
                state: state.to_owned(),
                current_wave: 1,
                waves: 3,
                reason: if state == "paused" {
                    "error rate 2% > 1%".to_owned()
                } else {
                    String::new()
                },
            }),
            ..v1::FleetSecretStatus::default()
        }
    }

    #[test]
    fn a_rollout_is_complete_when_every_targeted_cluster_holds_the_revision() {
        assert_eq!(outcome(&status("complete", 10, 10, 0, 0, 0)), Ok(()));
        assert_eq!(outcome(&status("none", 4, 4, 0, 0, 0)), Ok(()));
        // Waves done but a cluster offline: not complete.
        assert_eq!(
            outcome(&status("complete", 10, 9, 0, 0, 1)),
            Err(Unfinished::Progressing)
        );
        // No revision yet: nothing is complete.
        let mut none = status("none", 0, 0, 0, 0, 0);
        none.revision = 0;
        assert_eq!(outcome(&none), Err(Unfinished::Progressing));
    }

    #[test]
    fn paused_failed_and_progressing_have_their_own_exit_codes() {
        let paused = outcome(&status("paused", 10, 2, 7, 1, 0)).unwrap_err();
        assert_eq!(paused, Unfinished::Paused("error rate 2% > 1%".to_owned()));
        assert_eq!(paused.exit_code(), 5);
        assert_eq!(paused.to_string(), "is paused: error rate 2% > 1%");
        let failed = outcome(&status("complete", 10, 8, 0, 2, 0)).unwrap_err();
        assert_eq!(failed, Unfinished::Failed { errors: 2 });
        assert_eq!(failed.exit_code(), 6);
        let progressing = outcome(&status("progressing", 10, 3, 7, 0, 0)).unwrap_err();
        assert_eq!(progressing.exit_code(), 7);
        assert_eq!(
            Unfinished::TimedOut(Duration::from_secs(90)).to_string(),
            "is not complete after 1m 30s"
        );
    }

    #[test]
    fn the_progress_line_names_wave_and_counts() {
        assert_eq!(
            progress_line(&status("progressing", 10, 3, 6, 0, 1)),
            "revision 3: progressing (wave 2/3), 3/10 applied, 6 pending, 0 failed, 1 offline"
        );
    }
}
