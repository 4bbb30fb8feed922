//! The administration commands' flags (`cluster`, `apply`, `get`, `delete`, `status`, `rollout`,
//! `pin`, `unpin`, `sync-now`) and their connection flags; [`crate::cli`] runs them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::parse_duration;

/// Default address of the hub's gRPC endpoint for the administration commands.
pub const DEFAULT_HUB_URL: &str = "https://127.0.0.1:7443";

/// How the administration commands reach and authenticate to the hub.
#[derive(Clone, Default, Args)]
#[command(next_help_heading = "Hub connection")]
pub struct ClientArgs {
    /// The hub's gRPC endpoint (`https://…`; `http://…` only with --insecure, for local tests).
    #[arg(long = "hub", env = "KEYFLEET_HUB", default_value = DEFAULT_HUB_URL, global = true)]
    pub hub_url: String,
    /// Accept a plaintext `http://` --hub URL (local tests only: the admin token would cross the
    /// network in clear).
    #[arg(long, env = "KEYFLEET_INSECURE", global = true)]
    pub insecure: bool,
    /// File holding the admin token: its first line, or the token of a `name:token` line (the
    /// hub's --admin-token-file format; blank and `#` lines skipped). Alternatively set
    /// KEYFLEET_ADMIN_TOKEN.
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

impl std::fmt::Debug for ClientArgs {
    /// The admin token is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("hub_url", &self.hub_url)
            .field("insecure", &self.insecure)
            .field("admin_token_file", &self.admin_token_file)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<redacted>"))
            .field("hub_ca", &self.hub_ca)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
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

/// A FleetSecret condition `keyfleet status --fail-on` exits non-zero for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// A served Key Vault version expires within the threshold, or has expired.
    NearExpiry,
    /// A served Key Vault version has expired.
    Expired,
    /// The rollout is paused.
    Paused,
    /// Clusters stayed off their desired revision for more than 5 minutes.
    Lagging,
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
    /// Delete a FleetSecret (clusters then remove it as its deletionPolicy says) or an unused
    /// SecretStore.
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
    /// When clusters got each revision of a FleetSecret, and each refusal (newest first).
    History(HistoryArgs),
    /// Drift the agents repaired: managed Secrets edited or deleted in a cluster (newest first).
    Drift(DriftArgs),
    /// The audit log: who did what to which subject (newest first).
    Audit(AuditArgs),
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
            Self::History(args) => &args.client,
            Self::Drift(args) => &args.client,
            Self::Audit(args) => &args.client,
        }
    }
}

