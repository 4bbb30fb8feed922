//! Admission of new streams and enrollments: a token bucket (rate, burst) whose refusals carry a
//! retry hint (`retry-after-ms`) taken from a queue paced at the bucket's rate. A herd (every
//! agent reconnecting after a hub restart, a fleet enrolling at once) then comes back spread at
//! the rate the hub admits, each refused caller once, instead of retrying all together into the
//! same empty bucket.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tonic::Status;

/// Metadata key of the retry hint, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// A rate limit whose refusals say when to come back.
pub struct Admission {
    limiter: DefaultDirectRateLimiter,
    /// Time between two admissions (1 / rate).
    period: Duration,
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
            refused_until: Mutex::new(Instant::now()),
        }
    }

    /// Takes a token, or returns how long the caller should wait: the next free slot of the
    /// queue (one period after the previous refusal's, never before the bucket refills), plus a
    /// jitter within the slot.
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
            *refused_until = slot + self.period;
            slot
        };
        let jitter = self.period.mul_f64(rand::random::<f64>());
        Err((slot.duration_since(now) + jitter).max(Duration::from_millis(1)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_queued_one_period_apart_after_the_burst() {
        // One admission per 100 s, burst 2: two pass, the next three are queued 100 s apart.
        let admission = Admission::new(0.01, 2);
        assert!(admission.check().is_ok());
        assert!(admission.check().is_ok());
        let hints: Vec<Duration> = (0..3).map(|_| admission.check().expect_err("refused")).collect();
        let period = Duration::from_secs(100);
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
}
