//! Property tests of the agent's payload validation (`hub::desired_from_payload`, everything the
//! agent checks on a `SecretPayload` before it touches Kubernetes): arbitrary bytes and arbitrary
//! or mutated messages never panic; valid payloads are accepted as sent; every refusal is
//! `Invalid` or `DigestMismatch`, not retryable, and its message names the field that was wrong.
//!
//! Bounded: 256 cases per property (`PROPTEST_CASES` for a longer hunt), run by `cargo test`.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use keyfleet_agent::hub::desired_from_payload;
use keyfleet_agent::reconcile::ErrorCode;
use keyfleet_proto::{digest, limits, v1};
use proptest::prelude::*;
use prost::Message as _;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(256),
        max_shrink_iters: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
}

fn subdomain() -> impl Strategy<Value = String> {
    prop::collection::vec(dns_label(), 1..4).prop_map(|parts| parts.join("."))
}

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9]([A-Za-z0-9._-]{0,20}[A-Za-z0-9])?"
    ]
}

fn qualified_name() -> impl Strategy<Value = String> {
    (
        prop::option::of(subdomain()),
        "[A-Za-z0-9]([A-Za-z0-9._-]{0,20}[A-Za-z0-9])?",
    )
        .prop_map(|(prefix, name)| match prefix {
            Some(prefix) => format!("{prefix}/{name}"),
            None => name,
        })
        .prop_filter("reserved for the agent", |key| {
            key != "app.kubernetes.io/managed-by" && !key.starts_with("keyfleet.io/")
        })
}

fn selector() -> impl Strategy<Value = v1::LabelSelector> {
    let requirement = (
        qualified_name(),
        prop_oneof![Just("In"), Just("NotIn"), Just("Exists"), Just("DoesNotExist")],
        prop::collection::vec(label_value(), 1..4),
    )
        .prop_map(|(key, operator, values)| v1::LabelRequirement {
            key,
            operator: operator.to_owned(),
            values: if matches!(operator, "In" | "NotIn") {
                values
            } else {
                Vec::new()
            },
        });
    (
        prop::collection::hash_map(qualified_name(), label_value(), 0..4),
        prop::collection::vec(requirement, 0..4),
    )
        .prop_map(|(match_labels, match_expressions)| v1::LabelSelector {
            match_labels,
            match_expressions,
        })
}

/// A payload the agent must accept, with its sha256 set.
fn valid_payload() -> impl Strategy<Value = v1::SecretPayload> {
    let targets = prop_oneof![
        prop::collection::btree_set(dns_label(), 1..5)
            .prop_map(|set| (set.into_iter().collect::<Vec<_>>(), None)),
        selector().prop_map(|selector| (Vec::new(), Some(selector))),
    ];
    (
        (
            subdomain(),
            1..u64::MAX,
            subdomain(),
            prop_oneof![
                Just(String::new()),
                Just("Opaque".to_owned()),
                Just("kubernetes.io/dockerconfigjson".to_owned()),
            ],
        ),
        targets,
        prop::collection::hash_map(
            "[-._a-zA-Z0-9]{1,30}",
            prop::collection::vec(any::<u8>(), 0..64),
            0..5,
        ),
        prop::collection::hash_map(qualified_name(), label_value(), 0..3),
        prop::collection::hash_map(qualified_name(), any::<String>(), 0..3),
        (0..=3i32, 0..=2i32, any::<bool>()),
    )
        .prop_map(
            |(
                (key, revision, secret_name, r#type),
                (namespaces, namespace_selector),
                data,
                labels,
                annotations,
                (creation, deletion, immutable),
            )| {
                let mut payload = v1::SecretPayload {
                    key,
                    revision,
                    sha256: Vec::new(),
                    secret_name,
                    r#type,
                    namespaces,
                    namespace_selector,
                    data,
                    labels,
                    annotations,
                    creation_policy: creation,
                    deletion_policy: deletion,
                    immutable,
                    source_versions: HashMap::new(),
                };
                seal(&mut payload);
                payload
            },
        )
}

fn seal(payload: &mut v1::SecretPayload) {
    payload.sha256 = digest::payload_sha256(payload).to_vec();
}

/// Strings that break one rule or another (and some that do not).
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("UPPER".to_owned()),
        Just("-lead".to_owned()),
        Just("trail-".to_owned()),
        Just("a..b".to_owned()),
        Just("a/b/c".to_owned()),
        Just("/x".to_owned()),
        Just("x/".to_owned()),
        Just("ünï".to_owned()),
        Just("a b".to_owned()),
        Just("a".repeat(64)),
        Just("a".repeat(254)),
        Just("keyfleet.io/x".to_owned()),
        Just("app.kubernetes.io/managed-by".to_owned()),
        "[a-z0-9.-]{0,70}",
        any::<String>(),
    ]
}

