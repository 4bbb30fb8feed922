//! Every mapping from an engine, fleet or store error to a gRPC `Status`, in one place.
//!
//! **Invariant:** a store or database detail never reaches a client: it is logged here and the
//! client gets `INTERNAL` ("store error") or `UNAVAILABLE`; messages name what was wrong, never a
//! value.

use tonic::Status;

use crate::fleet::{AttachError, CloseReason};
use crate::store::StoreError;
use crate::sync::admin::AdminError;
use crate::sync::control::ControlError;

/// A store error on an Admin call (database details are logged, not returned).
pub fn store(error: StoreError) -> Status {
    match error {
        StoreError::NotFound { what } => Status::not_found(format!("{what} not found")),
        StoreError::AlreadyExists { what } => Status::already_exists(format!("{what} already exists")),
        StoreError::Conflict(message) => Status::failed_precondition(message),
        other if other.is_unavailable() => {
            tracing::warn!(error = %other, source = ?std::error::Error::source(&other), "store unavailable");
            Status::unavailable("store unavailable; retry later")
        }
        other => {
            tracing::error!(error = %other, source = ?std::error::Error::source(&other), "store error");
            Status::internal("store error")
        }
    }
}

/// A store error while an agent enrolls: the agent retries later.
pub fn enroll_store(error: &StoreError) -> Status {
    tracing::error!(error = %error, "enrollment: store failed");
    Status::unavailable("store unavailable; retry later")
}

/// What the engine could not do.
pub fn control(error: ControlError) -> Status {
    let message = error.to_string();
    match error {
        ControlError::UnknownStore(_) => Status::not_found(message),
        ControlError::PollFailed { .. }
        | ControlError::ShuttingDown
        | ControlError::NoLeader(_)
        | ControlError::Forward(_) => Status::unavailable(message),
    }
}

/// An Admin use case's refusal or failure.
pub fn admin(error: AdminError) -> Status {
    match error {
        AdminError::Invalid { field, message } => Status::invalid_argument(format!("{field}: {message}")),
        AdminError::Spec(message) => Status::invalid_argument(message),
        AdminError::NotFound(message) => Status::not_found(message),
        AdminError::FailedPrecondition(message) => Status::failed_precondition(message),
        AdminError::Corrupt(message) => {
            tracing::error!(message = %message, "stored spec does not parse");
            Status::internal(message)
        }
        AdminError::Store(error) => store(error),
        AdminError::Control(error) => control(error),
    }
}

/// Why the fleet refused a stream.
pub fn attach(error: &AttachError) -> Status {
    match error {
        AttachError::Revoked(_) => Status::unauthenticated("unknown or revoked cluster credential"),
        AttachError::Draining => Status::unavailable("hub is draining"),
    }
}

/// Why the fleet ended a stream, when it ends with a status (a drain ends with a `Drain` message).
pub fn close(reason: CloseReason) -> Option<Status> {
    match reason {
        CloseReason::Revoked => Some(Status::permission_denied("cluster credential revoked")),
        CloseReason::Replaced => Some(Status::aborted("replaced by a newer stream of the same cluster")),
        CloseReason::Drain { .. } => None,
    }
}
