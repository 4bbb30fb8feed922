//! Unit tests of the hub client: payload validation, backoff, Hello and version pages.

use prost::Message as _;

use std::collections::BTreeMap;
use std::time::Duration;

use keyfleet_proto::v1::{self, agent_message};
use keyfleet_proto::{PROTOCOL_VERSION, digest, limits};
use rand::SeedableRng as _;
use rand::rngs::StdRng;

use super::convert::{hello, version_pages};
use super::*;
use crate::reconcile::{
    Applied, CreationPolicy, DeletionPolicy, ErrorCode, MANAGED_BY_LABEL, Refusal, SecretBytes,
};

fn payload() -> v1::SecretPayload {
    let mut payload = v1::SecretPayload {
        key: "regcred".into(),
        revision: 3,
        secret_name: "regcred".into(),
        r#type: "Opaque".into(),
        namespaces: vec!["default".into()],
        data: [("token".to_string(), b"hunter2-value".to_vec())].into(),
        ..Default::default()
    };
    payload.sha256 = digest::payload_sha256(&payload).to_vec();
    payload
}

fn refusal(mutate: impl FnOnce(&mut v1::SecretPayload), reseal: bool) -> Refusal {
    let mut payload = payload();
    mutate(&mut payload);
    if reseal {
        payload.sha256 = digest::payload_sha256(&payload).to_vec();
    }
    desired_from_payload(payload).expect_err("must be refused")
}

#[test]
fn valid_payload_converts_and_keeps_digest() {
    let desired = desired_from_payload(payload()).expect("valid");
    assert_eq!(desired.key, "regcred");
    assert_eq!(desired.creation, CreationPolicy::Owner);
    assert_eq!(desired.deletion, DeletionPolicy::Retain);
    assert_eq!(
        desired.data.get("token").map(SecretBytes::expose),
        Some(&b"hunter2-value"[..])
    );
}

#[test]
fn invalid_payloads_are_refused_with_a_named_reason() {
    type Mutation = Box<dyn FnOnce(&mut v1::SecretPayload)>;
    let cases: Vec<(Mutation, bool, ErrorCode, &str)> = vec![
        (
            Box::new(|p| p.key = "Bad_Key".into()),
            true,
            ErrorCode::Invalid,
            "key",
        ),
        (
            Box::new(|p| p.secret_name = "-x".into()),
            true,
            ErrorCode::Invalid,
            "secret_name",
        ),
        (
            Box::new(|p| p.namespaces = vec!["UPPER".into()]),
            true,
            ErrorCode::Invalid,
            "namespace",
        ),
        (
            Box::new(|p| p.namespaces.clear()),
            true,
            ErrorCode::Invalid,
            "neither",
        ),
        (
            Box::new(|p| {
                p.namespace_selector = Some(v1::LabelSelector::default());
            }),
            true,
            ErrorCode::Invalid,
            "both",
        ),
        (
            Box::new(|p| {
                p.namespaces.clear();
                p.namespace_selector = Some(v1::LabelSelector {
                    match_expressions: vec![v1::LabelRequirement {
                        key: "env".into(),
                        operator: "Like".into(),
                        values: vec![],
                    }],
                    ..Default::default()
                });
            }),
            true,
            ErrorCode::Invalid,
            "operator",
        ),
        (
            Box::new(|p| {
                p.data.insert("bad key".into(), b"v".to_vec());
            }),
            true,
            ErrorCode::Invalid,
            "data key",
        ),
        (
            Box::new(|p| {
                p.data
                    .insert("big".into(), vec![0; limits::MAX_SECRET_DATA_BYTES]);
            }),
            true,
            ErrorCode::Invalid,
            "more than",
        ),
        (
            Box::new(|p| {
                p.labels.insert(MANAGED_BY_LABEL.into(), "me".into());
            }),
            true,
            ErrorCode::Invalid,
            "reserved",
        ),
        (
            Box::new(|p| {
                p.annotations.insert("keyfleet.io/revision".into(), "9".into());
            }),
            true,
            ErrorCode::Invalid,
            "reserved",
        ),
        (
            Box::new(|p| {
                p.data.insert("token".into(), b"tampered".to_vec());
            }),
            false,
            ErrorCode::DigestMismatch,
            "sha256",
        ),
        (
            Box::new(|p| p.sha256.truncate(5)),
            false,
            ErrorCode::DigestMismatch,
            "5 bytes",
        ),
    ];
    for (mutate, reseal, code, needle) in cases {
        let refusal = refusal(mutate, reseal);
        assert_eq!(refusal.code, code, "{}", refusal.message);
        assert!(refusal.message.contains(needle), "{needle}: {}", refusal.message);
        assert!(!refusal.message.contains("hunter2"), "{}", refusal.message);
    }
}

