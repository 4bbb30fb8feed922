//! Command line and environment (`KEYFLEET_*`), parsed by clap into per-module sub-configs.
//! Every constructor receives its own sub-config, never the whole CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::telemetry;

/// `keyfleet`: the hub server and its administration commands.
#[derive(Debug, Parser)]
#[command(
    name = "keyfleet",
    version,
    about,
    long_about = None,
    propagate_version = true,
    after_help = "Exit codes: 0 done, 1 the hub refused or failed, 2 usage (bad flag, unreadable file, \
                  missing admin token), 3 hub unreachable or admin token refused, 4 not found."
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
}

/// Default address of the hub's gRPC endpoint for the administration commands.
pub const DEFAULT_HUB_URL: &str = "https://127.0.0.1:7443";

/// How the administration commands reach and authenticate to the hub.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Hub connection")]
pub struct ClientArgs {
    /// The hub's gRPC endpoint (`https://…`; `http://…` only for local tests).
    #[arg(long = "hub", env = "KEYFLEET_HUB", default_value = DEFAULT_HUB_URL, global = true)]
    pub hub_url: String,
    /// File holding the admin token (first line). Alternatively set KEYFLEET_ADMIN_TOKEN.
    #[arg(long, global = true)]
    pub admin_token_file: Option<PathBuf>,
    /// The admin token itself (environment only, so that it stays out of shell history).
    #[arg(
        long = "admin-token",
        env = "KEYFLEET_ADMIN_TOKEN",
        hide = true,
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,
    /// PEM file of the CA that signed the hub's certificate (default: the system's roots).
    #[arg(long, env = "KEYFLEET_HUB_CA", global = true)]
    pub hub_ca: Option<PathBuf>,
    /// PEM client certificate (chain) for mTLS: authenticates without an admin token when the
    /// hub's --admin-client-ca issued it (with --client-key).
    #[arg(
        long,
        env = "KEYFLEET_CLIENT_CERT",
        value_name = "FILE",
        global = true,
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "KEYFLEET_CLIENT_KEY",
        value_name = "FILE",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

/// A client command with its connection flags (accepted after the command name, before or after
/// the subcommand: `keyfleet cluster --hub URL add NAME` or `keyfleet cluster add NAME --hub URL`).
#[derive(Debug, Clone, Args)]
pub struct WithClient<T: Subcommand> {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The subcommand.
    #[command(subcommand)]
    pub command: T,
}

/// Output format of listings and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts.
    Json,
    /// YAML for scripts.
    Yaml,
}

/// The administration commands (each talks to the hub's Admin API).
#[derive(Debug, Clone, Subcommand)]
pub enum ClientCommand {
    /// Add, list, show, label and revoke clusters; issue enrollment tokens.
    Cluster(WithClient<ClusterCommand>),
    /// Validate and store SecretStore and FleetSecret specs (all or nothing).
    Apply(ApplyArgs),
    /// List FleetSecrets or SecretStores.
    Get(WithClient<GetCommand>),
    /// Delete a FleetSecret (clusters then remove it as its deletionPolicy says).
    Delete(WithClient<DeleteCommand>),
    /// Where every FleetSecret (or one) stands: revision, counts, rollout, lagging clusters.
    Status(StatusArgs),
    /// Pause, resume, pin or unpin a FleetSecret's rollout.
    Rollout(WithClient<RolloutCommand>),
    /// Pin a FleetSecret's Key Vault secret to one version (rollback).
    #[command(disable_version_flag = true)]
    Pin(PinArgs),
    /// Remove pins: the FleetSecret follows the latest versions again.
    Unpin(UnpinArgs),
    /// Poll Key Vault now instead of waiting for the poll interval.
    SyncNow(SyncNowArgs),
}

impl ClientCommand {
    /// The connection flags of this command.
    pub fn client(&self) -> &ClientArgs {
        match self {
            Self::Cluster(with) => &with.client,
            Self::Get(with) => &with.client,
            Self::Delete(with) => &with.client,
            Self::Rollout(with) => &with.client,
            Self::Apply(args) => &args.client,
            Self::Status(args) => &args.client,
            Self::Pin(args) => &args.client,
            Self::Unpin(args) => &args.client,
            Self::SyncNow(args) => &args.client,
        }
    }
}

