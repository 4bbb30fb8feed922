//! The per-stream coalescing queue: what one agent holds, what is in flight, what was refused, and
//! the next `Update` to send. Pure bookkeeping (no IO, no async, no logging); time is passed in.
//!
//! Coalescing comes from planning against the *latest* desired set on every call: a key that
//! changed three times while the stream was busy is sent once, at its newest revision. A key is
//! never in two in-flight updates at once, so acks cannot race each other for one key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{ClusterDesired, NackCode, RemovalPolicy};
use crate::domain::Sha256;
use crate::fleet::EncodedRevision;

/// Bytes of framing allowed per upsert on top of its payload (tag, length, margin).
const UPSERT_OVERHEAD: usize = 16;

/// Limits and retry timing of one queue.
#[derive(Clone, Debug)]
pub struct QueueLimits {
    /// Updates unacknowledged at most.
    pub max_inflight: usize,
    /// Items (upserts + removals) per update at most.
    pub max_items: usize,
    /// Encoded bytes of the upserts of one update at most.
    pub max_bytes: usize,
    /// First retry delay after a retryable NACK (doubles per attempt, full jitter on the upper half).
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

/// One update to send: its nonce, payloads (shared bytes) and removals.
#[derive(Debug, Clone)]
pub struct PlannedUpdate {
    /// Per-stream sequence number, from 1.
    pub nonce: u64,
    /// Revisions to apply.
    pub upserts: Vec<Arc<EncodedRevision>>,
    /// Keys to remove, with what removal does.
    pub removals: Vec<(String, RemovalPolicy)>,
}

/// The agent's answer for one item of an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemOutcome {
    /// FleetSecret name.
    pub key: String,
    /// Revision answered (0 for a removal).
    pub revision: u64,
    /// `None` when applied, else why not.
    pub error: Option<ItemRefusal>,
}

/// Why an agent refused an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRefusal {
    /// Machine-readable reason.
    pub code: NackCode,
    /// Whether to send the item again later.
    pub retryable: bool,
    /// The agent's reason (never secret data), at most 1,024 bytes.
    pub message: String,
}

/// What an acknowledged item means for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The agent applied `revision`.
    Applied {
        /// FleetSecret name.
        key: String,
        /// Applied revision.
        revision: u64,
        /// Its content digest.
        sha256: Sha256,
    },
    /// The agent removed the key.
    Removed {
        /// FleetSecret name.
        key: String,
    },
    /// The agent refused the item (an upsert, or a removal with revision 0).
    Refused {
        /// FleetSecret name.
        key: String,
        /// Refused revision (0 for a removal).
        revision: u64,
        /// Why.
        refusal: ItemRefusal,
        /// How many times in a row this revision was refused.
        attempts: u32,
    },
}

/// A protocol violation in an `Ack`; the stream is closed with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AckError {
    /// No update with this nonce is in flight (never sent, or already acknowledged).
    #[error("ack.nonce: {0} is not an unacknowledged update on this stream")]
    UnknownNonce(u64),
    /// A result for a key that the update did not carry.
    #[error("ack.results: key {key:?} was not in update {nonce}")]
    UnexpectedKey {
        /// Nonce of the update.
        nonce: u64,
        /// Offending key.
        key: String,
    },
    /// A result whose revision differs from what was sent.
    #[error("ack.results: key {key:?} answered revision {got}, update {nonce} sent {sent}")]
    WrongRevision {
        /// Nonce of the update.
        nonce: u64,
        /// Key.
        key: String,
        /// Revision sent (0 for a removal).
        sent: u64,
        /// Revision answered.
        got: u64,
    },
    /// Two results for one key.
    #[error("ack.results: key {key:?} answered twice")]
    Duplicate {
        /// Key.
        key: String,
    },
    /// An item of the update has no result.
    #[error("ack.results: no result for key {key:?} of update {nonce}")]
    Missing {
        /// Nonce of the update.
        nonce: u64,
        /// Key without a result.
        key: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    revision: u64,
    sha256: Sha256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Upsert { revision: u64, sha256: Sha256 },
    Removal,
}

#[derive(Debug)]
struct Inflight {
    sent_at: Instant,
    items: HashMap<String, Sent>,
}

#[derive(Debug, Clone, Copy)]
struct Refusal {
    revision: u64,
    attempts: u32,
    /// `None` while permanent (non-retryable) or once the retry has been sent.
    retry_at: Option<Instant>,
    permanent: bool,
}

