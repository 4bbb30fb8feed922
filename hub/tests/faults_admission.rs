//! Admission abuse, over real gRPC + TLS on loopback against the in-process services (Postgres
//! store): a flood of bogus Enroll calls from many clients must neither push a real enrollment
//! out by more than a minute nor hand anybody a retry hint beyond a minute, and one cluster
//! credential flooding Sync must not push other clusters' slots.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use keyfleet_hub::domain::{Labels, Sha256};
use keyfleet_hub::grpc::sync::{RETRY_AFTER_MS, SyncConfig};
use keyfleet_hub::status::StatusConfig;
use keyfleet_hub::sync::admin::new_enrollment_token;
use keyfleet_proto::v1::{self, enrollment_client::EnrollmentClient};
use keyfleet_testkit::agent::AgentError;
use support::*;
use tonic::Code;

/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(10);
/// Concurrent flooding clients, each on its own connection.
const CLIENTS: usize = 48;
/// The most any caller may be told to wait, and the longest a real enrollment may take.
const MINUTE: Duration = Duration::from_secs(60);

fn status_config() -> StatusConfig {
    StatusConfig {
        replica: "replica-test".to_owned(),
        flush_interval: Duration::from_millis(100),
        flush_rows: 1_000,
        liveness_interval: Duration::from_secs(300),
        undelivered_after: Duration::from_secs(300),
        detector_interval: Duration::from_secs(30),
    }
}

fn hint_of(status: &tonic::Status) -> Option<Duration> {
    let value = status.metadata().get(RETRY_AFTER_MS)?.to_str().ok()?;
    value.parse().ok().map(Duration::from_millis)
}

fn agent_hint(error: &AgentError) -> Option<Duration> {
    hint_of(error.status()?)
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    malformed_sent: AtomicU64,
    refused_for_admission: AtomicU64,
    malformed_refused_for_admission: AtomicU64,
    unauthenticated: AtomicU64,
    invalid: AtomicU64,
    max_hint_ms: AtomicU64,
}

