//! Statistics: one [`ThreadStats`] per executor thread (no sharing on the hot
//! path), merged once at the end into a [`Summary`] and a per-second series.
//!
//! Latencies are recorded in microseconds. The main histogram only records the
//! measured (steady) window; the per-second buckets record everything so the
//! charts show the ramp-up too.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency the histograms track; larger values are clamped to it.
pub const LATENCY_MAX_US: u64 = 60_000_000;
const NS_PER_SEC: u64 = 1_000_000_000;

pub(crate) fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, sigfig).expect("static histogram bounds")
}

/// Most messages one thread keeps in its latency trace (`--latency-trace`):
/// 12 bytes each, so at most 96 MiB a thread, about 25 s of a 330k msg/s
/// echo. Later messages, and any after the measured window's first 71
/// minutes (µs in a u32), are counted in [`LatencyTrace::dropped`], not kept.
pub const TRACE_MESSAGES_PER_THREAD_MAX: usize = 1 << 23;

/// One measured message in the latency trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    /// When it arrived, µs after the measured window began.
    pub at_us: u32,
    pub latency_us: u32,
    /// The connection slot it belongs to (0..connections).
    pub connection: u32,
}

/// Every measured message's arrival time and latency (`--latency-trace`):
/// whether a tail is made of slow moments or of slow connections, which the
/// histograms cannot tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyTrace {
    pub entries: Vec<TraceEntry>,
    /// Messages past the thread's bound, not kept.
    pub dropped: u64,
    /// Most entries a thread keeps ([`TRACE_MESSAGES_PER_THREAD_MAX`]).
    messages_max: usize,
}

impl LatencyTrace {
    /// Reserves room for all `messages_max` entries at once: growing by
    /// doubling would copy up to 96 MiB in the middle of a measured run.
    /// The reservation is address space; pages are touched as it fills.
    pub fn new(messages_max: usize) -> LatencyTrace {
        LatencyTrace {
            entries: Vec::with_capacity(messages_max),
            dropped: 0,
            messages_max,
        }
    }

    /// One trace of several threads' (`None` for none): the first one's
    /// room grows once to the total and the others are moved into it.
    pub fn combine(traces: Vec<LatencyTrace>) -> Option<LatencyTrace> {
        let total: usize = traces.iter().map(|t| t.entries.len()).sum();
        let mut traces = traces.into_iter();
        let mut combined = traces.next()?;
        combined
            .entries
            .reserve(total.saturating_sub(combined.entries.len()));
        for mut trace in traces {
            combined.entries.append(&mut trace.entries);
            combined.dropped += trace.dropped;
        }
        Some(combined)
    }

    /// The entries in order of arrival (threads' entries interleaved).
    pub fn sorted(mut self) -> LatencyTrace {
        self.entries
            .sort_by_key(|e| (e.at_us, e.connection, e.latency_us));
        self
    }
}

/// Message and byte counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub sent: u64,
    pub received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub errors: u64,
}

impl Counters {
    fn merge(&mut self, other: &Counters) {
        self.sent += other.sent;
        self.received += other.received;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.errors += other.errors;
    }
}

/// What happened during one second of the run.
#[derive(Clone, Debug)]
pub struct SecondBucket {
    pub counters: Counters,
    pub connects: u64,
    pub disconnects: u64,
    pub latency: Histogram<u64>,
}

impl Default for SecondBucket {
    fn default() -> Self {
        SecondBucket {
            counters: Counters::default(),
            connects: 0,
            disconnects: 0,
            latency: histogram(2),
        }
    }
}

/// Everything one executor thread measured.
#[derive(Clone, Debug)]
pub struct ThreadStats {
    /// Start of the measured (steady) window, ns since the run started.
    pub measure_from_ns: u64,
    pub totals: Counters,
    pub measured: Counters,
    pub latency: Histogram<u64>,
    pub connect_time: Histogram<u64>,
    pub connects_attempted: u64,
    pub connects_succeeded: u64,
    pub connects_failed: u64,
    pub errors: HashMap<String, u64>,
    pub seconds: Vec<SecondBucket>,
    /// Each finished connection's mean latency over the measured window
    /// (µs), for those that received a measured message: whether some
    /// connections are served worse than others.
    pub connection_means: Histogram<u64>,
    /// Established connections that ended without a measured message:
    /// closed during the ramp-up (churn, drops), or starved.
    pub connections_unmeasured: u64,
    /// Each measured message, when tracing (`enable_trace`).
    pub trace: Option<LatencyTrace>,
}

