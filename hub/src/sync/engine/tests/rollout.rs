//! A fleet of in-process agents (fleet sessions that ack whatever they are sent) under one
//! engine: a rotation across rollout waves, a pin that rolls back, a revocation, and a restart
//! that catches up with a rotation it missed, all without HTTP or gRPC.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{engine, sqlite};
use crate::domain::{ClusterId, Labels, Sha256};
use crate::fleet::{Fleet, FleetConfig, FleetEvent, ItemOutcome, Session};
use crate::store::{ChangeKind, SpecKind, SpecWrite, Store};
use crate::sync::engine::Engine;
use crate::vault::Operation;
use crate::vault::fake::{FakeSources, FakeVault};

const STORE: &str = "kind: SecretStore
name: shared-kv
provider:
  azurekv:
    vaultUrl: https://shared-kv.vault.azure.net
    authType: WorkloadIdentity
";

/// `regcred` from `acr-pull`, with `rollout` (YAML, may be empty) appended.
fn fleet_secret(rollout: &str) -> String {
    format!(
        "kind: FleetSecret
name: regcred
storeRef: shared-kv
data:
  - secretKey: password
    remoteRef: {{ key: acr-pull }}
target:
  name: regcred
  type: Opaque
  namespaces: [default]
{rollout}"
    )
}

/// Canary first, then everyone.
const WAVED: &str = "rollout:\n  waves: [{ matchLabels: { ring: canary } }, { percent: 100 }]\n";

/// Everyone at once.
const AT_ONCE: &str = "";

/// An engine, its fleet and store, a fake vault, and one in-process agent per cluster.
struct Hub {
    engine: Engine,
    store: Store,
    fleet: Fleet,
    events: mpsc::Receiver<FleetEvent>,
    vault: Arc<FakeVault>,
    agents: BTreeMap<String, (ClusterId, Session)>,
    _dir: tempfile::TempDir,
}

/// A hub with `clusters` (name, ring label) enrolled, `regcred` applied with `rollout` and `acr-pull` at
/// version "one", warmed up, every agent connected and converged.
async fn hub(rollout: &str, clusters: &[(&str, &str)]) -> Hub {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = sqlite(&dir).await;
    let vault = Arc::new(FakeVault::default());
    vault.set("acr-pull", b"one");
    apply(&store, &fleet_secret(rollout)).await;
    let mut ids = BTreeMap::new();
    for (name, ring) in clusters {
        let labels: Labels = [("ring".to_owned(), (*ring).to_owned())].into_iter().collect();
        let cluster = store.create_cluster(name, &labels).await.expect("create cluster");
        // Enrolled (active): only enrolled clusters hold a wave back.
        store
            .set_cluster_credential(cluster.id, &Sha256::of(name.as_bytes()))
            .await
            .expect("enroll");
        ids.insert((*name).to_owned(), cluster.id);
    }
    let (fleet, events) = Fleet::new(FleetConfig::default());
    let mut engine = engine(&store, &fleet, &FakeSources(Arc::clone(&vault)));
    engine.warm_up().await.expect("warm up");
    let mut hub = Hub {
        engine,
        store,
        fleet,
        events,
        vault,
        agents: BTreeMap::new(),
        _dir: dir,
    };
    for (name, id) in ids {
        let mut session = hub.fleet.attach(id).expect("attach");
        session.set_applied([]);
        session.announce("test", false).await;
        hub.agents.insert(name, (id, session));
    }
    hub.settle().await;
    hub
}

async fn apply(store: &Store, fleet_secret: &str) {
    store
        .apply_specs(
            &[
                SpecWrite {
                    kind: SpecKind::SecretStore,
                    name: "shared-kv",
                    yaml: STORE,
                },
                SpecWrite {
                    kind: SpecKind::FleetSecret,
                    name: "regcred",
                    yaml: fleet_secret,
                },
            ],
            "test",
        )
        .await
        .expect("apply specs");
}

