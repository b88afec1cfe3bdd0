//! The shards' figures combined ([`Aggregate`]) and what changed between two
//! combinations ([`Rates`]).

use std::time::Duration;

use super::{
    Counter, Gauge, Latency, LatencyHistogram, LatencySummary, ShardSnapshot, ERROR_CODES,
};

/// Every shard's figures added together, plus the per-shard snapshots for
/// exports that label series by shard.
///
/// Counters and gauges are summed, histograms merged, with one exception:
/// `connections_peak`. Shards peak at different moments, so the sum of
/// their peaks counts connections that were never open together (an upper
/// bound), and the largest shard peak misses the others (a lower bound).
/// The aggregate peak is the largest of: any shard's own peak, the sum of
/// the current connections, and, through [`Aggregate::carry_peak_from`], the
/// previous aggregate's peak. That is the highest process-wide count
/// actually observed at a sampling instant: never over the truth, and exact
/// whenever the peak lasts across a sample.
#[derive(Clone, Debug)]
pub struct Aggregate {
    counters: [u64; Counter::COUNT],
    errors_by_code: [u64; ERROR_CODES.len()],
    gauges: [u64; Gauge::COUNT],
    latencies: [LatencyHistogram; Latency::COUNT],
    /// The snapshots merged, ordered by shard id.
    pub shards: Vec<ShardSnapshot>,
}

impl Default for Aggregate {
    fn default() -> Self {
        Aggregate::merge(Vec::new())
    }
}

impl Aggregate {
    /// Combines the shards' snapshots (in any order; kept sorted by shard).
    pub fn merge(mut shards: Vec<ShardSnapshot>) -> Aggregate {
        shards.sort_by_key(|snapshot| snapshot.shard);
        let mut counters = [0u64; Counter::COUNT];
        let mut errors_by_code = [0u64; ERROR_CODES.len()];
        let mut gauges = [0u64; Gauge::COUNT];
        let mut latencies: [LatencyHistogram; Latency::COUNT] = Default::default();
        let mut largest_shard_peak = 0;

        for snapshot in &shards {
            for counter in Counter::ALL {
                let total = &mut counters[counter as usize];
                *total = total.wrapping_add(snapshot.counter(counter));
            }
            for (total, &count) in errors_by_code.iter_mut().zip(snapshot.errors_by_code()) {
                *total = total.wrapping_add(count);
            }
            for gauge in Gauge::ALL {
                let total = &mut gauges[gauge as usize];
                *total = total.saturating_add(snapshot.gauge(gauge));
            }
            for latency in Latency::ALL {
                latencies[latency as usize].merge(snapshot.latency(latency));
            }
            largest_shard_peak = largest_shard_peak.max(snapshot.gauge(Gauge::ConnectionsPeak));
        }
        gauges[Gauge::ConnectionsPeak as usize] =
            largest_shard_peak.max(gauges[Gauge::Connections as usize]);

        Aggregate {
            counters,
            errors_by_code,
            gauges,
            latencies,
            shards,
        }
    }

    /// Keeps the process-wide peak from falling below what `previous` saw
    /// (call it on each new aggregate with the one before).
    pub fn carry_peak_from(&mut self, previous: &Aggregate) {
        let peak = &mut self.gauges[Gauge::ConnectionsPeak as usize];
        *peak = (*peak).max(previous.gauge(Gauge::ConnectionsPeak));
    }

    /// Keeps the process-wide peak at least `peak` (a peak carried by
    /// whoever runs the interval).
    pub fn raise_connections_peak(&mut self, peak: u64) {
        let current = &mut self.gauges[Gauge::ConnectionsPeak as usize];
        *current = (*current).max(peak);
    }

    /// A counter summed over the shards.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter as usize]
    }

    /// A gauge summed over the shards (the peak: see the type's doc).
    pub fn gauge(&self, gauge: Gauge) -> u64 {
        self.gauges[gauge as usize]
    }

    /// Errors per code over all shards, in [`ERROR_CODES`] order.
    pub fn errors_by_code(&self) -> &[u64; ERROR_CODES.len()] {
        &self.errors_by_code
    }

    /// Errors of every code over all shards.
    pub fn errors_total(&self) -> u64 {
        self.errors_by_code
            .iter()
            .fold(0, |sum, &count| sum.wrapping_add(count))
    }

    /// One histogram merged over the shards, cumulative since start-up.
    pub fn latency(&self, latency: Latency) -> &LatencyHistogram {
        &self.latencies[latency as usize]
    }

    /// The figures of one merged histogram, cumulative since start-up.
    pub fn latency_summary(&self, latency: Latency) -> LatencySummary {
        self.latency(latency).summary()
    }

    /// How many shards contributed.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

