//! Checks of what an agent sends (Hello, keys, Ack results), each refusal naming the field.

use keyfleet_proto::v1;
use keyfleet_proto::{PROTOCOL_VERSION, limits};
use tonic::Status;

use super::stream::{End, invalid};
use crate::fleet::{ItemOutcome, ItemRefusal, NackCode};

pub(super) fn check_hello(hello: &v1::Hello) -> Result<(), End> {
    if hello.protocol != PROTOCOL_VERSION {
        return Err(End::Status(Status::failed_precondition(format!(
            "hello.protocol: agent speaks protocol {}, this hub speaks {PROTOCOL_VERSION}",
            hello.protocol
        ))));
    }
    if hello.agent_version.len() > limits::MAX_AGENT_VERSION_BYTES {
        return Err(invalid(format!(
            "hello.agent_version: {} bytes, limit {}",
            hello.agent_version.len(),
            limits::MAX_AGENT_VERSION_BYTES
        )));
    }
    if hello.boot_id.len() != 16 {
        return Err(invalid(format!(
            "hello.boot_id: {} bytes, expected 16",
            hello.boot_id.len()
        )));
    }
    if hello.applied_digest.len() != 32 {
        return Err(invalid(format!(
            "hello.applied_digest: {} bytes, expected 32",
            hello.applied_digest.len()
        )));
    }
    if hello.applied_count as usize > limits::MAX_APPLIED {
        return Err(invalid(format!(
            "hello.applied_count: {}, limit {}",
            hello.applied_count,
            limits::MAX_APPLIED
        )));
    }
    Ok(())
}

/// A FleetSecret name: DNS-1123 subdomain, 1-253 bytes.
pub(super) fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 253 {
        return Err(format!("{} bytes, expected 1-253", key.len()));
    }
    let ok = key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !ok {
        return Err(format!("{key:?} is not a DNS-1123 subdomain"));
    }
    Ok(())
}

pub(super) fn ack_results(results: Vec<v1::ItemResult>) -> Result<Vec<ItemOutcome>, End> {
    if results.len() > limits::MAX_ITEMS {
        return Err(invalid(format!(
            "ack.results: {} results, limit {}",
            results.len(),
            limits::MAX_ITEMS
        )));
    }
    results
        .into_iter()
        .enumerate()
        .map(|(index, result)| {
            let error = match result.error {
                None => None,
                Some(error) => {
                    if error.message.len() > limits::MAX_ERROR_MESSAGE_BYTES {
                        return Err(invalid(format!(
                            "ack.results[{index}].error.message: {} bytes, limit {}",
                            error.message.len(),
                            limits::MAX_ERROR_MESSAGE_BYTES
                        )));
                    }
                    Some(ItemRefusal {
                        code: nack_code(error.code),
                        retryable: error.retryable,
                        message: error.message,
                    })
                }
            };
            Ok(ItemOutcome {
                key: result.key,
                revision: result.revision,
                error,
            })
        })
        .collect()
}

fn nack_code(code: i32) -> NackCode {
    use v1::ErrorCode as E;
    match E::try_from(code) {
        Ok(E::Invalid) => NackCode::Invalid,
        Ok(E::DigestMismatch) => NackCode::DigestMismatch,
        Ok(E::NotOwned) => NackCode::NotOwned,
        Ok(E::NamespaceMissing) => NackCode::NamespaceMissing,
        Ok(E::Forbidden) => NackCode::Forbidden,
        Ok(E::KubernetesUnavailable) => NackCode::KubernetesUnavailable,
        Ok(E::Conflict) => NackCode::Conflict,
        Ok(E::Immutable) => NackCode::Immutable,
        Ok(E::Internal) => NackCode::Internal,
        Ok(E::Unspecified) | Err(_) => NackCode::Unspecified,
    }
}
