use std::sync::Mutex;

use bytes::Bytes;
use tokio::time::Instant;

use super::*;
use crate::fleet::EncodedRevision;
use crate::fleet::{ClusterDesired, FleetConfig, NackCode};

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Batch(Vec<StatusRow>),
    Delete(ClusterId, String),
    Connect(ClusterId, String),
    Disconnect(ClusterId),
    Touch(Vec<ClusterId>),
}

/// Records every call with the (paused) time it happened and signals it.
#[derive(Clone)]
struct Recorder {
    calls: Arc<Mutex<Vec<(Instant, Call)>>>,
    signal: mpsc::UnboundedSender<()>,
    fail_next: Arc<Mutex<bool>>,
}

impl Recorder {
    fn new() -> (Self, mpsc::UnboundedReceiver<()>) {
        let (signal, receiver) = mpsc::unbounded_channel();
        (
            Self {
                calls: Arc::default(),
                signal,
                fail_next: Arc::default(),
            },
            receiver,
        )
    }

    fn record(&self, call: Call) -> Result<(), StoreError> {
        if std::mem::take(&mut *self.fail_next.lock().expect("lock")) {
            return Err(StoreError::Conflict("injected failure".to_owned()));
        }
        self.calls.lock().expect("lock").push((Instant::now(), call));
        let _ = self.signal.send(());
        Ok(())
    }

    fn calls(&self) -> Vec<(Instant, Call)> {
        self.calls.lock().expect("lock").clone()
    }
}

#[async_trait::async_trait]
impl StatusSink for Recorder {
    async fn upsert_status_batch(&self, rows: &[StatusRow]) -> Result<u64, StoreError> {
        let mut rows = rows.to_vec();
        rows.sort_by(|a, b| (a.cluster, &a.fleet_secret).cmp(&(b.cluster, &b.fleet_secret)));
        let count = rows.len() as u64;
        self.record(Call::Batch(rows))?;
        Ok(count)
    }

    async fn delete_status(&self, cluster: ClusterId, key: &str) -> Result<(), StoreError> {
        self.record(Call::Delete(cluster, key.to_owned()))
    }

    async fn record_connect(
        &self,
        cluster: ClusterId,
        replica: &str,
        _agent_version: &str,
        _at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.record(Call::Connect(cluster, replica.to_owned()))
    }

    async fn record_disconnect(
        &self,
        cluster: ClusterId,
        _replica: &str,
        _at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.record(Call::Disconnect(cluster))
    }

    async fn touch_last_seen(&self, ids: &[ClusterId], _at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut ids = ids.to_vec();
        ids.sort();
        self.record(Call::Touch(ids))
    }
}

fn cluster(n: u128) -> ClusterId {
    ClusterId(uuid::Uuid::from_u128(n))
}

fn config() -> StatusConfig {
    StatusConfig {
        replica: "replica-a".to_owned(),
        flush_interval: Duration::from_millis(250),
        flush_rows: 100,
        liveness_interval: Duration::from_secs(300),
        undelivered_after: Duration::from_secs(60),
        detector_interval: Duration::from_secs(10),
    }
}

fn sha(n: u8) -> Sha256 {
    Sha256([n; 32])
}

fn acked(cluster: ClusterId, key: &str, revision: u64) -> FleetEvent {
    FleetEvent::Acked {
        cluster,
        key: key.to_owned(),
        revision,
        sha256: sha(revision as u8),
        at: Utc::now(),
    }
}

fn desired(items: &[(&str, u64)]) -> Arc<ClusterDesired> {
    Arc::new(ClusterDesired {
        items: items
            .iter()
            .map(|(key, revision)| {
                (
                    (*key).to_owned(),
                    Arc::new(EncodedRevision {
                        key: (*key).to_owned(),
                        revision: *revision,
                        sha256: sha(*revision as u8),
                        payload: Bytes::from_static(b"p"),
                    }),
                )
            })
            .collect(),
        removals: BTreeMap::new(),
    })
}

struct Harness {
    fleet: Fleet,
    events: mpsc::Sender<FleetEvent>,
    recorder: Recorder,
    signals: mpsc::UnboundedReceiver<()>,
    view: StatusView,
    metrics: StatusMetrics,
    task: tokio::task::JoinHandle<()>,
}

fn start(config: StatusConfig) -> Harness {
    let (fleet, _fleet_events) = Fleet::new(FleetConfig::default());
    let (recorder, signals) = Recorder::new();
    let writer = StatusWriter::new(recorder.clone(), fleet.clone(), config);
    let view = writer.view();
    let metrics = writer.metrics().clone();
    let (events, receiver) = mpsc::channel(1024);
    let task = tokio::spawn(writer.run(receiver));
    Harness {
        fleet,
        events,
        recorder,
        signals,
        view,
        metrics,
        task,
    }
}