/// What happened between two aggregates: per-second rates and the latency
/// of that interval alone (the aggregates themselves are cumulative).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    /// The interval the rates cover, in seconds (0 when none elapsed).
    pub interval_s: f64,
    pub messages_in_per_s: f64,
    pub messages_out_per_s: f64,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
    pub errors_per_s: f64,
    /// Errors answered over messages received in the interval, 0.0..=1.0.
    /// No messages and no errors is 0; errors with no messages is 1.
    pub error_rate: f64,
    /// Latency of the values recorded in the interval, in `Latency::ALL` order.
    recent_latencies: [LatencySummary; Latency::COUNT],
}

impl Rates {
    /// Rates over `elapsed`, from `previous` to `current`. For the first
    /// interval pass `&Aggregate::default()` and the time since start-up.
    ///
    /// A counter that went down (a shard's figures were reset) counts from
    /// zero, as Prometheus's `rate()` does.
    pub fn between(previous: &Aggregate, current: &Aggregate, elapsed: Duration) -> Rates {
        let interval_s = elapsed.as_secs_f64();
        let increase = |before: u64, after: u64| {
            if after >= before {
                after - before
            } else {
                after
            }
        };
        let per_second = |count: u64| {
            if interval_s > 0.0 {
                count as f64 / interval_s
            } else {
                0.0
            }
        };
        let counter_increase =
            |counter: Counter| increase(previous.counter(counter), current.counter(counter));

        let messages_in = counter_increase(Counter::MessagesIn);
        let errors = increase(previous.errors_total(), current.errors_total());
        let error_rate = match (errors, messages_in) {
            (0, _) => 0.0,
            (_, 0) => 1.0,
            (errors, messages) => (errors as f64 / messages as f64).min(1.0),
        };

        Rates {
            interval_s,
            messages_in_per_s: per_second(messages_in),
            messages_out_per_s: per_second(counter_increase(Counter::MessagesOut)),
            bytes_in_per_s: per_second(counter_increase(Counter::BytesIn)),
            bytes_out_per_s: per_second(counter_increase(Counter::BytesOut)),
            errors_per_s: per_second(errors),
            error_rate,
            recent_latencies: Latency::ALL.map(|latency| {
                current
                    .latency(latency)
                    .since(previous.latency(latency))
                    .summary()
            }),
        }
    }

