//! A circuit breaker per vault client: after `threshold` consecutive failures (5xx, 408,
//! transport errors) requests fail fast for `cooldown`, then one trial request decides whether
//! to close again. 429s are neutral (the vault is up; `Retry-After` handles them). Tokio clock.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Marker in the fail-fast error's message (recognized by the error classification).
pub(crate) const OPEN_MESSAGE: &str = "circuit breaker open";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Send it.
    Yes,
    /// Fail fast; the circuit opens again no earlier than this.
    No { retry_in: Duration },
}

/// How a request ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The vault answered (any status below 500 except 408).
    Up,
    /// 5xx, 408 or a transport error.
    Down,
    /// 429: says nothing about availability.
    Neutral,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn admit(&self) -> Admit {
        let mut state = self.lock();
        let now = Instant::now();
        match *state {
            State::Closed { .. } => Admit::Yes,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen;
                Admit::Yes
            }
            State::Open { until } => Admit::No {
                retry_in: until - now,
            },
            // One trial at a time; others wait for its verdict.
            State::HalfOpen => Admit::No {
                retry_in: Duration::ZERO,
            },
        }
    }

    /// Records a verdict; returns true when this verdict opened the circuit.
    pub(crate) fn record(&self, verdict: Verdict) -> bool {
        let mut state = self.lock();
        match (verdict, *state) {
            (Verdict::Neutral, State::HalfOpen) => {
                *state = State::Closed { failures: 0 };
                false
            }
            (Verdict::Neutral, _) => false,
            (Verdict::Up, _) => {
                *state = State::Closed { failures: 0 };
                false
            }
            (Verdict::Down, State::Closed { failures }) if failures + 1 < self.threshold => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            (Verdict::Down, _) => {
                *state = State::Open {
                    until: Instant::now() + self.cooldown,
                };
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_closes_after_a_good_trial() {
        let breaker = Breaker::new(3, Duration::from_secs(10));
        for _ in 0..2 {
            assert_eq!(breaker.admit(), Admit::Yes);
            assert!(!breaker.record(Verdict::Down));
        }
        assert!(!breaker.record(Verdict::Neutral), "429s do not count");
        assert!(breaker.record(Verdict::Down), "third failure opens");
        assert_eq!(
            breaker.admit(),
            Admit::No {
                retry_in: Duration::from_secs(10)
            }
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(breaker.admit(), Admit::Yes, "half-open trial");
        assert!(matches!(breaker.admit(), Admit::No { .. }), "one trial at a time");
        assert!(breaker.record(Verdict::Down), "failed trial opens again");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(breaker.admit(), Admit::Yes);
        breaker.record(Verdict::Up);
        assert_eq!(breaker.admit(), Admit::Yes);
        assert_eq!(breaker.admit(), Admit::Yes, "closed");
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::new(2, Duration::from_secs(1));
        breaker.record(Verdict::Down);
        breaker.record(Verdict::Up);
        assert!(!breaker.record(Verdict::Down));
    }
}
