//! Read-back: the content a Secret ours for a key holds, read from the cluster before an item's
//! first write when no payload in memory is known to be it, so that a rollback can put it back.
//! Invariant: it reads only, and the bytes it does not keep are zeroized.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use zeroize::Zeroize as _;

use super::{KubeCluster, refusal, zeroize_secret};
use crate::reconcile::{
    CREATION_POLICY_ANNOTATION, CreationPolicy, DeletionPolicy, DesiredSecret, FIELD_MANAGER,
    FLEET_SECRET_ANNOTATION, FLEET_SECRET_LABEL, KEY_VAULT_VERSIONS_ANNOTATION, MANAGED_BY_LABEL,
    MANAGED_BY_VALUE, Plan, Planned, Prior, RESERVED_ANNOTATION_PREFIX, REVISION_ANNOTATION, Refusal,
    SHA256_ANNOTATION, SecretBytes, Step, TARGETS_ANNOTATION, Targets,
};

/// The child field names under `path` in a managedFields `fieldsV1` tree (`f:` stripped).
fn owned_names(fields: &serde_json::Value, path: &[&str]) -> BTreeSet<String> {
    let mut node = fields;
    for step in path {
        match node.get(format!("f:{step}")) {
            Some(child) => node = child,
            None => return BTreeSet::new(),
        }
    }
    node.as_object()
        .map(|children| {
            children
                .keys()
                .filter_map(|name| name.strip_prefix("f:"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The content a Secret ours for `key` holds, as the payload that writes it again: the fields of
/// our server-side apply entry in managedFields (without one: every data key, the type and
/// `immutable`, and only our own label and annotations). The bytes move out of `secret`.
pub(super) fn prior_content(mut secret: Secret, key: &str) -> DesiredSecret {
    let owned = secret
        .metadata
        .managed_fields
        .as_ref()
        .and_then(|entries| {
            entries.iter().find(|entry| {
                entry.manager.as_deref() == Some(FIELD_MANAGER) && entry.operation.as_deref() == Some("Apply")
            })
        })
        .and_then(|entry| entry.fields_v1.as_ref())
        .map(|fields| fields.0.clone());
    let (data_keys, label_keys, annotation_keys, owns_immutable) = match &owned {
        Some(fields) => (
            Some(owned_names(fields, &["data"])),
            owned_names(fields, &["metadata", "labels"]),
            owned_names(fields, &["metadata", "annotations"]),
            fields.get("f:immutable").is_some(),
        ),
        None => (None, BTreeSet::new(), BTreeSet::new(), true),
    };
    let mut data = secret.data.take().unwrap_or_default();
    let content_data = data
        .iter_mut()
        .filter(|(name, _)| data_keys.as_ref().is_none_or(|keys| keys.contains(*name)))
        .map(|(name, value)| (name.clone(), SecretBytes::new(std::mem::take(&mut value.0))))
        .collect();
    for value in data.values_mut() {
        value.0.zeroize();
    }
    let annotations = secret.metadata.annotations.take().unwrap_or_default();
    let labels = secret.metadata.labels.take().unwrap_or_default();
    let namespace = secret.metadata.namespace.take().unwrap_or_default();
    let source_versions = annotations
        .get(KEY_VAULT_VERSIONS_ANNOTATION)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let sha256 = annotations
        .get(SHA256_ANNOTATION)
        .and_then(|hex| hex::decode(hex).ok())
        .and_then(|bytes| bytes.try_into().ok())
        .unwrap_or([0; 32]);
    DesiredSecret {
        key: key.to_owned(),
        revision: annotations
            .get(REVISION_ANNOTATION)
            .and_then(|revision| revision.parse().ok())
            .unwrap_or(0),
        sha256,
        secret_name: secret.metadata.name.take().unwrap_or_default(),
        secret_type: secret.type_.take().unwrap_or_else(|| "Opaque".into()),
        // The targets record is written back as it was (a Secret written before agents
        // recorded it gets its own namespace: it then claims no location it does not hold).
        targets: annotations
            .get(TARGETS_ANNOTATION)
            .and_then(|text| Targets::from_annotation(text))
            .unwrap_or_else(|| Targets::Namespaces(vec![namespace])),
        data: content_data,
        labels: labels
            .into_iter()
            .filter(|(name, _)| {
                name != MANAGED_BY_LABEL && name != FLEET_SECRET_LABEL && label_keys.contains(name)
            })
            .collect(),
        creation: CreationPolicy::from_annotation(
            annotations.get(CREATION_POLICY_ANNOTATION).map(String::as_str),
        ),
        annotations: annotations
            .into_iter()
            .filter(|(name, _)| {
                !name.starts_with(RESERVED_ANNOTATION_PREFIX) && annotation_keys.contains(name)
            })
            .collect(),
        source_versions,
        // Only written back, never removed again: the policy does not matter here.
        deletion: DeletionPolicy::Retain,
        immutable: secret.immutable == Some(true) && owns_immutable,
    }
}

impl KubeCluster {
    /// Completes the plan's steps whose prior must be read back from the cluster. Runs before the
    /// item's first write: a failure here refuses the item with nothing written.
    pub(super) async fn read_back_priors(&self, key: &str, plan: Plan) -> Result<Vec<Step>, Refusal> {
        let mut steps = Vec::with_capacity(plan.steps.len());
        for planned in plan.steps {
            steps.push(match planned {
                Planned::Ready(step) => step,
                Planned::ReadBack(action) => {
                    let (namespace, name) = action.location();
                    let prior = self.read_back(key, namespace, name).await?;
                    Step::new(action, prior)
                }
            });
        }
        Ok(steps)
    }

    /// What `namespace`/`name` holds now, for putting it back later.
    async fn read_back(&self, key: &str, namespace: &str, name: &str) -> Result<Prior, Refusal> {
        let found = self.secrets(namespace).get_opt(name).await.map_err(|error| {
            refusal(
                &format!("read Secret {namespace}/{name} before writing (to roll back on failure)"),
                &error,
            )
        })?;
        let Some(mut secret) = found else {
            return Ok(Prior::Absent);
        };
        let ours = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(MANAGED_BY_LABEL))
            .is_some_and(|value| value == MANAGED_BY_VALUE)
            && secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(FLEET_SECRET_ANNOTATION))
                .is_some_and(|owner| owner == key);
        if !ours {
            zeroize_secret(&mut secret);
            return Ok(Prior::Foreign);
        }
        Ok(Prior::Ours(Arc::new(prior_content(secret, key))))
    }
}
