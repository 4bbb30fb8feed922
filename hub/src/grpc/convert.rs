//! Proto ⇄ domain conversions, the only place both kinds of types meet.
//!
//! A rendered revision is encoded here exactly once ([`encode_revision`]): the `SecretPayload`
//! bytes are shared (`Bytes` is reference-counted) by every stream that sends that revision.

use std::collections::BTreeMap;

use bytes::Bytes;
use keyfleet_proto::v1;
use prost::Message as _;

use crate::domain::{LabelRequirement, LabelSelector, SelectorOperator, Sha256};
use crate::fleet::EncodedRevision;
use crate::render::RenderedSecret;
use crate::spec::{CreationPolicy, DeletionPolicy, TargetNamespaces};
use crate::sync::RevisionEncoder;

/// The sync engine's [`RevisionEncoder`]: a revision is a `SecretPayload` message, its digest
/// `keyfleet_proto::digest::payload_sha256` (wired in by `app`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtoEncoder;

impl RevisionEncoder for ProtoEncoder {
    fn digest(&self, rendered: &RenderedSecret) -> Sha256 {
        rendered_sha256(rendered)
    }

    fn encode(
        &self,
        rendered: &RenderedSecret,
        revision: u64,
        sources: &[(String, String)],
    ) -> EncodedRevision {
        encode_revision_from(rendered, revision, sources)
    }
}

/// The canonical digest of a rendering (independent of the revision number), i.e. what the store
/// records as the revision's sha256 and what the agent recomputes.
pub fn rendered_sha256(rendered: &RenderedSecret) -> Sha256 {
    let mut payload = secret_payload_unsigned(rendered, 0);
    let digest = Sha256(keyfleet_proto::digest::payload_sha256(&payload));
    wipe(&mut payload);
    digest
}

/// Encodes `rendered` as revision `revision`, once.
pub fn encode_revision(rendered: &RenderedSecret, revision: u64) -> EncodedRevision {
    encode_revision_from(rendered, revision, &[])
}

/// [`encode_revision`] naming the Key Vault versions it was rendered from (`source_versions`:
/// names and version ids, which the agent records on the Secret; not part of the digest).
pub fn encode_revision_from(
    rendered: &RenderedSecret,
    revision: u64,
    sources: &[(String, String)],
) -> EncodedRevision {
    let mut payload = secret_payload_unsigned(rendered, revision);
    payload.source_versions = sources.iter().cloned().collect();
    let sha256 = Sha256(keyfleet_proto::digest::payload_sha256(&payload));
    payload.sha256 = sha256.0.to_vec();
    let bytes = Bytes::from(payload.encode_to_vec());
    wipe(&mut payload);
    EncodedRevision {
        key: rendered.key.clone(),
        revision,
        sha256,
        payload: bytes,
    }
}

/// Decodes bytes produced by [`encode_revision`] (tests, and streams that need the message).
pub fn decode_payload(bytes: &[u8]) -> Result<v1::SecretPayload, prost::DecodeError> {
    v1::SecretPayload::decode(bytes)
}

fn secret_payload_unsigned(rendered: &RenderedSecret, revision: u64) -> v1::SecretPayload {
    let (namespaces, namespace_selector) = match &rendered.namespaces {
        TargetNamespaces::List(list) => (list.clone(), None),
        TargetNamespaces::Selector(selector) => (Vec::new(), Some(selector_to_proto(selector))),
    };
    v1::SecretPayload {
        key: rendered.key.clone(),
        revision,
        sha256: Vec::new(),
        secret_name: rendered.secret_name.clone(),
        r#type: rendered.secret_type.clone(),
        namespaces,
        namespace_selector,
        data: rendered
            .data
            .iter()
            .map(|(key, value)| (key.clone(), value.expose().to_vec()))
            .collect(),
        labels: rendered.labels.clone().into_iter().collect(),
        annotations: rendered.annotations.clone().into_iter().collect(),
        creation_policy: creation_policy(rendered.creation_policy) as i32,
        deletion_policy: deletion_policy(rendered.deletion_policy) as i32,
        immutable: rendered.immutable,
        source_versions: std::collections::HashMap::new(),
    }
}

/// Overwrites the copies of secret data held by a payload message.
fn wipe(payload: &mut v1::SecretPayload) {
    for value in payload.data.values_mut() {
        zeroize::Zeroize::zeroize(value);
    }
}

/// Spec creationPolicy → wire enum.
pub fn creation_policy(policy: CreationPolicy) -> v1::CreationPolicy {
    match policy {
        CreationPolicy::Owner => v1::CreationPolicy::Owner,
        CreationPolicy::Merge => v1::CreationPolicy::Merge,
        CreationPolicy::Orphan => v1::CreationPolicy::Orphan,
    }
}

/// Spec deletionPolicy → wire enum.
pub fn deletion_policy(policy: DeletionPolicy) -> v1::DeletionPolicy {
    match policy {
        DeletionPolicy::Retain => v1::DeletionPolicy::Retain,
        DeletionPolicy::Delete => v1::DeletionPolicy::Delete,
    }
}