/// One field of a valid payload replaced by something odd, and the word a refusal must use.
#[derive(Debug, Clone)]
enum Mutation {
    Key(String),
    RevisionZero,
    SecretName(String),
    Type(String),
    Namespace(String),
    DuplicateNamespace,
    NoTargets,
    BothTargets,
    Selector(v1::LabelSelector),
    DataKey(String),
    DataTooLarge,
    Label(String, String),
    Annotation(String),
    AnnotationsTooLarge,
    CreationPolicy(i32),
    DeletionPolicy(i32),
    Sha256(Vec<u8>),
}

impl Mutation {
    fn field(&self) -> &'static str {
        match self {
            Self::Key(_) => "key: ",
            Self::RevisionZero => "revision",
            Self::SecretName(_) => "secret_name: ",
            Self::Type(_) => "type ",
            Self::Namespace(_) | Self::DuplicateNamespace | Self::NoTargets | Self::BothTargets => {
                "namespace"
            }
            Self::Selector(_) => "namespace_selector: ",
            Self::DataKey(_) => "data key ",
            Self::DataTooLarge => "data is ",
            Self::Label(..) => "label ",
            Self::Annotation(_) | Self::AnnotationsTooLarge => "annotation",
            Self::CreationPolicy(_) => "creation_policy",
            Self::DeletionPolicy(_) => "deletion_policy",
            Self::Sha256(_) => "sha256",
        }
    }

    fn apply(&self, payload: &mut v1::SecretPayload) {
        match self.clone() {
            Self::Key(key) => payload.key = key,
            Self::RevisionZero => payload.revision = 0,
            Self::SecretName(name) => payload.secret_name = name,
            Self::Type(r#type) => payload.r#type = r#type,
            Self::Namespace(namespace) => {
                payload.namespace_selector = None;
                payload.namespaces = vec!["default".to_owned(), namespace];
            }
            Self::DuplicateNamespace => {
                payload.namespace_selector = None;
                payload.namespaces = vec!["a".to_owned(), "b".to_owned(), "a".to_owned()];
            }
            Self::NoTargets => {
                payload.namespace_selector = None;
                payload.namespaces.clear();
            }
            Self::BothTargets => {
                payload.namespaces = vec!["default".to_owned()];
                payload.namespace_selector = Some(v1::LabelSelector::default());
            }
            Self::Selector(selector) => {
                payload.namespaces.clear();
                payload.namespace_selector = Some(selector);
            }
            Self::DataKey(key) => {
                payload.data.insert(key, b"value".to_vec());
            }
            Self::DataTooLarge => {
                payload
                    .data
                    .insert("big".to_owned(), vec![0; limits::MAX_SECRET_DATA_BYTES]);
            }
            Self::Label(key, value) => {
                payload.labels.insert(key, value);
            }
            Self::Annotation(key) => {
                payload.annotations.insert(key, "v".to_owned());
            }
            Self::AnnotationsTooLarge => {
                payload
                    .annotations
                    .insert("big".to_owned(), "v".repeat(256 * 1024 + 1));
            }
            Self::CreationPolicy(value) => payload.creation_policy = value,
            Self::DeletionPolicy(value) => payload.deletion_policy = value,
            Self::Sha256(sha256) => payload.sha256 = sha256,
        }
        if !matches!(self, Self::Sha256(_)) {
            seal(payload);
        }
    }
}

