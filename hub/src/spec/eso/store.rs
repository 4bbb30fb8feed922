//! ESO `SecretStore` / `ClusterSecretStore` (`azurekv`) → keyfleet `SecretStore`.
//!
//! keyfleet's hub reads Key Vault with its own identity, so what ESO takes from Kubernetes
//! objects in the workload cluster (service accounts, Secrets holding ids) either maps to the
//! hub's environment or is reported: the client secret of a service principal becomes a file the
//! hub reads (`Options::credentials_dir/NAME/KEY`, a mounted Secret), never a value.

use serde_json::{Map, Value, json};

use super::{Ctx, Options, Source, StoreKey, StoreOut};

const BASE: &str = "spec.provider.azurekv";

/// Converts one store document; `None` (with an error) when it cannot be.
pub(super) fn convert(
    ctx: &mut Ctx<'_>,
    key: StoreKey,
    metadata: &Map<String, Value>,
    spec: &Map<String, Value>,
    options: &Options,
) -> Option<StoreOut> {
    let kept_metadata = ctx.metadata(metadata);
    for (field, value) in spec {
        match field.as_str() {
            "provider" => {}
            "refreshInterval" => ctx.warn(
                "spec.refreshInterval",
                Some(value),
                "ESO's store re-validation interval; keyfleet reports store health continuously (the poll interval comes from the ExternalSecrets' refreshInterval)",
            ),
            "controller" => ctx.warn(
                "spec.controller",
                Some(value),
                "ESO controller class; one hub serves every store",
            ),
            "retrySettings" => ctx.warn(
                "spec.retrySettings",
                Some(value),
                "keyfleet retries Key Vault with its own backoff and rate limit (rateLimit)",
            ),
            _ => ctx.warn(
                &format!("spec.{field}"),
                Some(value),
                "no keyfleet equivalent; not converted",
            ),
        }
    }
    let provider = ctx.object("spec.provider", spec.get("provider"))?;
    for name in provider.keys() {
        if name != "azurekv" {
            ctx.error(
                &format!("spec.provider.{name}"),
                None,
                format!("provider {name} is not Azure Key Vault; keyfleet reads Azure Key Vault only, so the store is not converted"),
            );
            return None;
        }
    }
    let Some(azure) = ctx.object(BASE, provider.get("azurekv")).cloned() else {
        ctx.error("spec.provider", None, "no provider; expected azurekv");
        return None;
    };
    let mut out = Map::new();
    let Some(vault_url) = ctx.string(&format!("{BASE}.vaultUrl"), azure.get("vaultUrl")) else {
        ctx.error(BASE, None, "vaultUrl is required");
        return None;
    };
    out.insert("vaultUrl".to_owned(), json!(vault_url.trim_end_matches('/')));
    // ESO's default is ServicePrincipal; keyfleet's is WorkloadIdentity: always written.
    let auth_type = ctx
        .string(&format!("{BASE}.authType"), azure.get("authType"))
        .unwrap_or_else(|| "ServicePrincipal".to_owned());
    let tenant_id = ctx.string(&format!("{BASE}.tenantId"), azure.get("tenantId"));
    let secret_ref = ctx
        .object(&format!("{BASE}.authSecretRef"), azure.get("authSecretRef"))
        .cloned()
        .unwrap_or_default();
    let source = Source {
        file: ctx.file.to_owned(),
        line: ctx.document.line_of(""),
    };
    match auth_type.as_str() {
        "WorkloadIdentity" => {
            out.insert("authType".to_owned(), json!("WorkloadIdentity"));
            if let Some(tenant_id) = &tenant_id {
                out.insert("tenantId".to_owned(), json!(tenant_id));
            }
            if let Some(value) = azure.get("serviceAccountRef") {
                ctx.warn(
                    &format!("{BASE}.serviceAccountRef"),
                    Some(value),
                    "the hub authenticates with its own pod's federated service account (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE): give that identity Get on this vault's secrets",
                );
            }
            for (field, value) in &secret_ref {
                let why = match field.as_str() {
                    "clientId" | "tenantId" => {
                        "read from a Secret in ESO's cluster; keyfleet takes it from the hub's workload identity environment (or write it as a literal tenantId/clientId)"
                    }
                    _ => "not used with WorkloadIdentity",
                };
                ctx.warn(&format!("{BASE}.authSecretRef.{field}"), Some(value), why);
            }
        }
        "ManagedIdentity" => {
            out.insert("authType".to_owned(), json!("ManagedIdentity"));
            if let Some(identity) = ctx.string(&format!("{BASE}.identityId"), azure.get("identityId")) {
                out.insert("identityId".to_owned(), json!(identity));
            }
            if let Some(tenant_id) = &tenant_id {
                ctx.warn(
                    &format!("{BASE}.tenantId"),
                    Some(&json!(tenant_id)),
                    "a managed identity's tenant is the hub's; not used",
                );
            }
            for (field, value) in &secret_ref {
                ctx.warn(
                    &format!("{BASE}.authSecretRef.{field}"),
                    Some(value),
                    "not used with ManagedIdentity",
                );
            }
        }
        "ServicePrincipal" => {
            out.insert("authType".to_owned(), json!("ServicePrincipal"));
            match &tenant_id {
                Some(tenant_id) => {
                    out.insert("tenantId".to_owned(), json!(tenant_id));
                }
                None => {
                    ctx.error(
                        BASE,
                        None,
                        "ServicePrincipal needs tenantId; keyfleet takes it from the spec, not from a Secret",
                    );
                    return None;
                }
            }
            service_principal(ctx, &key, &secret_ref, &mut out, options)?;
        }
        other => {
            ctx.error(
                &format!("{BASE}.authType"),
                azure.get("authType"),
                format!("unknown authType {other:?}; expected WorkloadIdentity, ManagedIdentity or ServicePrincipal"),
            );
            return None;
        }
    }
    if let Some(environment) = ctx.string(&format!("{BASE}.environmentType"), azure.get("environmentType")) {
        match environment.as_str() {
            "PublicCloud" => {}
            "USGovernmentCloud" | "ChinaCloud" => {
                out.insert("environmentType".to_owned(), json!(environment));
            }
            _ => ctx.warn(
                &format!("{BASE}.environmentType"),
                azure.get("environmentType"),
                "keyfleet supports PublicCloud, USGovernmentCloud and ChinaCloud; the store authenticates against PublicCloud",
            ),
        }
    }
    if let Some(value) = azure.get("identityId")
        && auth_type != "ManagedIdentity"
    {
        ctx.warn(
            &format!("{BASE}.identityId"),
            Some(value),
            format!("not used with {auth_type}"),
        );
    }
    for field in ["useAzureSDK", "customCloudConfig"] {
        if let Some(value) = azure.get(field) {
            ctx.warn(
                &format!("{BASE}.{field}"),
                Some(value),
                "custom cloud endpoints are not supported; the endpoints of environmentType are used",
            );
        }
    }
    if let Some(value) = azure.get("serviceAccountRef")
        && auth_type != "WorkloadIdentity"
    {
        ctx.warn(
            &format!("{BASE}.serviceAccountRef"),
            Some(value),
            format!("not used with {auth_type}"),
        );
    }
    ctx.rest(
        BASE,
        &azure,
        &[
            "vaultUrl",
            "authType",
            "tenantId",
            "identityId",
            "authSecretRef",
            "serviceAccountRef",
            "environmentType",
            "useAzureSDK",
            "customCloudConfig",
        ],
    );
    Some(StoreOut {
        key,
        source,
        metadata: kept_metadata,
        spec: json!({ "provider": { "azurekv": out } }),
        poll: None,
    })
}