impl Harness {
    async fn send(&self, event: FleetEvent) {
        self.events.send(event).await.expect("writer running");
    }

    async fn next_call(&mut self) -> (Instant, Call) {
        self.signals.recv().await.expect("a call");
        self.recorder.calls().last().cloned().expect("recorded")
    }
}

#[tokio::test(start_paused = true)]
async fn acks_are_written_in_one_batch_250ms_after_the_first() {
    let mut harness = start(config());
    harness
        .fleet
        .set_desired(cluster(1), desired(&[("a", 2), ("b", 1)]));
    let started = Instant::now();
    harness.send(acked(cluster(1), "a", 2)).await;
    harness.send(acked(cluster(1), "b", 1)).await;
    harness.send(acked(cluster(2), "a", 7)).await;
    // The newest row per (cluster, key) wins.
    harness.send(acked(cluster(1), "a", 1)).await;
    harness.send(acked(cluster(1), "a", 2)).await;
    let (at, call) = harness.next_call().await;
    assert_eq!(at.duration_since(started), Duration::from_millis(250));
    let Call::Batch(rows) = call else {
        panic!("expected a batch, got {call:?}");
    };
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].fleet_secret, "a");
    assert_eq!(rows[0].state, SyncState::Applied);
    assert_eq!(rows[0].applied_revision, Some(2));
    assert_eq!(rows[0].applied_sha256, Some(sha(2)));
    assert_eq!(harness.recorder.calls().len(), 1, "one statement for the flush");
    assert_eq!(harness.metrics.flushes.get(), 1);
    assert_eq!(harness.metrics.rows.get(), 3);
    assert_eq!(harness.view.applied_revision(cluster(1), "a"), Some(2));
    assert_eq!(
        harness.view.applied(cluster(1)),
        Some([("a".to_owned(), 2), ("b".to_owned(), 1)].into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_buffer_flushes_at_once() {
    let mut harness = start(StatusConfig {
        flush_rows: 3,
        ..config()
    });
    let started = Instant::now();
    for n in 0..3 {
        harness.send(acked(cluster(n), "a", 1)).await;
    }
    let (at, call) = harness.next_call().await;
    assert_eq!(at, started, "no waiting for the interval");
    assert!(matches!(call, Call::Batch(rows) if rows.len() == 3));
}

#[tokio::test(start_paused = true)]
async fn a_nack_keeps_the_applied_revision_and_records_the_reason() {
    let mut harness = start(config());
    harness.fleet.set_desired(cluster(1), desired(&[("a", 3)]));
    harness.send(acked(cluster(1), "a", 2)).await;
    harness
        .send(FleetEvent::Nacked {
            cluster: cluster(1),
            key: "a".to_owned(),
            revision: 3,
            code: NackCode::NamespaceMissing,
            retryable: true,
            message: "namespace \"payments\" not found".to_owned(),
            attempts: 2,
            at: Utc::now(),
        })
        .await;
    let (_, call) = harness.next_call().await;
    let Call::Batch(rows) = call else {
        panic!("expected a batch, got {call:?}");
    };
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.state, SyncState::Error);
    assert_eq!((row.desired_revision, row.applied_revision), (3, Some(2)));
    assert_eq!(row.applied_sha256, Some(sha(2)));
    assert_eq!(row.attempts, 2);
    assert_eq!(
        row.last_error.as_deref(),
        Some("namespace_missing: namespace \"payments\" not found")
    );
}

#[tokio::test(start_paused = true)]
async fn connects_disconnects_and_removals_are_persisted() {
    let mut harness = start(config());
    harness
        .send(FleetEvent::Connected {
            cluster: cluster(1),
            agent_version: "0.1.0".to_owned(),
            in_sync: true,
            applied: [("a".to_owned(), 4)].into(),
            at: Utc::now(),
        })
        .await;
    assert_eq!(
        harness.next_call().await.1,
        Call::Connect(cluster(1), "replica-a".to_owned())
    );
    assert_eq!(harness.view.applied_revision(cluster(1), "a"), Some(4));
    harness
        .send(FleetEvent::Removed {
            cluster: cluster(1),
            key: "a".to_owned(),
            at: Utc::now(),
        })
        .await;
    assert_eq!(
        harness.next_call().await.1,
        Call::Delete(cluster(1), "a".to_owned())
    );
    assert_eq!(harness.view.applied_revision(cluster(1), "a"), None);
    harness
        .send(FleetEvent::Disconnected {
            cluster: cluster(1),
            at: Utc::now(),
        })
        .await;
    assert_eq!(harness.next_call().await.1, Call::Disconnect(cluster(1)));
}

#[tokio::test(start_paused = true)]
async fn liveness_of_connected_clusters_is_refreshed_in_one_call() {
    let mut harness = start(StatusConfig {
        liveness_interval: Duration::from_secs(300),
        ..config()
    });
    let started = Instant::now();
    let _one = harness.fleet.attach(cluster(1)).expect("attach");
    let _two = harness.fleet.attach(cluster(2)).expect("attach");
    let (at, call) = harness.next_call().await;
    assert_eq!(call, Call::Touch(vec![cluster(1), cluster(2)]));
    assert_eq!(at.duration_since(started), Duration::from_secs(300));
}

#[tokio::test(start_paused = true)]
async fn unacknowledged_desired_revisions_become_undelivered_once_but_refusals_do_not() {
    let mut harness = start(config());
    let started = Instant::now();
    let _stream = harness.fleet.attach(cluster(1)).expect("attach");
    harness
        .fleet
        .set_desired(cluster(1), desired(&[("late", 5), ("done", 1), ("refused", 2)]));
    harness.send(acked(cluster(1), "done", 1)).await;
    harness
        .send(FleetEvent::Nacked {
            cluster: cluster(1),
            key: "refused".to_owned(),
            revision: 2,
            code: NackCode::Forbidden,
            retryable: false,
            message: "secrets is forbidden".to_owned(),
            attempts: 1,
            at: Utc::now(),
        })
        .await;
    // First flush: the ack and the nack.
    let (_, first) = harness.next_call().await;
    assert!(matches!(first, Call::Batch(rows) if rows.len() == 2));
    let (at, call) = harness.next_call().await;
    let Call::Batch(rows) = call else {
        panic!("expected a batch, got {call:?}");
    };
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].fleet_secret, "late");
    assert_eq!(rows[0].state, SyncState::Undelivered);
    assert_eq!(rows[0].desired_revision, 5);
    let waited = at.duration_since(started);
    assert!(
        waited >= Duration::from_secs(60) && waited <= Duration::from_secs(71),
        "{waited:?}"
    );
    assert_eq!(harness.metrics.undelivered.get(), 1);
    // Marked once per revision: a new revision starts a new deadline.
    harness.fleet.set_desired(cluster(1), desired(&[("late", 6)]));
    let (later, call) = harness.next_call().await;
    assert!(
        matches!(&call, Call::Batch(rows) if rows[0].desired_revision == 6),
        "{call:?}"
    );
    assert!(later.duration_since(at) >= Duration::from_secs(60));
    assert_eq!(harness.metrics.undelivered.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_undelivered_deadline_runs_only_while_a_stream_here_is_offered_the_revision() {
    let mut harness = start(StatusConfig {
        liveness_interval: Duration::from_secs(3_600),
        ..config()
    });
    // Desired, but offline (or served by another replica): never marked by this process, however
    // long it waits (a restarted hub sees every cluster like this at first).
    harness.fleet.set_desired(cluster(1), desired(&[("a", 5)]));
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(harness.recorder.calls(), vec![], "nothing marked while offline");
    // Connected here: the deadline starts now.
    let attached = Instant::now();
    let _stream = harness.fleet.attach(cluster(1)).expect("attach");
    let (at, call) = harness.next_call().await;
    assert!(
        matches!(&call, Call::Batch(rows) if rows[0].state == SyncState::Undelivered),
        "{call:?}"
    );
    let waited = at.duration_since(attached);
    assert!(
        waited >= Duration::from_secs(60) && waited <= Duration::from_secs(71),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_connecting_agent_records_what_it_holds_at_the_desired_revision_once() {
    let mut harness = start(config());
    harness
        .fleet
        .set_desired(cluster(1), desired(&[("a", 4), ("b", 5)]));
    let connected = || FleetEvent::Connected {
        cluster: cluster(1),
        agent_version: "0.1.0".to_owned(),
        in_sync: false,
        applied: [("a".to_owned(), 4), ("b".to_owned(), 3)].into(),
        at: Utc::now(),
    };
    // Its ack of a@4 went to a replica that died before flushing: the connect records it.
    harness.send(connected()).await;
    assert_eq!(
        harness.next_call().await.1,
        Call::Connect(cluster(1), "replica-a".to_owned())
    );
    let (_, call) = harness.next_call().await;
    let Call::Batch(rows) = call else {
        panic!("expected a batch, got {call:?}");
    };
    assert_eq!(rows.len(), 1, "b is behind and waits for its ack: {rows:?}");
    assert_eq!(rows[0].fleet_secret, "a");
    assert_eq!(rows[0].state, SyncState::Applied);
    assert_eq!(
        (
            rows[0].desired_revision,
            rows[0].applied_revision,
            rows[0].applied_sha256
        ),
        (4, Some(4), Some(sha(4)))
    );
    // A reconnect holding the same is not written again.
    harness.send(connected()).await;
    assert_eq!(
        harness.next_call().await.1,
        Call::Connect(cluster(1), "replica-a".to_owned())
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        harness.recorder.calls().len(),
        3,
        "{:?}",
        harness.recorder.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_flush_is_retried_and_the_rest_is_flushed_when_events_end() {
    let mut harness = start(config());
    *harness.recorder.fail_next.lock().expect("lock") = true;
    let started = Instant::now();
    harness.send(acked(cluster(1), "a", 1)).await;
    let (at, call) = harness.next_call().await;
    assert!(matches!(call, Call::Batch(rows) if rows.len() == 1));
    assert_eq!(at.duration_since(started), Duration::from_millis(500));
    assert_eq!(harness.metrics.errors.get(), 1);
    harness.send(acked(cluster(2), "a", 1)).await;
    let Harness {
        events,
        task,
        recorder,
        ..
    } = harness;
    drop(events);
    task.await.expect("writer ends when the fleet is gone");
    let calls = recorder.calls();
    assert!(
        matches!(&calls.last().expect("final flush").1, Call::Batch(rows) if rows[0].cluster == cluster(2))
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_takes_queued_events_and_flushes_without_waiting_for_the_fleet() {
    let (fleet, _fleet_events) = Fleet::new(FleetConfig::default());
    let (recorder, _signals) = Recorder::new();
    let writer = StatusWriter::new(recorder.clone(), fleet.clone(), config());
    let (events, receiver) = mpsc::channel(16);
    events.send(acked(cluster(1), "a", 1)).await.expect("queued");
    events.send(acked(cluster(2), "a", 1)).await.expect("queued");
    let started = Instant::now();
    // The sender stays alive (as Fleet clones do at shutdown): only the signal ends the writer.
    writer.run_until(receiver, std::future::ready(())).await;
    let calls = recorder.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(matches!(&calls[0].1, Call::Batch(rows) if rows.len() == 2));
    assert_eq!(calls[0].0, started, "flushed at once, not after the interval");
    drop(events);
}

#[test]
fn metrics_use_the_documented_names() {
    let metrics = StatusMetrics::default();
    let mut registry = Registry::with_prefix("keyfleet_hub");
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains("keyfleet_hub_status_flushes_total"), "{text}");
    assert!(text.contains("keyfleet_hub_status_rows_total"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_connect_the_store_refused_is_recorded_at_the_next_flush() {
    let mut harness = start(config());
    *harness.recorder.fail_next.lock().expect("lock") = true;
    let started = Instant::now();
    harness
        .send(FleetEvent::Disconnected {
            cluster: cluster(1),
            at: Utc::now(),
        })
        .await;
    let (at, call) = harness.next_call().await;
    assert!(
        matches!(call, Call::Disconnect(id) if id == cluster(1)),
        "{call:?}"
    );
    assert_eq!(
        at.duration_since(started),
        Duration::from_millis(250),
        "retried at the next flush, not lost"
    );
    assert_eq!(harness.metrics.errors.get(), 1);
    assert_eq!(harness.metrics.pending.get(), 0, "nothing is held any more");
}

#[test]
fn a_clusters_held_keys_stay_sorted_and_take_one_slot_each() {
    let mut held = super::Held::default();
    let sha = Sha256::of(b"x");
    held.insert("regcred".to_owned(), (3, Some(sha)));
    held.insert("api-token".to_owned(), (1, None));
    held.insert("regcred".to_owned(), (4, Some(sha)));
    held.insert("zeta".to_owned(), (9, None));
    assert_eq!(held.get("regcred"), Some(&(4, Some(sha))));
    assert_eq!(held.get("missing"), None);
    let keys: Vec<&String> = held.iter().map(|(key, _)| key).collect();
    assert_eq!(keys, ["api-token", "regcred", "zeta"]);
    assert_eq!(held.0.capacity(), 3, "no slot reserved ahead");
    held.remove("api-token");
    held.remove("missing");
    assert_eq!(
        held.iter()
            .map(|(key, value)| (key.as_str(), value.0))
            .collect::<Vec<_>>(),
        [("regcred", 4), ("zeta", 9)]
    );
}