/// The per-stream queue.
#[derive(Debug)]
pub struct Queue {
    limits: QueueLimits,
    held: HashMap<String, Held>,
    inflight: BTreeMap<u64, Inflight>,
    inflight_keys: HashMap<String, u64>,
    refused: HashMap<String, Refusal>,
    next_nonce: u64,
}

impl Queue {
    /// An empty queue: the agent holds nothing known yet.
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            limits,
            held: HashMap::new(),
            inflight: BTreeMap::new(),
            inflight_keys: HashMap::new(),
            refused: HashMap::new(),
            next_nonce: 1,
        }
    }

    /// Records what the agent reported holding (VersionPages, or the desired set when in sync).
    pub fn set_held(&mut self, items: impl IntoIterator<Item = (String, u64, Sha256)>) {
        self.held = items
            .into_iter()
            .map(|(key, revision, sha256)| (key, Held { revision, sha256 }))
            .collect();
    }

    /// The agent holds exactly `desired` (its digest matched).
    pub fn set_held_from(&mut self, desired: &ClusterDesired) {
        self.set_held(
            desired
                .items
                .iter()
                .map(|(key, item)| (key.clone(), item.revision, item.sha256)),
        );
    }

    /// Key → revision the agent holds, as far as this stream knows.
    pub fn held(&self) -> BTreeMap<String, u64> {
        self.held
            .iter()
            .map(|(key, held)| (key.clone(), held.revision))
            .collect()
    }

    /// Number of unacknowledged updates.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Plans the next update against the latest desired set, or `None` when nothing is due or
    /// `max_inflight` updates are unacknowledged. Payloads larger than `max_bytes` on their own are
    /// returned in `too_large` and marked refused (they never block the rest).
    pub fn next_update(
        &mut self,
        desired: &ClusterDesired,
        now: Instant,
        too_large: &mut Vec<Arc<EncodedRevision>>,
    ) -> Option<PlannedUpdate> {
        // Refusals of revisions nobody wants any more are forgotten.
        self.refused.retain(|key, refusal| match desired.items.get(key) {
            Some(item) => item.revision == refusal.revision,
            None => refusal.revision == 0 && self.held.contains_key(key),
        });
        if self.inflight.len() >= self.limits.max_inflight {
            return None;
        }
        let mut upserts = Vec::new();
        let mut removals = Vec::new();
        let mut bytes = 0usize;
        let mut full = false;
        for (key, item) in &desired.items {
            if self.inflight_keys.contains_key(key)
                || self
                    .held
                    .get(key)
                    .is_some_and(|held| held.revision == item.revision && held.sha256 == item.sha256)
                || self.blocked(key, item.revision, now)
            {
                continue;
            }
            let size = item.payload.len() + key.len() + UPSERT_OVERHEAD;
            if size > self.limits.max_bytes {
                self.refused.insert(
                    key.clone(),
                    Refusal {
                        revision: item.revision,
                        attempts: 1,
                        retry_at: None,
                        permanent: true,
                    },
                );
                too_large.push(Arc::clone(item));
                continue;
            }
            if upserts.len() >= self.limits.max_items || bytes + size > self.limits.max_bytes {
                full = true;
                break;
            }
            bytes += size;
            upserts.push(Arc::clone(item));
        }
        if !full {
            let mut gone: Vec<&String> = self
                .held
                .keys()
                .filter(|key| !desired.items.contains_key(*key))
                .filter(|key| !self.inflight_keys.contains_key(*key))
                .filter(|key| !self.blocked(key, 0, now))
                .collect();
            gone.sort_unstable();
            for key in gone {
                if upserts.len() + removals.len() >= self.limits.max_items {
                    break;
                }
                let policy = desired.removals.get(key).copied().unwrap_or_default();
                removals.push((key.clone(), policy));
            }
        }
        if upserts.is_empty() && removals.is_empty() {
            return None;
        }
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let mut items = HashMap::with_capacity(upserts.len() + removals.len());
        for item in &upserts {
            items.insert(
                item.key.clone(),
                Sent::Upsert {
                    revision: item.revision,
                    sha256: item.sha256,
                },
            );
        }
        for (key, _) in &removals {
            items.insert(key.clone(), Sent::Removal);
        }
        for key in items.keys() {
            self.inflight_keys.insert(key.clone(), nonce);
            if let Some(refusal) = self.refused.get_mut(key) {
                refusal.retry_at = None;
            }
        }
        self.inflight.insert(nonce, Inflight { sent_at: now, items });
        Some(PlannedUpdate {
            nonce,
            upserts,
            removals,
        })
    }

    fn blocked(&self, key: &str, revision: u64, now: Instant) -> bool {
        self.refused.get(key).is_some_and(|refusal| {
            refusal.revision == revision && (refusal.permanent || refusal.retry_at.is_some_and(|at| at > now))
        })
    }

    /// Applies one `Ack`. The whole ack is checked before anything changes, so a bad ack records
    /// nothing.
    pub fn ack(
        &mut self,
        nonce: u64,
        results: Vec<ItemOutcome>,
        now: Instant,
    ) -> Result<Vec<Settled>, AckError> {
        let inflight = self.inflight.get(&nonce).ok_or(AckError::UnknownNonce(nonce))?;
        let mut seen = std::collections::HashSet::with_capacity(results.len());
        for result in &results {
            let sent = inflight
                .items
                .get(&result.key)
                .ok_or_else(|| AckError::UnexpectedKey {
                    nonce,
                    key: result.key.clone(),
                })?;
            let sent_revision = match sent {
                Sent::Upsert { revision, .. } => *revision,
                Sent::Removal => 0,
            };
            if sent_revision != result.revision {
                return Err(AckError::WrongRevision {
                    nonce,
                    key: result.key.clone(),
                    sent: sent_revision,
                    got: result.revision,
                });
            }
            if !seen.insert(result.key.as_str()) {
                return Err(AckError::Duplicate {
                    key: result.key.clone(),
                });
            }
        }
        if let Some(key) = inflight.items.keys().find(|key| !seen.contains(key.as_str())) {
            return Err(AckError::Missing {
                nonce,
                key: key.clone(),
            });
        }
        let inflight = self
            .inflight
            .remove(&nonce)
            .ok_or(AckError::UnknownNonce(nonce))?;
        let mut settled = Vec::with_capacity(results.len());
        for result in results {
            self.inflight_keys.remove(&result.key);
            let sent = inflight.items[&result.key];
            match (result.error, sent) {
                (None, Sent::Upsert { revision, sha256 }) => {
                    self.refused.remove(&result.key);
                    self.held.insert(result.key.clone(), Held { revision, sha256 });
                    settled.push(Settled::Applied {
                        key: result.key,
                        revision,
                        sha256,
                    });
                }
                (None, Sent::Removal) => {
                    self.refused.remove(&result.key);
                    self.held.remove(&result.key);
                    settled.push(Settled::Removed { key: result.key });
                }
                (Some(refusal), _) => {
                    let attempts = match self.refused.get(&result.key) {
                        Some(previous) if previous.revision == result.revision => {
                            previous.attempts.saturating_add(1)
                        }
                        _ => 1,
                    };
                    let retry_at = refusal.retryable.then(|| now + self.backoff(attempts));
                    self.refused.insert(
                        result.key.clone(),
                        Refusal {
                            revision: result.revision,
                            attempts,
                            retry_at,
                            permanent: !refusal.retryable,
                        },
                    );
                    settled.push(Settled::Refused {
                        key: result.key,
                        revision: result.revision,
                        refusal,
                        attempts,
                    });
                }
            }
        }
        if self.inflight.is_empty() {
            // An idle stream keeps no node: a B-tree keeps its emptied root leaf (~0.8 KiB for
            // this map) and a hash map its table, for every connected agent.
            self.inflight = BTreeMap::new();
            self.inflight_keys = HashMap::new();
        }
        Ok(settled)
    }

    /// Retry delay before attempt `attempts + 1`: `base · 2^(attempts-1)`, capped, jittered within
    /// its upper half so retries of many agents spread out.
    fn backoff(&self, attempts: u32) -> Duration {
        let exp = attempts.saturating_sub(1).min(20);
        let full = self
            .limits
            .retry_base
            .saturating_mul(1u32 << exp)
            .min(self.limits.retry_max);
        let half = full / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// Whether the oldest unacknowledged update was sent at least `stall` ago.
    pub fn stalled(&self, now: Instant, stall: Duration) -> bool {
        self.oldest_sent().is_some_and(|sent| now >= sent + stall)
    }

    fn oldest_sent(&self) -> Option<Instant> {
        self.inflight.values().map(|inflight| inflight.sent_at).min()
    }

    /// When the stream must look at the queue again without outside input: the stall deadline of
    /// the oldest update, or the next retry still in the future.
    pub fn deadline(&self, now: Instant, stall: Duration) -> Option<Instant> {
        let stall_at = self.oldest_sent().map(|sent| sent + stall);
        let retry_at = self
            .refused
            .values()
            .filter_map(|refusal| refusal.retry_at)
            .filter(|at| *at > now)
            .min();
        match (stall_at, retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn limits() -> QueueLimits {
        QueueLimits {
            max_inflight: 2,
            max_items: 1_000,
            max_bytes: 4096,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
        }
    }

    fn revision(key: &str, revision: u64, size: usize) -> Arc<EncodedRevision> {
        Arc::new(EncodedRevision {
            key: key.to_owned(),
            revision,
            sha256: Sha256::of(format!("{key}/{revision}").as_bytes()),
            payload: Bytes::from(vec![0u8; size]),
        })
    }

    fn desired(items: &[Arc<EncodedRevision>]) -> ClusterDesired {
        ClusterDesired {
            items: items
                .iter()
                .map(|item| (item.key.clone(), Arc::clone(item)))
                .collect(),
            removals: BTreeMap::new(),
        }
    }

    fn ok(key: &str, revision: u64) -> ItemOutcome {
        ItemOutcome {
            key: key.to_owned(),
            revision,
            error: None,
        }
    }

    fn plan(queue: &mut Queue, desired: &ClusterDesired, now: Instant) -> Option<PlannedUpdate> {
        let mut too_large = Vec::new();
        let update = queue.next_update(desired, now, &mut too_large);
        assert!(too_large.is_empty());
        update
    }

    #[test]
    fn latest_revision_wins_and_a_key_is_never_in_flight_twice() {
        let now = Instant::now();
        let mut queue = Queue::new(limits());
        let update = plan(&mut queue, &desired(&[revision("a", 1, 10)]), now).expect("update");
        assert_eq!(update.nonce, 1);
        assert_eq!(update.upserts[0].revision, 1);
        // Revisions 2 and 3 arrive while 1 is in flight: nothing is sent for "a" meanwhile.
        assert!(plan(&mut queue, &desired(&[revision("a", 2, 10)]), now).is_none());
        let latest = desired(&[revision("a", 3, 10)]);
        assert!(plan(&mut queue, &latest, now).is_none());
        let settled = queue.ack(1, vec![ok("a", 1)], now).expect("valid ack");
        assert!(matches!(&settled[0], Settled::Applied { revision: 1, .. }));
        // Only the newest is sent next.
        let update = plan(&mut queue, &latest, now).expect("update");
        assert_eq!((update.nonce, update.upserts[0].revision), (2, 3));
        queue.ack(2, vec![ok("a", 3)], now).expect("valid ack");
        assert!(plan(&mut queue, &latest, now).is_none());
        assert_eq!(queue.held()["a"], 3);
    }

    #[test]
    fn at_most_max_inflight_updates_are_unacknowledged() {
        let now = Instant::now();
        let mut queue = Queue::new(limits());
        assert!(plan(&mut queue, &desired(&[revision("a", 1, 10)]), now).is_some());
        let two = desired(&[revision("a", 1, 10), revision("b", 1, 10)]);
        assert!(plan(&mut queue, &two, now).is_some());
        let three = desired(&[revision("a", 1, 10), revision("b", 1, 10), revision("c", 1, 10)]);
        assert!(plan(&mut queue, &three, now).is_none(), "k = 2 reached");
        queue
            .ack(2, vec![ok("b", 1)], now)
            .expect("out of order ack is fine");
        let update = plan(&mut queue, &three, now).expect("room again");
        assert_eq!(update.upserts[0].key, "c");
    }

    #[test]
    fn dropped_keys_are_removed_with_their_policy_default_retain() {
        let now = Instant::now();
        let mut queue = Queue::new(limits());
        queue.set_held([
            ("a".to_owned(), 1, Sha256::of(b"a/1")),
            ("b".to_owned(), 1, Sha256::of(b"b/1")),
        ]);
        let mut want = desired(&[revision("a", 1, 10)]);
        let update = plan(&mut queue, &want, now).expect("removal");
        assert!(update.upserts.is_empty());
        assert_eq!(update.removals, vec![("b".to_owned(), RemovalPolicy::Retain)]);
        let settled = queue.ack(1, vec![ok("b", 0)], now).expect("valid ack");
        assert_eq!(settled, vec![Settled::Removed { key: "b".to_owned() }]);
        queue.set_held([
            ("a".to_owned(), 1, Sha256::of(b"a/1")),
            ("c".to_owned(), 1, Sha256::of(b"c/1")),
        ]);
        want.removals.insert("c".to_owned(), RemovalPolicy::Delete);
        let update = plan(&mut queue, &want, now).expect("removal");
        assert_eq!(update.removals, vec![("c".to_owned(), RemovalPolicy::Delete)]);
    }

    #[test]
    fn bad_acks_are_refused_and_change_nothing() {
        let now = Instant::now();
        let mut queue = Queue::new(limits());
        let want = desired(&[revision("a", 1, 10), revision("b", 1, 10)]);
        plan(&mut queue, &want, now).expect("update");
        assert_eq!(queue.ack(9, vec![], now), Err(AckError::UnknownNonce(9)));
        assert!(matches!(
            queue.ack(1, vec![ok("a", 1), ok("zz", 1)], now),
            Err(AckError::UnexpectedKey { .. })
        ));
        assert!(matches!(
            queue.ack(1, vec![ok("a", 1), ok("b", 7)], now),
            Err(AckError::WrongRevision { sent: 1, got: 7, .. })
        ));
        assert!(matches!(
            queue.ack(1, vec![ok("a", 1), ok("a", 1)], now),
            Err(AckError::Duplicate { .. })
        ));
        assert!(matches!(
            queue.ack(1, vec![ok("a", 1)], now),
            Err(AckError::Missing { .. })
        ));
        assert!(queue.held().is_empty());
        queue.ack(1, vec![ok("a", 1), ok("b", 1)], now).expect("valid");
        assert_eq!(
            queue.ack(1, vec![ok("a", 1), ok("b", 1)], now),
            Err(AckError::UnknownNonce(1))
        );
    }

    #[test]
    fn retryable_nacks_back_off_and_permanent_ones_wait_for_a_new_revision() {
        let now = Instant::now();
        let mut queue = Queue::new(limits());
        let want = desired(&[revision("a", 1, 10)]);
        plan(&mut queue, &want, now).expect("update");
        let nack = |retryable| ItemOutcome {
            key: "a".to_owned(),
            revision: 1,
            error: Some(ItemRefusal {
                code: NackCode::KubernetesUnavailable,
                retryable,
                message: "apiserver 503".to_owned(),
            }),
        };
        let settled = queue.ack(1, vec![nack(true)], now).expect("valid");
        assert!(matches!(settled[0], Settled::Refused { attempts: 1, .. }));
        assert!(plan(&mut queue, &want, now).is_none(), "backing off");
        let retry_at = queue.deadline(now, Duration::from_secs(600)).expect("retry due");
        assert!(retry_at >= now + Duration::from_millis(500) && retry_at <= now + Duration::from_secs(1));
        let update = plan(&mut queue, &want, retry_at).expect("retried");
        let settled = queue
            .ack(update.nonce, vec![nack(true)], retry_at)
            .expect("valid");
        assert!(matches!(settled[0], Settled::Refused { attempts: 2, .. }));
        let second = queue
            .deadline(retry_at, Duration::from_secs(600))
            .expect("retry due");
        assert!(second >= retry_at + Duration::from_secs(1), "doubles");
        let update = plan(&mut queue, &want, second).expect("retried");
        queue.ack(update.nonce, vec![nack(false)], second).expect("valid");
        let later = second + Duration::from_secs(3600);
        assert!(plan(&mut queue, &want, later).is_none(), "permanent refusal");
        assert_eq!(queue.deadline(later, Duration::from_secs(600)), None);
        let update = plan(&mut queue, &desired(&[revision("a", 2, 10)]), later).expect("new revision");
        assert_eq!(update.upserts[0].revision, 2);
    }

    #[test]
    fn updates_respect_item_and_byte_limits_and_oversized_items_do_not_block() {
        let now = Instant::now();
        let mut queue = Queue::new(QueueLimits {
            max_items: 2,
            max_inflight: 16,
            ..limits()
        });
        let want = desired(&[
            revision("a", 1, 100),
            revision("b", 1, 100),
            revision("big", 1, 10_000),
            revision("c", 1, 100),
        ]);
        let mut too_large = Vec::new();
        let first = queue.next_update(&want, now, &mut too_large).expect("update");
        assert_eq!(first.upserts.len(), 2);
        let second = queue.next_update(&want, now, &mut too_large).expect("update");
        assert_eq!(
            second.upserts.iter().map(|u| u.key.as_str()).collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(too_large.len(), 1);
        assert_eq!(too_large[0].key, "big");
        assert!(queue.next_update(&want, now, &mut too_large).is_none());
        assert_eq!(too_large.len(), 1, "reported once");
    }

    #[test]
    fn stall_deadline_follows_the_oldest_update() {
        let now = Instant::now();
        let stall = Duration::from_secs(10);
        let mut queue = Queue::new(limits());
        assert_eq!(queue.deadline(now, stall), None);
        plan(&mut queue, &desired(&[revision("a", 1, 10)]), now).expect("update");
        assert_eq!(queue.deadline(now, stall), Some(now + stall));
        assert!(!queue.stalled(now + Duration::from_secs(9), stall));
        assert!(queue.stalled(now + stall, stall));
    }
}