    /// The latency figures of values recorded during the interval only.
    pub fn recent_latency(&self, latency: Latency) -> LatencySummary {
        self.recent_latencies[latency as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ShardMetrics;

    fn shard_with(connections: u64, peak: u64, messages_in: u64) -> ShardMetrics {
        let metrics = ShardMetrics::new();
        metrics.set_connections(peak);
        metrics.set_connections(connections);
        for _ in 0..messages_in {
            metrics.count_message_in(10);
        }
        metrics
    }

    #[test]
    fn merge_sums_counters_and_gauges_and_merges_histograms() {
        let first = shard_with(3, 10, 4);
        let second = shard_with(5, 6, 6);
        first.record_delivery_latency_us(100);
        second.record_delivery_latency_us(300);
        first.count_error("too_large");
        second.count_error("too_large");
        second.set_mailbox_msgs(7);

        let aggregate = Aggregate::merge(vec![second.snapshot(1), first.snapshot(0)]);
        assert_eq!(aggregate.shard_count(), 2);
        assert_eq!(aggregate.shards[0].shard, 0, "kept sorted by shard");
        assert_eq!(aggregate.counter(Counter::MessagesIn), 10);
        assert_eq!(aggregate.counter(Counter::BytesIn), 100);
        assert_eq!(aggregate.gauge(Gauge::Connections), 8);
        assert_eq!(aggregate.gauge(Gauge::MailboxMsgs), 7);
        assert_eq!(aggregate.errors_total(), 2);
        assert_eq!(aggregate.errors_by_code()[5], 2);
        let delivery = aggregate.latency_summary(Latency::Delivery);
        assert_eq!(delivery.count, 2);
        assert_eq!(delivery.sum_us, 400);
    }

    #[test]
    fn peak_is_the_highest_observed_not_the_sum_of_peaks() {
        // Shard peaks 10 and 6 never coincided: their sum (16) would overstate.
        let aggregate = Aggregate::merge(vec![
            shard_with(3, 10, 0).snapshot(0),
            shard_with(5, 6, 0).snapshot(1),
        ]);
        assert_eq!(aggregate.gauge(Gauge::ConnectionsPeak), 10);

        // Now both shards are busy at once: the current sum is the peak.
        let busy = Aggregate::merge(vec![
            shard_with(9, 10, 0).snapshot(0),
            shard_with(6, 6, 0).snapshot(1),
        ]);
        assert_eq!(busy.gauge(Gauge::ConnectionsPeak), 15);

        // Later everyone left; the process peak stays at what was seen.
        let mut quiet = Aggregate::merge(vec![
            shard_with(0, 10, 0).snapshot(0),
            shard_with(0, 6, 0).snapshot(1),
        ]);
        quiet.carry_peak_from(&busy);
        assert_eq!(quiet.gauge(Gauge::ConnectionsPeak), 15);
        assert_eq!(quiet.gauge(Gauge::Connections), 0);
    }

    #[test]
    fn empty_aggregate_is_all_zero() {
        let aggregate = Aggregate::default();
        assert_eq!(aggregate.shard_count(), 0);
        assert_eq!(aggregate.counter(Counter::MessagesIn), 0);
        assert_eq!(aggregate.latency_summary(Latency::Delivery).count, 0);
    }

    #[test]
    fn rates_over_an_interval() {
        let metrics = ShardMetrics::new();
        for _ in 0..100 {
            metrics.count_message_in(1_000);
            metrics.record_delivery_latency_us(50);
        }
        let before = Aggregate::merge(vec![metrics.snapshot(0)]);
        for _ in 0..200 {
            metrics.count_message_in(1_000);
            metrics.count_message_out(500);
            metrics.record_delivery_latency_us(40_000);
        }
        for _ in 0..10 {
            metrics.count_error("bad_request");
        }
        let after = Aggregate::merge(vec![metrics.snapshot(0)]);

        let rates = Rates::between(&before, &after, Duration::from_secs(2));
        assert_eq!(rates.interval_s, 2.0);
        assert_eq!(rates.messages_in_per_s, 100.0);
        assert_eq!(rates.messages_out_per_s, 100.0);
        assert_eq!(rates.bytes_in_per_s, 100_000.0);
        assert_eq!(rates.bytes_out_per_s, 50_000.0);
        assert_eq!(rates.errors_per_s, 5.0);
        assert!((rates.error_rate - 0.05).abs() < 1e-12);
        // Only the interval's 200 slow deliveries, not the 100 fast ones before.
        let recent = rates.recent_latency(Latency::Delivery);
        assert_eq!(recent.count, 200);
        assert!(recent.p50_us >= 39_960, "{recent:?}");
        assert_eq!(after.latency_summary(Latency::Delivery).count, 300);
    }

    #[test]
    fn error_rate_edges() {
        let quiet = Aggregate::default();
        let errors_only = {
            let metrics = ShardMetrics::new();
            metrics.count_error("internal");
            Aggregate::merge(vec![metrics.snapshot(0)])
        };
        let second = Duration::from_secs(1);
        assert_eq!(Rates::between(&quiet, &quiet, second).error_rate, 0.0);
        assert_eq!(Rates::between(&quiet, &errors_only, second).error_rate, 1.0);
    }

    #[test]
    fn zero_interval_and_counter_resets_do_not_blow_up() {
        let metrics = shard_with(0, 0, 50);
        let busy = Aggregate::merge(vec![metrics.snapshot(0)]);
        let restarted = Aggregate::merge(vec![shard_with(0, 0, 5).snapshot(0)]);

        let instant = Rates::between(&Aggregate::default(), &busy, Duration::ZERO);
        assert_eq!(instant.messages_in_per_s, 0.0);
        assert!(instant.messages_in_per_s.is_finite());

        let after_reset = Rates::between(&busy, &restarted, Duration::from_secs(1));
        assert_eq!(after_reset.messages_in_per_s, 5.0);
    }
}