impl Hub {
    /// Agents apply everything they are sent and the engine plans again (as its debounce
    /// would), until nothing moves.
    async fn settle(&mut self) {
        for _ in 0..20 {
            let mut moved = false;
            for (_, session) in self.agents.values_mut() {
                while let Some(update) = session.next_update(Instant::now()).await {
                    let results = update
                        .upserts
                        .iter()
                        .map(|item| ItemOutcome {
                            key: item.key.clone(),
                            revision: item.revision,
                            error: None,
                        })
                        .chain(update.removals.iter().map(|(key, _)| ItemOutcome {
                            key: key.clone(),
                            revision: 0,
                            error: None,
                        }))
                        .collect();
                    session
                        .ack(update.nonce, results, Instant::now())
                        .await
                        .expect("ack");
                    moved = true;
                }
            }
            while let Ok(event) = self.events.try_recv() {
                self.engine.observe(event);
                moved = true;
            }
            self.engine.replan = true;
            self.engine.rebuild().await.expect("rebuild");
            if !moved {
                return;
            }
        }
        panic!("the fleet did not settle");
    }

    /// Sync-now: the leader's pollers sweep the vault, the engine takes what they found.
    async fn poll(&mut self) {
        let (reply, answer) = oneshot::channel();
        self.engine.sync_now(None, reply);
        answer.await.expect("reply").expect("sync-now");
        while let Ok(change) = self.engine.vaults.changes.try_recv() {
            self.engine.on_vault_change(change).await;
        }
        self.engine.rebuild().await.expect("rebuild");
    }

    /// The revision the fleet wants `cluster` to hold.
    fn desired(&self, cluster: &str) -> u64 {
        let (id, _) = &self.agents[cluster];
        self.fleet
            .desired(*id)
            .and_then(|desired| desired.items.get("regcred").map(|item| item.revision))
            .unwrap_or(0)
    }

    fn desired_all(&self) -> Vec<u64> {
        self.agents.keys().map(|name| self.desired(name)).collect()
    }
}

#[tokio::test]
async fn a_rotation_reaches_the_canary_first_then_everyone() {
    let mut hub = hub(
        WAVED,
        &[("canary-1", "canary"), ("prod-1", "main"), ("prod-2", "main")],
    )
    .await;
    let first = hub.desired("canary-1");
    assert!(first > 0, "converged on a first revision");
    assert_eq!(hub.desired_all(), vec![first; 3]);

    hub.vault.set("acr-pull", b"two");
    hub.poll().await;
    let second = hub.desired("canary-1");
    assert!(second > first, "the canary wave gets the new revision");
    assert_eq!(
        (hub.desired("prod-1"), hub.desired("prod-2")),
        (first, first),
        "the next wave waits for the canary"
    );

    hub.settle().await;
    assert_eq!(
        hub.desired_all(),
        vec![second; 3],
        "the canary applied: everyone gets it"
    );
    let recorded = hub.store.rollouts().await.expect("rollouts");
    let progress = recorded
        .iter()
        .find(|record| record.fleet_secret == "regcred" && record.revision == second)
        .expect("the leader recorded the rollout");
    assert_eq!(progress.current_wave, 1, "past the canary wave");
    assert_eq!(
        hub.vault.calls(Operation::Get),
        2,
        "one GET per version for the whole fleet"
    );
}

/// A wave's last ack can plan (`plan_now`) between a new version's arrival and its render: that
/// plan must not end the new rotation, or its render and plan lose their parent span (seen as a
/// flaky `hub/tests/traces.rs`).
#[tokio::test]
async fn a_plan_before_the_render_keeps_the_new_rotation() {
    let mut hub = hub(WAVED, &[("canary-1", "canary"), ("prod-1", "main")]).await;
    hub.vault.set("acr-pull", b"two");
    let (reply, answer) = oneshot::channel();
    hub.engine.sync_now(None, reply);
    answer.await.expect("reply").expect("sync-now");
    while let Ok(change) = hub.engine.vaults.changes.try_recv() {
        hub.engine.on_vault_change(change).await;
    }
    assert!(hub.engine.rotations.contains_key("regcred"), "the rotation began");

    hub.engine.replan = true;
    hub.engine.plan_now().await.expect("plan");
    assert!(
        hub.engine.rotations.contains_key("regcred"),
        "a plan before the render ended the rotation"
    );
    hub.engine.rebuild().await.expect("rebuild");
    assert!(
        hub.engine.rotations.contains_key("regcred"),
        "the rollout has a wave to go: its rotation stays open"
    );
    hub.settle().await;
    assert!(
        hub.engine.rotations.is_empty(),
        "the last wave ended the rotation"
    );
}

