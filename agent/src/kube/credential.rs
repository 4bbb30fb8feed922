//! The credential store: the hub credential kept in a Secret in the agent's namespace, applied
//! by the agent's field manager. Invariant: the credential's bytes are zeroized once copied.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use zeroize::{Zeroize as _, Zeroizing};

use super::{KubeError, api_error, zeroize_secret};
use crate::cluster::{Credential, CredentialStore};
use crate::reconcile::FIELD_MANAGER;

/// Keeps the hub credential in a Secret in the agent's namespace.
pub struct KubeCredentialStore {
    api: Api<Secret>,
    namespace: String,
    name: String,
}

const CREDENTIAL_KEY: &str = "credential";
const CLUSTER_NAME_KEY: &str = "cluster-name";
const CLUSTER_ID_KEY: &str = "cluster-id";

impl KubeCredentialStore {
    /// The store for `namespace`/`name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    fn invalid(&self, reason: &'static str) -> KubeError {
        KubeError::Credential {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            reason,
        }
    }
}

impl CredentialStore for KubeCredentialStore {
    type Error = KubeError;

    async fn load(&self) -> Result<Option<Credential>, KubeError> {
        let Some(mut secret) =
            self.api.get_opt(&self.name).await.map_err(|error| {
                api_error(format!("read Secret {}/{}", self.namespace, self.name), &error)
            })?
        else {
            return Ok(None);
        };
        let mut data = secret.data.take().unwrap_or_default();
        let mut take = |key: &str| -> Option<Zeroizing<String>> {
            let bytes = Zeroizing::new(std::mem::take(&mut data.get_mut(key)?.0));
            std::str::from_utf8(&bytes)
                .ok()
                .map(|text| Zeroizing::new(text.to_owned()))
        };
        let secret_value = take(CREDENTIAL_KEY).ok_or_else(|| self.invalid("no utf-8 `credential` key"))?;
        let cluster_name = take(CLUSTER_NAME_KEY)
            .map(|name| name.to_string())
            .unwrap_or_default();
        let cluster_id = take(CLUSTER_ID_KEY).map(|id| id.to_string()).unwrap_or_default();
        for value in data.values_mut() {
            value.0.zeroize();
        }
        if secret_value.is_empty() {
            return Err(self.invalid("empty `credential` key"));
        }
        Ok(Some(Credential {
            cluster_name,
            cluster_id,
            secret: secret_value,
        }))
    }

    async fn save(&self, credential: &Credential) -> Result<(), KubeError> {
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(
                    [
                        ("app.kubernetes.io/name".to_string(), "keyfleet-agent".to_string()),
                        (
                            "app.kubernetes.io/component".to_string(),
                            "credential".to_string(),
                        ),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(
                [
                    (CREDENTIAL_KEY, credential.secret.as_bytes()),
                    (CLUSTER_NAME_KEY, credential.cluster_name.as_bytes()),
                    (CLUSTER_ID_KEY, credential.cluster_id.as_bytes()),
                ]
                .into_iter()
                .map(|(key, value)| (key.to_owned(), ByteString(value.to_vec())))
                .collect(),
            ),
            ..Secret::default()
        };
        let result = self
            .api
            .patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await;
        zeroize_secret(&mut secret);
        match result {
            Ok(mut stored) => {
                zeroize_secret(&mut stored);
                Ok(())
            }
            Err(error) => Err(api_error(
                format!("store Secret {}/{}", self.namespace, self.name),
                &error,
            )),
        }
    }
}
