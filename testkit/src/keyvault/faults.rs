//! Fault injection (throttling, errors, latency, outage, paging quirks) and call counters.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How a 429 tells the client to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: N` (seconds), as Key Vault sends it.
    Seconds(u64),
    /// `retry-after-ms: N`, which the SDKs honour too (fast tests).
    Millis(u64),
}

/// What the emulator should do wrong. Merged by the admin route; cleared with `clear`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    /// Answer the next N authenticated vault calls with 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_next: Option<u32>,
    /// `Retry-After` seconds of injected 429s (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
    /// `retry-after-ms` of injected 429s (wins over seconds when set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// Answer 429 to calls above this many per second (0 turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_above_per_second: Option<u32>,
    /// Answer the next N authenticated vault calls with `error_status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_next: Option<u32>,
    /// Status of injected errors (default 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_status: Option<u16>,
    /// Carry out the next N writes (set, update, delete, recover, purge), then answer 503 anyway:
    /// a client that retries the write repeats it (a retried set makes another version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_then_error_next: Option<u32>,
    /// Added latency per vault call, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Full outage: every vault call gets 503 (token endpoints keep working).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outage: Option<bool>,
    /// List operations answer an empty first page with a nextLink (as real Key Vault can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_first_page: Option<bool>,
}

/// What to do with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// 429 Throttled.
    Throttle(RetryAfter),
    /// An error status.
    Error(u16),
}

#[derive(Default)]
struct State {
    spec: FaultSpec,
    window: Option<(Instant, u32)>,
}

/// The live fault plan of one emulator.
#[derive(Default)]
pub struct Faults {
    state: Mutex<State>,
}

impl Faults {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Merges `spec` into the plan (fields given replace the current ones).
    pub fn apply(&self, spec: FaultSpec) {
        let mut state = self.lock();
        let current = &mut state.spec;
        macro_rules! merge {
            ($($field:ident),*) => { $( if spec.$field.is_some() { current.$field = spec.$field; } )* };
        }
        merge!(
            throttle_next,
            retry_after_seconds,
            retry_after_ms,
            throttle_above_per_second,
            error_next,
            error_status,
            commit_then_error_next,
            latency_ms,
            outage,
            empty_first_page
        );
    }

    /// Removes every fault.
    pub fn clear(&self) {
        *self.lock() = State::default();
    }

    /// The current plan.
    pub fn spec(&self) -> FaultSpec {
        self.lock().spec.clone()
    }

    /// 429 for the next `n` vault calls with `retry_after`.
    pub fn throttle_next(&self, n: u32, retry_after: RetryAfter) {
        let (seconds, ms) = match retry_after {
            RetryAfter::Seconds(s) => (Some(s), Some(0)),
            RetryAfter::Millis(ms) => (None, Some(ms)),
        };
        self.apply(FaultSpec {
            throttle_next: Some(n),
            retry_after_seconds: seconds,
            retry_after_ms: ms,
            ..FaultSpec::default()
        });
    }

    /// 429 above `per_second` vault calls per second (`None` turns it off).
    pub fn throttle_above(&self, per_second: Option<u32>) {
        self.apply(FaultSpec {
            throttle_above_per_second: Some(per_second.unwrap_or(0)),
            ..FaultSpec::default()
        });
    }

    /// `status` for the next `n` vault calls.
    pub fn error_next(&self, n: u32, status: u16) {
        self.apply(FaultSpec {
            error_next: Some(n),
            error_status: Some(status),
            ..FaultSpec::default()
        });
    }

    /// Commit the next `n` writes, then answer 503.
    pub fn commit_then_error_next(&self, n: u32) {
        self.apply(FaultSpec {
            commit_then_error_next: Some(n),
            ..FaultSpec::default()
        });
    }

    /// Whether this committed write must be answered with 503 (consumes one).
    pub(crate) fn take_commit_then_error(&self) -> bool {
        let mut state = self.lock();
        match state.spec.commit_then_error_next {
            Some(n) if n > 0 => {
                state.spec.commit_then_error_next = Some(n - 1);
                true
            }
            _ => false,
        }
    }

    /// Added latency per vault call.
    pub fn latency(&self, latency: Duration) {
        self.apply(FaultSpec {
            latency_ms: Some(u64::try_from(latency.as_millis()).unwrap_or(u64::MAX)),
            ..FaultSpec::default()
        });
    }

    /// Full outage on or off.
    pub fn outage(&self, down: bool) {
        self.apply(FaultSpec {
            outage: Some(down),
            ..FaultSpec::default()
        });
    }

    /// Empty-first-page paging on or off.
    pub fn empty_first_page(&self, on: bool) {
        self.apply(FaultSpec {
            empty_first_page: Some(on),
            ..FaultSpec::default()
        });
    }

    pub(crate) fn is_outage(&self) -> bool {
        self.lock().spec.outage == Some(true)
    }

    pub(crate) fn empty_first_page_on(&self) -> bool {
        self.lock().spec.empty_first_page == Some(true)
    }

    pub(crate) fn latency_now(&self) -> Duration {
        Duration::from_millis(self.lock().spec.latency_ms.unwrap_or(0))
    }

