//! The administration commands of `keyfleet` (`cluster`, `apply`, `get`, `delete`, `status`,
//! `rollout`, `pin`, `unpin`, `sync-now`): clients of a hub's Admin API. Flags are parsed in
//! [`crate::config`]; [`run`] executes one command and writes people-readable tables (or JSON/YAML
//! with `-o`) to the output it is given.
//!
//! Exit codes (see [`CliError::exit_code`]): 0 done, 1 the hub refused or failed, 2 usage (bad
//! flag, unreadable file, bad selector, missing admin token), 3 the hub cannot be reached or the
//! admin token is not accepted, 4 the named object does not exist.
//!
//! The admin token is sent as `authorization: Bearer …` and never printed. The only secret this
//! module prints is an enrollment token, once, to the operator who asked for it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyfleet_proto::v1;
use keyfleet_proto::v1::admin_client::AdminClient;
use serde_json::{Value, json};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::{
    ClientArgs, ClientCommand, ClusterCommand, DeleteCommand, GetCommand, LabelChange, OutputFormat,
    PinTarget, RolloutCommand, UnpinTarget,
};
use crate::domain::{LabelRequirement, LabelSelector, SelectorOperator};
use crate::grpc::convert::selector_to_proto;

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
            Self::Spec(_) | Self::Output(_) => 1,
        }
    }
}

/// The exit code for an error returned by [`crate::run`] (a [`CliError`] inside, or 1).
pub fn exit_code(error: &anyhow::Error) -> u8 {
    error.downcast_ref::<CliError>().map_or(1, CliError::exit_code)
}

/// Adds the admin token to every request (nothing when the client authenticates by certificate
/// alone: [`BearerToken::default`]).
#[derive(Clone, Default)]
pub struct BearerToken(Option<AsciiMetadataValue>);

impl BearerToken {
    /// `authorization: Bearer <token>`; the value is marked sensitive (never logged by tonic/hyper).
    pub fn new(token: &str) -> Result<Self, CliError> {
        let mut value: AsciiMetadataValue =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
                CliError::Usage("the admin token holds characters a header cannot carry".to_owned())
            })?;
        value.set_sensitive(true);
        Ok(Self(Some(value)))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// An authenticated Admin API client.
pub type Client = AdminClient<InterceptedService<Channel, BearerToken>>;

/// Reads the admin token: `--admin-token-file` (first line) or `KEYFLEET_ADMIN_TOKEN`. `None`
/// when neither is given but a client certificate is (mTLS alone); an error when there is no
/// credential at all.
pub fn admin_token(args: &ClientArgs) -> Result<Option<String>, CliError> {
    let token = match (&args.admin_token_file, &args.admin_token) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
                path: path.clone(),
                source,
            })?;
            text.lines().next().unwrap_or_default().trim().to_owned()
        }
        (None, Some(token)) => token.trim().to_owned(),
        (None, None) if args.client_cert.is_some() => return Ok(None),
        (None, None) => {
            return Err(CliError::Usage(
                "no admin credentials: pass --admin-token-file or set KEYFLEET_ADMIN_TOKEN, or pass \
                 --client-cert and --client-key"
                    .to_owned(),
            ));
        }
    };
    if token.is_empty() {
        return Err(CliError::Usage("the admin token is empty".to_owned()));
    }
    Ok(Some(token))
}

/// The client certificate and key of `--client-cert`/`--client-key`, if given.
fn client_identity(args: &ClientArgs) -> Result<Option<Identity>, CliError> {
    let (cert, key) = match (&args.client_cert, &args.client_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(CliError::Usage(
                "--client-cert and --client-key go together".to_owned(),
            ));
        }
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CliError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = zeroize::Zeroizing::new(read(key)?);
    if !String::from_utf8_lossy(&cert_pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(CliError::Usage(format!(
            "--client-cert {}: no PEM certificate found",
            cert.display()
        )));
    }
    if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
        return Err(CliError::Usage(format!(
            "--client-key {}: no PEM private key found",
            key.display()
        )));
    }
    Ok(Some(Identity::from_pem(cert_pem, key_pem.as_slice())))
}

