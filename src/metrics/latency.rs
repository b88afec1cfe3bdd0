//! A bounded latency histogram in microseconds (HdrHistogram, 3 significant
//! digits) and the summary figures read from it.
//!
//! The range is fixed (`LATENCY_MIN_US..=LATENCY_MAX_US`) so every histogram
//! has the same layout: merging two of them never fails and never resizes,
//! and a value out of range is clamped instead of growing memory.

use std::fmt;

use hdrhistogram::Histogram;

/// The smallest latency told apart from zero, in microseconds.
pub const LATENCY_MIN_US: u64 = 1;
/// The largest latency recorded; longer ones count as this (saturation).
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Relative precision of every recorded value: 3 digits, i.e. within 0.1%.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// The quantiles every summary reports, in the order exporters list them.
pub const SUMMARY_QUANTILES: [f64; 4] = [0.5, 0.95, 0.99, 0.999];

/// Latencies in microseconds, plus their exact sum (HdrHistogram keeps
/// counts per bucket only, and Prometheus wants `_sum`).
#[derive(Clone)]
pub struct LatencyHistogram {
    histogram: Histogram<u64>,
    /// Sum of the recorded (clamped) values, so `mean = sum / count` agrees
    /// with the percentiles about what was recorded.
    sum_us: u64,
}

