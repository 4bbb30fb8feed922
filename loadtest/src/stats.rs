//! Latency percentiles for reports (nearest-rank).

use std::time::Duration;

/// Summary of a latency sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Smallest sample, milliseconds.
    pub first_ms: u64,
    /// Median, milliseconds.
    pub p50_ms: u64,
    /// 90th percentile, milliseconds.
    pub p90_ms: u64,
    /// 99th percentile, milliseconds.
    pub p99_ms: u64,
    /// Largest sample, milliseconds.
    pub last_ms: u64,
}

/// Nearest-rank percentiles of `samples`; `None` when there are none.
pub fn percentiles(samples: &[Duration]) -> Option<Percentiles> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted: Vec<u64> = samples
        .iter()
        .map(|sample| u64::try_from(sample.as_millis()).unwrap_or(u64::MAX))
        .collect();
    sorted.sort_unstable();
    let rank = |percent: usize| {
        let index = (percent * sorted.len()).div_ceil(100).max(1) - 1;
        sorted[index.min(sorted.len() - 1)]
    };
    Some(Percentiles {
        count: sorted.len(),
        first_ms: sorted[0],
        p50_ms: rank(50),
        p90_ms: rank(90),
        p99_ms: rank(99),
        last_ms: sorted[sorted.len() - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(samples_ms: &[u64], expected: Option<(u64, u64, u64, u64, u64)>) {
        let samples: Vec<Duration> = samples_ms.iter().map(|ms| Duration::from_millis(*ms)).collect();
        let got = percentiles(&samples).map(|p| (p.first_ms, p.p50_ms, p.p90_ms, p.p99_ms, p.last_ms));
        assert_eq!(got, expected, "samples {samples_ms:?}");
    }

    #[test]
    fn nearest_rank_percentiles() {
        check(&[], None);
        check(&[5], Some((5, 5, 5, 5, 5)));
        check(&[4, 1, 3, 2], Some((1, 2, 4, 4, 4)));
        let hundred: Vec<u64> = (1..=100).collect();
        check(&hundred, Some((1, 50, 90, 99, 100)));
    }
}
