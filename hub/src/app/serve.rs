//! `keyfleet serve`: connects the store, builds the fleet, the runtime, the status writer and the
//! gRPC services, opens the listeners, and on shutdown drains agents and flushes status.
//!
//! Order matters: the gRPC listener (Admin) opens early, but the Sync service accepts agents only
//! once the runtime has computed every cluster's desired set (`SyncService::set_ready`), so a
//! reconnecting agent is never compared against an empty set.

mod allocator;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::fleet::credentials::Credentials;
use crate::fleet::{Fleet, FleetConfig};
use crate::grpc::admin::{AdminAuth, AdminService};
use crate::grpc::client_ca::ClientCa;
use crate::grpc::convert::ProtoEncoder;
use crate::grpc::enroll::EnrollService;
use crate::grpc::server::{self, TlsMaterial};
use crate::grpc::sync::{SyncConfig, SyncService};
use crate::history::{HistoryConfig, HistoryWriter};
use crate::ops::governance::{GovernanceMetrics, GovernanceRefresher};
use crate::ops::{self, Ops};
use crate::status::{StatusConfig, StatusWriter};
use crate::store::Store;
use crate::sync::engine::{Engine, EngineConfig, EngineDeps, EngineError};
use crate::vault::eventgrid::{self, EventGridConfig};
use crate::vault::{AzureSources, VaultMetrics, VaultOptions};

/// Says which digest keys this replica uses (ids only) and where they came from.
fn log_digest_keys(keys: &crate::domain::DigestKeys, source: &crate::config::DigestKeySource) {
    use crate::config::DigestKeySource;
    let previous: Vec<String> = keys.previous().map(ToString::to_string).collect();
    let previous = previous.join(",");
    match source {
        DigestKeySource::File(path) => {
            tracing::info!(current = %keys.current(), previous, file = %path.display(), "digest keys loaded");
        }
        DigestKeySource::BesideDatabase { path, created: true } => {
            tracing::info!(current = %keys.current(), file = %path.display(), "digest key created beside the SQLite database; keep it with the database (docs/security.md)");
        }
        DigestKeySource::BesideDatabase { path, created: false } => {
            tracing::info!(current = %keys.current(), previous, file = %path.display(), "digest keys loaded from beside the SQLite database");
        }
        DigestKeySource::Ephemeral => {
            tracing::info!(current = %keys.current(), "in-memory store: digests keyed with a key of this process");
        }
    }
}

/// Capacity of each copy of the fleet's event stream.
const EVENT_BUFFER: usize = 65_536;
/// Enrollments admitted per second, and at once (a fleet enrolling after `cluster add` en masse).
/// Each costs a digest and three small statements; the same rate as stream admission, so a
/// 10,000-cluster fleet enrolls in about 20 s (at 200/s it took 60 s).
const ENROLL_PER_SECOND: u32 = 500;
const ENROLL_BURST: u32 = 500;