/// The summary, not the 17,408 bucket counts.
impl fmt::Debug for LatencyHistogram {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_tuple("LatencyHistogram")
            .field(&self.summary())
            .finish()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram over the fixed range (about 140 KiB of buckets).
    pub fn new() -> Self {
        let histogram =
            Histogram::new_with_bounds(LATENCY_MIN_US, LATENCY_MAX_US, LATENCY_SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid");
        LatencyHistogram {
            histogram,
            sum_us: 0,
        }
    }

    /// Records one latency; values above `LATENCY_MAX_US` count as the max.
    #[inline]
    pub fn record_us(&mut self, latency_us: u64) {
        let clamped_us = latency_us.min(LATENCY_MAX_US);
        self.histogram.saturating_record(clamped_us);
        self.sum_us = self.sum_us.saturating_add(clamped_us);
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The sum of all recorded latencies, in microseconds.
    pub fn sum_us(&self) -> u64 {
        self.sum_us
    }

    /// The latency at `quantile` (0.0..=1.0), or 0 when nothing was recorded.
    pub fn value_at_quantile_us(&self, quantile: f64) -> u64 {
        if self.histogram.is_empty() {
            return 0;
        }
        // HdrHistogram reports the highest value equivalent to the bucket;
        // clamp so a bucket's upper edge never exceeds the true max.
        self.histogram
            .value_at_quantile(quantile)
            .min(self.histogram.max())
    }

    /// Adds every value of `other` into this histogram.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Same fixed bounds on both sides, so addition cannot run out of range.
        let added = self.histogram.add(&other.histogram);
        debug_assert!(added.is_ok(), "histograms share bounds: {added:?}");
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// The values recorded after `earlier` was taken from the same source:
    /// `self - earlier`. When `earlier` is not a prefix of `self` (the source
    /// was reset), the whole of `self` is returned, as Prometheus treats a
    /// counter that went down.
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        if earlier.count() > self.count() || earlier.sum_us > self.sum_us {
            return self.clone();
        }
        let mut window = self.clone();
        match window.histogram.subtract(&earlier.histogram) {
            Ok(()) => {
                window.sum_us = self.sum_us - earlier.sum_us;
                window
            }
            Err(_) => self.clone(),
        }
    }

    /// Count, percentiles, max and mean, ready for export.
    pub fn summary(&self) -> LatencySummary {
        let count = self.count();
        let mean_us = if count == 0 {
            0.0
        } else {
            self.sum_us as f64 / count as f64
        };
        LatencySummary {
            count,
            sum_us: self.sum_us,
            p50_us: self.value_at_quantile_us(0.5),
            p95_us: self.value_at_quantile_us(0.95),
            p99_us: self.value_at_quantile_us(0.99),
            p999_us: self.value_at_quantile_us(0.999),
            max_us: if count == 0 { 0 } else { self.histogram.max() },
            mean_us,
        }
    }
}

/// The figures of one latency histogram; all zero when it is empty
/// (check `count` before trusting them).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub sum_us: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl LatencySummary {
    /// The value for one of `SUMMARY_QUANTILES` (the nearest one at or above).
    pub fn quantile_us(&self, quantile: f64) -> u64 {
        if quantile <= 0.5 {
            self.p50_us
        } else if quantile <= 0.95 {
            self.p95_us
        } else if quantile <= 0.99 {
            self.p99_us
        } else if quantile <= 0.999 {
            self.p999_us
        } else {
            self.max_us
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within_precision(actual: u64, expected: u64) -> bool {
        let tolerance = (expected / 1000).max(1);
        actual.abs_diff(expected) <= tolerance
    }

    #[test]
    fn percentiles_of_a_uniform_spread() {
        let mut histogram = LatencyHistogram::new();
        for latency_us in 1..=10_000 {
            histogram.record_us(latency_us);
        }
        let summary = histogram.summary();
        assert_eq!(summary.count, 10_000);
        assert!(within_precision(summary.p50_us, 5_000), "{summary:?}");
        assert!(within_precision(summary.p95_us, 9_500), "{summary:?}");
        assert!(within_precision(summary.p99_us, 9_900), "{summary:?}");
        assert!(within_precision(summary.p999_us, 9_990), "{summary:?}");
        assert!(within_precision(summary.max_us, 10_000), "{summary:?}");
        assert_eq!(summary.sum_us, 10_000 * 10_001 / 2);
        assert!((summary.mean_us - 5_000.5).abs() < 1e-9);
    }

    #[test]
    fn debug_output_is_the_summary() {
        let mut histogram = LatencyHistogram::new();
        histogram.record_us(42);
        let text = format!("{histogram:?}");
        assert!(
            text.starts_with("LatencyHistogram(LatencySummary { count: 1"),
            "{text}"
        );
        assert!(text.len() < 300, "{text}");
    }

    #[test]
    fn empty_histogram_reads_as_zero() {
        let summary = LatencyHistogram::new().summary();
        assert_eq!(summary, LatencySummary::default());
    }

    #[test]
    fn values_beyond_the_range_saturate() {
        let mut histogram = LatencyHistogram::new();
        histogram.record_us(u64::MAX);
        histogram.record_us(0);
        assert_eq!(histogram.count(), 2);
        assert!(within_precision(histogram.summary().max_us, LATENCY_MAX_US));
        assert_eq!(histogram.sum_us(), LATENCY_MAX_US);
    }

    #[test]
    fn merge_adds_counts_and_sums() {
        let mut fast = LatencyHistogram::new();
        let mut slow = LatencyHistogram::new();
        for _ in 0..90 {
            fast.record_us(100);
        }
        for _ in 0..10 {
            slow.record_us(50_000);
        }
        fast.merge(&slow);
        let summary = fast.summary();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.sum_us, 90 * 100 + 10 * 50_000);
        assert!(within_precision(summary.p50_us, 100));
        assert!(within_precision(summary.p95_us, 50_000));
    }

    #[test]
    fn since_keeps_only_the_new_values() {
        let mut histogram = LatencyHistogram::new();
        for _ in 0..1000 {
            histogram.record_us(10);
        }
        let earlier = histogram.clone();
        for _ in 0..10 {
            histogram.record_us(200_000);
        }
        let window = histogram.since(&earlier);
        assert_eq!(window.count(), 10);
        assert_eq!(window.sum_us(), 2_000_000);
        assert!(within_precision(window.summary().p50_us, 200_000));
    }

    #[test]
    fn since_a_later_histogram_falls_back_to_the_whole() {
        let mut later = LatencyHistogram::new();
        later.record_us(5);
        later.record_us(6);
        let mut reset = LatencyHistogram::new();
        reset.record_us(7);
        assert_eq!(reset.since(&later).count(), 1);
    }

    #[test]
    fn summary_quantile_lookup_matches_fields() {
        let summary = LatencySummary {
            count: 1,
            sum_us: 1,
            p50_us: 1,
            p95_us: 2,
            p99_us: 3,
            p999_us: 4,
            max_us: 5,
            mean_us: 1.0,
        };
        let looked_up: Vec<u64> = SUMMARY_QUANTILES
            .iter()
            .map(|&quantile| summary.quantile_us(quantile))
            .collect();
        assert_eq!(looked_up, vec![1, 2, 3, 4]);
        assert_eq!(summary.quantile_us(1.0), 5);
    }
}