#[tokio::test]
async fn a_pin_rolls_the_fleet_back_to_the_pinned_version() {
    let mut hub = hub(AT_ONCE, &[("prod-1", "main"), ("prod-2", "main")]).await;
    let first_version = hub.store.latest_revisions().await.expect("revisions")[0]
        .sources
        .clone();
    let first_sha = hub.fleet.desired(hub.agents["prod-1"].0).expect("desired").items["regcred"].sha256;

    hub.vault.set("acr-pull", b"two");
    hub.poll().await;
    hub.settle().await;
    let rotated = hub.fleet.desired(hub.agents["prod-1"].0).expect("desired").items["regcred"].sha256;
    assert_ne!(rotated, first_sha, "rotated");

    let (_, version) = &first_version[0];
    hub.store
        .set_pin("regcred", "acr-pull", version)
        .await
        .expect("pin");
    hub.store
        .append_change(ChangeKind::Pin, "regcred/acr-pull")
        .await
        .expect("change");
    hub.engine.catch_up().await.expect("catch up");
    hub.engine.rebuild().await.expect("rebuild");
    hub.settle().await;
    for name in ["prod-1", "prod-2"] {
        let desired = hub.fleet.desired(hub.agents[name].0).expect("desired");
        assert_eq!(
            desired.items["regcred"].sha256, first_sha,
            "{name} is back on the pinned value"
        );
    }
    let latest = hub.store.latest_revisions().await.expect("revisions");
    assert_eq!(
        latest[0].sources, first_version,
        "the newest revision reads the pinned version"
    );
}

#[tokio::test]
async fn a_revoked_cluster_loses_its_stream_and_credential() {
    let mut hub = hub(AT_ONCE, &[("prod-1", "main"), ("prod-2", "main")]).await;
    let (revoked, _) = hub.agents["prod-2"];
    let credential = crate::fleet::credentials::new_credential();
    hub.engine
        .credentials
        .insert(Sha256::of(credential.as_bytes()), revoked);
    hub.store.revoke_cluster(revoked).await.expect("revoke");
    hub.store
        .append_change(ChangeKind::Cluster, "prod-2")
        .await
        .expect("change");
    hub.engine.catch_up().await.expect("catch up");
    hub.engine.rebuild().await.expect("rebuild");

    let (_, session) = &hub.agents["prod-2"];
    assert_eq!(
        session.close_reason(),
        Some(crate::fleet::CloseReason::Revoked),
        "its stream is told to end"
    );
    assert_eq!(
        hub.engine.credentials.lookup(&credential),
        None,
        "its credential is gone"
    );
    assert!(hub.fleet.is_revoked(revoked));
    let (kept, session) = &hub.agents["prod-1"];
    assert_eq!(session.close_reason(), None, "the other cluster keeps its stream");
    assert!(hub.fleet.desired(*kept).is_some());
}

#[tokio::test]
async fn a_restarted_engine_catches_up_with_a_rotation_it_missed() {
    let mut hub = hub(WAVED, &[("canary-1", "canary"), ("prod-1", "main")]).await;
    let first = hub.desired("prod-1");
    // The engine stops; Key Vault rotates while no hub runs. The new process gets a vault of
    // its own holding the same versions (same ids and values), so its calls are counted apart
    // from anything the old process's poller still does.
    hub.engine.vaults.lose_leadership();
    let vault = Arc::new(FakeVault::default());
    vault.set("acr-pull", b"one");
    vault.set("acr-pull", b"two");
    // A new process: its agents reconnect as it starts.
    let (fleet, _events) = Fleet::new(FleetConfig::default());
    let _sessions: Vec<_> = hub
        .agents
        .values()
        .map(|(id, _)| fleet.attach(*id).expect("attach"))
        .collect();
    let mut restarted = engine(&hub.store, &fleet, &FakeSources(Arc::clone(&vault)));
    restarted.warm_up().await.expect("warm up");

    let revisions = hub.store.latest_revisions().await.expect("revisions");
    let second = revisions[0].revision;
    assert!(second > first, "the restarted leader rendered the missed version");
    let state = &restarted.secrets["regcred"];
    assert_eq!(
        state.current.as_ref().map(|built| built.reference.number),
        Some(second)
    );
    assert_eq!(
        state.previous.map(|previous| previous.number),
        Some(first),
        "the previous revision is restored from the store"
    );
    assert!(
        restarted
            .values
            .built
            .contains_key(&("regcred".to_owned(), first)),
        "and reproduced, so clusters beyond the canary keep it"
    );
    let desired = |name: &str| {
        fleet
            .desired(hub.agents[name].0)
            .and_then(|desired| desired.items.get("regcred").map(|item| item.revision))
    };
    assert_eq!(
        desired("canary-1"),
        Some(second),
        "the canary gets the new revision"
    );
    assert_eq!(
        desired("prod-1"),
        Some(first),
        "the next wave keeps what it holds"
    );
    assert_eq!(
        vault.calls(Operation::Get),
        2,
        "one GET for the new version, one to reproduce the previous"
    );
}