pub(super) async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    super::install_crypto_provider();
    allocator::limit_arenas();
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
    }
    let ops = Ops::default();

    // Store.
    if let Some(warning) = config.database.tls_warning() {
        tracing::warn!("{warning}");
    }
    let (digest_keys, key_source) =
        crate::config::load_digest_keys(config.digest_key_file.as_deref(), &config.database)?;
    log_digest_keys(&digest_keys, &key_source);
    let store = Store::connect(config.database.expose())
        .await
        .context("connect to the store given by --database")?
        .with_digest_keys(digest_keys);
    if config.migrate {
        store
            .migrate()
            .await
            .with_context(|| format!("migrate the {} store", store.backend()))?;
    }
    tracing::info!(backend = store.backend(), "store connected");
    let keyed = store
        .key_unkeyed_digests()
        .await
        .context("key the digests the store holds plain")?;
    if keyed.total() > 0 {
        tracing::info!(
            secret_versions = keyed.secret_versions,
            revisions = keyed.revisions,
            sync_status = keyed.sync_status,
            "keyed digests the store held plain"
        );
    }
    if let Some(dir) = &config.config_dir {
        super::load_config_dir(&store, dir).await?;
    }

    // Fan-out, runtime, status.
    let replica = config.grpc.replica_id.clone();
    // Every fleet event goes to the status writer, the history writer (it drains into memory,
    // bounded: a slow store never holds a stream) and the runtime (rollout progress), in that
    // order, sent by the stream that has it.
    let (status_tx, status_rx) = mpsc::channel(EVENT_BUFFER);
    let (history_tx, history_rx) = mpsc::channel(EVENT_BUFFER);
    let (runtime_tx, runtime_rx) = mpsc::channel(EVENT_BUFFER);
    let fleet = Fleet::with_subscribers(FleetConfig::default(), vec![status_tx, history_tx, runtime_tx]);
    ops.register(|registry| fleet.register_metrics(registry));
    tokio::spawn(allocator::trim_after_churn(fleet.clone(), stop.clone()));
    let credentials = Credentials::default();
    let vault_metrics = VaultMetrics::default();
    // `keyfleet_hub_vault_*` (as docs/metrics.md names them).
    ops.register(|registry| vault_metrics.register(registry.sub_registry_with_prefix("vault")));
    ops.register(|registry| vault_metrics.register_leader(registry));
    let governance = GovernanceMetrics::default();
    ops.register(|registry| governance.register(registry));
    let governance = GovernanceRefresher::new(governance, vault_metrics.clone());
    let vault = VaultOptions {
        ca_pem: match &config.vault.ca_file {
            Some(path) => Some(
                std::fs::read(path).with_context(|| format!("read --vault-ca-file {}", path.display()))?,
            ),
            None => None,
        },
        authority_host: config.vault.authority_host.clone(),
        verify_challenge_resource: !config.vault.skip_challenge_resource_check,
        metrics: vault_metrics.clone(),
        ..VaultOptions::default()
    };
    let engine_config = EngineConfig {
        replica: replica.clone(),
        vault_metrics,
        ..EngineConfig::default()
    };
    let offline_grace = engine_config.offline_grace;
    let (runtime, control) = Engine::new(
        engine_config,
        EngineDeps {
            store: store.clone(),
            fleet: fleet.clone(),
            credentials: credentials.clone(),
            sources: Arc::new(AzureSources(vault)),
            encoder: Arc::new(ProtoEncoder),
        },
    );
    let control = Arc::new(control);
    let mut runtime_ready = runtime.ready();
    let history = HistoryWriter::new(
        store.clone(),
        HistoryConfig {
            replica: replica.clone(),
            ..HistoryConfig::default()
        },
    );
    ops.register(|registry| history.metrics().register(registry));
    let status = StatusWriter::new(
        store.clone(),
        fleet.clone(),
        StatusConfig {
            replica: replica.clone(),
            ..StatusConfig::default()
        },
    );
    ops.register(|registry| status.metrics().register(registry));
    // Stopped explicitly once the gRPC server is down (other fleet clones may outlive it): it
    // then writes what it buffered.
    let status_stop = CancellationToken::new();
    let status_task = tokio::spawn(status.run_until(status_rx, status_stop.clone().cancelled_owned()));
    let history_task = tokio::spawn(history.run_until(history_rx, status_stop.clone().cancelled_owned()));
    let mut runtime_task = tokio::spawn(runtime.run(runtime_rx, stop.clone().cancelled_owned()));

    // Operations endpoint.
    let (ops_addr, ops_server) = ops::bind(config.ops.addr, ops.clone(), stop.clone().cancelled_owned())
        .await
        .with_context(|| format!("bind the operations endpoint on {}", config.ops.addr))?;
    let ops_task = tokio::spawn(ops_server);

    // Event Grid webhook (optional): notifications go to the engine, which fetches or forwards.
    let eventgrid_addr = match &config.eventgrid {
        Some(listen) => {
            let code = std::fs::read_to_string(&listen.code_file)
                .with_context(|| format!("read --eventgrid-code-file {}", listen.code_file.display()))?;
            let webhook = EventGridConfig::new(&code, control.clone()).map_err(|message| {
                anyhow::anyhow!("--eventgrid-code-file {}: {message}", listen.code_file.display())
            })?;
            let listener = tokio::net::TcpListener::bind(listen.addr)
                .await
                .with_context(|| format!("bind the Event Grid webhook on {}", listen.addr))?;
            let addr = listener
                .local_addr()
                .context("read the Event Grid webhook address")?;
            let shutdown = stop.clone().cancelled_owned();
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, eventgrid::router(webhook))
                    .with_graceful_shutdown(shutdown)
                    .await
                {
                    tracing::error!(error = %error, "the Event Grid webhook stopped");
                }
            });
            tracing::info!(%addr, path = eventgrid::PATH, "Event Grid webhook listening");
            Some(addr)
        }
        None => None,
    };

    // gRPC: Sync, Enrollment, Admin.
    let tls_source = config
        .grpc
        .tls
        .as_ref()
        .context("serve needs TLS: --tls-cert and --tls-key, or --tls-self-signed DIR for development")?;
    let tls = TlsMaterial::load(tls_source).context("load the gRPC TLS material")?;
    let admin_client_ca = match &config.admin_client_ca {
        Some(path) => {
            let client_ca = ClientCa::load(path).context("load --admin-client-ca")?;
            Some(match &config.admin_client_crl {
                Some(crl) => client_ca.with_crl_file(crl).context("load --admin-client-crl")?,
                None => client_ca,
            })
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.grpc.addr)
        .await
        .with_context(|| format!("bind the gRPC endpoint on {}", config.grpc.addr))?;
    let grpc_addr = listener.local_addr().context("read the gRPC address")?;
    let sync = SyncService::new(
        fleet.clone(),
        credentials.clone(),
        SyncConfig {
            hub_instance: replica.clone(),
            ..SyncConfig::default()
        },
    );
    let enroll = EnrollService::new(
        store.clone(),
        credentials.clone(),
        ENROLL_PER_SECOND,
        ENROLL_BURST,
    );
    let admin_tokens = super::admin_tokens(config.admin_token_file.as_deref(), admin_client_ca.is_some())?;
    let mut admin_auth = AdminAuth::new(admin_tokens);
    if let Some(client_ca) = admin_client_ca.clone() {
        admin_auth = admin_auth.with_client_ca(client_ca);
    }
    let admin = AdminService::new(store.clone(), control.clone())
        .with_offline_grace(offline_grace)
        .with_near_expiry_threshold(config.ops.near_expiry_threshold);
    tokio::spawn(governance.run(admin.admin(), config.ops.metrics_refresh, stop.clone()));
    let admin = admin.into_server(admin_auth);
    let routes = crate::grpc::routes(sync.clone(), enroll, admin);
    let grpc_stop = CancellationToken::new();
    let grpc_shutdown = grpc_stop.clone().cancelled_owned();
    let mut limits = server::ListenerLimits::default();
    if let Some(max_connections) = config.grpc.max_connections {
        limits.max_connections = max_connections.max(1);
    }
    let max_connections = limits.max_connections;
    let grpc_task = match admin_client_ca {
        Some(client_ca) => tokio::spawn(async move {
            server::serve_requesting_client_certs_with_limits(
                listener,
                &tls,
                &client_ca,
                routes,
                limits,
                grpc_shutdown,
            )
            .await
        }),
        None => tokio::spawn(server::serve_with_limits(
            listener,
            tls.server_config(),
            routes,
            limits,
            grpc_shutdown,
        )),
    };
    tracing::info!(%grpc_addr, %ops_addr, replica = %replica, max_connections,
        "listening; computing desired state");

    // Ready once the runtime has every cluster's desired set.
    tokio::select! {
        ready = runtime_ready.wait_for(|ready| *ready) => {
            if ready.is_err() {
                return finish_runtime(&mut runtime_task).await;
            }
        }
        result = &mut runtime_task => return runtime_result(result),
        () = stop.cancelled() => {}
    }
    if !stop.is_cancelled() {
        sync.set_ready(true);
        ops.set_ready(true);
        if let Some(path) = &config.ready_file {
            super::write_ready_file(path, grpc_addr, ops_addr, eventgrid_addr)?;
        }
        tracing::info!(%grpc_addr, %ops_addr, "hub ready");
        tokio::select! {
            () = stop.cancelled() => {}
            result = &mut runtime_task => {
                // The runtime only ends early on an error; serve no longer.
                stop.cancel();
                runtime_result(result)?;
            }
        }
    }

    // Drain: tell agents to reconnect elsewhere (jittered), wait for streams to end, then stop.
    tracing::info!(grace = ?config.shutdown_grace, "shutting down: draining agents");
    ops.set_ready(false);
    sync.set_ready(false);
    let draining = fleet.drain();
    if tokio::time::timeout(config.shutdown_grace, fleet.idle())
        .await
        .is_err()
    {
        tracing::warn!(
            streams = draining,
            "grace period over; closing the remaining streams"
        );
    }
    grpc_stop.cancel();
    if let Ok(Err(error)) = grpc_task.await {
        tracing::warn!(error = %error, "gRPC server ended with an error");
    }
    // No stream is left: the status writer flushes what it buffered and returns.
    drop(fleet);
    drop(sync);
    status_stop.cancel();
    match tokio::time::timeout(config.shutdown_grace, status_task).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(error = %error, "status writer failed"),
        Err(_) => tracing::warn!("status writer did not finish its last flush in time"),
    }
    if tokio::time::timeout(config.shutdown_grace, history_task)
        .await
        .is_err()
    {
        tracing::warn!("history writer did not finish its last flush in time");
    }
    let _ = ops_task.await;
    if !runtime_task.is_finished() {
        runtime_task.abort();
    }
    store.close().await;
    tracing::info!("hub stopped");
    Ok(())
}

fn runtime_result(result: Result<Result<(), EngineError>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(anyhow::Error::new(error).context("the runtime stopped")),
        Err(error) => Err(anyhow::Error::new(error).context("the runtime task failed")),
    }
}

async fn finish_runtime(task: &mut tokio::task::JoinHandle<Result<(), EngineError>>) -> anyhow::Result<()> {
    runtime_result(task.await)
}