/// A bogus token: well-formed (the store is asked) or malformed in one of several ways.
fn bogus_token(n: u64) -> String {
    match n % 4 {
        0 | 1 => new_enrollment_token(),
        2 => "kfe_short".to_owned(),
        _ => format!("kfe_{}!", "A".repeat(42)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_enroll_flood_never_pushes_a_real_enrollment_beyond_a_minute() {
    let db = TestDb::create().await;
    let store = db.store.clone();
    let (hub, _view) = Hub::start_with_store(store.clone(), status_config()).await;
    let cluster = store.create_cluster("eu-1", &Labels::new()).await.unwrap();
    let token = new_enrollment_token();
    store
        .issue_enrollment_token(
            cluster.id,
            &Sha256::of(token.as_bytes()),
            Utc::now() + chrono::Duration::hours(1),
        )
        .await
        .unwrap();

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let mut flooders = Vec::new();
    for client in 0..CLIENTS {
        let channel = hub.endpoint.channel().await.unwrap();
        let tally = tally.clone();
        flooders.push(tokio::spawn(async move {
            let mut enrollment = EnrollmentClient::new(channel);
            let mut n = client as u64;
            while started.elapsed() < FLOOD {
                let token = bogus_token(n);
                let malformed = n % 4 >= 2;
                n += CLIENTS as u64;
                tally.sent.fetch_add(1, Ordering::Relaxed);
                if malformed {
                    tally.malformed_sent.fetch_add(1, Ordering::Relaxed);
                }
                let request = v1::EnrollRequest {
                    token,
                    agent_version: "flood".to_owned(),
                };
                let Err(status) = enrollment.enroll(request).await else {
                    panic!("a bogus token enrolled");
                };
                match status.code() {
                    Code::ResourceExhausted => {
                        tally.refused_for_admission.fetch_add(1, Ordering::Relaxed);
                        if malformed {
                            tally
                                .malformed_refused_for_admission
                                .fetch_add(1, Ordering::Relaxed);
                        }
                        let hint = hint_of(&status).expect("a refusal carries a hint");
                        tally
                            .max_hint_ms
                            .fetch_max(hint.as_millis() as u64, Ordering::Relaxed);
                    }
                    Code::Unauthenticated => {
                        tally.unauthenticated.fetch_add(1, Ordering::Relaxed);
                    }
                    Code::InvalidArgument => {
                        tally.invalid.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("unexpected answer to a bogus token: {other:?} {status:?}"),
                }
            }
        }));
    }

    // A real agent enrolls halfway through the flood, obeying every hint it gets.
    let real = async {
        tokio::time::sleep_until((started + FLOOD / 2).into()).await;
        let began = Instant::now();
        let mut hints = Vec::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match keyfleet_testkit::agent::enroll(&hub.endpoint, &token).await {
                Ok(enrolled) => {
                    assert_eq!(enrolled.cluster_name, "eu-1");
                    return (began.elapsed(), attempts, hints);
                }
                Err(error) if error.code() == Code::ResourceExhausted => {
                    let hint = agent_hint(&error).expect("a refusal carries a hint");
                    hints.push(hint);
                    assert!(
                        hint <= MINUTE,
                        "the real enrollment was told to wait {hint:?} (hints so far {hints:?})"
                    );
                    // The agent obeys the hint: the protocol's wait, not a synchronisation.
                    tokio::time::sleep(hint).await;
                }
                Err(error) => panic!("the real enrollment failed: {error:?}"),
            }
        }
    };
    let (took, attempts, hints) = within(
        FLOOD / 2 + MINUTE + Duration::from_secs(5),
        "the real enrollment",
        real,
    )
    .await;
    for flooder in flooders {
        within(PROMPT, "a flooder stops", flooder).await.unwrap();
    }
    let max_hint = Duration::from_millis(tally.max_hint_ms.load(Ordering::Relaxed));
    eprintln!(
        "flood: {CLIENTS} clients for {FLOOD:?}: {} Enroll calls ({} malformed): {} refused for \
         admission ({} of them malformed), {} unauthenticated, {} invalid; max hint {max_hint:?}; \
         real enrollment took {took:?} in {attempts} attempts, hints {hints:?}",
        tally.sent.load(Ordering::Relaxed),
        tally.malformed_sent.load(Ordering::Relaxed),
        tally.refused_for_admission.load(Ordering::Relaxed),
        tally.malformed_refused_for_admission.load(Ordering::Relaxed),
        tally.unauthenticated.load(Ordering::Relaxed),
        tally.invalid.load(Ordering::Relaxed),
    );
    assert!(
        tally.refused_for_admission.load(Ordering::Relaxed) > 0,
        "the flood must exceed the admission rate to test anything"
    );
    assert!(max_hint <= MINUTE, "a flooder was told to wait {max_hint:?}");
    assert!(took <= MINUTE, "the real enrollment took {took:?}");
    // Malformed tokens are refused by their shape, before admission: they cost no slot.
    assert_eq!(tally.malformed_refused_for_admission.load(Ordering::Relaxed), 0);
    assert_eq!(
        tally.invalid.load(Ordering::Relaxed),
        tally.malformed_sent.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_credential_flooding_sync_does_not_push_other_clusters() {
    // 5 new streams per second for everyone: the flooder alone would queue the others for
    // minutes if its refusals took shared slots.
    let hub = Hub::start_with(
        default_fleet_config(),
        SyncConfig {
            hub_instance: "test-hub".to_owned(),
            admission_per_second: 5.0,
            admission_burst: 5,
            ..SyncConfig::default()
        },
    )
    .await;
    let (_, flooder) = hub.enroll(1);
    let (_, other) = hub.enroll(2);
    let started = Instant::now();
    let max_hint_ms = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let channel = hub.endpoint.channel().await.unwrap();
        let (flooder, max_hint_ms, refused, sent) = (
            flooder.clone(),
            max_hint_ms.clone(),
            refused.clone(),
            sent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < Duration::from_secs(3) {
                sent.fetch_add(1, Ordering::Relaxed);
                match TestAgent::connect_on(
                    channel.clone(),
                    Some(&flooder),
                    Applied::new(),
                    HelloOptions::default(),
                )
                .await
                {
                    Ok(_stream) => {}
                    Err(error) => {
                        assert_eq!(error.code(), Code::ResourceExhausted, "{error:?}");
                        refused.fetch_add(1, Ordering::Relaxed);
                        let hint = agent_hint(&error).expect("hint");
                        max_hint_ms.fetch_max(hint.as_millis() as u64, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for task in tasks {
        within(PROMPT, "a flooding task stops", task).await.unwrap();
    }
    // Right after the flood, another cluster is admitted at once.
    let admitted = TestAgent::connect(&hub.endpoint, &other, Applied::new()).await;
    eprintln!(
        "sync flood: {} opens by one credential in 3 s, {} refused, max hint {} ms; other \
         cluster: {:?}",
        sent.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        max_hint_ms.load(Ordering::Relaxed),
        admitted
            .as_ref()
            .err()
            .map(|error| (error.code(), agent_hint(error))),
    );
    let mut admitted = admitted.expect("another cluster is admitted right after one credential's flood");
    assert!(admitted.handshake().await.unwrap().in_sync);
    assert!(Duration::from_millis(max_hint_ms.load(Ordering::Relaxed)) <= MINUTE);
}
