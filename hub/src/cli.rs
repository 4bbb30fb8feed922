//! The administration commands of `keyfleet` (`cluster`, `apply`, `get`, `delete`, `status`,
//! `rollout`, `pin`, `unpin`, `sync-now`, `history`, `drift`, `audit`): clients of a hub's Admin API. Flags are parsed in
//! [`crate::config`]; [`run`] executes one command and writes people-readable tables (or JSON/YAML
//! with `-o`) to the output it is given.
//!
//! Exit codes (see [`CliError::exit_code`]): 0 done, 1 the hub refused or failed, 2 usage (bad
//! flag, unreadable file, bad selector, missing admin token), 3 the hub cannot be reached or the
//! admin token is not accepted, 4 the named object does not exist, 5 a `status --fail-on`
//! condition holds (after printing the status) or `import` converted with warnings. `cluster add
//! -f` exits 1 when any listed cluster failed, after reporting every cluster. `rollout status`
//! exits 5 when the rollout is paused, 6 when it failed, 7 when it is not complete (or `--timeout`
//! passed).
//!
//! The admin token is sent as `authorization: Bearer …` and never printed. The only secret this
//! module prints is an enrollment token, once, to the operator who asked for it.
//!
//! Layout: `cli/connect.rs` reaches the hub; `clusters`, `specs`, `status` and `rollout` run the
//! commands of their name; `bulk` runs `cluster add -f` (many clusters, idempotent); `output`
//! prints tables, JSON and YAML; `selector` parses `-l`; `reference` generates `docs/cli.md`,
//! shell completions and man pages. This file holds the dispatch, `-f -` (stdin) and the exit
//! codes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use keyfleet_proto::v1;

use crate::config::ClientCommand;

mod bulk;
mod clusters;
mod connect;
mod history;
mod import;
mod output;
mod reference;
mod rollout;
mod selector;
mod specs;
mod status;

pub use connect::{BearerToken, Client, admin_token, connect};
pub use import::import;
pub use reference::{completion, man_pages, markdown_reference};
pub use selector::parse_selector;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input given on the command line or in the environment.
    #[error("{0}")]
    Usage(String),
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Spec files could not be read.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// The hub cannot be reached.
    #[error("cannot connect to the hub at {url}")]
    Connect {
        /// `--hub`.
        url: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The hub answered with an error.
    #[error("{action}: {}", .status.message())]
    Hub {
        /// What was asked, e.g. `create cluster "prod-eu-1"`.
        action: String,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// The output could not be written.
    #[error("cannot write the output")]
    Output(#[from] std::io::Error),
    /// A rollout did not complete (`rollout status`).
    #[error("rollout of fleetsecret {name:?} {outcome}")]
    Rollout {
        /// The FleetSecret.
        name: String,
        /// Where it stands.
        outcome: rollout::Unfinished,
    },
    /// `status --fail-on` conditions hold (the status was printed).
    #[error("conditions hold: {}", .held.join(", "))]
    Conditions {
        /// `fleetsecret/Condition` of each.
        held: Vec<String>,
    },
    /// `import` converted everything, and reported fields with no keyfleet meaning.
    #[error("converted with {0} warning(s), listed above")]
    ConvertedWithWarnings(usize),
    /// `import` could not convert some documents (each is reported; the others were written).
    #[error("{0} document(s) could not be converted, listed above")]
    NotConverted(usize),
    /// Some items of a bulk command failed (each is reported in the output).
    #[error("{failed} of {total} clusters failed")]
    Partial {
        /// How many failed.
        failed: usize,
        /// How many were listed.
        total: usize,
    },
}

impl CliError {
    /// The process exit code scripts can rely on.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Read { .. } | Self::Spec(crate::spec::SpecError::Read { .. }) => 2,
            Self::Connect { .. } => 3,
            Self::Hub { status, .. } => match status.code() {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied | tonic::Code::Unavailable => 3,
                tonic::Code::NotFound => 4,
                _ => 1,
            },
            Self::Rollout { outcome, .. } => outcome.exit_code(),
            Self::Spec(_) | Self::Output(_) | Self::Partial { .. } | Self::NotConverted(_) => 1,
            Self::Conditions { .. } | Self::ConvertedWithWarnings(_) => 5,
        }
    }
}

/// The exit code for an error returned by [`crate::run`] (a [`CliError`] inside, or 1).
pub fn exit_code(error: &anyhow::Error) -> u8 {
    error.downcast_ref::<CliError>().map_or(1, CliError::exit_code)
}

/// Runs one command against the hub its flags name, reading `-f -` from stdin and writing to
/// `out`.
pub async fn run(command: ClientCommand, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    run_io(command, &mut std::io::stdin(), out).await
}

/// Runs one command against the hub its flags name; `-f -` reads `input`.
pub async fn run_io(
    command: ClientCommand,
    input: &mut (dyn Read + Send),
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let mut client = connect(command.client()).await?;
    run_with(&mut client, command, input, out).await
}

