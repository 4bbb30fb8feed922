//! Unit tests of the Sync service's codec, checks and stream handling.

use std::sync::Arc;

use keyfleet_proto::v1::{self, hub_message};
use prost::Message as _;

use super::checks::{check_hello, check_key};
use super::stream::End;
use super::*;
use crate::domain::Sha256;
use crate::fleet::RemovalPolicy;
use crate::fleet::{EncodedRevision, PlannedUpdate};

fn revision(key: &str, data: &[u8]) -> Arc<EncodedRevision> {
    let payload = v1::SecretPayload {
        key: key.to_owned(),
        revision: 9,
        secret_name: key.to_owned(),
        r#type: "Opaque".to_owned(),
        data: [("k".to_owned(), data.to_vec())].into(),
        ..Default::default()
    };
    Arc::new(EncodedRevision {
        key: key.to_owned(),
        revision: 9,
        sha256: Sha256(keyfleet_proto::digest::payload_sha256(&payload)),
        payload: payload.encode_to_vec().into(),
    })
}

#[test]
fn hand_encoded_updates_decode_as_the_generated_message() {
    let update = PlannedUpdate {
        nonce: 300,
        upserts: vec![revision("a", b"one"), revision("b", &[7u8; 200])],
        removals: vec![
            ("c".to_owned(), RemovalPolicy::Delete),
            ("d".to_owned(), RemovalPolicy::Retain),
        ],
    };
    let outbound = Outbound::Update(update);
    let mut buf = Vec::new();
    outbound.encode(&mut buf);
    assert_eq!(buf.len(), outbound.encoded_len());
    let decoded = v1::HubMessage::decode(&buf[..]).expect("decodes");
    let Some(hub_message::Body::Update(update)) = decoded.body else {
        panic!("not an update: {decoded:?}");
    };
    assert_eq!(update.nonce, 300);
    assert_eq!(update.upserts.len(), 2);
    assert_eq!(update.upserts[1].data["k"], vec![7u8; 200]);
    assert_eq!(
        update.removals,
        vec![
            v1::Removal {
                key: "c".to_owned(),
                deletion_policy: v1::DeletionPolicy::Delete as i32
            },
            v1::Removal {
                key: "d".to_owned(),
                deletion_policy: v1::DeletionPolicy::Retain as i32
            },
        ]
    );
}

#[test]
fn hello_checks_name_the_field() {
    let good = v1::Hello {
        agent_version: "0.1.0".to_owned(),
        protocol: 1,
        boot_id: vec![0; 16],
        applied_digest: vec![0; 32],
        applied_count: 0,
    };
    assert!(check_hello(&good).is_ok());
    let message = |hello: v1::Hello| match check_hello(&hello) {
        Err(End::Status(status)) => (status.code(), status.message().to_owned()),
        _ => panic!("accepted"),
    };
    let (code, text) = message(v1::Hello {
        protocol: 2,
        ..good.clone()
    });
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(text.contains("hello.protocol"), "{text}");
    let (_, text) = message(v1::Hello {
        boot_id: vec![1; 3],
        ..good.clone()
    });
    assert!(text.contains("hello.boot_id"), "{text}");
    let (_, text) = message(v1::Hello {
        agent_version: "x".repeat(65),
        ..good.clone()
    });
    assert!(text.contains("hello.agent_version"), "{text}");
    let (_, text) = message(v1::Hello {
        applied_count: 10_001,
        ..good
    });
    assert!(text.contains("hello.applied_count"), "{text}");
}

#[test]
fn keys_must_be_dns_subdomains() {
    assert!(check_key("regcred.prod-1").is_ok());
    assert!(check_key("").is_err());
    assert!(check_key("Upper").is_err());
    assert!(check_key(&"a".repeat(254)).is_err());
}

