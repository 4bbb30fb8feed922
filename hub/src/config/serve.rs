//! Flags of `keyfleet serve` and `keyfleet migrate`, and the per-module sub-configs `serve` hands
//! out (gRPC, operations, Key Vault): each constructor receives its own, never the whole CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::database_url::{DEFAULT_DATABASE, DatabaseUrl};
use super::parse_duration;

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
    /// Most gRPC connections held at once, TLS handshakes included (one more is closed at once).
    /// Default: the process's open-file limit minus 256.
    #[arg(long, env = "KEYFLEET_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// The store: `postgres://USER@HOST/DB` (production) or `sqlite://PATH` (created if missing).
    #[arg(long, env = "KEYFLEET_DATABASE", default_value = DEFAULT_DATABASE, hide_env_values = true)]
    pub database: DatabaseUrl,
    /// File with the digest key(s): one per line, 64 hex characters or base64 of 32+ random bytes;
    /// the first keys every new digest of a secret value, the others (previous keys) still verify
    /// what they keyed. Required with Postgres (every replica needs the same file); with SQLite the
    /// default is DATABASE.digest-key, created on first start.
    #[arg(long, env = "KEYFLEET_DIGEST_KEY_FILE", value_name = "FILE")]
    pub digest_key_file: Option<PathBuf>,
    /// Apply pending database migrations before serving (else `keyfleet migrate` must have run).
    #[arg(long, env = "KEYFLEET_MIGRATE")]
    pub migrate: bool,
    /// SecretStore and FleetSecret YAML files applied at startup (as `keyfleet apply -f DIR`).
    #[arg(long, env = "KEYFLEET_CONFIG_DIR", value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// File with the Admin API bearer tokens, one `NAME:TOKEN` per line (NAME: [a-z0-9._-]{1,64},
    /// audited as token:NAME; TOKEN: 32 bytes or more). Without it (and without
    /// --admin-client-ca) the Admin API refuses every call.
    #[arg(long, env = "KEYFLEET_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// PEM CA bundle whose client certificates authenticate Admin API calls (mTLS), besides the
    /// admin token. The gRPC endpoint then asks every client for a certificate without requiring
    /// one; agents never need one (they authenticate by credential).
    #[arg(long, env = "KEYFLEET_ADMIN_CLIENT_CA", value_name = "FILE")]
    pub admin_client_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM or DER) of the --admin-client-ca CAs: a revoked admin
    /// certificate is refused. Re-read when the file changes (checked at each Admin call).
    #[arg(
        long,
        env = "KEYFLEET_ADMIN_CLIENT_CRL",
        value_name = "FILE",
        requires = "admin_client_ca"
    )]
    pub admin_client_crl: Option<PathBuf>,
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
    /// Address of the Azure Event Grid webhook for Key Vault events (`POST
    /// /eventgrid/keyvault?code=CODE`): a new version is fetched at once instead of at the next
    /// poll. Plain HTTP on its own port, meant to sit behind your HTTPS ingress (Event Grid
    /// delivers to HTTPS endpoints only). Off by default; needs --eventgrid-code-file.
    #[arg(long, env = "KEYFLEET_EVENTGRID_ADDR", requires = "eventgrid_code_file")]
    pub eventgrid_addr: Option<SocketAddr>,
    /// File holding the code Event Grid must send as `?code=` (16 or more URL-safe characters;
    /// put the same in the subscription's endpoint URL).
    #[arg(
        long,
        env = "KEYFLEET_EVENTGRID_CODE_FILE",
        value_name = "FILE",
        requires = "eventgrid_addr"
    )]
    pub eventgrid_code_file: Option<PathBuf>,
    /// A FleetSecret is `NearExpiry` when a Key Vault version it serves expires within this
    /// (its own `nearExpiryThreshold` wins).
    #[arg(long, env = "KEYFLEET_NEAR_EXPIRY_THRESHOLD", default_value = "30d", value_parser = parse_duration)]
    pub near_expiry_threshold: Duration,
    /// How often the per-FleetSecret metrics (rollout counts, expiry) are read from the store.
    #[arg(long, env = "KEYFLEET_METRICS_REFRESH", default_value = "15s", value_parser = parse_duration)]
    pub metrics_refresh: Duration,
}

/// The Event Grid webhook's listener (`--eventgrid-addr`, `--eventgrid-code-file`).
#[derive(Debug, Clone)]
pub struct EventGridListen {
    /// Listen address.
    pub addr: SocketAddr,
    /// File with the `?code=` secret.
    pub code_file: PathBuf,
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
    /// Connection cap (`None`: from the open-file limit, see `grpc::server::default_max_connections`).
    pub max_connections: Option<usize>,
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
    /// Default `NearExpiry` threshold.
    pub near_expiry_threshold: Duration,
    /// Refresh interval of the per-FleetSecret metrics.
    pub metrics_refresh: Duration,
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
    /// Digest keys (`None`: the default for the database, see `config::load_digest_keys`).
    pub digest_key_file: Option<PathBuf>,
    /// Apply pending migrations at startup.
    pub migrate: bool,
    /// Specs applied at startup.
    pub config_dir: Option<PathBuf>,
    /// Admin bearer tokens.
    pub admin_token_file: Option<PathBuf>,
    /// CA bundle of admin client certificates.
    pub admin_client_ca: Option<PathBuf>,
    /// Revocation lists of admin client certificates.
    pub admin_client_crl: Option<PathBuf>,
    /// Where to announce the listening addresses.
    pub ready_file: Option<PathBuf>,
    /// Key Vault reachability.
    pub vault: VaultConfig,
    /// The Event Grid webhook, when enabled.
    pub eventgrid: Option<EventGridListen>,
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
            ops: OpsConfig {
                addr: args.ops_addr,
                near_expiry_threshold: args.near_expiry_threshold,
                metrics_refresh: args.metrics_refresh.max(Duration::from_secs(1)),
            },
            shutdown_grace: args.shutdown_grace,
            grpc: GrpcConfig {
                addr: args.grpc_addr,
                tls,
                replica_id: args.replica_id.unwrap_or_else(default_replica_id),
                max_connections: args.max_connections,
            },
            database: args.database,
            digest_key_file: args.digest_key_file,
            migrate: args.migrate,
            config_dir: args.config_dir,
            admin_token_file: args.admin_token_file,
            admin_client_ca: args.admin_client_ca,
            admin_client_crl: args.admin_client_crl,
            ready_file: args.ready_file,
            vault: VaultConfig {
                ca_file: args.vault_ca_file,
                authority_host: args.vault_authority_host,
                skip_challenge_resource_check: args.vault_skip_challenge_resource_check,
            },
            eventgrid: args
                .eventgrid_addr
                .zip(args.eventgrid_code_file)
                .map(|(addr, code_file)| EventGridListen { addr, code_file }),
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