/// `keyfleet cluster …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Register a cluster, or every cluster of a file (`-f`, idempotent); prints each new
    /// cluster's one-time enrollment token.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["name", "file"]))]
    Add {
        /// Cluster name (DNS-1123 label).
        name: Option<String>,
        /// Inventory label `key=value` (repeatable).
        #[arg(long = "label", short = 'l', value_parser = parse_label, conflicts_with = "file")]
        labels: Vec<(String, String)>,
        /// File listing clusters and their labels (`clusters: [{name, labels}]`; `-` reads
        /// stdin). Idempotent: new clusters are created (with a token), existing ones get
        /// exactly the file's labels (relabelled or unchanged, no new token).
        #[arg(long = "filename", short = 'f', value_name = "FILE")]
        file: Option<PathBuf>,
        /// With -f: also issue a new token to listed clusters that never enrolled (state
        /// pending), e.g. because their first token expired.
        #[arg(long, conflicts_with = "name")]
        reissue_pending: bool,
        /// Enrollment token lifetime (1m to 7d).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        token_ttl: Duration,
        /// Hub URL the agent dials, when it differs from --hub.
        #[arg(long)]
        agent_hub_url: Option<String>,
        /// Output format (`json`/`yaml`: name, outcome, labels, token, expiry, hub URL).
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: OutputFormat,
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
        /// Output format (`json`/`yaml`: name, token, expiry, hub URL).
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: OutputFormat,
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
    /// YAML file or directory (repeatable); directories are read recursively (*.yaml, *.yml);
    /// `-` reads stdin.
    #[arg(long = "filename", short = 'f', required = true)]
    pub files: Vec<PathBuf>,
    /// Validate only; store nothing (with --prune: also list what would be pruned).
    #[arg(long)]
    pub dry_run: bool,
    /// After applying, delete the FleetSecrets and SecretStores on the hub that the files do not
    /// define (the files are the whole desired state); a store still read by a FleetSecret is kept.
    #[arg(long)]
    pub prune: bool,
    /// With --prune: only prune specs whose metadata.labels match, e.g. `team=platform` (for a hub
    /// shared by several repositories).
    #[arg(long = "selector", short = 'l', requires = "prune", value_name = "SELECTOR")]
    pub prune_selector: Option<String>,
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
    /// Delete a SecretStore that no FleetSecret reads.
    #[command(name = "store", visible_alias = "secretstore")]
    Store {
        /// SecretStore name.
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
    /// Exit 5 (after printing) when any FleetSecret has this condition (repeatable or
    /// comma-separated): near-expiry (NearExpiry or Expired), expired, paused, lagging (off its
    /// desired revision for more than 5 minutes).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub fail_on: Vec<FailOn>,
}

/// `keyfleet rollout …`.
#[derive(Debug, Clone, Subcommand)]
pub enum RolloutCommand {
    /// Where the rollout stands (waves, applied/pending/failed/offline); with `--watch`, follow it
    /// until it completes, pauses, fails or `--timeout` passes. Exit 0 complete, 5 paused, 6
    /// failed (every targeted cluster answered, some with an error), 7 not complete (still
    /// progressing, or `--timeout` passed).
    Status {
        /// FleetSecret name.
        name: String,
        /// Follow the rollout, printing a line at each change, until it ends.
        #[arg(long, short = 'w')]
        watch: bool,
        /// With `--watch`: give up after this long (e.g. 10m); exits 7.
        #[arg(long, value_parser = parse_duration, requires = "watch")]
        timeout: Option<std::time::Duration>,
    },
    /// The FleetSecret's revisions (newest first) with their Key Vault versions, how many
    /// clusters applied or refused each, and the rollout's events (waves, pins, pauses, undo).
    History {
        /// FleetSecret name.
        name: String,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Roll back: pin every Key Vault secret of the FleetSecret to the versions of the revision
    /// before the current one (`keyfleet unpin` follows the latest again).
    Undo {
        /// FleetSecret name.
        name: String,
    },
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

/// `keyfleet history`.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// FleetSecret name.
    pub fleet_secret: String,
    /// Only this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only entries newer than this: a duration back from now (`1h`, `7d`) or an RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many entries (1-10000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// `keyfleet drift`.
#[derive(Debug, Clone, Args)]
pub struct DriftArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this FleetSecret.
    #[arg(long)]
    pub fleet_secret: Option<String>,
    /// Only this cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only drift newer than this: a duration back from now (`1h`, `7d`) or an RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many entries (1-10000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// `keyfleet audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Connection flags.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only events of this actor (`token:NAME`, `cert:CN`, `hub`, `config-dir`).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only events newer than this: a duration back from now (`1h`, `7d`) or an RFC 3339 time.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many events (1-10000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: OutputFormat,
}

/// `--since`: a duration back from now (`90m`, `7d`) or an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&chrono::Utc));
    }
    let back = humantime::parse_duration(text).map_err(|_| {
        format!("invalid time {text:?}: expected a duration back from now (1h, 7d) or an RFC 3339 time")
    })?;
    let back = chrono::Duration::from_std(back).map_err(|_| format!("{text:?} is too long ago"))?;
    chrono::Utc::now()
        .checked_sub_signed(back)
        .ok_or_else(|| format!("{text:?} is too long ago"))
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

/// `keyfleet import …`: converts other tools' manifests; needs no hub.
#[derive(Debug, Clone, Subcommand)]
pub enum ImportCommand {
    /// External Secrets Operator manifests (external-secrets.io/v1 and v1beta1: ExternalSecret,
    /// ClusterExternalSecret, SecretStore and ClusterSecretStore with the azurekv provider) →
    /// SecretStore and FleetSecret specs. Every field with no keyfleet meaning is reported on stderr
    /// (file:line: severity: path = value: why). Exit 0 converted, 5 converted with warnings,
    /// 1 some documents could not be converted (the others are written).
    Eso(ImportEsoArgs),
}

/// `keyfleet import eso`.
#[derive(Debug, Clone, Args)]
pub struct ImportEsoArgs {
    /// Manifest file or directory (repeatable); directories are read recursively (*.yaml, *.yml;
    /// for kustomize overlays pipe `kustomize build DIR` into `-f -`); `-` reads stdin.
    #[arg(long = "filename", short = 'f', required = true)]
    pub files: Vec<PathBuf>,
    /// Output format: yaml (what `keyfleet apply` reads) or json (one object per line).
    #[arg(long, short = 'o', value_enum, default_value_t = ImportFormat::Yaml)]
    pub output: ImportFormat,
    /// Write one file per object into this directory (secretstore-NAME.yaml,
    /// fleetsecret-NAME.yaml) instead of stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Where the hub finds service principal client secrets: authSecretRef.clientSecret (Secret
    /// NAME, key KEY) becomes clientSecret.file DIR/NAME/KEY.
    #[arg(long, value_name = "DIR", default_value = crate::spec::eso::DEFAULT_CREDENTIALS_DIR)]
    pub credentials_dir: PathBuf,
}

/// `keyfleet import -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ImportFormat {
    /// Multi-document YAML.
    #[default]
    Yaml,
    /// One JSON object per line.
    Json,
}