    /// Decides the fate of one authenticated vault call.
    pub(crate) fn decide(&self, now: Instant) -> Option<Fault> {
        let mut state = self.lock();
        let retry_after = match (state.spec.retry_after_ms, state.spec.retry_after_seconds) {
            (Some(ms), _) if ms > 0 => RetryAfter::Millis(ms),
            (_, Some(s)) => RetryAfter::Seconds(s),
            _ => RetryAfter::Seconds(1),
        };
        if let Some(n) = state.spec.throttle_next.filter(|n| *n > 0) {
            state.spec.throttle_next = Some(n - 1);
            return Some(Fault::Throttle(retry_after));
        }
        if let Some(n) = state.spec.error_next.filter(|n| *n > 0) {
            state.spec.error_next = Some(n - 1);
            return Some(Fault::Error(state.spec.error_status.unwrap_or(503)));
        }
        if let Some(limit) = state.spec.throttle_above_per_second.filter(|l| *l > 0) {
            let (start, count) = match state.window {
                Some((start, count)) if now.duration_since(start) < Duration::from_secs(1) => (start, count),
                _ => (now, 0),
            };
            if count >= limit {
                state.window = Some((start, count));
                return Some(Fault::Throttle(RetryAfter::Seconds(1)));
            }
            state.window = Some((start, count + 1));
        }
        None
    }
}

/// How a call ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Served.
    Ok,
    /// 401 (challenge, bad token, bad credential).
    Unauthorized,
    /// 403 (permission or disabled secret).
    Forbidden,
    /// 429 injected.
    Throttled,
    /// Injected error or outage.
    Injected,
    /// Any other error the service returned (404, 400, 409).
    Error,
}

/// One counter row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CounterRow {
    /// `get`, `list`, `list_versions`, `set`, `update`, `delete`, `list_deleted`, `get_deleted`,
    /// `recover`, `purge`, `token`, `managed_identity_token`, `openid_configuration`.
    pub operation: String,
    /// Client id, or `anonymous` before authentication.
    pub principal: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Calls.
    pub count: u64,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Rows sorted by operation, principal, outcome.
    pub calls: Vec<CounterRow>,
}

impl Counters {
    /// All calls of `operation`, any principal and outcome.
    pub fn calls(&self, operation: &str) -> u64 {
        self.calls
            .iter()
            .filter(|r| r.operation == operation)
            .map(|r| r.count)
            .sum()
    }

    /// Calls of `operation` that ended with `outcome`.
    pub fn outcome(&self, operation: &str, outcome: Outcome) -> u64 {
        self.calls
            .iter()
            .filter(|r| r.operation == operation && r.outcome == outcome)
            .map(|r| r.count)
            .sum()
    }

    /// Served calls of `operation` by `principal`.
    pub fn ok_by(&self, operation: &str, principal: &str) -> u64 {
        self.calls
            .iter()
            .filter(|r| r.operation == operation && r.principal == principal && r.outcome == Outcome::Ok)
            .map(|r| r.count)
            .sum()
    }

    /// Calls of any data-plane operation that ended with `outcome`.
    pub fn total(&self, outcome: Outcome) -> u64 {
        self.calls
            .iter()
            .filter(|r| r.outcome == outcome)
            .map(|r| r.count)
            .sum()
    }
}

/// Live counters.
#[derive(Default)]
pub(super) struct CounterSet {
    rows: Mutex<BTreeMap<(String, String, Outcome), u64>>,
}

impl CounterSet {
    pub(crate) fn add(&self, operation: &str, principal: &str, outcome: Outcome) {
        let mut rows = self
            .rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *rows
            .entry((operation.to_owned(), principal.to_owned(), outcome))
            .or_default() += 1;
    }

    /// A snapshot.
    pub(super) fn snapshot(&self) -> Counters {
        let rows = self
            .rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Counters {
            calls: rows
                .iter()
                .map(|((operation, principal, outcome), count)| CounterRow {
                    operation: operation.clone(),
                    principal: principal.clone(),
                    outcome: *outcome,
                    count: *count,
                })
                .collect(),
        }
    }

    /// Zeroes every counter.
    pub(super) fn reset(&self) {
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_next_then_errors_then_clean() {
        let faults = Faults::default();
        let now = Instant::now();
        faults.throttle_next(2, RetryAfter::Millis(50));
        faults.error_next(1, 500);
        assert_eq!(faults.decide(now), Some(Fault::Throttle(RetryAfter::Millis(50))));
        assert_eq!(faults.decide(now), Some(Fault::Throttle(RetryAfter::Millis(50))));
        assert_eq!(faults.decide(now), Some(Fault::Error(500)));
        assert_eq!(faults.decide(now), None);
        faults.throttle_next(1, RetryAfter::Seconds(2));
        assert_eq!(faults.decide(now), Some(Fault::Throttle(RetryAfter::Seconds(2))));
    }

    #[test]
    fn rate_limit_per_second_window() {
        let faults = Faults::default();
        let start = Instant::now();
        faults.throttle_above(Some(2));
        assert_eq!(faults.decide(start), None);
        assert_eq!(faults.decide(start), None);
        assert!(matches!(faults.decide(start), Some(Fault::Throttle(_))));
        assert_eq!(faults.decide(start + Duration::from_millis(1001)), None);
        faults.throttle_above(None);
        for _ in 0..10 {
            assert_eq!(faults.decide(start), None);
        }
    }

    #[test]
    fn counters_group_by_operation_principal_outcome() {
        let counters = CounterSet::default();
        counters.add("get", "a", Outcome::Ok);
        counters.add("get", "a", Outcome::Ok);
        counters.add("get", "b", Outcome::Throttled);
        counters.add("list", "a", Outcome::Ok);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.calls("get"), 3);
        assert_eq!(snapshot.ok_by("get", "a"), 2);
        assert_eq!(snapshot.outcome("get", Outcome::Throttled), 1);
        let json = serde_json::to_string(&snapshot).expect("json");
        assert!(json.contains(r#""outcome":"throttled""#), "{json}");
        counters.reset();
        assert_eq!(counters.snapshot().calls("get"), 0);
    }
}