/// System CA bundles tried, in order, when `--hub-ca` is not given.
const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn read_ca(args: &ClientArgs) -> Result<Option<Certificate>, CliError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CliError::Read {
            path: path.to_owned(),
            source,
        })
    };
    if let Some(path) = &args.hub_ca {
        return read(path).map(|pem| Some(Certificate::from_pem(pem)));
    }
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = from_env
        .into_iter()
        .chain(SYSTEM_CA_FILES.iter().map(PathBuf::from));
    for path in candidates {
        if path.is_file() {
            return read(&path).map(|pem| Some(Certificate::from_pem(pem)));
        }
    }
    Ok(None)
}

/// Connects to `--hub` with the admin token and/or the client certificate.
pub async fn connect(args: &ClientArgs) -> Result<Client, CliError> {
    let token = match admin_token(args)? {
        Some(token) => BearerToken::new(&token)?,
        None => BearerToken::default(),
    };
    let identity = client_identity(args)?;
    let url = args.hub_url.clone();
    let bad_url = || CliError::Usage(format!("invalid --hub URL {url:?}, expected https://HOST:PORT"));
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|_| bad_url())?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120));
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("https") => {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = read_ca(args)? {
                tls = tls.ca_certificate(ca);
            }
            if let Some(identity) = identity {
                tls = tls.identity(identity);
            }
            endpoint = endpoint.tls_config(tls).map_err(|source| CliError::Connect {
                url: url.clone(),
                source,
            })?;
        }
        Some("http") if identity.is_some() => {
            return Err(CliError::Usage(
                "--client-cert needs an https:// --hub URL".to_owned(),
            ));
        }
        Some("http") => {}
        _ => return Err(bad_url()),
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| CliError::Connect { url, source })?;
    Ok(AdminClient::with_interceptor(channel, token))
}

/// Runs one command against the hub its flags name, writing to `out`.
pub async fn run(command: ClientCommand, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let mut client = connect(command.client()).await?;
    run_with(&mut client, command, out).await
}

