//! Property tests of Key Vault reply handling: arbitrary replies (status, body) go through the
//! SDK exactly as the client's pipeline does (`check_success` for an error status, `into_model`
//! for a 200) and then through our classification. Never a panic; every error names the store,
//! the operation and the secret; the status decides the variant; a `get` reply that cannot be
//! decoded never shows up in the error (its body is the value).
//!
//! Known, not asserted: for an error status the SDK's message quotes a non-JSON body verbatim
//! (a proxy's HTML page ends up in the error and the log, uncut). Key Vault's own error bodies
//! never hold a secret value.
#![allow(clippy::unwrap_used)]

use azure_core::http::headers::Headers;
use azure_core::http::{RawResponse, Response};
use azure_security_keyvault_secrets::models::{ListSecretPropertiesResult, Secret};
use proptest::prelude::*;

use super::*;
use crate::vault::{ErrorContext, Operation, VaultError};

const VALUE: &str = "s3cr3t-value-never-shown";

fn context(operation: Operation) -> ErrorContext {
    ErrorContext {
        store: "kv-props".to_owned(),
        vault: "https://kv-props.vault.azure.net/".to_owned(),
        operation,
        secret: (operation != Operation::ListSecrets).then(|| "db-password".to_owned()),
        auth_type: "ServicePrincipal",
    }
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        Just(Operation::Get),
        Just(Operation::ListSecrets),
        Just(Operation::ListVersions)
    ]
}

/// Bodies Key Vault (or a proxy in front of it) might answer with, the secret value included.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let json = prop_oneof![
        Just(serde_json::json!({"error": {"code": "Forbidden", "message": "denied",
            "innererror": {"code": "SecretDisabled"}}})),
        Just(serde_json::json!({"error": {"code": "SecretNotFound", "message": VALUE}})),
        Just(serde_json::json!({"error": {"innererror": {"code": 7}}})),
        Just(serde_json::json!({"error": null})),
        Just(serde_json::json!({"value": VALUE, "id": "https://kv-props.vault.azure.net/secrets/db-password/0123456789abcdef0123456789abcdef",
            "attributes": {"enabled": true, "created": 1_700_000_000, "updated": -1}})),
        Just(serde_json::json!({"value": VALUE, "id": 42})),
        Just(serde_json::json!({"value": [VALUE], "attributes": "x"})),
        Just(serde_json::json!({"value": VALUE, "attributes": {"created": 1e300, "exp": "tomorrow"}})),
        Just(serde_json::json!({"value": [{"id": VALUE}], "nextLink": VALUE})),
        Just(serde_json::json!([VALUE])),
    ]
    .prop_map(|json| serde_json::to_vec(&json).unwrap());
    prop_oneof![
        json.clone(),
        // A valid body cut short or with one byte changed.
        (json, any::<usize>(), any::<u8>(), any::<bool>()).prop_map(|(mut bytes, at, byte, cut)| {
            let at = at % bytes.len().max(1);
            if cut {
                bytes.truncate(at);
            } else if let Some(b) = bytes.get_mut(at) {
                *b = byte;
            }
            bytes
        }),
        Just(format!("<html>{VALUE}</html>").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
    ]
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        prop::sample::select(vec![
            200, 204, 301, 400, 401, 403, 404, 408, 409, 429, 500, 502, 503, 504
        ]),
        100..600u16,
    ]
}

fn check(error: &VaultError, operation: Operation, status: Option<u16>) -> Result<(), TestCaseError> {
    // `status: None`: a 200 whose body could not be decoded.
    let text = error.to_string();
    prop_assert!(
        text.starts_with("store kv-props: "),
        "the error does not name the store: {text}"
    );
    if operation != Operation::ListSecrets {
        prop_assert!(
            text.contains("db-password"),
            "the error does not name the secret: {text}"
        );
    }
    if operation == Operation::Get && status.is_none() {
        prop_assert!(!text.contains(VALUE), "a get error carries the value: {text}");
        prop_assert!(!format!("{error:?}").contains(VALUE), "{error:?}");
    }
    let variant_fits = match status {
        Some(401) => matches!(error, VaultError::Auth { .. }),
        Some(403) => matches!(error, VaultError::Forbidden { .. } | VaultError::Disabled { .. }),
        Some(404) => matches!(error, VaultError::NotFound { .. }),
        Some(429) => matches!(error, VaultError::Throttled { .. }),
        Some(408 | 500..=599) => matches!(error, VaultError::Unavailable { .. }),
        Some(_) => matches!(error, VaultError::Unexpected { .. }),
        None => matches!(error, VaultError::Unexpected { .. }),
    };
    prop_assert!(variant_fits, "status {status:?} became {error:?}");
    Ok(())
}

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

proptest! {
    #![proptest_config(config())]

    /// An error status with any body: the SDK's error (with the raw response) is classified by
    /// its status; the 403 SecretDisabled inner code is the only body content that matters.
    #[test]
    fn error_replies_are_classified_by_status(status in status(), body in body(), operation in operation()) {
        let code = StatusCode::from(status);
        let raw = RawResponse::from_bytes(code, Headers::new(), body.clone());
        let checked = futures::executor::block_on(azure_core::http::check_success(raw, None));
        match checked {
            Ok(_) => prop_assert!(code.is_success()),
            Err(error) => {
                prop_assert!(!code.is_success());
                let classified = classify(&error, context(operation));
                check(&classified, operation, Some(status))?;
                let disabled = status == 403
                    && serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|body| body.pointer("/error/innererror/code").cloned())
                        == Some(serde_json::json!("SecretDisabled"));
                prop_assert_eq!(matches!(classified, VaultError::Disabled { .. }), disabled);
            }
        }
    }

    /// A 200 with any body, decoded as `get` and `list` replies: either a model our conversion
    /// takes (times that do not fit are dropped, not a panic), or a decoding error that names
    /// the operation and never quotes the body of a `get`.
    #[test]
    fn success_replies_decode_or_fail_without_the_value(body in body()) {
        let response: Response<Secret> = RawResponse::from_bytes(StatusCode::Ok, Headers::new(), body.clone()).into();
        match response.into_model() {
            Ok(secret) => {
                let _ = secret.resource_id().ok().and_then(|id| id.version);
                let attributes = secret.attributes.unwrap_or_default();
                let _ = (to_chrono(attributes.created), to_chrono(attributes.updated), tags(secret.tags));
            }
            Err(error) => check(&classify(&error, context(Operation::Get)), Operation::Get, None)?,
        }
        let response: Response<ListSecretPropertiesResult> =
            RawResponse::from_bytes(StatusCode::Ok, Headers::new(), body).into();
        match response.into_model() {
            Ok(page) => {
                for item in page.value {
                    let _ = item.resource_id().ok().map(|id| id.name);
                    let _ = to_chrono(item.attributes.unwrap_or_default().updated);
                }
            }
            Err(error) => check(&classify(&error, context(Operation::ListSecrets)), Operation::ListSecrets, None)?,
        }
    }
}
