//! Faults injected into one cluster's API: latency, queued errors, failing writes to one object,
//! writes held in one namespace and held-back watches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

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
    /// Write requests to Secrets in these namespaces wait at the hold until it is released or
    /// failed (a slow write, or a write the test can kill the client in the middle of).
    pub write_holds: BTreeMap<String, Arc<WriteHold>>,
}

/// Where a held write goes once the hold ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldEnd {
    /// Still holding.
    Holding,
    /// Proceed as if nothing happened.
    Release,
    /// Answer this code and change nothing.
    Fail(u16),
}

/// Write requests to Secrets in one namespace, held until the test ends the hold.
#[derive(Debug)]
pub(crate) struct WriteHold {
    /// How the hold ends.
    pub end: watch::Sender<HoldEnd>,
    /// Write requests that reached the hold so far.
    pub arrived: watch::Sender<usize>,
}

impl WriteHold {
    pub(crate) fn new() -> Self {
        Self {
            end: watch::channel(HoldEnd::Holding).0,
            arrived: watch::channel(0).0,
        }
    }

    /// Waits here until the hold ends; `Err(code)` when it failed the held writes.
    pub(crate) async fn pass(&self) -> Result<(), u16> {
        let mut end = self.end.subscribe();
        self.arrived.send_modify(|arrived| *arrived += 1);
        // The sender lives in `self`, so `wait_for` only returns once the hold ends.
        let outcome = end
            .wait_for(|end| *end != HoldEnd::Holding)
            .await
            .map(|end| *end)
            .unwrap_or(HoldEnd::Release);
        match outcome {
            HoldEnd::Fail(code) => Err(code),
            HoldEnd::Holding | HoldEnd::Release => Ok(()),
        }
    }
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
