//! Command line and environment (`KEYFLEET_*`), parsed by clap into per-module sub-configs.
//! Every constructor receives its own sub-config, never the whole CLI.
//!
//! - `serve.rs`: `serve` and `migrate` flags → [`ServeConfig`] and its per-module parts.
//! - `admin_commands.rs`: the administration commands' flags (run by [`crate::cli`]).
//! - `admin_tokens.rs`: the admin token file (`name:token` lines) → named token digests.
//! - `database_url.rs`: [`DatabaseUrl`], the store URL that redacts its password.
//! - `digest_key.rs`: the digest key file (`--digest-key-file`) → [`crate::domain::DigestKeys`].

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::telemetry;

mod admin_commands;
mod admin_tokens;
mod database_url;
mod digest_key;
mod serve;
#[cfg(test)]
mod tests;

pub use admin_commands::{
    ApplyArgs, AuditArgs, ClientArgs, ClientCommand, ClusterCommand, DEFAULT_HUB_URL, DeleteCommand,
    DriftArgs, FailOn, GetCommand, HistoryArgs, ImportCommand, ImportEsoArgs, ImportFormat, LabelChange,
    OutputFormat, PinArgs, PinTarget, RolloutCommand, StatusArgs, SyncNowArgs, UnpinArgs, UnpinTarget,
    WithClient, parse_label, parse_label_change,
};
pub use admin_tokens::{
    AdminTokenDigest, AdminTokenFileError, MIN_ADMIN_TOKEN_BYTES, parse_admin_tokens, read_admin_tokens,
    token_of_line,
};
pub use database_url::{DEFAULT_DATABASE, DatabaseUrl};
pub use digest_key::{DigestKeyFileError, DigestKeySource, load_digest_keys};
pub use serve::{
    GrpcConfig, MigrateArgs, OpsConfig, ServeArgs, ServeConfig, VaultConfig, default_replica_id,
};

/// `keyfleet`: the hub server and its administration commands.
#[derive(Debug, Parser)]
#[command(
    name = "keyfleet",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "Exit codes: 0 done, 1 the hub refused or failed, 2 usage (bad flag, unreadable file, \
                  missing admin token), 3 hub unreachable or admin token refused, 4 not found, 5 converted with \
                  warnings (import)."
)]
pub struct Cli {
    /// Logging and tracing options (apply to every command).
    #[command(flatten)]
    pub telemetry: telemetry::Config,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The hub's commands.
#[derive(Debug, Subcommand)]
// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the hub: the gRPC endpoint for agents and admins, Key Vault polling, status writes.
    Serve(ServeArgs),
    /// Apply the pending database migrations, print which were applied, and exit.
    Migrate(MigrateArgs),
    /// Administration commands: clients of a running hub's Admin API (see [`crate::cli`]).
    #[command(flatten)]
    Client(ClientCommand),
    /// Convert other tools' manifests into keyfleet specs (no hub needed).
    #[command(subcommand)]
    Import(ImportCommand),
    /// Print a shell completion script, e.g. `keyfleet completion bash > /etc/bash_completion.d/keyfleet`.
    Completion(CompletionArgs),
    /// Print the keyfleet(1) man page, or write one page per command into a directory.
    Man(ManArgs),
}

/// `keyfleet completion SHELL`.
#[derive(Debug, Clone, Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `keyfleet man [--out-dir DIR]`.
#[derive(Debug, Clone, Args)]
pub struct ManArgs {
    /// Write keyfleet.1 and one keyfleet-COMMAND.1 page per command here instead of printing
    /// keyfleet.1.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<std::path::PathBuf>,
}

/// Parses a human duration such as `30s`, `250ms` or `5m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("invalid duration {text:?}: {error}"))
}