/// `keyfleet cluster …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Register a cluster; prints its one-time enrollment token and the agent install command.
    Add {
        /// Cluster name (DNS-1123 label).
        name: String,
        /// Inventory label `key=value` (repeatable).
        #[arg(long = "label", short = 'l', value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Enrollment token lifetime (1m to 7d).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        token_ttl: Duration,
        /// Hub URL the agent dials, when it differs from --hub.
        #[arg(long)]
        agent_hub_url: Option<String>,
    },
    /// List clusters.
    List {
        /// Label selector, e.g. `env=prod,region in (eu,us),!legacy`.
        #[arg(long, short = 'l')]
        selector: Option<String>,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Show one cluster with its per-FleetSecret status.
    Show {
        /// Cluster name.
        name: String,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Set (`key=value`) and remove (`key-`) inventory labels.
    Label {
        /// Cluster name.
        name: String,
        /// `key=value` to set, `key-` to remove.
        #[arg(required = true, value_parser = parse_label_change)]
        changes: Vec<LabelChange>,
    },
    /// Revoke the cluster's credential; its stream ends within a second.
    Revoke {
        /// Cluster name.
        name: String,
    },
    /// Issue a new one-time enrollment token (re-enrollment).
    Token {
        /// Cluster name.
        name: String,
        /// Enrollment token lifetime (1m to 7d).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        token_ttl: Duration,
        /// Hub URL the agent dials, when it differs from --hub.
        #[arg(long)]
        agent_hub_url: Option<String>,
    },
}

/// One `cluster label` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    /// `key=value`.
    Set(String, String),
    /// `key-`.
    Remove(String),
}

/// `keyfleet apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// YAML file or directory (repeatable); directories are read recursively (*.yaml, *.yml).
    #[arg(long = "filename", short = 'f', required = true)]
    pub files: Vec<PathBuf>,
    /// Validate only; store nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `keyfleet get …`.
#[derive(Debug, Clone, Subcommand)]
pub enum GetCommand {
    /// List FleetSecrets.
    #[command(name = "fleetsecrets", visible_alias = "fleetsecret")]
    FleetSecrets {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// List SecretStores.
    #[command(name = "stores", visible_alias = "store")]
    Stores {
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: OutputFormat,
    },
}

/// `keyfleet delete …`.
#[derive(Debug, Clone, Subcommand)]
pub enum DeleteCommand {
    /// Delete a FleetSecret.
    #[command(name = "fleetsecret")]
    FleetSecret {
        /// FleetSecret name.
        name: String,
    },
}

/// `keyfleet status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// One FleetSecret (all when omitted).
    pub fleet_secret: Option<String>,
    /// Lagging clusters listed per FleetSecret (1-1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub lagging: u32,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// `keyfleet rollout …`.
#[derive(Debug, Clone, Subcommand)]
pub enum RolloutCommand {
    /// Pause: no further wave starts.
    Pause {
        /// FleetSecret name.
        name: String,
    },
    /// Resume a paused rollout.
    Resume {
        /// FleetSecret name.
        name: String,
    },
    /// Same as `keyfleet pin`.
    #[command(disable_version_flag = true)]
    Pin(PinTarget),
    /// Same as `keyfleet unpin`.
    Unpin(UnpinTarget),
}

/// What to pin.
#[derive(Debug, Clone, Args)]
pub struct PinTarget {
    /// FleetSecret name.
    pub name: String,
    /// Key Vault secret to pin (may be omitted when the FleetSecret reads exactly one).
    #[arg(long)]
    pub key: Option<String>,
    /// Key Vault version id (32 hex characters).
    #[arg(long)]
    pub version: String,
}

/// What to unpin.
#[derive(Debug, Clone, Args)]
pub struct UnpinTarget {
    /// FleetSecret name.
    pub name: String,
    /// Key Vault secret to unpin (all pins of the FleetSecret when omitted).
    #[arg(long)]
    pub key: Option<String>,
}

/// `keyfleet pin`.
#[derive(Debug, Clone, Args)]
pub struct PinArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to pin.
    #[command(flatten)]
    pub target: PinTarget,
}

/// `keyfleet unpin`.
#[derive(Debug, Clone, Args)]
pub struct UnpinArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to unpin.
    #[command(flatten)]
    pub target: UnpinTarget,
}