/// Domain selector → wire selector.
pub fn selector_to_proto(selector: &LabelSelector) -> v1::LabelSelector {
    v1::LabelSelector {
        match_labels: selector.match_labels.clone().into_iter().collect(),
        match_expressions: selector
            .match_expressions
            .iter()
            .map(|requirement| v1::LabelRequirement {
                key: requirement.key.clone(),
                operator: operator_name(requirement.operator).to_owned(),
                values: requirement.values.clone(),
            })
            .collect(),
    }
}

/// Why a wire selector was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    /// Unknown operator.
    #[error("selector operator {0:?} is unknown, expected In|NotIn|Exists|DoesNotExist")]
    Operator(String),
    /// Values given to Exists/DoesNotExist or missing for In/NotIn.
    #[error("selector requirement on {key:?}: {message}")]
    Values {
        /// Label key.
        key: String,
        /// What is wrong.
        message: &'static str,
    },
}

/// Wire selector → domain selector, checking operators and values.
pub fn selector_from_proto(selector: &v1::LabelSelector) -> Result<LabelSelector, SelectorError> {
    let mut match_expressions = Vec::with_capacity(selector.match_expressions.len());
    for requirement in &selector.match_expressions {
        let operator = match requirement.operator.as_str() {
            "In" => SelectorOperator::In,
            "NotIn" => SelectorOperator::NotIn,
            "Exists" => SelectorOperator::Exists,
            "DoesNotExist" => SelectorOperator::DoesNotExist,
            other => return Err(SelectorError::Operator(other.to_owned())),
        };
        let needs_values = matches!(operator, SelectorOperator::In | SelectorOperator::NotIn);
        if needs_values == requirement.values.is_empty() {
            return Err(SelectorError::Values {
                key: requirement.key.clone(),
                message: if needs_values {
                    "In and NotIn need values"
                } else {
                    "Exists and DoesNotExist take no values"
                },
            });
        }
        match_expressions.push(LabelRequirement {
            key: requirement.key.clone(),
            operator,
            values: requirement.values.clone(),
        });
    }
    Ok(LabelSelector {
        match_labels: selector
            .match_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        match_expressions,
    })
}

/// Operator name as Kubernetes spells it.
pub fn operator_name(operator: SelectorOperator) -> &'static str {
    match operator {
        SelectorOperator::In => "In",
        SelectorOperator::NotIn => "NotIn",
        SelectorOperator::Exists => "Exists",
        SelectorOperator::DoesNotExist => "DoesNotExist",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SecretValue;

    fn rendered() -> RenderedSecret {
        RenderedSecret {
            key: "regcred".to_owned(),
            secret_name: "regcred".to_owned(),
            secret_type: "kubernetes.io/dockerconfigjson".to_owned(),
            namespaces: TargetNamespaces::List(vec!["default".to_owned(), "ci".to_owned()]),
            data: [(".dockerconfigjson".to_owned(), SecretValue::new(b"{}".to_vec()))].into(),
            labels: [("app.kubernetes.io/part-of".to_owned(), "registry".to_owned())].into(),
            annotations: BTreeMap::new(),
            creation_policy: CreationPolicy::Owner,
            deletion_policy: DeletionPolicy::Retain,
            immutable: false,
        }
    }

    #[test]
    fn encoded_revision_carries_the_canonical_digest_the_agent_recomputes() {
        let encoded = encode_revision(&rendered(), 7);
        let payload = decode_payload(&encoded.payload).expect("decodes");
        assert_eq!(payload.revision, 7);
        assert_eq!(payload.sha256, encoded.sha256.0.to_vec());
        assert_eq!(keyfleet_proto::digest::payload_sha256(&payload), encoded.sha256.0);
        assert_eq!(payload.creation_policy, v1::CreationPolicy::Owner as i32);
        assert_eq!(payload.data[".dockerconfigjson"], b"{}");
        // The digest does not depend on the revision number: the store records it before the
        // number is known.
        assert_eq!(rendered_sha256(&rendered()), encoded.sha256);
        assert_eq!(encode_revision(&rendered(), 8).sha256, encoded.sha256);
    }

    #[test]
    fn debug_of_an_encoded_revision_shows_only_its_size() {
        let encoded = encode_revision(&rendered(), 1);
        let printed = format!("{encoded:?}");
        assert!(printed.contains("bytes>") && !printed.contains("{}"), "{printed}");
    }

    #[test]
    fn selectors_round_trip_and_bad_operators_are_refused() {
        let selector = LabelSelector {
            match_labels: [("env".to_owned(), "prod".to_owned())].into(),
            match_expressions: vec![LabelRequirement {
                key: "ring".to_owned(),
                operator: SelectorOperator::NotIn,
                values: vec!["canary".to_owned()],
            }],
        };
        assert_eq!(selector_from_proto(&selector_to_proto(&selector)), Ok(selector));
        let mut bad = v1::LabelSelector::default();
        bad.match_expressions.push(v1::LabelRequirement {
            key: "a".to_owned(),
            operator: "Is".to_owned(),
            values: vec![],
        });
        assert_eq!(
            selector_from_proto(&bad),
            Err(SelectorError::Operator("Is".to_owned()))
        );
        bad.match_expressions[0].operator = "Exists".to_owned();
        bad.match_expressions[0].values = vec!["x".to_owned()];
        assert!(selector_from_proto(&bad).is_err());
    }
}