fn arbitrary_selector() -> impl Strategy<Value = v1::LabelSelector> {
    let requirement = (
        odd_string(),
        prop_oneof![
            Just("In".to_owned()),
            Just("NotIn".to_owned()),
            Just("Exists".to_owned()),
            Just("DoesNotExist".to_owned()),
            Just("in".to_owned()),
            Just(String::new()),
            any::<String>(),
        ],
        prop::collection::vec(odd_string(), 0..3),
    )
        .prop_map(|(key, operator, values)| v1::LabelRequirement {
            key,
            operator,
            values,
        });
    (
        prop::collection::hash_map(odd_string(), odd_string(), 0..3),
        prop::collection::vec(requirement, 0..3),
    )
        .prop_map(|(match_labels, match_expressions)| v1::LabelSelector {
            match_labels,
            match_expressions,
        })
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        odd_string().prop_map(Mutation::Key),
        Just(Mutation::RevisionZero),
        odd_string().prop_map(Mutation::SecretName),
        prop_oneof![Just("a b".to_owned()), Just("x".repeat(254)), any::<String>()].prop_map(Mutation::Type),
        odd_string().prop_map(Mutation::Namespace),
        Just(Mutation::DuplicateNamespace),
        Just(Mutation::NoTargets),
        Just(Mutation::BothTargets),
        arbitrary_selector().prop_map(Mutation::Selector),
        odd_string().prop_map(Mutation::DataKey),
        Just(Mutation::DataTooLarge),
        (odd_string(), odd_string()).prop_map(|(key, value)| Mutation::Label(key, value)),
        odd_string().prop_map(Mutation::Annotation),
        Just(Mutation::AnnotationsTooLarge),
        any::<i32>().prop_map(Mutation::CreationPolicy),
        any::<i32>().prop_map(Mutation::DeletionPolicy),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Mutation::Sha256),
    ]
}

/// What every refusal must look like.
fn check_refusal(refusal: &keyfleet_agent::reconcile::Refusal) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(refusal.code, ErrorCode::Invalid | ErrorCode::DigestMismatch),
        "{refusal:?}"
    );
    prop_assert!(
        !refusal.retryable,
        "a bad payload does not get better: {refusal:?}"
    );
    prop_assert!(!refusal.message.trim().is_empty());
    // It fits a NACK's message without being cut (the agent truncates beyond this).
    prop_assert!(
        refusal.message.len() <= limits::MAX_ERROR_MESSAGE_BYTES + 600,
        "{}",
        refusal.message.len()
    );
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn valid_payloads_are_accepted_as_sent(payload in valid_payload()) {
        let sent = payload.clone();
        let desired = desired_from_payload(payload);
        prop_assert!(desired.is_ok(), "{:?}\n{:?}", desired.err(), sent);
        let desired = desired.unwrap();
        prop_assert_eq!(&desired.key, &sent.key);
        prop_assert_eq!(desired.revision, sent.revision);
        prop_assert_eq!(&desired.sha256[..], &sent.sha256[..]);
        prop_assert_eq!(desired.data.len(), sent.data.len());
    }

    #[test]
    fn a_mutated_field_is_refused_by_name_or_accepted(payload in valid_payload(), mutation in mutation()) {
        let mut payload = payload;
        mutation.apply(&mut payload);
        if let Err(refusal) = desired_from_payload(payload) {
            check_refusal(&refusal)?;
            prop_assert!(
                refusal.message.contains(mutation.field()),
                "refusal of {:?} does not name {:?}: {}",
                mutation,
                mutation.field(),
                refusal.message
            );
            if matches!(mutation, Mutation::Sha256(_)) {
                prop_assert_eq!(refusal.code, ErrorCode::DigestMismatch);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        // Whatever prost accepts goes through the same validation as a real Update's payload.
        if let Ok(payload) = v1::SecretPayload::decode(&bytes[..])
            && let Err(refusal) = desired_from_payload(payload)
        {
            check_refusal(&refusal)?;
        }
    }

    #[test]
    fn arbitrary_messages_never_panic(
        key in odd_string(),
        secret_name in odd_string(),
        revision in any::<u64>(),
        r#type in odd_string(),
        namespaces in prop::collection::vec(odd_string(), 0..4),
        namespace_selector in prop::option::of(arbitrary_selector()),
        data in prop::collection::hash_map(odd_string(), prop::collection::vec(any::<u8>(), 0..16), 0..4),
        labels in prop::collection::hash_map(odd_string(), odd_string(), 0..3),
        annotations in prop::collection::hash_map(odd_string(), odd_string(), 0..3),
        policies in (any::<i32>(), any::<i32>()),
        seal_it in any::<bool>(),
    ) {
        let mut payload = v1::SecretPayload {
            key,
            revision,
            sha256: Vec::new(),
            secret_name,
            r#type,
            namespaces,
            namespace_selector,
            data,
            labels,
            annotations: annotations.into_iter().collect::<HashMap<_, _>>(),
            creation_policy: policies.0,
            deletion_policy: policies.1,
            immutable: false,
            source_versions: HashMap::new(),
        };
        if seal_it {
            seal(&mut payload);
        }
        if let Err(refusal) = desired_from_payload(payload) {
            check_refusal(&refusal)?;
        }
    }
}