impl ThreadStats {
    pub fn new(measure_from_ns: u64) -> ThreadStats {
        ThreadStats {
            measure_from_ns,
            totals: Counters::default(),
            measured: Counters::default(),
            latency: histogram(3),
            connect_time: histogram(3),
            connects_attempted: 0,
            connects_succeeded: 0,
            connects_failed: 0,
            errors: HashMap::new(),
            seconds: Vec::new(),
            connection_means: histogram(3),
            connections_unmeasured: 0,
            trace: None,
        }
    }

    /// Keeps each measured message in [`ThreadStats::trace`] from now on,
    /// up to `messages_max` of them.
    pub fn enable_trace(&mut self, messages_max: usize) {
        self.trace = Some(LatencyTrace::new(messages_max));
    }

    /// Adds a measured message (the µs `on_message` returned) of
    /// `connection`, received at `now_ns`, to the trace if there is one.
    pub fn trace_message(&mut self, now_ns: u64, latency_us: u64, connection: usize) {
        let Some(trace) = self.trace.as_mut() else {
            return;
        };
        let at_us = now_ns.saturating_sub(self.measure_from_ns) / 1_000;
        // A row's time is a u32 of µs: a trace keeps the first 71 minutes
        // of a measured window.
        let Ok(at_us) = u32::try_from(at_us) else {
            trace.dropped += 1;
            return;
        };
        if trace.entries.len() >= trace.messages_max {
            trace.dropped += 1;
            return;
        }
        trace.entries.push(TraceEntry {
            at_us,
            latency_us: latency_us.min(u32::MAX as u64) as u32,
            connection: connection.min(u32::MAX as usize) as u32,
        });
    }

    fn bucket(&mut self, now_ns: u64) -> &mut SecondBucket {
        let index = (now_ns / NS_PER_SEC) as usize;
        if index >= self.seconds.len() {
            self.seconds.resize_with(index + 1, SecondBucket::default);
        }
        &mut self.seconds[index]
    }

    fn measuring(&self, now_ns: u64) -> bool {
        now_ns >= self.measure_from_ns
    }

    /// `count` messages totalling `bytes` were written.
    pub fn on_sent(&mut self, now_ns: u64, count: u64, bytes: u64) {
        self.totals.sent += count;
        self.totals.bytes_sent += bytes;
        if self.measuring(now_ns) {
            self.measured.sent += count;
            self.measured.bytes_sent += bytes;
        }
        let b = self.bucket(now_ns);
        b.counters.sent += count;
        b.counters.bytes_sent += bytes;
    }

    /// Bytes read from a socket (all frames, control frames included).
    pub fn on_bytes_received(&mut self, now_ns: u64, bytes: u64) {
        self.totals.bytes_received += bytes;
        if self.measuring(now_ns) {
            self.measured.bytes_received += bytes;
        }
        self.bucket(now_ns).counters.bytes_received += bytes;
    }

    /// One of our stamped messages arrived, `latency_ns` after it was meant
    /// to leave. Returns the latency recorded (µs) when it falls in the
    /// measured window, for the connection's own mean.
    pub fn on_message(&mut self, now_ns: u64, latency_ns: u64) -> Option<u64> {
        let us = (latency_ns / 1_000).clamp(1, LATENCY_MAX_US);
        self.totals.received += 1;
        let measured = self.measuring(now_ns);
        if measured {
            self.measured.received += 1;
            self.latency.saturating_record(us);
        }
        let b = self.bucket(now_ns);
        b.counters.received += 1;
        b.latency.saturating_record(us);
        measured.then_some(us)
    }