#[test]
fn a_retry_hint_is_obeyed_up_to_a_minute() {
    let refusal = |hint: &str| {
        let mut status = tonic::Status::resource_exhausted("too many new streams");
        status
            .metadata_mut()
            .insert("retry-after-ms", hint.parse().expect("metadata value"));
        status
    };
    assert_eq!(
        super::retry_after(&refusal("1500")),
        Some(Duration::from_millis(1_500))
    );
    assert_eq!(
        super::retry_after(&refusal("60000")),
        Some(super::MAX_RETRY_AFTER)
    );
    // 109 s (measured during a flood) and hours are capped at 60 s.
    assert_eq!(
        super::retry_after(&refusal("109000")),
        Some(super::MAX_RETRY_AFTER)
    );
    assert_eq!(
        super::retry_after(&refusal("18446744073709551615")),
        Some(super::MAX_RETRY_AFTER)
    );
    assert_eq!(super::retry_after(&refusal("soon")), None);
    assert_eq!(super::retry_after(&tonic::Status::unavailable("down")), None);
}

#[test]
fn backoff_ceilings_double_to_the_cap_and_delays_stay_below() {
    let mut backoff = Backoff::with_rng(
        Duration::from_secs(1),
        Duration::from_secs(60),
        StdRng::seed_from_u64(7),
    );
    let expected = [1u64, 2, 4, 8, 16, 32, 60, 60, 60];
    for ceiling in expected {
        assert_eq!(backoff.ceiling(), Duration::from_secs(ceiling));
        let delay = backoff.next_delay();
        assert!(delay <= Duration::from_secs(ceiling), "{delay:?} > {ceiling}s");
    }
    for _ in 0..100 {
        backoff.next_delay();
    }
    assert_eq!(backoff.ceiling(), Duration::from_secs(60));
    backoff.reset();
    assert_eq!(backoff.ceiling(), Duration::from_secs(1));
}

#[test]
fn full_jitter_spreads_over_the_whole_window() {
    let mut backoff = Backoff::with_rng(
        Duration::from_secs(60),
        Duration::from_secs(60),
        StdRng::seed_from_u64(1),
    );
    let delays: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
    assert!(delays.iter().any(|d| *d < Duration::from_secs(10)));
    assert!(delays.iter().any(|d| *d > Duration::from_secs(50)));
}

#[test]
fn hello_digest_matches_the_canonical_set_digest() {
    let settings = SyncSettings::new("0.1.0");
    let applied: BTreeMap<String, Applied> = [
        (
            "b".to_string(),
            Applied {
                revision: 2,
                sha256: [2; 32],
            },
        ),
        (
            "a".to_string(),
            Applied {
                revision: 1,
                sha256: [1; 32],
            },
        ),
    ]
    .into();
    let Some(agent_message::Body::Hello(hello)) = hello(&settings, &applied).body else {
        panic!("not a hello");
    };
    let items = vec![
        v1::AppliedItem {
            key: "a".into(),
            revision: 1,
            sha256: vec![1; 32],
        },
        v1::AppliedItem {
            key: "b".into(),
            revision: 2,
            sha256: vec![2; 32],
        },
    ];
    assert_eq!(
        hello.applied_digest,
        digest::applied_items_digest(&items).to_vec()
    );
    assert_eq!(hello.applied_count, 2);
    assert_eq!(hello.boot_id.len(), 16);
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
}

#[test]
fn version_pages_split_and_mark_the_last() {
    let applied: BTreeMap<String, Applied> = (0..5)
        .map(|i| {
            (
                format!("k{i}"),
                Applied {
                    revision: i,
                    sha256: [0; 32],
                },
            )
        })
        .collect();
    let pages = version_pages(&applied, 2);
    let flags: Vec<(usize, bool)> = pages
        .iter()
        .map(|page| match &page.body {
            Some(agent_message::Body::VersionPage(page)) => (page.items.len(), page.last),
            _ => panic!("not a page"),
        })
        .collect();
    assert_eq!(flags, vec![(2, false), (2, false), (1, true)]);
    let empty = version_pages(&BTreeMap::new(), 10);
    assert_eq!(empty.len(), 1);
    assert!(empty[0].encoded_len() < 8);
}