/// Runs one command with an already connected client.
pub async fn run_with(
    client: &mut Client,
    command: ClientCommand,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let hub_url = command.client().hub_url.clone();
    match command {
        ClientCommand::Cluster(with) => cluster(client, with.command, &hub_url, out).await,
        ClientCommand::Apply(args) => apply(client, &args.files, args.dry_run, out).await,
        ClientCommand::Get(with) => match with.command {
            GetCommand::FleetSecrets { output } => get_fleet_secrets(client, output, out).await,
            GetCommand::Stores { output } => get_stores(client, output, out).await,
        },
        ClientCommand::Delete(with) => match with.command {
            DeleteCommand::FleetSecret { name } => {
                call(
                    format!("delete fleetsecret {name:?}"),
                    client.delete_fleet_secret(v1::DeleteFleetSecretRequest { name: name.clone() }),
                )
                .await?;
                writeln!(out, "fleetsecret/{name} deleted")?;
                Ok(())
            }
        },
        ClientCommand::Status(args) => {
            status(client, args.fleet_secret, args.lagging, args.output, out).await
        }
        ClientCommand::Rollout(with) => match with.command {
            RolloutCommand::Pause { name } => {
                let request = v1::RolloutRequest {
                    fleet_secret: name.clone(),
                };
                let status = call(
                    format!("pause rollout of {name:?}"),
                    client.pause_rollout(request),
                )
                .await?;
                writeln!(out, "fleetsecret/{name} rollout paused")?;
                write_rollout_line(&status, out)
            }
            RolloutCommand::Resume { name } => {
                let request = v1::RolloutRequest {
                    fleet_secret: name.clone(),
                };
                let status = call(
                    format!("resume rollout of {name:?}"),
                    client.resume_rollout(request),
                )
                .await?;
                writeln!(out, "fleetsecret/{name} rollout resumed")?;
                write_rollout_line(&status, out)
            }
            RolloutCommand::Pin(target) => pin(client, target, out).await,
            RolloutCommand::Unpin(target) => unpin(client, target, out).await,
        },
        ClientCommand::Pin(args) => pin(client, args.target, out).await,
        ClientCommand::Unpin(args) => unpin(client, args.target, out).await,
        ClientCommand::SyncNow(args) => {
            let store = args.store.unwrap_or_default();
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
    }
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

async fn cluster(
    client: &mut Client,
    command: ClusterCommand,
    hub_url: &str,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match command {
        ClusterCommand::Add {
            name,
            labels,
            token_ttl,
            agent_hub_url,
        } => {
            let request = v1::CreateClusterRequest {
                name: name.clone(),
                labels: labels.into_iter().collect(),
                token_ttl_seconds: ttl_seconds(token_ttl),
            };
            let response = call(format!("create cluster {name:?}"), client.create_cluster(request)).await?;
            writeln!(out, "cluster/{name} created")?;
            let token = response
                .token
                .ok_or_else(|| missing_field("create cluster", "token"))?;
            write_enrollment(&token, agent_hub_url.as_deref().unwrap_or(hub_url), out)
        }
        ClusterCommand::List { selector, output } => {
            let selector = selector
                .as_deref()
                .map(parse_selector)
                .transpose()
                .map_err(CliError::Usage)?;
            let request = v1::ListClustersRequest {
                selector: selector.as_ref().map(selector_to_proto),
            };
            let response = call("list clusters".to_owned(), client.list_clusters(request)).await?;
            let values: Vec<Value> = response.clusters.iter().map(cluster_json).collect();
            if output != OutputFormat::Table {
                return write_structured(&Value::Array(values), output, out);
            }
            let mut table = Table::new(&["NAME", "STATE", "CONNECTED", "AGENT", "LAST SEEN", "LABELS"]);
            for cluster in &response.clusters {
                table.row(vec![
                    cluster.name.clone(),
                    cluster.state.clone(),
                    yes_no(cluster.connected),
                    dash(&cluster.agent_version),
                    timestamp(cluster.last_seen.as_ref()),
                    labels_text(&cluster.labels),
                ]);
            }
            table.write(out)
        }
        ClusterCommand::Show { name, output } => {
            let request = v1::GetClusterRequest { name: name.clone() };
            let response = call(format!("get cluster {name:?}"), client.get_cluster(request)).await?;
            let cluster = response
                .cluster
                .ok_or_else(|| missing_field("get cluster", "cluster"))?;
            if output != OutputFormat::Table {
                let mut value = cluster_json(&cluster);
                value["secrets"] = Value::Array(response.secrets.iter().map(secret_status_json).collect());
                return write_structured(&value, output, out);
            }
            writeln!(out, "Name:        {}", cluster.name)?;
            writeln!(out, "Id:          {}", cluster.id)?;
            writeln!(out, "State:       {}", cluster.state)?;
            let connection = if cluster.connected {
                format!("yes (replica {})", cluster.connected_replica)
            } else {
                "no".to_owned()
            };
            writeln!(out, "Connected:   {connection}")?;
            writeln!(out, "Agent:       {}", dash(&cluster.agent_version))?;
            writeln!(out, "Last seen:   {}", timestamp(cluster.last_seen.as_ref()))?;
            writeln!(out, "Created:     {}", timestamp(cluster.created.as_ref()))?;
            writeln!(out, "Labels:      {}", labels_text(&cluster.labels))?;
            writeln!(out)?;
            if response.secrets.is_empty() {
                writeln!(out, "No FleetSecret targets this cluster.")?;
                return Ok(());
            }
            let mut table = Table::new(&[
                "FLEETSECRET",
                "DESIRED",
                "APPLIED",
                "STATE",
                "ATTEMPTS",
                "UPDATED",
                "LAST ERROR",
            ]);
            for secret in &response.secrets {
                table.row(vec![
                    secret.fleet_secret.clone(),
                    revision_text(secret.desired_revision),
                    revision_text(secret.applied_revision),
                    secret.state.clone(),
                    secret.attempts.to_string(),
                    timestamp(secret.updated.as_ref()),
                    dash(&secret.last_error),
                ]);
            }
            table.write(out)
        }
        ClusterCommand::Label { name, changes } => {
            let mut set = std::collections::HashMap::new();
            let mut remove = Vec::new();
            for change in changes {
                match change {
                    LabelChange::Set(key, value) => {
                        set.insert(key, value);
                    }
                    LabelChange::Remove(key) => remove.push(key),
                }
            }
            let request = v1::LabelClusterRequest {
                name: name.clone(),
                set,
                remove,
            };
            let cluster = call(format!("label cluster {name:?}"), client.label_cluster(request)).await?;
            writeln!(out, "cluster/{name} labeled: {}", labels_text(&cluster.labels))?;
            Ok(())
        }
        ClusterCommand::Revoke { name } => {
            let request = v1::RevokeClusterRequest { name: name.clone() };
            call(format!("revoke cluster {name:?}"), client.revoke_cluster(request)).await?;
            writeln!(out, "cluster/{name} revoked")?;
            Ok(())
        }
        ClusterCommand::Token {
            name,
            token_ttl,
            agent_hub_url,
        } => {
            let request = v1::IssueEnrollmentTokenRequest {
                name: name.clone(),
                token_ttl_seconds: ttl_seconds(token_ttl),
            };
            let token = call(
                format!("issue an enrollment token for cluster {name:?}"),
                client.issue_enrollment_token(request),
            )
            .await?;
            write_enrollment(&token, agent_hub_url.as_deref().unwrap_or(hub_url), out)
        }
    }
}

/// Seconds for the wire; out-of-range values saturate and the hub names the field.
fn ttl_seconds(ttl: Duration) -> u32 {
    u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX)
}

fn missing_field(action: &str, field: &str) -> CliError {
    CliError::Hub {
        action: action.to_owned(),
        status: tonic::Status::internal(format!("the hub's answer lacks {field}")),
    }
}

fn write_enrollment(
    token: &v1::EnrollmentToken,
    hub_url: &str,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    writeln!(
        out,
        "Enrollment token for cluster {} (shown once, single use, expires {}):",
        token.cluster_name,
        timestamp(token.expires.as_ref())
    )?;
    writeln!(out, "  {}", token.token)?;
    writeln!(
        out,
        "Install the agent in the cluster (docs/agent.md; in deploy/agent/40-deployment.yaml set \
         KEYFLEET_AGENT_HUB_URL to {hub_url} and the image to your registry's):"
    )?;
    writeln!(out, "  kubectl apply -f deploy/agent/00-namespace.yaml")?;
    writeln!(
        out,
        "  kubectl -n keyfleet-system create secret generic keyfleet-agent-enrollment --from-literal=token={}",
        token.token
    )?;
    writeln!(
        out,
        "  kubectl -n keyfleet-system create configmap keyfleet-hub-ca --from-file=ca.crt=hub-ca.pem"
    )?;
    writeln!(out, "  kubectl apply -f deploy/agent/")?;
    writeln!(out, "Or run it as a process with a kubeconfig:")?;
    writeln!(
        out,
        "  KEYFLEET_AGENT_HUB_URL={hub_url} KEYFLEET_AGENT_ENROLLMENT_TOKEN={} keyfleet-agent",
        token.token
    )?;
    Ok(())
}

async fn apply(
    client: &mut Client,
    paths: &[PathBuf],
    dry_run: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let mut files = Vec::new();
    for path in paths {
        files.extend(crate::spec::read_path(path)?);
    }
    if files.is_empty() {
        return Err(CliError::Usage(format!(
            "no *.yaml or *.yml file in {}",
            paths
                .iter()
                .map(|path| path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let request = v1::ApplySpecsRequest {
        files: files
            .into_iter()
            .map(|file| v1::SpecFile {
                name: file.name,
                content: file.content,
            })
            .collect(),
        dry_run,
    };
    let response = call("apply".to_owned(), client.apply_specs(request)).await?;
    let suffix = if dry_run { " (dry run)" } else { "" };
    for object in &response.objects {
        writeln!(
            out,
            "{}/{} {} (generation {}){suffix}",
            object.kind.to_lowercase(),
            object.name,
            object.action,
            object.generation
        )?;
    }
    Ok(())
}

async fn get_fleet_secrets(
    client: &mut Client,
    output: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let response = call(
        "list fleetsecrets".to_owned(),
        client.list_fleet_secrets(v1::ListFleetSecretsRequest {}),
    )
    .await?;
    if output != OutputFormat::Table {
        let values = response
            .fleet_secrets
            .iter()
            .map(|secret| {
                json!({
                    "name": secret.name,
                    "store": secret.store,
                    "targetName": secret.target_name,
                    "targetType": secret.target_type,
                    "generation": secret.generation,
                    "revision": secret.revision,
                    "spec": secret.spec_yaml,
                })
            })
            .collect();
        return write_structured(&Value::Array(values), output, out);
    }
    let mut table = Table::new(&["NAME", "STORE", "TARGET", "TYPE", "GENERATION", "REVISION"]);
    for secret in &response.fleet_secrets {
        table.row(vec![
            secret.name.clone(),
            secret.store.clone(),
            secret.target_name.clone(),
            secret.target_type.clone(),
            secret.generation.to_string(),
            revision_text(secret.revision),
        ]);
    }
    table.write(out)
}

async fn get_stores(
    client: &mut Client,
    output: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    let response = call(
        "list stores".to_owned(),
        client.list_stores(v1::ListStoresRequest {}),
    )
    .await?;
    if output != OutputFormat::Table {
        let values = response
            .stores
            .iter()
            .map(|store| {
                json!({
                    "name": store.name,
                    "vaultUrl": store.vault_url,
                    "authType": store.auth_type,
                    "generation": store.generation,
                    "healthy": store.healthy,
                    "lastError": store.last_error,
                    "spec": store.spec_yaml,
                })
            })
            .collect();
        return write_structured(&Value::Array(values), output, out);
    }
    let mut table = Table::new(&["NAME", "VAULT", "AUTH", "GENERATION", "HEALTHY", "LAST ERROR"]);
    for store in &response.stores {
        table.row(vec![
            store.name.clone(),
            store.vault_url.clone(),
            store.auth_type.clone(),
            store.generation.to_string(),
            yes_no(store.healthy),
            dash(&store.last_error),
        ]);
    }
    table.write(out)
}

async fn status(
    client: &mut Client,
    fleet_secret: Option<String>,
    lagging: u32,
    output: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
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
        return match fleet_secret {
            Some(_) if values.len() == 1 => write_structured(&values[0], output, out),
            _ => write_structured(&Value::Array(values), output, out),
        };
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
    }
    if fleet_secret.is_none() {
        return Ok(());
    }
    for secret in &response.fleet_secrets {
        if !secret.sources.is_empty() {
            let sources: Vec<String> = secret
                .sources
                .iter()
                .map(|source| format!("{}@{}", source.remote_key, source.version))
                .collect();
            writeln!(out, "\nSources: {}", sources.join(", "))?;
        }
        if !secret.pins.is_empty() {
            let pins: Vec<String> = secret
                .pins
                .iter()
                .map(|pin| format!("{}@{}", pin.remote_key, pin.version))
                .collect();
            writeln!(out, "Pinned:  {}", pins.join(", "))?;
        }
        if secret.lagging.is_empty() {
            continue;
        }
        writeln!(out, "\nLagging clusters (oldest first):")?;
        let mut table = Table::new(&[
            "CLUSTER",
            "DESIRED",
            "APPLIED",
            "STATE",
            "ATTEMPTS",
            "UPDATED",
            "LAST ERROR",
        ]);
        for lag in &secret.lagging {
            table.row(vec![
                lag.cluster.clone(),
                revision_text(lag.desired_revision),
                revision_text(lag.applied_revision),
                lag.state.clone(),
                lag.attempts.to_string(),
                timestamp(lag.updated.as_ref()),
                dash(&lag.last_error),
            ]);
        }
        table.write(out)?;
    }
    Ok(())
}

async fn pin(client: &mut Client, target: PinTarget, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
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
    let pins: Vec<String> = status
        .pins
        .iter()
        .map(|pin| format!("{}@{}", pin.remote_key, pin.version))
        .collect();
    writeln!(out, "fleetsecret/{} pinned: {}", target.name, pins.join(", "))?;
    write_rollout_line(&status, out)
}

async fn unpin(
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

fn rollout_text(rollout: Option<&v1::RolloutStatus>) -> String {
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

fn cluster_json(cluster: &v1::Cluster) -> Value {
    json!({
        "id": cluster.id,
        "name": cluster.name,
        "labels": cluster.labels.iter().collect::<BTreeMap<_, _>>(),
        "state": cluster.state,
        "connected": cluster.connected,
        "connectedReplica": cluster.connected_replica,
        "agentVersion": cluster.agent_version,
        "lastSeen": timestamp_json(cluster.last_seen.as_ref()),
        "created": timestamp_json(cluster.created.as_ref()),
    })
}

fn secret_status_json(status: &v1::ClusterSecretStatus) -> Value {
    json!({
        "cluster": status.cluster,
        "fleetSecret": status.fleet_secret,
        "desiredRevision": status.desired_revision,
        "appliedRevision": status.applied_revision,
        "state": status.state,
        "lastError": status.last_error,
        "attempts": status.attempts,
        "updated": timestamp_json(status.updated.as_ref()),
    })
}

fn status_json(status: &v1::FleetSecretStatus) -> Value {
    let rollout = status.rollout.as_ref();
    json!({
        "name": status.name,
        "revision": status.revision,
        "sources": status.sources.iter().map(|s| json!({"remoteKey": s.remote_key, "version": s.version})).collect::<Vec<_>>(),
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
    })
}

fn write_structured(
    value: &Value,
    output: OutputFormat,
    out: &mut (dyn Write + Send),
) -> Result<(), CliError> {
    match output {
        OutputFormat::Json => {
            serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
            writeln!(out)?;
        }
        OutputFormat::Yaml | OutputFormat::Table => {
            let text = serde_yaml::to_string(value).map_err(std::io::Error::other)?;
            out.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

fn to_chrono(timestamp: &prost_types::Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    chrono::DateTime::from_timestamp(timestamp.seconds, nanos)
}

fn timestamp(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp.and_then(to_chrono).map_or_else(
        || "-".to_owned(),
        |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

fn timestamp_json(timestamp: Option<&prost_types::Timestamp>) -> Value {
    timestamp.and_then(to_chrono).map_or(Value::Null, |at| {
        Value::String(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    })
}

fn revision_text(revision: u64) -> String {
    if revision == 0 {
        "-".to_owned()
    } else {
        revision.to_string()
    }
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    if sorted.is_empty() {
        return "-".to_owned();
    }
    sorted
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Left-aligned columns separated by three spaces, as kubectl prints them.
struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|header| (*header).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn write(&self, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
        let mut widths: Vec<usize> = self.headers.iter().map(|header| header.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 3));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Parses a kubectl-style label selector: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`,
/// `k` (exists) and `!k` (does not exist), separated by commas.
pub fn parse_selector(text: &str) -> Result<LabelSelector, String> {
    let mut selector = LabelSelector::default();
    let mut depth = 0usize;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    let bad = |part: &str, why: &str| format!("invalid selector {text:?} at {:?}: {why}", part.trim());
    for part in parts {
        let term = part.trim();
        if term.is_empty() {
            return Err(bad(part, "empty requirement"));
        }
        let requirement = |key: &str, operator, values: Vec<String>| LabelRequirement {
            key: key.trim().to_owned(),
            operator,
            values,
        };
        if let Some((key, value)) = term.split_once("!=") {
            check_key(key).map_err(|why| bad(part, why))?;
            selector.match_expressions.push(requirement(
                key,
                SelectorOperator::NotIn,
                vec![value.trim().to_owned()],
            ));
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            check_key(key).map_err(|why| bad(part, why))?;
            selector
                .match_labels
                .insert(key.trim().to_owned(), value.trim().to_owned());
        } else if let Some((key, values, operator)) = set_term(term) {
            check_key(key).map_err(|why| bad(part, why))?;
            let values: Vec<String> = values
                .split(',')
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
                .collect();
            if values.is_empty() {
                return Err(bad(part, "a set needs at least one value"));
            }
            selector
                .match_expressions
                .push(requirement(key, operator, values));
        } else if let Some(key) = term.strip_prefix('!') {
            check_key(key).map_err(|why| bad(part, why))?;
            selector
                .match_expressions
                .push(requirement(key, SelectorOperator::DoesNotExist, Vec::new()));
        } else {
            check_key(term).map_err(|why| bad(part, why))?;
            selector
                .match_expressions
                .push(requirement(term, SelectorOperator::Exists, Vec::new()));
        }
    }
    Ok(selector)
}

/// `key in (a,b)` / `key notin (a,b)` → (key, "a,b", operator).
fn set_term(term: &str) -> Option<(&str, &str, SelectorOperator)> {
    let values = term.strip_suffix(')')?;
    let (head, values) = values.split_once('(')?;
    let head = head.trim_end();
    if let Some(key) = head.strip_suffix(" notin") {
        return Some((key, values, SelectorOperator::NotIn));
    }
    head.strip_suffix(" in")
        .map(|key| (key, values, SelectorOperator::In))
}

fn check_key(key: &str) -> Result<(), &'static str> {
    let key = key.trim();
    if key.is_empty() {
        return Err("empty label key");
    }
    if key
        .chars()
        .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err("label keys hold letters, digits, '-', '_', '.' and '/'");
    }
    Ok(())
}

/// The command reference in Markdown (`docs/cli.md`, kept current by a test): every
/// administration command with its usage, help text and flags.
pub fn markdown_reference() -> String {
    use std::fmt::Write as _;

    fn flags(command: &clap::Command) -> String {
        let mut text = String::new();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.is_hide_set() || matches!(id, "help" | "version") || is_common(id) {
                continue;
            }
            let name = match (arg.get_long(), arg.get_short()) {
                (Some(long), Some(short)) => format!("`-{short}, --{long}`"),
                (Some(long), None) => format!("`--{long}`"),
                (None, _) => format!("`<{}>`", id.to_uppercase()),
            };
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let mut extra = Vec::new();
            if let Some(env) = arg.get_env() {
                extra.push(format!("env `{}`", env.to_string_lossy()));
            }
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() {
                extra.push(format!("default `{}`", defaults.join(",")));
            }
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|value| !value.is_hide_set())
                .map(|value| value.get_name().to_owned())
                .collect();
            if !values.is_empty() && arg.get_action().takes_values() {
                extra.push(format!("one of `{}`", values.join("|")));
            }
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!(" ({})", extra.join("; "))
            };
            let _ = writeln!(text, "- {name}: {}{extra}", help.replace('\n', " "));
        }
        text
    }

    /// Flags every command has (logging) or every client command has (connection).
    fn is_common(id: &str) -> bool {
        matches!(
            id,
            "log"
                | "log_format"
                | "otlp_endpoint"
                | "hub_url"
                | "admin_token_file"
                | "admin_token"
                | "hub_ca"
                | "client_cert"
                | "client_key"
        )
    }

    fn is_client(command: &clap::Command) -> bool {
        command.get_arguments().any(|arg| arg.get_id() == "hub_url")
    }

    fn walk(command: &clap::Command, path: &str, out: &mut String) {
        for sub in command.get_subcommands() {
            if !is_client(sub) && !is_client(command) {
                continue;
            }
            let path = format!("{path} {}", sub.get_name());
            if sub.has_subcommands() {
                walk(sub, &path, out);
                continue;
            }
            let mut usage_command = sub.clone().bin_name(&path);
            let usage = usage_command.render_usage().to_string();
            let _ = writeln!(out, "## `{path}`\n");
            let _ = writeln!(
                out,
                "{}\n",
                sub.get_about().map(ToString::to_string).unwrap_or_default()
            );
            let _ = writeln!(out, "```text\n{}\n```\n", usage.trim_start_matches("Usage: "));
            let flags = flags(sub);
            if !flags.is_empty() {
                let _ = writeln!(out, "{flags}");
            }
        }
    }

    let command = <crate::config::Cli as clap::CommandFactory>::command();
    let mut out = String::from(
        "# `keyfleet` administration commands\n\n\
         Generated from the clap definitions in `hub/src/config.rs` by `keyfleet_hub::cli::markdown_reference`\n\
         (the `cli::tests::docs_are_current` test rewrites this file when it is stale). `keyfleet serve` is\n\
         described by `keyfleet serve --help`.\n\n\
         Every command talks to a hub's Admin API. Connection flags, accepted after the command name:\n\n\
         - `--hub URL` (env `KEYFLEET_HUB`, default `https://127.0.0.1:7443`)\n\
         - `--admin-token-file FILE`, or the token itself in env `KEYFLEET_ADMIN_TOKEN`\n\
         - `--hub-ca FILE` (env `KEYFLEET_HUB_CA`; default: the system's CA bundle)\n\
         - `--client-cert FILE --client-key FILE` (env `KEYFLEET_CLIENT_CERT`, `KEYFLEET_CLIENT_KEY`): a\n\
         \x20 client certificate (mTLS) issued by the hub's `--admin-client-ca`; it authenticates instead of\n\
         \x20 the admin token, or besides it\n\n\
         Listings and status print tables; `-o json` or `-o yaml` print the same data for scripts.\n\n\
         Exit codes: 0 done, 1 the hub refused or failed (invalid spec, already exists, bad state),\n\
         2 usage (bad flag, unreadable file, bad selector, missing admin token), 3 the hub is unreachable\n\
         or the admin token or client certificate is refused, 4 the named object does not exist.\n\n",
    );
    walk(&command, "keyfleet", &mut out);
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelRequirement {
        LabelRequirement {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn selectors_parse_as_kubectl_writes_them() {
        use SelectorOperator::*;
        let selector =
            parse_selector("env=prod, tier==web,region in (eu, us),ring notin (canary),!legacy,gpu,zone!=a")
                .expect("valid selector");
        assert_eq!(
            selector.match_labels,
            [
                ("env".to_owned(), "prod".to_owned()),
                ("tier".to_owned(), "web".to_owned())
            ]
            .into()
        );
        assert_eq!(
            selector.match_expressions,
            vec![
                requirement("region", In, &["eu", "us"]),
                requirement("ring", NotIn, &["canary"]),
                requirement("legacy", DoesNotExist, &[]),
                requirement("gpu", Exists, &[]),
                requirement("zone", NotIn, &["a"]),
            ]
        );
    }

    #[test]
    fn bad_selectors_name_the_requirement() {
        for (text, fragment) in [
            ("env=prod,,x", "\"\": empty requirement"),
            ("=prod", "empty label key"),
            ("region in ()", "at least one value"),
            ("re gion", "label keys hold"),
        ] {
            let error = parse_selector(text).expect_err(text);
            assert!(error.contains(fragment), "{text}: {error}");
        }
    }

    #[test]
    fn tables_align_columns() {
        let mut table = Table::new(&["NAME", "STATE"]);
        table.row(vec!["prod-eu-1".to_owned(), "active".to_owned()]);
        table.row(vec!["dev".to_owned(), "-".to_owned()]);
        let mut out = Vec::new();
        table.write(&mut out).expect("written");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "NAME        STATE\nprod-eu-1   active\ndev         -\n"
        );
    }

    #[test]
    fn the_admin_token_comes_from_the_file_first_and_is_required() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "kfa_file\nignored\n").expect("written");
        let mut args = ClientArgs {
            admin_token: Some("kfa_env".to_owned()),
            admin_token_file: Some(path),
            ..ClientArgs::default()
        };
        assert_eq!(admin_token(&args).expect("token").as_deref(), Some("kfa_file"));
        args.admin_token_file = None;
        assert_eq!(admin_token(&args).expect("token").as_deref(), Some("kfa_env"));
        args.admin_token = None;
        let error = admin_token(&args).expect_err("no token");
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("KEYFLEET_ADMIN_TOKEN"), "{error}");
        assert!(error.to_string().contains("--client-cert"), "{error}");
        args.client_cert = Some(dir.path().join("alice.pem"));
        assert_eq!(admin_token(&args).expect("a client certificate is enough"), None);
        args.admin_token_file = Some(dir.path().join("missing"));
        assert_eq!(admin_token(&args).expect_err("missing file").exit_code(), 2);
    }

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
        let wrapped = anyhow::Error::from(hub(tonic::Code::NotFound));
        assert_eq!(exit_code(&wrapped), 4);
        assert_eq!(exit_code(&anyhow::anyhow!("other")), 1);
    }

    #[test]
    fn the_bearer_header_is_sensitive() {
        let mut interceptor = BearerToken::new("kfa_secret").expect("ascii token");
        let request = interceptor.call(tonic::Request::new(())).expect("intercepted");
        let value = request.metadata().get("authorization").expect("header set");
        assert!(value.is_sensitive());
        assert_eq!(value.to_str().expect("ascii"), "Bearer kfa_secret");
        assert!(!format!("{value:?}").contains("kfa_secret"));
        assert!(BearerToken::new("bad\ntoken").is_err());
        let request = BearerToken::default()
            .call(tonic::Request::new(()))
            .expect("intercepted");
        assert!(
            request.metadata().get("authorization").is_none(),
            "certificate-only clients send no token"
        );
    }

    #[test]
    fn client_certificates_are_checked_before_connecting() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("alice.pem");
        let key = dir.path().join("alice-key.pem");
        let mut args = ClientArgs {
            client_cert: Some(cert.clone()),
            client_key: Some(key.clone()),
            ..ClientArgs::default()
        };
        let error = client_identity(&args).map(drop).expect_err("missing files");
        assert!(error.to_string().contains("alice.pem"), "{error}");
        assert_eq!(error.exit_code(), 2);
        std::fs::write(&cert, "not pem").expect("write");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .expect("write");
        let error = client_identity(&args).map(drop).expect_err("not a certificate");
        assert_eq!(
            error.to_string(),
            format!("--client-cert {}: no PEM certificate found", cert.display())
        );
        args.client_key = None;
        assert_eq!(client_identity(&args).map(drop).expect_err("half").exit_code(), 2);
        args.client_cert = None;
        assert!(client_identity(&args).expect("none").is_none());
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
