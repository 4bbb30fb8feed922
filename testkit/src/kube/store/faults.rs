//! Faults injected into one cluster's API: latency, queued errors, failing writes to one object
//! and held-back watches.

use std::collections::VecDeque;
use std::time::Duration;

use crate::kube::model::Kind;
use crate::kube::status::ApiError;

/// Injected faults for the next API calls.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Added to every API call.
    pub latency: Duration,
    /// Errors to return, one per call, front first.
    pub queued: VecDeque<ApiError>,
    /// Errors for the next write requests naming one object, taken in order.
    pub writes: Vec<WriteFault>,
    /// While set, open watches deliver events up to this resourceVersion only; the later ones
    /// wait in the history and arrive, in order, once it is cleared (watches lagging behind the
    /// writes, as under load).
    pub watches_held_after: Option<u64>,
}

/// An injected failure of the next write request (update, patch or delete) naming one object.
#[derive(Debug, Clone)]
pub(crate) struct WriteFault {
    /// Kind of the object.
    pub kind: Kind,
    /// Its namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// What the client gets.
    pub error: ApiError,
    /// Commit the write first, then answer the error (the client cannot tell whether the write
    /// happened, as after a timeout or a lost response).
    pub after_commit: bool,
    /// Matching writes to let through before this one fails.
    pub pass: usize,
}

impl Faults {
    /// Takes the first write fault for the named object, if any.
    pub(crate) fn take_write_fault(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<WriteFault> {
        let namespace = namespace.unwrap_or_default();
        let index = self
            .writes
            .iter()
            .position(|fault| fault.kind == kind && fault.namespace == namespace && fault.name == name)?;
        if self.writes[index].pass > 0 {
            self.writes[index].pass -= 1;
            return None;
        }
        Some(self.writes.remove(index))
    }
}