    /// A connection ended having received `messages` measured messages
    /// whose latencies add up to `latency_sum_us`.
    pub fn on_connection_done(&mut self, messages: u64, latency_sum_us: u64) {
        match latency_sum_us.checked_div(messages) {
            Some(mean_us) => self
                .connection_means
                .saturating_record(mean_us.clamp(1, LATENCY_MAX_US)),
            None => self.connections_unmeasured += 1,
        }
    }

    /// Counts `count` errors of `kind`; allocates only the first time a kind is seen.
    pub fn on_error(&mut self, now_ns: u64, kind: &str, count: u64) {
        if count == 0 {
            return;
        }
        match self.errors.get_mut(kind) {
            Some(n) => *n += count,
            None => {
                self.errors.insert(kind.to_string(), count);
            }
        }
        self.totals.errors += count;
        if self.measuring(now_ns) {
            self.measured.errors += count;
        }
        self.bucket(now_ns).counters.errors += count;
    }

    /// A connection attempt finished after `elapsed_ns`.
    pub fn on_connect(&mut self, now_ns: u64, ok: bool, elapsed_ns: u64) {
        self.connects_attempted += 1;
        if ok {
            self.connects_succeeded += 1;
            self.connect_time
                .saturating_record((elapsed_ns / 1_000).clamp(1, LATENCY_MAX_US));
            self.bucket(now_ns).connects += 1;
        } else {
            self.connects_failed += 1;
        }
    }

    /// An established connection ended (for any reason).
    pub fn on_disconnect(&mut self, now_ns: u64) {
        self.bucket(now_ns).disconnects += 1;
    }

    /// Adds another thread's figures into this one, all but its latency
    /// trace: traces are taken out and joined by [`LatencyTrace::combine`],
    /// which moves them instead of copying.
    pub fn merge(&mut self, other: &ThreadStats) {
        self.totals.merge(&other.totals);
        self.measured.merge(&other.measured);
        self.latency
            .add(&other.latency)
            .expect("same histogram bounds");
        self.connect_time
            .add(&other.connect_time)
            .expect("same histogram bounds");
        self.connects_attempted += other.connects_attempted;
        self.connects_succeeded += other.connects_succeeded;
        self.connects_failed += other.connects_failed;
        self.connection_means
            .add(&other.connection_means)
            .expect("same histogram bounds");
        self.connections_unmeasured += other.connections_unmeasured;
        for (kind, n) in &other.errors {
            *self.errors.entry(kind.clone()).or_insert(0) += n;
        }
        if other.seconds.len() > self.seconds.len() {
            self.seconds
                .resize_with(other.seconds.len(), SecondBucket::default);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.counters.merge(&theirs.counters);
            mine.connects += theirs.connects;
            mine.disconnects += theirs.disconnects;
            mine.latency
                .add(&theirs.latency)
                .expect("same histogram bounds");
        }
    }

    /// Summary over the measured window of `window_s` seconds.
    pub fn summary(&self, window_s: f64) -> Summary {
        let window_s = window_s.max(1e-9);
        let errors: BTreeMap<String, u64> =
            self.errors.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let errors_total: u64 = errors.values().sum();
        let denominator = (self.totals.sent + self.connects_attempted).max(1);
        let per_connection_mean_latency_us = LatencySummary::from_histogram(&self.connection_means);
        let slowest_connection_vs_median = if per_connection_mean_latency_us.p50 > 0 {
            per_connection_mean_latency_us.max as f64 / per_connection_mean_latency_us.p50 as f64
        } else {
            0.0
        };
        Summary {
            window_s,
            messages_sent: self.measured.sent,
            messages_received: self.measured.received,
            msg_per_s: self.measured.received as f64 / window_s,
            sent_per_s: self.measured.sent as f64 / window_s,
            bytes_sent: self.measured.bytes_sent,
            bytes_received: self.measured.bytes_received,
            bytes_per_s: (self.measured.bytes_sent + self.measured.bytes_received) as f64
                / window_s,
            latency_us: LatencySummary::from_histogram(&self.latency),
            connect: ConnectSummary {
                attempted: self.connects_attempted,
                succeeded: self.connects_succeeded,
                failed: self.connects_failed,
                success_rate: if self.connects_attempted == 0 {
                    1.0
                } else {
                    self.connects_succeeded as f64 / self.connects_attempted as f64
                },
                time_us: LatencySummary::from_histogram(&self.connect_time),
            },
            total_sent: self.totals.sent,
            total_received: self.totals.received,
            errors_total,
            error_rate: errors_total as f64 / denominator as f64,
            errors,
            per_connection_mean_latency_us,
            slowest_connection_vs_median,
            connections_without_measured_message: self.connections_unmeasured,
        }
    }

