//! Command line and environment (`KEYFLEET_*`), parsed by clap into per-module sub-configs.
//! Every constructor receives its own sub-config, never the whole CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Address of the gRPC endpoint for agents (Sync, Enrollment). Port 0 picks a free port.
    #[arg(long, env = "KEYFLEET_GRPC_ADDR", default_value = "127.0.0.1:7443")]
    pub grpc_addr: SocketAddr,
    /// PEM certificate chain of the gRPC endpoint (with --tls-key).
    #[arg(
        long,
        env = "KEYFLEET_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the gRPC endpoint (with --tls-cert).
    #[arg(long, env = "KEYFLEET_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Development only: create (or reuse) a CA in DIR (DIR/ca.pem, which agents pin) and serve a
    /// certificate it issues for localhost, 127.0.0.1 and every --tls-san.
    #[arg(long, env = "KEYFLEET_TLS_SELF_SIGNED", value_name = "DIR")]
    pub tls_self_signed: Option<PathBuf>,
    /// Extra DNS name or IP address for the --tls-self-signed certificate (repeatable).
    #[arg(
        long = "tls-san",
        env = "KEYFLEET_TLS_SANS",
        value_delimiter = ',',
        requires = "tls_self_signed"
    )]
    pub tls_sans: Vec<String>,
    /// Id of this replica in status and logs (default: hostname-pid).
    #[arg(long, env = "KEYFLEET_REPLICA_ID")]
    pub replica_id: Option<String>,
}

/// Settings of the gRPC endpoint ([`crate::grpc::server`]).
#[derive(Debug, Clone)]
pub struct GrpcConfig {
    /// Listen address.
    pub addr: SocketAddr,
    /// Where the certificate comes from; `None` when no TLS flag was given (serve refuses).
    pub tls: Option<crate::grpc::server::TlsSource>,
    /// This replica's id.
    pub replica_id: String,
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
    /// gRPC endpoint.
    pub grpc: GrpcConfig,
}

impl From<ServeArgs> for ServeConfig {
    fn from(args: ServeArgs) -> Self {
        use crate::grpc::server::TlsSource;
        let tls = match (args.tls_cert, args.tls_key, args.tls_self_signed) {
            (Some(cert), Some(key), _) => Some(TlsSource::Files { cert, key }),
            (_, _, Some(dir)) => Some(TlsSource::SelfSigned {
                dir,
                sans: args.tls_sans,
            }),
            _ => None,
        };
        Self {
            ops: OpsConfig { addr: args.ops_addr },
            shutdown_grace: args.shutdown_grace,
            grpc: GrpcConfig {
                addr: args.grpc_addr,
                tls,
                replica_id: args.replica_id.unwrap_or_else(default_replica_id),
            },
        }
    }
}

/// `hostname-pid`, the default replica id.
pub fn default_replica_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "hub".to_owned());
    format!("{host}-{}", std::process::id())
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
    fn grpc_and_tls_flags_land_in_the_grpc_config() {
        use crate::grpc::server::TlsSource;
        let cli = parse(&["serve"]).expect("defaults");
        let Command::Serve(args) = cli.command;
        let config = ServeConfig::from(args);
        assert_eq!(
            config.grpc.addr,
            "127.0.0.1:7443".parse().expect("literal address")
        );
        assert_eq!(config.grpc.tls, None);
        assert!(
            config
                .grpc
                .replica_id
                .ends_with(&format!("-{}", std::process::id()))
        );
        let cli = parse(&[
            "serve",
            "--tls-self-signed",
            "/tmp/ca",
            "--tls-san",
            "hub.example,10.0.0.1",
            "--replica-id",
            "r1",
        ])
        .expect("self-signed");
        let Command::Serve(args) = cli.command;
        let config = ServeConfig::from(args);
        assert_eq!(
            config.grpc.tls,
            Some(TlsSource::SelfSigned {
                dir: "/tmp/ca".into(),
                sans: vec!["hub.example".to_owned(), "10.0.0.1".to_owned()],
            })
        );
        assert_eq!(config.grpc.replica_id, "r1");
        let cli = parse(&["serve", "--tls-cert", "c.pem", "--tls-key", "k.pem"]).expect("files");
        let Command::Serve(args) = cli.command;
        assert_eq!(
            ServeConfig::from(args).grpc.tls,
            Some(TlsSource::Files {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        assert_eq!(
            parse(&["serve", "--tls-cert", "c.pem"])
                .expect_err("no key")
                .exit_code(),
            2
        );
        let both = parse(&[
            "serve",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--tls-self-signed",
            "d",
        ]);
        assert_eq!(both.expect_err("conflict").exit_code(), 2);
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
