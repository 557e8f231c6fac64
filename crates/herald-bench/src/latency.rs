//! Latency histograms shared by many tasks, with little contention.
//!
//! Subscribers record into one of a few mutex-guarded HDR histograms chosen by their index, so
//! tasks on different runtime threads rarely touch the same lock; the shards are merged once at
//! the end. Values are microseconds.

use std::sync::{Mutex, PoisonError};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The largest value kept exactly (10 minutes in µs); larger ones are clamped to it.
const HIGHEST_US: u64 = 600_000_000;

/// A new, empty histogram of microseconds with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3)
        .expect("constant bounds: 1 <= low, high >= 2 * low, 3 significant digits")
}

/// Records a value, clamping it into the histogram's range.
pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
    histogram.saturating_record(micros.min(HIGHEST_US));
}

/// A set of histograms that many tasks record into.
#[derive(Debug)]
pub struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl ShardedHistogram {
    /// `shards` histograms (at least one).
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    /// Records `micros` into the shard picked by `hint` (a subscriber index, say).
    pub fn record(&self, hint: usize, micros: u64) {
        let shard = &self.shards[hint % self.shards.len()];
        record(
            &mut shard.lock().unwrap_or_else(PoisonError::into_inner),
            micros,
        );
    }

    /// All shards added together.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            // Same bounds everywhere, so adding cannot fail; a failure would only lose samples.
            let _ = all.add(&*shard);
        }
        all
    }
}

/// Percentiles of a histogram, in microseconds, as reported.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
}

impl Percentiles {
    /// Summarises `h` (all zeros when empty).
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge() {
        let h = ShardedHistogram::new(4);
        for i in 0..1000u64 {
            h.record(i as usize, i + 1);
        }
        let p = Percentiles::of(&h.merged());
        assert_eq!(p.count, 1000);
        assert!((495..=505).contains(&p.p50), "{p:?}");
        assert!((985..=995).contains(&p.p99), "{p:?}");
        assert_eq!(p.max, 1000);
    }

    #[test]
    fn clamps_huge_values_and_keeps_zero() {
        let h = ShardedHistogram::new(1);
        h.record(0, u64::MAX);
        h.record(0, 0);
        let merged = h.merged();
        assert_eq!(merged.len(), 2);
        assert!(merged.max() >= HIGHEST_US - HIGHEST_US / 1000);
        assert_eq!(merged.min(), 0);
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(Percentiles::of(&new_histogram()), Percentiles::default());
    }
}