    /// One point per second of the run.
    pub fn series(&self) -> Vec<SeriesPoint> {
        let mut connections: i64 = 0;
        self.seconds
            .iter()
            .enumerate()
            .map(|(i, b)| {
                connections += b.connects as i64 - b.disconnects as i64;
                let has = !b.latency.is_empty();
                let q = |p: f64| {
                    if has {
                        b.latency.value_at_quantile(p)
                    } else {
                        0
                    }
                };
                SeriesPoint {
                    t_s: i as u64,
                    sent: b.counters.sent,
                    received: b.counters.received,
                    bytes: b.counters.bytes_sent + b.counters.bytes_received,
                    errors: b.counters.errors,
                    connects: b.connects,
                    disconnects: b.disconnects,
                    connections: connections.max(0) as u64,
                    p50_us: q(0.5),
                    p95_us: q(0.95),
                    p99_us: q(0.99),
                    max_us: if has { b.latency.max() } else { 0 },
                }
            })
            .collect()
    }
}

/// Latency distribution in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min: h.min(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p95: h.value_at_quantile(0.95),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Connection establishment figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectSummary {
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub success_rate: f64,
    /// TCP connect + WebSocket handshake, successful attempts only.
    pub time_us: LatencySummary,
}

/// The figures of one scenario's measured window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub window_s: f64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Completed (stamped) messages received per second.
    pub msg_per_s: f64,
    pub sent_per_s: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Bytes written plus bytes read, per second.
    pub bytes_per_s: f64,
    pub latency_us: LatencySummary,
    pub connect: ConnectSummary,
    /// Whole run, ramp-up included.
    pub total_sent: u64,
    pub total_received: u64,
    pub errors_total: u64,
    /// errors / (messages sent + connections attempted), whole run.
    pub error_rate: f64,
    pub errors: BTreeMap<String, u64>,
    /// The distribution of each connection's mean latency over the
    /// measured window (`count`: connections with a measured message).
    /// A starved connection's mean sits far above the median.
    #[serde(default)]
    pub per_connection_mean_latency_us: LatencySummary,
    /// The slowest connection's mean over the median connection's (0: no
    /// connection had a measured message).
    #[serde(default)]
    pub slowest_connection_vs_median: f64,
    /// Established connections that ended without a message in the
    /// measured window: closed during the ramp-up (churn, drops), or
    /// starved; the per-connection means leave them out.
    #[serde(default)]
    pub connections_without_measured_message: u64,
}

/// One second of the run, for the charts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub t_s: u64,
    pub sent: u64,
    pub received: u64,
    pub bytes: u64,
    pub errors: u64,
    pub connects: u64,
    pub disconnects: u64,
    /// Open connections at the end of that second.
    pub connections: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Running totals a thread publishes for the progress line (written a few
/// times a second by the owning thread, read by the main thread).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct LiveCounters {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
    pub open_connections: AtomicU64,
}