/// A stream's task lives as long as its agent is connected: its size is memory per agent
/// (docs/performance.md, "Memory per agent"). Boxing the handshake and the per-message futures
/// and one timer for heartbeat and deadline took it from 2,816 bytes with the task's header
/// (heaptrack, release) to 1,352 bytes here (debug).
#[test]
fn the_task_of_an_idle_stream_stays_small() {
    let (fleet, _events) = crate::fleet::Fleet::new(crate::fleet::FleetConfig::default());
    let service = SyncService::new(fleet, Credentials::default(), SyncConfig::default());
    let (out, _rx) = tokio::sync::mpsc::channel(1);
    let stream = super::stream::Stream {
        service,
        cluster: crate::domain::ClusterId(uuid::Uuid::from_u128(1)),
        out,
    };
    let inbound = tonic::Streaming::new_request(AgentMessageDecoder, tonic::body::Body::empty(), None, None);
    let task = stream.run(inbound);
    let size = std::mem::size_of_val(&task);
    assert!(size <= 1_536, "the stream's future is {size} bytes");
    println!("stream task future: {size} bytes");
}

/// A waker that counts its wake-ups: a wait that wakes itself without progress is a busy loop.
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A desired-set change while `send` waits for room (an agent that reads slowly) is noted and
/// handed back once the send is done, not re-armed inside the wait: re-armed there, the next
/// `woken` fired at once and the wait spun on the CPU for as long as the agent took (a hub seen
/// at 190 % CPU after a replica kill, its failed-over agents mid-handshake during a rollout).
/// `recv_handshake` waits the same way, through the same `rearm`.
///
/// The spin never left the poll it started in, so the body runs on a thread of its own and a poll
/// that does not return within 30 s fails the test instead of hanging it.
#[test]
fn a_desired_set_change_during_a_blocked_send_does_not_spin_and_is_not_lost() {
    let (done, finished) = std::sync::mpsc::channel();
    let body = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
            .block_on(blocked_send_with_a_desired_set_change());
        let _ = done.send(());
    });
    match finished.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            if let Err(panic) = body.join() {
                std::panic::resume_unwind(panic);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("a poll of the waiting send did not return within 30 s: it spins on its own wake-up")
        }
    }
}

async fn blocked_send_with_a_desired_set_change() {
    use std::future::Future as _;
    use std::sync::atomic::Ordering;
    use std::task::{Context, Poll};

    let (fleet, _events) = crate::fleet::Fleet::new(crate::fleet::FleetConfig::default());
    let cluster = crate::domain::ClusterId(uuid::Uuid::from_u128(7));
    let session = fleet.attach(cluster).expect("attach");
    let service = SyncService::new(fleet.clone(), Credentials::default(), SyncConfig::default());
    let (out, mut sent) = tokio::sync::mpsc::channel(1);
    let stream = super::stream::Stream {
        service,
        cluster,
        out,
    };
    let heartbeat = || {
        Outbound::Message(v1::HubMessage {
            body: Some(hub_message::Body::Heartbeat(v1::Heartbeat::default())),
        })
    };
    // The agent has not read the last message: the next send waits for room.
    stream.out.try_send(Box::new(heartbeat())).expect("room for one");

    let counter = Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
    let waker = std::task::Waker::from(Arc::clone(&counter));
    let mut cx = Context::from_waker(&waker);
    let send = stream.send(Some(&session), heartbeat());
    tokio::pin!(send);
    assert!(send.as_mut().poll(&mut cx).is_pending(), "no room yet");

    // The engine changes the cluster's desired set while the send waits.
    let mut items = std::collections::BTreeMap::new();
    items.insert("a".to_owned(), revision("a", b"one"));
    fleet.set_desired(
        cluster,
        Arc::new(crate::fleet::ClusterDesired {
            items,
            removals: Default::default(),
        }),
    );
    let woken_by_change = counter.0.load(Ordering::SeqCst);
    assert_eq!(woken_by_change, 1, "the change wakes the waiting send once");
    for poll in 0..3 {
        assert!(
            send.as_mut().poll(&mut cx).is_pending(),
            "still no room (poll {poll})"
        );
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            woken_by_change,
            "the waiting send woke itself without progress: a busy loop (poll {poll})"
        );
    }

    // The agent reads: the send completes, and the change is waiting for the main loop.
    assert!(sent.recv().await.is_some());
    assert!(matches!(send.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    let woken = session.woken();
    tokio::pin!(woken);
    assert!(
        woken.as_mut().poll(&mut cx).is_ready(),
        "the desired-set change was lost by the wait"
    );
}