/// `authSecretRef` of a ServicePrincipal: the client secret becomes a file the hub reads; the
/// client id must be a literal (it is not secret, and keyfleet does not read Kubernetes Secrets).
fn service_principal(
    ctx: &mut Ctx<'_>,
    key: &StoreKey,
    secret_ref: &Map<String, Value>,
    out: &mut Map<String, Value>,
    options: &Options,
) -> Option<()> {
    let base = format!("{BASE}.authSecretRef");
    let selector = |ctx: &mut Ctx<'_>, field: &str| -> Option<(String, String)> {
        let path = format!("{base}.{field}");
        let object = ctx.object(&path, secret_ref.get(field))?.clone();
        let name = ctx.string(&format!("{path}.name"), object.get("name"))?;
        let key = ctx.string(&format!("{path}.key"), object.get("key"))?;
        Some((name, key))
    };
    match selector(ctx, "clientSecret") {
        Some((name, secret_key)) => {
            let file = options.credentials_dir.join(&name).join(&secret_key);
            out.insert(
                "clientSecret".to_owned(),
                json!({ "file": file.display().to_string() }),
            );
            let namespace = secret_ref
                .get("clientSecret")
                .and_then(|value| value.get("namespace"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| key.1.clone())
                .unwrap_or_else(|| "the store's".to_owned());
            ctx.note(
                &format!("{base}.clientSecret"),
                secret_ref.get("clientSecret"),
                format!(
                    "the hub reads the client secret from {}: mount key {secret_key:?} of Secret {name:?} (namespace {namespace}) into the hub pod there",
                    file.display()
                ),
            );
        }
        None => {
            ctx.error(
                &base,
                None,
                "ServicePrincipal needs authSecretRef.clientSecret (keyfleet authenticates service principals with a client secret)",
            );
            return None;
        }
    }
    match selector(ctx, "clientId") {
        Some((name, id_key)) => {
            // Not secret, but only ESO's cluster knows it: the operator fills it in.
            let placeholder = format!("REPLACE-with-{id_key}-of-Secret-{name}");
            out.insert("clientId".to_owned(), json!(placeholder));
            ctx.warn(
                &format!("{base}.clientId"),
                secret_ref.get("clientId"),
                format!(
                    "keyfleet needs the application (client) id itself in the SecretStore; written as {placeholder:?}: replace it before applying"
                ),
            );
        }
        None => {
            ctx.error(&base, None, "ServicePrincipal needs authSecretRef.clientId");
            return None;
        }
    }
    for (field, value) in secret_ref {
        match field.as_str() {
            "clientId" | "clientSecret" => {}
            "clientCertificate" => ctx.warn(
                &format!("{base}.clientCertificate"),
                Some(value),
                "certificate credentials are not supported; the client secret is used",
            ),
            "tenantId" => ctx.warn(
                &format!("{base}.tenantId"),
                Some(value),
                "keyfleet takes the tenant from spec.provider.azurekv.tenantId",
            ),
            _ => ctx.warn(
                &format!("{base}.{field}"),
                Some(value),
                "no keyfleet equivalent; not converted",
            ),
        }
    }
    Some(())
}