impl LiveCounters {
    /// Publishes the thread's figures.
    pub fn publish(&self, stats: &ThreadStats, open_connections: u64) {
        self.sent.store(stats.totals.sent, Ordering::Relaxed);
        self.received
            .store(stats.totals.received, Ordering::Relaxed);
        self.errors.store(stats.totals.errors, Ordering::Relaxed);
        self.open_connections
            .store(open_connections, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn merge_adds_counts_histograms_errors_and_series() {
        let mut a = ThreadStats::new(0);
        let mut b = ThreadStats::new(0);
        a.on_connect(0, true, 2 * MS);
        b.on_connect(0, true, 4 * MS);
        b.on_connect(0, false, MS);
        for i in 0..100 {
            a.on_sent(i * MS, 1, 100);
            a.on_message(i * MS, MS);
        }
        for i in 0..50 {
            b.on_sent(1_500 * MS + i, 1, 100);
            b.on_message(1_500 * MS + i, 10 * MS);
        }
        a.on_error(0, "eof", 1);
        b.on_error(0, "eof", 2);
        b.on_error(0, "server:rate_limited", 1);
        a.merge(&b);
        assert_eq!(a.totals.sent, 150);
        assert_eq!(a.totals.received, 150);
        assert_eq!(a.latency.len(), 150);
        assert_eq!(a.errors["eof"], 3);
        assert_eq!(a.errors["server:rate_limited"], 1);
        assert_eq!(
            (
                a.connects_attempted,
                a.connects_succeeded,
                a.connects_failed
            ),
            (3, 2, 1)
        );
        assert_eq!(a.seconds.len(), 2);
        assert_eq!(a.seconds[0].counters.received, 100);
        assert_eq!(a.seconds[1].counters.received, 50);

        let s = a.summary(2.0);
        assert_eq!(s.msg_per_s, 75.0);
        assert_eq!(s.latency_us.p50, 1000);
        assert!(
            s.latency_us.p99 >= 9_990 && s.latency_us.p99 <= 10_010,
            "{}",
            s.latency_us.p99
        );
        assert_eq!(s.errors_total, 4);
        assert!((s.error_rate - 4.0 / 153.0).abs() < 1e-12);
        assert!((s.connect.success_rate - 2.0 / 3.0).abs() < 1e-12);
        let series = a.series();
        assert_eq!(series[0].connections, 2);
        assert_eq!(series[1].p50_us / 100, 100);
    }

    #[test]
    fn the_trace_keeps_measured_messages_up_to_its_bound_and_merges() {
        let mut a = ThreadStats::new(1_000 * MS);
        // Off unless enabled.
        let us = a.on_message(1_100 * MS, 2 * MS).unwrap();
        a.trace_message(1_100 * MS, us, 3);
        assert_eq!(a.trace, None);

        a.enable_trace(3);
        // A ramp-up message is not measured, so the caller does not trace it.
        assert_eq!(a.on_message(500 * MS, MS), None);
        for (i, connection) in [7usize, 1, 4, 9].iter().enumerate() {
            let now = 1_000 * MS + (4 - i as u64) * MS;
            let us = a.on_message(now, (i as u64 + 1) * MS).unwrap();
            a.trace_message(now, us, *connection);
        }
        let trace = a.trace.clone().unwrap();
        assert_eq!(trace.entries.len(), 3, "bounded at 3");
        assert_eq!(trace.dropped, 1);
        assert_eq!(
            trace.entries[0],
            TraceEntry {
                at_us: 4_000,
                latency_us: 1_000,
                connection: 7
            }
        );

        let mut b = ThreadStats::new(1_000 * MS);
        b.enable_trace(10);
        let us = b.on_message(1_000 * MS + 500_000, 5 * MS).unwrap();
        b.trace_message(1_000 * MS + 500_000, us, 2);
        let mut merged = ThreadStats::new(1_000 * MS);
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(merged.trace, None, "merge leaves traces to combine");
        let merged = LatencyTrace::combine(vec![a.trace.unwrap(), b.trace.unwrap()])
            .unwrap()
            .sorted();
        assert_eq!(merged.dropped, 1);
        let at: Vec<_> = merged
            .entries
            .iter()
            .map(|e| (e.at_us, e.connection))
            .collect();
        assert_eq!(at, vec![(500, 2), (2_000, 4), (3_000, 1), (4_000, 7)]);
        // Merging stats without a trace leaves none.
        let mut plain = ThreadStats::new(0);
        plain.merge(&ThreadStats::new(0));
        assert_eq!(plain.trace, None);
    }

    #[test]
    fn a_trace_keeps_the_first_71_minutes_of_the_window() {
        let mut s = ThreadStats::new(0);
        s.enable_trace(10);
        let last_us = u32::MAX as u64;
        s.trace_message(last_us * 1_000, 5, 0);
        s.trace_message((last_us + 1) * 1_000, 5, 0);
        let trace = s.trace.unwrap();
        assert_eq!(trace.entries.len(), 1);
        assert_eq!(trace.entries[0].at_us, u32::MAX);
        assert_eq!(trace.dropped, 1);
    }

    #[test]
    fn threads_traces_combine_into_one_by_moving() {
        assert_eq!(LatencyTrace::combine(Vec::new()), None);
        let entry = |at_us| TraceEntry {
            at_us,
            latency_us: 1,
            connection: 0,
        };
        let mut a = LatencyTrace::new(2);
        a.entries.extend([entry(5), entry(1)]);
        a.dropped = 3;
        let mut b = LatencyTrace::new(4);
        b.entries.extend([entry(2), entry(9), entry(4)]);
        b.dropped = 1;
        let combined = LatencyTrace::combine(vec![a, b]).unwrap();
        assert_eq!(combined.dropped, 4);
        assert!(combined.entries.capacity() >= 5);
        let at: Vec<_> = combined.sorted().entries.iter().map(|e| e.at_us).collect();
        assert_eq!(at, vec![1, 2, 4, 5, 9]);
    }

    #[test]
    fn measured_window_excludes_ramp_up() {
        let mut s = ThreadStats::new(1_000 * MS);
        s.on_sent(10 * MS, 1, 10);
        s.on_message(10 * MS, 500 * MS);
        s.on_sent(1_200 * MS, 1, 10);
        s.on_message(1_200 * MS, MS);
        assert_eq!(s.totals.received, 2);
        assert_eq!(s.measured.received, 1);
        assert_eq!(s.latency.max(), 1000);
        // The series still shows the slow ramp-up message.
        assert!(s.series()[0].max_us >= 499_000);
    }

    #[test]
    fn each_connections_mean_latency_is_kept_and_a_starved_one_stands_out() {
        let mut a = ThreadStats::new(1_000 * MS);
        // Ramp-up messages are not the connection's measured figures.
        assert_eq!(a.on_message(10 * MS, 500 * MS), None);
        assert_eq!(a.on_message(1_200 * MS, 2 * MS), Some(2_000));
        // Nine connections served alike (2 ms on average), one starved (40 ms;
        // histogram buckets are 32 µs wide there).
        for _ in 0..9 {
            a.on_connection_done(100, 100 * 2_000);
        }
        let mut b = ThreadStats::new(1_000 * MS);
        b.on_connection_done(5, 5 * 40_000);
        // A connection with no measured message has no mean; it is counted.
        b.on_connection_done(0, 0);
        a.merge(&b);
        let s = a.summary(1.0);
        let per_connection = s.per_connection_mean_latency_us;
        assert_eq!(per_connection.count, 10);
        assert_eq!(s.connections_without_measured_message, 1);
        assert_eq!(per_connection.p50, 2_000);
        assert!(
            (39_900..=40_100).contains(&per_connection.max),
            "{per_connection:?}"
        );
        assert!(
            (s.slowest_connection_vs_median - 20.0).abs() < 0.05,
            "{}",
            s.slowest_connection_vs_median
        );
        // Nothing measured: no ratio rather than a division by zero.
        let empty = ThreadStats::new(0).summary(1.0);
        assert_eq!(empty.per_connection_mean_latency_us.count, 0);
        assert_eq!(empty.slowest_connection_vs_median, 0.0);
        assert_eq!(empty.connections_without_measured_message, 0);
    }

    #[test]
    fn merging_into_empty_equals_original() {
        let mut a = ThreadStats::new(0);
        a.on_message(3_000 * MS, 2 * MS);
        let mut empty = ThreadStats::new(0);
        empty.merge(&a);
        assert_eq!(empty.summary(1.0), a.summary(1.0));
        assert_eq!(empty.series(), a.series());
    }
}