/// `keyfleet sync-now`.
#[derive(Debug, Clone, Args)]
pub struct SyncNowArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this SecretStore (all when omitted).
    #[arg(long)]
    pub store: Option<String>,
}

/// Parses `key=value`.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("invalid label {text:?}, expected key=value")),
    }
}

/// Parses `key=value` (set) or `key-` (remove).
pub fn parse_label_change(text: &str) -> Result<LabelChange, String> {
    if let Some(key) = text.strip_suffix('-')
        && !key.is_empty()
        && !key.contains('=')
    {
        return Ok(LabelChange::Remove(key.to_owned()));
    }
    parse_label(text)
        .map(|(key, value)| LabelChange::Set(key, value))
        .map_err(|_| format!("invalid label change {text:?}, expected key=value or key-"))
}

/// The embedded default store: a SQLite file in the working directory.
pub const DEFAULT_DATABASE: &str = "sqlite://keyfleet.db";

/// The store URL (`--database`). It may hold a password (`postgres://user:PASSWORD@…` or a
/// `password=` query parameter), so its `Debug` shows it redacted and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL as given, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `<redacted>` (the whole URL when it does not parse).
    pub fn redacted(&self) -> String {
        const REDACTED: &str = "<redacted>";
        let Ok(mut url) = url::Url::parse(&self.0) else {
            return REDACTED.to_owned();
        };
        if url.password().is_some() && url.set_password(Some(REDACTED)).is_err() {
            return REDACTED.to_owned();
        }
        if url.query().is_some() {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(key, value)| {
                    let value = if key.to_ascii_lowercase().contains("password") {
                        REDACTED.to_owned()
                    } else {
                        value.into_owned()
                    };
                    (key.into_owned(), value)
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        // `<` and `>` come back percent-encoded from the URL writer; show them as written.
        url.as_str().replace("%3Credacted%3E", REDACTED)
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DatabaseUrl").field(&self.redacted()).finish()
    }
}

impl std::str::FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

/// Flags of `keyfleet migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// The store: `postgres://USER@HOST/DB` (production) or `sqlite://PATH` (created if missing).
    #[arg(long, env = "KEYFLEET_DATABASE", default_value = DEFAULT_DATABASE, hide_env_values = true)]
    pub database: DatabaseUrl,
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
    /// The store: `postgres://USER@HOST/DB` (production) or `sqlite://PATH` (created if missing).
    #[arg(long, env = "KEYFLEET_DATABASE", default_value = DEFAULT_DATABASE, hide_env_values = true)]
    pub database: DatabaseUrl,
    /// Apply pending database migrations before serving (else `keyfleet migrate` must have run).
    #[arg(long, env = "KEYFLEET_MIGRATE")]
    pub migrate: bool,
    /// SecretStore and FleetSecret YAML files applied at startup (as `keyfleet apply -f DIR`).
    #[arg(long, env = "KEYFLEET_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// File with the Admin API bearer token(s), one per line. Without it (and without
    /// --admin-client-ca) the Admin API refuses every call.
    #[arg(long, env = "KEYFLEET_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// PEM CA bundle whose client certificates authenticate Admin API calls (mTLS), besides the
    /// admin token. The gRPC endpoint then asks every client for a certificate without requiring
    /// one; agents never need one (they authenticate by credential).
    #[arg(long, env = "KEYFLEET_ADMIN_CLIENT_CA", value_name = "FILE")]
    pub admin_client_ca: Option<PathBuf>,
    /// Once serving, write `{"grpc_addr", "ops_addr"}` as JSON to FILE (atomically).
    #[arg(long, env = "KEYFLEET_READY_FILE", value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Extra PEM trust root for Key Vault and Entra (emulators, TLS-inspecting proxies).
    #[arg(long, env = "KEYFLEET_VAULT_CA_FILE", value_name = "FILE")]
    pub vault_ca_file: Option<PathBuf>,
    /// Entra authority host, overriding the SecretStore's cloud (the standard Azure variable).
    #[arg(long, env = "AZURE_AUTHORITY_HOST", value_name = "URL")]
    pub vault_authority_host: Option<url::Url>,
    /// Accept a Key Vault challenge whose resource is not the vault's domain (emulators on
    /// 127.0.0.1 only; never in production).
    #[arg(long, env = "KEYFLEET_VAULT_SKIP_CHALLENGE_RESOURCE_CHECK")]
    pub vault_skip_challenge_resource_check: bool,
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

/// How the hub reaches Key Vault beyond what SecretStores say ([`crate::vault::VaultOptions`]).
#[derive(Debug, Clone, Default)]
pub struct VaultConfig {
    /// Extra trust root.
    pub ca_file: Option<PathBuf>,
    /// Entra authority override.
    pub authority_host: Option<url::Url>,
    /// Skip the challenge resource check (emulators).
    pub skip_challenge_resource_check: bool,
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
    /// Store URL (`postgres://…` or `sqlite://…`); may hold a password (redacted in `Debug`).
    pub database: DatabaseUrl,
    /// Apply pending migrations at startup.
    pub migrate: bool,
    /// Specs applied at startup.
    pub config_dir: Option<PathBuf>,
    /// Admin bearer tokens.
    pub admin_token_file: Option<PathBuf>,
    /// CA bundle of admin client certificates.
    pub admin_client_ca: Option<PathBuf>,
    /// Where to announce the listening addresses.
    pub ready_file: Option<PathBuf>,
    /// Key Vault reachability.
    pub vault: VaultConfig,
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
            database: args.database,
            migrate: args.migrate,
            config_dir: args.config_dir,
            admin_token_file: args.admin_token_file,
            admin_client_ca: args.admin_client_ca,
            ready_file: args.ready_file,
            vault: VaultConfig {
                ca_file: args.vault_ca_file,
                authority_host: args.vault_authority_host,
                skip_challenge_resource_check: args.vault_skip_challenge_resource_check,
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
        let Command::Serve(args) = cli.command else {
            panic!("not serve: {:?}", cli.command);
        };
        let config = ServeConfig::from(args);
        assert_eq!(config.ops.addr, "127.0.0.1:0".parse().expect("literal address"));
        assert_eq!(config.shutdown_grace, Duration::from_millis(250));
        assert_eq!(config.database.expose(), DEFAULT_DATABASE);
        assert!(!config.migrate);
    }

    #[test]
    fn serve_takes_the_database_and_migrate_flags() {
        let cli =
            parse(&["serve", "--database", "postgres://hub@db/keyfleet", "--migrate"]).expect("valid flags");
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        let config = ServeConfig::from(args);
        assert_eq!(config.database.expose(), "postgres://hub@db/keyfleet");
        assert!(config.migrate);
    }

    #[test]
    fn migrate_takes_the_database_with_the_sqlite_default() {
        let cli = parse(&["migrate"]).expect("valid flags");
        let Command::Migrate(args) = cli.command else {
            panic!("migrate expected");
        };
        assert_eq!(args.database.expose(), "sqlite://keyfleet.db");
        let cli = parse(&["migrate", "--database", "sqlite:///var/lib/keyfleet/k.db"]).expect("valid flags");
        let Command::Migrate(args) = cli.command else {
            panic!("migrate expected");
        };
        assert_eq!(args.database.expose(), "sqlite:///var/lib/keyfleet/k.db");
    }

    #[test]
    fn debug_output_never_shows_the_database_password() {
        let cli = parse(&[
            "serve",
            "--database",
            "postgres://hub:s3cr%40t-pw@db:5432/keyfleet?sslmode=require&password=other-pw",
        ])
        .expect("valid flags");
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        let printed_args = format!("{args:?}");
        let config = ServeConfig::from(args);
        let printed_config = format!("{config:?}");
        for printed in [&printed_args, &printed_config] {
            assert!(!printed.contains("s3cr"), "{printed}");
            assert!(!printed.contains("other-pw"), "{printed}");
            assert!(
                printed.contains(
                    "postgres://hub:<redacted>@db:5432/keyfleet?sslmode=require&password=<redacted>"
                ),
                "{printed}"
            );
        }
        assert_eq!(
            config.database.expose(),
            "postgres://hub:s3cr%40t-pw@db:5432/keyfleet?sslmode=require&password=other-pw",
            "the store still connects with the password"
        );
        for (url, shown) in [
            ("sqlite://keyfleet.db", "sqlite://keyfleet.db"),
            ("postgres://hub@db/keyfleet", "postgres://hub@db/keyfleet"),
            ("not a url: pw", "<redacted>"),
        ] {
            let database: DatabaseUrl = url.parse().expect("infallible");
            assert_eq!(database.redacted(), shown);
        }
        let Command::Migrate(args) = parse(&["migrate", "--database", "postgres://u:pw1@h/d"])
            .expect("valid flags")
            .command
        else {
            panic!("migrate expected");
        };
        assert!(!format!("{args:?}").contains("pw1"), "{args:?}");
    }

    #[test]
    fn admin_client_ca_and_client_certificates_are_flags_and_env() {
        let cli = parse(&["serve", "--admin-client-ca", "/etc/keyfleet/admins.pem"]).expect("valid flags");
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        assert_eq!(
            ServeConfig::from(args).admin_client_ca,
            Some(PathBuf::from("/etc/keyfleet/admins.pem"))
        );
        let command = client(&[
            "status",
            "--client-cert",
            "alice.pem",
            "--client-key",
            "alice-key.pem",
        ]);
        assert_eq!(command.client().client_cert, Some(PathBuf::from("alice.pem")));
        assert_eq!(command.client().client_key, Some(PathBuf::from("alice-key.pem")));
        let error = parse(&["status", "--client-cert", "alice.pem"]).expect_err("no key");
        assert_eq!(error.exit_code(), 2);
        let error = parse(&["status", "--client-key", "alice-key.pem"]).expect_err("no cert");
        assert_eq!(error.exit_code(), 2);
        let serve = <Cli as clap::CommandFactory>::command();
        let serve = serve.find_subcommand("serve").expect("serve");
        let env = |id: &str| {
            serve
                .get_arguments()
                .find(|arg| arg.get_id() == id)
                .and_then(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
        };
        assert_eq!(
            env("admin_client_ca").as_deref(),
            Some("KEYFLEET_ADMIN_CLIENT_CA")
        );
        let root = <Cli as clap::CommandFactory>::command();
        let status = root.find_subcommand("status").expect("status");
        let client_env: Vec<_> = status
            .get_arguments()
            .filter(|arg| ["client_cert", "client_key"].contains(&arg.get_id().as_str()))
            .filter_map(|arg| arg.get_env().map(|env| env.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(client_env, ["KEYFLEET_CLIENT_CERT", "KEYFLEET_CLIENT_KEY"]);
    }

    #[test]
    fn migrate_rejects_serve_flags() {
        let error = parse(&["migrate", "--migrate"]).expect_err("not a migrate flag");
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn grpc_and_tls_flags_land_in_the_grpc_config() {
        use crate::grpc::server::TlsSource;
        let cli = parse(&["serve"]).expect("defaults");
        let Command::Serve(args) = cli.command else {
            panic!("not serve: {:?}", cli.command);
        };
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
        let Command::Serve(args) = cli.command else {
            panic!("not serve: {:?}", cli.command);
        };
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
        let Command::Serve(args) = cli.command else {
            panic!("not serve: {:?}", cli.command);
        };
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

    fn client(args: &[&str]) -> ClientCommand {
        match parse(args)
            .unwrap_or_else(|error| panic!("{args:?}: {error}"))
            .command
        {
            Command::Client(command) => command,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn cluster_add_takes_labels_ttl_and_connection_flags_anywhere() {
        let command = client(&[
            "cluster",
            "--hub",
            "http://127.0.0.1:1",
            "add",
            "prod-eu-1",
            "--label",
            "env=prod",
            "-l",
            "region=eu",
            "--token-ttl",
            "1h",
            "--admin-token-file",
            "/tmp/token",
        ]);
        assert_eq!(command.client().hub_url, "http://127.0.0.1:1");
        assert_eq!(
            command.client().admin_token_file,
            Some(PathBuf::from("/tmp/token"))
        );
        let ClientCommand::Cluster(WithClient {
            command:
                ClusterCommand::Add {
                    name,
                    labels,
                    token_ttl,
                    ..
                },
            ..
        }) = command
        else {
            panic!("not cluster add");
        };
        assert_eq!(name, "prod-eu-1");
        assert_eq!(
            labels,
            [("env".into(), "prod".into()), ("region".into(), "eu".into())]
        );
        assert_eq!(token_ttl, Duration::from_secs(3600));
    }

    #[test]
    fn client_commands_parse_their_arguments() {
        let ClientCommand::Cluster(with) =
            client(&["cluster", "label", "c1", "ring=canary", "legacy-", "a=b-"])
        else {
            panic!("not cluster");
        };
        let ClusterCommand::Label { changes, .. } = with.command else {
            panic!("not label");
        };
        assert_eq!(
            changes,
            [
                LabelChange::Set("ring".into(), "canary".into()),
                LabelChange::Remove("legacy".into()),
                LabelChange::Set("a".into(), "b-".into()),
            ]
        );
        let ClientCommand::Apply(apply) = client(&["apply", "-f", "a.yaml", "-f", "dir", "--dry-run"]) else {
            panic!("not apply");
        };
        assert_eq!(apply.files, [PathBuf::from("a.yaml"), PathBuf::from("dir")]);
        assert!(apply.dry_run);
        assert_eq!(apply.client.hub_url, DEFAULT_HUB_URL);
        let ClientCommand::Status(status) = client(&["status", "regcred", "-o", "json", "--lagging", "5"])
        else {
            panic!("not status");
        };
        assert_eq!(
            (status.fleet_secret.as_deref(), status.output, status.lagging),
            (Some("regcred"), OutputFormat::Json, 5)
        );
        let ClientCommand::Rollout(rollout) = client(&[
            "rollout",
            "pin",
            "regcred",
            "--key",
            "acr-pull",
            "--version",
            "abc",
        ]) else {
            panic!("not rollout");
        };
        assert!(
            matches!(rollout.command, RolloutCommand::Pin(PinTarget { ref key, .. }) if key.as_deref() == Some("acr-pull"))
        );
        let ClientCommand::Pin(pin) = client(&["pin", "regcred", "--version", "abc"]) else {
            panic!("not pin");
        };
        assert_eq!((pin.target.key, pin.target.version.as_str()), (None, "abc"));
        assert!(matches!(client(&["unpin", "regcred"]), ClientCommand::Unpin(_)));
        assert!(matches!(
            client(&["get", "fleetsecrets", "-o", "yaml"]),
            ClientCommand::Get(_)
        ));
        assert!(matches!(client(&["get", "stores"]), ClientCommand::Get(_)));
        assert!(matches!(
            client(&["delete", "fleetsecret", "regcred"]),
            ClientCommand::Delete(_)
        ));
        assert!(matches!(
            client(&["sync-now", "--store", "shared-kv"]),
            ClientCommand::SyncNow(_)
        ));
        assert!(matches!(
            client(&["cluster", "list", "--selector", "env=prod"]),
            ClientCommand::Cluster(_)
        ));
    }

    #[test]
    fn bad_client_arguments_exit_with_2() {
        for args in [
            &["cluster", "add", "c1", "--label", "novalue"][..],
            &["cluster", "label", "c1"],
            &["cluster", "label", "c1", "-"],
            &["cluster", "add", "c1", "--token-ttl", "soon"],
            &["apply"],
            &["status", "-o", "xml"],
            &["status", "--lagging", "0"],
            &["pin", "regcred"],
            &["get", "secrets"],
            &["rollout", "stop", "regcred"],
        ] {
            let error = parse(args).expect_err("bad arguments");
            assert_eq!(error.exit_code(), 2, "{args:?}: {error}");
        }
    }

    #[test]
    fn every_command_has_help_text() {
        fn walk(command: &clap::Command, path: &str) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "{path} has no help text");
                for arg in sub.get_arguments() {
                    assert!(
                        arg.is_hide_set()
                            || arg.get_help().is_some()
                            || arg.get_id() == "help"
                            || arg.get_id() == "version",
                        "{path} --{} has no help text",
                        arg.get_id()
                    );
                }
                walk(sub, &path);
            }
        }
        let command = <Cli as clap::CommandFactory>::command();
        command.clone().debug_assert();
        walk(&command, "keyfleet");
    }

    #[test]
    fn missing_command_is_a_usage_error() {
        let error = parse(&[]).expect_err("no command");
        assert_eq!(error.exit_code(), 2);
    }
}