/// Runs one command with an already connected client; `-f -` reads `input`.
pub async fn run_with(
    client: &mut Client,
    command: ClientCommand,
    input: &mut (dyn Read + Send),
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let hub_url = command.client().hub_url.clone();
    match command {
        ClientCommand::Cluster(with) => clusters::cluster(client, with.command, &hub_url, input, out).await,
        ClientCommand::Apply(args) => specs::apply(client, &args, input, out).await,
        ClientCommand::Get(with) => specs::get(client, with.command, out).await,
        ClientCommand::Delete(with) => specs::delete(client, with.command, out).await,
        ClientCommand::Status(args) => {
            status::status(
                client,
                args.fleet_secret,
                args.lagging,
                args.output,
                &args.fail_on,
                out,
            )
            .await
        }
        ClientCommand::Rollout(with) => rollout::rollout(client, with.command, out).await,
        ClientCommand::Pin(args) => rollout::pin(client, args.target, out).await,
        ClientCommand::Unpin(args) => rollout::unpin(client, args.target, out).await,
        ClientCommand::SyncNow(args) => sync_now(client, args.store.unwrap_or_default(), out).await,
        ClientCommand::History(args) => history::history(client, args, out).await,
        ClientCommand::Drift(args) => history::drift(client, args, out).await,
        ClientCommand::Audit(args) => history::audit(client, args, out).await,
    }
}

/// `keyfleet sync-now [--store NAME]`: poll Key Vault now (every store when `store` is empty).
async fn sync_now(client: &mut Client, store: String, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let what = if store.is_empty() {
        "sync now".to_owned()
    } else {
        format!("sync store {store:?} now")
    };
    let response = call(what, client.sync_now(v1::SyncNowRequest { store })).await?;
    writeln!(
        out,
        "polled {} store(s) ({}): {} new version(s)",
        response.stores.len(),
        response.stores.join(", "),
        response.new_versions
    )?;
    Ok(())
}

/// The path that means "read stdin" in `-f`.
fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Reads all of `input` (`-f -`) as UTF-8, at most `limit` bytes.
fn read_stdin(input: &mut (dyn Read + Send), limit: usize) -> Result<String, CliError> {
    let read_error = |source| CliError::Read {
        path: PathBuf::from("-"),
        source,
    };
    let mut bytes = Vec::new();
    input
        .take(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > limit {
        return Err(CliError::Usage(format!("stdin holds more than {limit} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| CliError::Usage("stdin is not UTF-8 text".to_owned()))
}

/// Awaits one RPC and names the action when it fails.
async fn call<T>(
    action: String,
    response: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CliError> {
    response
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| CliError::Hub { action, status })
}

/// The hub answered without a field the command needs: reported as an internal hub error.
fn missing_field(action: &str, field: &str) -> CliError {
    CliError::Hub {
        action: action.to_owned(),
        status: tonic::Status::internal(format!("the hub's answer lacks {field}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_errors_map_to_exit_codes() {
        let hub = |code| CliError::Hub {
            action: "x".to_owned(),
            status: tonic::Status::new(code, "m"),
        };
        assert_eq!(hub(tonic::Code::NotFound).exit_code(), 4);
        assert_eq!(hub(tonic::Code::Unauthenticated).exit_code(), 3);
        assert_eq!(hub(tonic::Code::InvalidArgument).exit_code(), 1);
        assert_eq!(hub(tonic::Code::AlreadyExists).exit_code(), 1);
        assert_eq!(CliError::Usage("x".to_owned()).exit_code(), 2);
        assert_eq!(
            CliError::Conditions {
                held: vec!["regcred/NearExpiry".to_owned()]
            }
            .exit_code(),
            5
        );
        let wrapped = anyhow::Error::from(hub(tonic::Code::NotFound));
        assert_eq!(exit_code(&wrapped), 4);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
    }

    #[test]
    fn completions_are_generated_for_every_shell() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completion(shell, &mut out).expect("in memory");
            let script = String::from_utf8(out).expect("utf-8");
            assert!(!script.is_empty(), "{shell}");
            for word in ["keyfleet", "cluster", "apply", "completion", "reissue-pending"] {
                assert!(script.contains(word), "{shell} completion lacks {word}");
            }
        }
    }

    #[test]
    fn man_pages_are_generated() {
        let mut out = Vec::new();
        man_pages(None, &mut out).expect("in memory");
        let page = String::from_utf8(out).expect("utf-8");
        assert!(
            page.starts_with(".ie") || page.contains(".TH keyfleet 1"),
            "{page}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        man_pages(Some(dir.path()), &mut Vec::new()).expect("written");
        for page in [
            "keyfleet.1",
            "keyfleet-cluster-add.1",
            "keyfleet-apply.1",
            "keyfleet-pin.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
            assert!(text.contains(".TH"), "{page}");
        }
    }

    #[test]
    fn pin_version_is_in_the_reference_but_clap_version_flags_are_not() {
        let reference = markdown_reference();
        let pin = reference
            .split("## `keyfleet pin`")
            .nth(1)
            .and_then(|rest| rest.split("## ").next())
            .expect("pin section");
        assert!(pin.contains("- `--version`: Key Vault version id"), "{pin}");
        assert!(
            !reference.contains("Print version"),
            "clap's --version is not listed"
        );
    }

    #[test]
    fn docs_are_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md");
        let expected = markdown_reference();
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != expected {
            std::fs::write(&path, &expected).expect("write docs/cli.md");
            panic!("docs/cli.md was stale and has been rewritten: review and commit it");
        }
        for command in [
            "keyfleet cluster add",
            "keyfleet apply",
            "keyfleet status",
            "keyfleet rollout pin",
            "keyfleet sync-now",
        ] {
            assert!(expected.contains(&format!("## `{command}`")), "{command}");
        }
    }
}
