//! Command line and environment (`KEYFLEET_*`), parsed by clap into per-module sub-configs.
//! Every constructor receives its own sub-config, never the whole CLI.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::telemetry;

/// `keyfleet`: the hub server and its administration commands.
#[derive(Debug, Parser)]
#[command(name = "keyfleet", version, about, long_about = None, propagate_version = true)]
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
pub enum Command {
    /// Run the hub: the gRPC endpoint for agents and admins, Key Vault polling, status writes.
    Serve(ServeArgs),
}

/// Flags of `keyfleet serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the operations HTTP endpoint (`/healthz`, `/readyz`, `/metrics`). Port 0 picks a
    /// free port; the chosen address is logged and, with --ready-file, written there.
    #[arg(long, env = "KEYFLEET_OPS_ADDR", default_value = "127.0.0.1:9090")]
    pub ops_addr: SocketAddr,
    /// Grace period for draining streams and flushing status on shutdown.
    #[arg(long, env = "KEYFLEET_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

/// Settings of the operations endpoint ([`crate::ops`]).
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// Listen address.
    pub addr: SocketAddr,
}

/// Everything `serve` needs, split by module.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Operations endpoint.
    pub ops: OpsConfig,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
}

impl From<ServeArgs> for ServeConfig {
    fn from(args: ServeArgs) -> Self {
        Self {
            ops: OpsConfig { addr: args.ops_addr },
            shutdown_grace: args.shutdown_grace,
        }
    }
}

/// Parses a human duration such as `30s`, `250ms` or `5m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("invalid duration {text:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("keyfleet").chain(args.iter().copied()))
    }

    #[test]
    fn serve_flags_land_in_their_sub_configs() {
        let cli =
            parse(&["serve", "--ops-addr", "127.0.0.1:0", "--shutdown-grace", "250ms"]).expect("valid flags");
        let Command::Serve(args) = cli.command;
        let config = ServeConfig::from(args);
        assert_eq!(config.ops.addr, "127.0.0.1:0".parse().expect("literal address"));
        assert_eq!(config.shutdown_grace, Duration::from_millis(250));
    }

    #[test]
    fn unknown_flag_is_a_usage_error_with_exit_code_2() {
        let error = parse(&["serve", "--no-such-flag"]).expect_err("unknown flag");
        assert_eq!(error.kind(), ErrorKind::UnknownArgument);
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn bad_duration_names_the_value() {
        let error = parse(&["serve", "--shutdown-grace", "soon"]).expect_err("bad duration");
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("soon"), "{error}");
    }

    #[test]
    fn missing_command_is_a_usage_error() {
        let error = parse(&[]).expect_err("no command");
        assert_eq!(error.exit_code(), 2);
    }
}