#[tokio::test]
async fn a_revocation_whose_change_was_missed_is_enforced_by_the_reconcile() {
    let mut hub = hub(AT_ONCE, &[("prod-1", "main"), ("prod-2", "main")]).await;
    let (revoked, _) = hub.agents["prod-2"];
    hub.store.revoke_cluster(revoked).await.expect("revoke");
    // This replica's tail moved past the entry without acting on it (the failure the periodic
    // reconcile exists for).
    hub.engine.cursor = hub.store.latest_change().await.expect("latest");
    hub.engine.catch_up().await.expect("catch up");
    let (_, session) = &hub.agents["prod-2"];
    assert_eq!(session.close_reason(), None, "the change log told it nothing");

    hub.engine.reload_clusters().await.expect("reconcile");
    let (_, session) = &hub.agents["prod-2"];
    assert_eq!(
        session.close_reason(),
        Some(crate::fleet::CloseReason::Revoked),
        "the reconcile ends the revoked cluster's stream"
    );
    assert!(hub.fleet.is_revoked(revoked));
    let (_, session) = &hub.agents["prod-1"];
    assert_eq!(session.close_reason(), None);
}

/// Acks every update queued for `session` (what an agent does).
async fn ack_all(session: &mut Session) -> Vec<u64> {
    let mut revisions = Vec::new();
    while let Some(update) = session.next_update(Instant::now()).await {
        let results = update
            .upserts
            .iter()
            .map(|item| {
                revisions.push(item.revision);
                ItemOutcome {
                    key: item.key.clone(),
                    revision: item.revision,
                    error: None,
                }
            })
            .collect();
        session
            .ack(update.nonce, results, Instant::now())
            .await
            .expect("ack");
    }
    revisions
}

#[tokio::test]
async fn the_next_wave_starts_on_the_last_ack_of_a_wave_not_on_a_timer() {
    let mut hub = hub(
        WAVED,
        &[("canary-1", "canary"), ("prod-1", "main"), ("prod-2", "main")],
    )
    .await;
    let first = hub.desired("prod-1");
    hub.vault.set("acr-pull", b"two");
    hub.poll().await;
    let second = hub.desired("canary-1");
    assert!(second > first);
    assert_eq!(hub.desired("prod-1"), first, "the canary wave first");

    // The loop runs with every timer an hour away: only the ack can start the next wave.
    let Hub {
        mut engine,
        events,
        mut agents,
        _dir,
        ..
    } = hub;
    let hour = std::time::Duration::from_secs(3600);
    engine.config.debounce = hour;
    engine.config.debounce_max = hour;
    engine.config.tail_interval = hour;
    engine.config.lead_retry = hour;
    engine.config.credential_reconcile = hour;
    engine.config.change_log_prune_interval = hour;
    let mut ready = engine.ready();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(engine.run(events, async move {
        let _ = stopped.await;
    }));
    ready.wait_for(|ready| *ready).await.expect("engine ready");

    let (_, prod) = agents.get_mut("prod-1").expect("prod-1");
    assert!(
        !ack_all(prod).await.contains(&second),
        "prod-1 waits for the canary"
    );
    let (_, canary) = agents.get_mut("canary-1").expect("canary-1");
    assert!(ack_all(canary).await.contains(&second), "the canary applies it");

    let (_, prod) = agents.get_mut("prod-1").expect("prod-1");
    let started = std::time::Instant::now();
    let got = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        // notify_one keeps a wake-up that arrives between the check and the wait.
        while !ack_all(prod).await.contains(&second) {
            prod.woken().await;
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "the next wave did not start on the canary's ack (debounce and ticks are an hour)"
    );
    tracing::info!(elapsed = ?started.elapsed(), "next wave");
    let _ = stop.send(());
    running.await.expect("join").expect("engine");
}
