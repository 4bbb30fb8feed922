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
