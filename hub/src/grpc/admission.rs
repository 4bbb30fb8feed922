//! Admission of new streams and enrollments: a token bucket (rate, burst) whose refusals carry a
//! retry hint (`retry-after-ms`) taken from a queue paced at the bucket's rate. A herd (every
//! agent reconnecting after a hub restart, a fleet enrolling at once) then comes back spread at
//! the rate the hub admits, each refused caller once, instead of retrying all together into the
//! same empty bucket.
//!
//! **The queue has a horizon** ([`MAX_HINT`], 30 s): a refusal never says to come back later than
//! that. While the queue reaches past it (more callers than the hub admits within the horizon:
//! a flood, anonymous or not), refusals no longer extend it; each is told a uniform random time
//! up to the horizon instead, so a flood costs every legitimate caller at most one horizon after
//! it ends, never the flood's length times its rate. Agents also cap any hint they obey at 60 s.
//!
//! [`PerKeyAdmission`] is the fairness rule in front of the shared bucket: one key (a cluster)
//! opens at most `burst` new streams at once and then one per `period`; its refusals come from
//! its own bucket and never touch the shared queue, so one credential flooding Sync cannot push
//! other clusters' slots.

use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::Status;

/// Metadata key of the retry hint, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// The longest wait a refusal hands out: the horizon of the admission queue.
pub const MAX_HINT: Duration = Duration::from_secs(30);

/// A rate limit whose refusals say when to come back.
pub struct Admission {
    limiter: DefaultDirectRateLimiter,
    /// Time between two admissions (1 / rate).
    period: Duration,
    /// No refusal asks for a longer wait ([`MAX_HINT`]).
    horizon: Duration,
    /// End of the queue of refused callers: the next slot a refusal hands out.
    refused_until: Mutex<Instant>,
}

impl Admission {
    /// `per_second` on average (fractions allowed; below one per hour counts as one per hour),
    /// `burst` at once.
    pub fn new(per_second: f64, burst: u32) -> Self {
        let period = Duration::from_secs_f64(1.0 / per_second.max(1.0 / 3600.0));
        let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MAX))
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::direct(quota),
            period,
            horizon: MAX_HINT,
            refused_until: Mutex::new(Instant::now()),
        }
    }

    /// Takes a token, or returns how long the caller should wait: the next free slot of the
    /// queue (one period after the previous refusal's, never before the bucket refills), plus a
    /// jitter within the slot. When that slot would end beyond the horizon, the queue is full:
    /// the wait is a uniform random time up to the horizon and the queue does not grow.
    pub fn check(&self) -> Result<(), Duration> {
        let not_until = match self.limiter.check() {
            Ok(()) => return Ok(()),
            Err(not_until) => not_until,
        };
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let now = Instant::now();
        let slot = {
            let mut refused_until = self
                .refused_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let slot = (*refused_until).max(now + wait);
            if slot + self.period <= now + self.horizon {
                *refused_until = slot + self.period;
                Some(slot)
            } else {
                None
            }
        };
        let hint = match slot {
            Some(slot) => slot.duration_since(now) + self.period.mul_f64(rand::random::<f64>()),
            None => {
                let earliest = wait.min(self.horizon);
                earliest + (self.horizon - earliest).mul_f64(rand::random::<f64>())
            }
        };
        Err(hint.clamp(Duration::from_millis(1), self.horizon))
    }

    /// The RESOURCE_EXHAUSTED answer for a refusal after `hint`, with `retry-after-ms`.
    pub fn refusal(what: &str, hint: Duration) -> Status {
        let hint_ms = u64::try_from(hint.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut status = Status::resource_exhausted(format!("too many {what}; retry after {hint_ms} ms"));
        if let Ok(value) = hint_ms.to_string().parse() {
            status.metadata_mut().insert(RETRY_AFTER_MS, value);
        }
        status
    }
}

/// Checks after which keys not seen for a while are forgotten (the map stays the size of the
/// clusters that connected recently).
const RETAIN_EVERY: u64 = 4_096;

/// A token bucket per key (a cluster): `burst` at once, then one per `period`. Its refusals do not
/// touch any shared queue; the hint is when this key's bucket refills, with a jitter.
pub struct PerKeyAdmission<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    period: Duration,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> PerKeyAdmission<K> {
    /// One admission per `period` per key after a burst of `burst`.
    pub fn new(period: Duration, burst: u32) -> Self {
        let period = period.max(Duration::from_millis(1));
        let burst = std::num::NonZeroU32::new(burst.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MAX))
            .allow_burst(burst);
        Self {
            limiter: RateLimiter::keyed(quota),
            period,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes a token of `key`'s bucket, or returns how long that key should wait.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        match self.limiter.check_key(key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let hint = wait + self.period.mul_f64(rand::random::<f64>());
                Err(hint.clamp(Duration::from_millis(1), MAX_HINT))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_queued_one_period_apart_after_the_burst() {
        // One admission per 5 s, burst 2: two pass, the next three are queued 5 s apart.
        let admission = Admission::new(0.2, 2);
        assert!(admission.check().is_ok());
        assert!(admission.check().is_ok());
        let hints: Vec<Duration> = (0..3).map(|_| admission.check().expect_err("refused")).collect();
        let period = Duration::from_secs(5);
        let slack = Duration::from_secs(1);
        // The first waits for the refill (at most one period) plus its jitter (at most one).
        assert!(hints[0] <= 2 * period + slack, "{hints:?}");
        for pair in hints.windows(2) {
            // Each comes back at or after the previous one's slot ends.
            assert!(pair[1] + slack >= pair[0], "{hints:?}");
        }
        assert!(hints[2] + slack >= hints[0] + period, "{hints:?}");
        let status = Admission::refusal("new streams", hints[0]);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let hint_ms: u128 = status
            .metadata()
            .get(RETRY_AFTER_MS)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .expect("hint metadata");
        assert_eq!(hint_ms, hints[0].as_millis().max(1));
    }

    #[test]
    fn a_flood_never_pushes_the_hint_beyond_the_horizon() {
        // 10 admissions per second: a flood of 100,000 refusals would queue the last one 10,000 s
        // away; the horizon keeps every hint within 30 s and spreads those beyond the queue.
        let admission = Admission::new(10.0, 10);
        let hints: Vec<Duration> = (0..100_000).filter_map(|_| admission.check().err()).collect();
        assert!(hints.len() >= 99_000, "{}", hints.len());
        let max = hints.iter().max().copied().unwrap_or_default();
        assert!(max <= MAX_HINT, "{max:?}");
        // Past the queue, hints are spread over the horizon, not stacked at its end.
        let late = &hints[1_000..];
        let early_half = late.iter().filter(|hint| **hint < MAX_HINT / 2).count();
        assert!(
            early_half > late.len() / 4 && early_half < late.len() * 3 / 4,
            "{early_half}"
        );
    }

    #[test]
    fn one_key_exhausts_its_own_bucket_only() {
        let per_key = PerKeyAdmission::new(Duration::from_secs(2), 3);
        for _ in 0..3 {
            assert!(per_key.check(&"flooder").is_ok());
        }
        for _ in 0..1_000 {
            let hint = per_key.check(&"flooder").expect_err("refused");
            assert!(hint <= Duration::from_secs(4), "{hint:?}");
        }
        assert!(per_key.check(&"other").is_ok(), "another key is untouched");
    }
}
