//! Observability, sans-IO: what a shard counts, how the shards' figures are
//! combined, the process's resource use, alert rules and the exporters.
//!
//! The flow, once per `metrics_interval_ms`:
//!
//! 1. Each shard owns one [`ShardMetrics`] and updates it on the hot path
//!    (plain `Cell`s and one `RefCell` per histogram: no atomics, no locks).
//! 2. Each shard sends [`ShardMetrics::snapshot`] (an owned, `Send` value) to
//!    the aggregating shard over the mesh.
//! 3. [`Aggregate::merge`] sums the snapshots; [`Rates::between`] turns two
//!    successive aggregates into per-second rates and the latency of the
//!    last interval.
//! 4. [`resources::ResourceSampler`] reads `/proc` (CPU, memory, fds, net).
//! 5. [`alerts::AlertState::evaluate`] compares all of that with thresholds
//!    and reports alerts that fired or cleared.
//! 6. [`export`] renders one [`export::Report`] as Prometheus text, JSON or
//!    CSV; [`DASHBOARD_HTML`] charts the JSON in a browser.
//!
//! Nothing here does I/O except `resources`, which reads `/proc` and should
//! run off the shard threads (see its module doc).

pub mod aggregate;
pub mod alerts;
pub mod export;
pub mod latency;
pub mod resources;

use std::cell::{Cell, RefCell};

pub use aggregate::{Aggregate, Rates};
pub use latency::{LatencyHistogram, LatencySummary};

/// The live dashboard: one self-contained page that polls `/metrics.json`.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The protocol's error codes, in the order every exporter lists them.
pub const ERROR_CODES: [&str; 10] = [
    "bad_json",
    "bad_request",
    "unknown_op",
    "forbidden",
    "no_members",
    "too_large",
    "rate_limited",
    "overloaded",
    "cluster_unavailable",
    "internal",
];

/// Where `code` sits in [`ERROR_CODES`].
pub fn error_code_index(code: &str) -> Option<usize> {
    ERROR_CODES.iter().position(|&known| known == code)
}

/// Monotonic counts a shard keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    MessagesIn,
    MessagesOut,
    BytesIn,
    BytesOut,
    DroppedLow,
    StaleClosed,
    SlowConsumersClosed,
    ConnectionsOpened,
    ConnectionsClosed,
    HandshakeFailures,
    RefusedIpRate,
    RefusedUserLimit,
}

impl Counter {
    /// How many counters there are.
    pub const COUNT: usize = 12;
    /// Every counter, in export order.
    pub const ALL: [Counter; Counter::COUNT] = [
        Counter::MessagesIn,
        Counter::MessagesOut,
        Counter::BytesIn,
        Counter::BytesOut,
        Counter::DroppedLow,
        Counter::StaleClosed,
        Counter::SlowConsumersClosed,
        Counter::ConnectionsOpened,
        Counter::ConnectionsClosed,
        Counter::HandshakeFailures,
        Counter::RefusedIpRate,
        Counter::RefusedUserLimit,
    ];

    /// The name used in every export format (Prometheus adds `wsuring_` and `_total`).
    pub fn name(self) -> &'static str {
        match self {
            Counter::MessagesIn => "messages_in",
            Counter::MessagesOut => "messages_out",
            Counter::BytesIn => "bytes_in",
            Counter::BytesOut => "bytes_out",
            Counter::DroppedLow => "dropped_low",
            Counter::StaleClosed => "stale_closed",
            Counter::SlowConsumersClosed => "slow_consumers_closed",
            Counter::ConnectionsOpened => "connections_opened",
            Counter::ConnectionsClosed => "connections_closed",
            Counter::HandshakeFailures => "handshake_failures",
            Counter::RefusedIpRate => "refused_ip_rate",
            Counter::RefusedUserLimit => "refused_user_limit",
        }
    }

    /// One line for Prometheus `# HELP`.
    pub fn help(self) -> &'static str {
        match self {
            Counter::MessagesIn => "WebSocket data messages received from clients.",
            Counter::MessagesOut => "WebSocket data messages written to client sockets.",
            Counter::BytesIn => "Payload bytes of messages received from clients.",
            Counter::BytesOut => "Payload bytes of messages written to client sockets.",
            Counter::DroppedLow => "Low-priority messages dropped for lack of outbox room.",
            Counter::StaleClosed => {
                "Connections closed with 1001 after idle_timeout_ms of silence."
            }
            Counter::SlowConsumersClosed => {
                "Connections closed with 1008 for staying over outbox_max_bytes."
            }
            Counter::ConnectionsOpened => "WebSocket connections upgraded.",
            Counter::ConnectionsClosed => "WebSocket connections closed, for any reason.",
            Counter::HandshakeFailures => {
                "Connections that failed or timed out before the upgrade completed."
            }
            Counter::RefusedIpRate => {
                "TCP connections refused (HTTP 429) for exceeding ip_connections_per_s."
            }
            Counter::RefusedUserLimit => {
                "WebSocket connections closed with 1008 over max_connections_per_user."
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Levels the lead sets from the shard's own state (never incremented here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gauge {
    Connections,
    ConnectionsPeak,
    OutboxQueuedMsgs,
    OutboxQueuedBytes,
    MailboxMsgs,
    ScheduledMsgs,
    PendingAcks,
    DlqMsgs,
    ConnectionsHibernated,
    ReadinessSockets,
}

impl Gauge {
    /// How many gauges there are.
    pub const COUNT: usize = 10;
    /// Every gauge, in export order.
    pub const ALL: [Gauge; Gauge::COUNT] = [
        Gauge::Connections,
        Gauge::ConnectionsPeak,
        Gauge::OutboxQueuedMsgs,
        Gauge::OutboxQueuedBytes,
        Gauge::MailboxMsgs,
        Gauge::ScheduledMsgs,
        Gauge::PendingAcks,
        Gauge::DlqMsgs,
        Gauge::ConnectionsHibernated,
        Gauge::ReadinessSockets,
    ];

    /// The name used in every export format (Prometheus adds `wsuring_`).
    pub fn name(self) -> &'static str {
        match self {
            Gauge::Connections => "connections",
            Gauge::ConnectionsPeak => "connections_peak",
            Gauge::OutboxQueuedMsgs => "outbox_queued_msgs",
            Gauge::OutboxQueuedBytes => "outbox_queued_bytes",
            Gauge::MailboxMsgs => "mailbox_msgs",
            Gauge::ScheduledMsgs => "scheduled_msgs",
            Gauge::PendingAcks => "pending_acks",
            Gauge::DlqMsgs => "dlq_msgs",
            Gauge::ConnectionsHibernated => "connections_hibernated",
            Gauge::ReadinessSockets => "readiness_sockets",
        }
    }

    /// One line for Prometheus `# HELP`.
    pub fn help(self) -> &'static str {
        match self {
            Gauge::Connections => "Live WebSocket connections.",
            Gauge::ConnectionsPeak => {
                "Most live WebSocket connections seen at once (process-wide: see Aggregate docs)."
            }
            Gauge::OutboxQueuedMsgs => "Messages waiting in connection outboxes.",
            Gauge::OutboxQueuedBytes => "Bytes waiting in connection outboxes.",
            Gauge::MailboxMsgs => "Messages stored in offline users' mailboxes.",
            Gauge::ScheduledMsgs => "Messages held for scheduled delivery.",
            Gauge::PendingAcks => "Messages delivered with ack:true and not yet acknowledged.",
            Gauge::DlqMsgs => "Messages in the dead-letter queue.",
            Gauge::ConnectionsHibernated => {
                "Live connections resting without a task (quiet past hibernate_after_ms)."
            }
            Gauge::ReadinessSockets => {
                "Sockets in the shards' epoll sets: connections with a task, and one listener per shard."
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The latency histograms a shard keeps, all in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Latency {
    /// A message accepted from its sender → written to a recipient's socket.
    Delivery,
    /// The server's ping sent → the client's pong received.
    PingRtt,
    /// Connection accepted → WebSocket upgrade answered.
    Handshake,
}

impl Latency {
    /// How many histograms there are.
    pub const COUNT: usize = 3;
    /// Every histogram, in export order.
    pub const ALL: [Latency; Latency::COUNT] =
        [Latency::Delivery, Latency::PingRtt, Latency::Handshake];

    /// The name used in every export format.
    pub fn name(self) -> &'static str {
        match self {
            Latency::Delivery => "delivery_latency",
            Latency::PingRtt => "ping_rtt",
            Latency::Handshake => "handshake",
        }
    }

    /// One line for Prometheus `# HELP`.
    pub fn help(self) -> &'static str {
        match self {
            Latency::Delivery => "Time from a message accepted to its write to a recipient socket.",
            Latency::PingRtt => "Time from a server ping to the client's pong.",
            Latency::Handshake => "Time from accept to the WebSocket upgrade answered.",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One shard's figures. Owned by the shard and never shared across
/// threads: every update is a `Cell` write or one `RefCell` borrow.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    counters: [Cell<u64>; Counter::COUNT],
    errors_by_code: [Cell<u64>; ERROR_CODES.len()],
    gauges: [Cell<u64>; Gauge::COUNT],
    latencies: [RefCell<LatencyHistogram>; Latency::COUNT],
    /// `metrics = false`: every update is skipped (to measure their cost).
    disabled: bool,
}

impl ShardMetrics {
    /// Empty counters, zero gauges, empty histograms (about 420 KiB).
    pub fn new() -> Self {
        Self::default()
    }

    /// Metrics that record nothing (`metrics = false`): exports show zeros.
    pub fn disabled() -> Self {
        ShardMetrics {
            disabled: true,
            ..Self::default()
        }
    }

    /// Adds `amount` to a counter.
    #[inline]
    pub fn add(&self, counter: Counter, amount: u64) {
        if self.disabled {
            return;
        }
        let cell = &self.counters[counter.index()];
        // Wrapping, like any Prometheus counter: a reader treats a decrease as a reset.
        cell.set(cell.get().wrapping_add(amount));
    }

    /// Sets a gauge; setting `Connections` also raises `ConnectionsPeak`.
    #[inline]
    pub fn set_gauge(&self, gauge: Gauge, value: u64) {
        if self.disabled {
            return;
        }
        self.gauges[gauge.index()].set(value);
        if gauge == Gauge::Connections {
            let peak = &self.gauges[Gauge::ConnectionsPeak.index()];
            peak.set(peak.get().max(value));
        }
    }

    /// Records one latency into a histogram, in microseconds.
    #[inline]
    pub fn record_latency_us(&self, latency: Latency, latency_us: u64) {
        if self.disabled {
            return;
        }
        self.latencies[latency.index()]
            .borrow_mut()
            .record_us(latency_us);
    }

    /// A message accepted from a sender was written to a recipient's socket.
    #[inline]
    pub fn record_delivery_latency_us(&self, latency_us: u64) {
        self.record_latency_us(Latency::Delivery, latency_us);
    }

    /// A client answered the server's ping.
    #[inline]
    pub fn record_ping_rtt_us(&self, rtt_us: u64) {
        self.record_latency_us(Latency::PingRtt, rtt_us);
    }

    /// A connection finished its upgrade.
    #[inline]
    pub fn record_handshake_us(&self, handshake_us: u64) {
        self.record_latency_us(Latency::Handshake, handshake_us);
    }

    /// One data message of `bytes` payload bytes came in from a client.
    #[inline]
    pub fn count_message_in(&self, bytes: u64) {
        self.add(Counter::MessagesIn, 1);
        self.add(Counter::BytesIn, bytes);
    }

    /// One data message of `bytes` bytes was written to a client's socket.
    #[inline]
    pub fn count_message_out(&self, bytes: u64) {
        self.count_messages_out(1, bytes);
    }

    /// `messages` data messages, `bytes` bytes in all, left in one write.
    #[inline]
    pub fn count_messages_out(&self, messages: u64, bytes: u64) {
        self.add(Counter::MessagesOut, messages);
        self.add(Counter::BytesOut, bytes);
    }

    /// A command was answered with `{"op":"error","code":code}`.
    ///
    /// `code` is one of [`ERROR_CODES`] (`ErrorCode::as_str()`); anything
    /// else is a bug: it trips a debug assertion and counts as `internal`.
    #[inline]
    pub fn count_error(&self, code: &str) {
        if self.disabled {
            return;
        }
        let index = match error_code_index(code) {
            Some(index) => index,
            None => {
                debug_assert!(false, "unknown protocol error code {code:?}");
                ERROR_CODES.len() - 1
            }
        };
        let cell = &self.errors_by_code[index];
        cell.set(cell.get().wrapping_add(1));
    }

    /// A low-priority message was dropped for lack of outbox room.
    pub fn count_dropped_low(&self) {
        self.add(Counter::DroppedLow, 1);
    }

    /// A silent connection was closed with 1001.
    pub fn count_stale_closed(&self) {
        self.add(Counter::StaleClosed, 1);
    }

    /// A slow consumer was closed with 1008.
    pub fn count_slow_consumer_closed(&self) {
        self.add(Counter::SlowConsumersClosed, 1);
    }

    /// A WebSocket upgrade completed.
    pub fn count_connection_opened(&self) {
        self.add(Counter::ConnectionsOpened, 1);
    }

    /// A WebSocket connection ended.
    pub fn count_connection_closed(&self) {
        self.add(Counter::ConnectionsClosed, 1);
    }

    /// A connection failed or timed out before its upgrade completed.
    pub fn count_handshake_failure(&self) {
        self.add(Counter::HandshakeFailures, 1);
    }

    /// A connection was refused over its IP's new-connection budget.
    pub fn count_refused_ip_rate(&self) {
        self.add(Counter::RefusedIpRate, 1);
    }

    /// A connection was closed over its user's connection limit.
    pub fn count_refused_user_limit(&self) {
        self.add(Counter::RefusedUserLimit, 1);
    }

    /// Live connections on this shard (also raises the peak).
    pub fn set_connections(&self, connections: u64) {
        self.set_gauge(Gauge::Connections, connections);
    }

    /// Overrides this shard's connection peak (normally `set_connections` keeps it).
    pub fn set_connections_peak(&self, peak: u64) {
        self.set_gauge(Gauge::ConnectionsPeak, peak);
    }

    /// Messages waiting in this shard's outboxes.
    pub fn set_outbox_queued_msgs(&self, messages: u64) {
        self.set_gauge(Gauge::OutboxQueuedMsgs, messages);
    }

    /// Bytes waiting in this shard's outboxes.
    pub fn set_outbox_queued_bytes(&self, bytes: u64) {
        self.set_gauge(Gauge::OutboxQueuedBytes, bytes);
    }

    /// Messages in the mailboxes this shard is home to.
    pub fn set_mailbox_msgs(&self, messages: u64) {
        self.set_gauge(Gauge::MailboxMsgs, messages);
    }

    /// Messages this shard holds for scheduled delivery.
    pub fn set_scheduled_msgs(&self, messages: u64) {
        self.set_gauge(Gauge::ScheduledMsgs, messages);
    }

    /// Messages this shard waits to see acknowledged.
    pub fn set_pending_acks(&self, messages: u64) {
        self.set_gauge(Gauge::PendingAcks, messages);
    }

    /// Messages in this shard's dead-letter queue.
    pub fn set_dlq_msgs(&self, messages: u64) {
        self.set_gauge(Gauge::DlqMsgs, messages);
    }

    /// Connections of this shard resting in hibernation.
    pub fn set_connections_hibernated(&self, connections: u64) {
        self.set_gauge(Gauge::ConnectionsHibernated, connections);
    }

    /// Sockets in this shard's readiness epoll set.
    pub fn set_readiness_sockets(&self, sockets: u64) {
        self.set_gauge(Gauge::ReadinessSockets, sockets);
    }

    /// The current value of a counter.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter.index()].get()
    }

    /// The current value of a gauge.
    pub fn gauge(&self, gauge: Gauge) -> u64 {
        self.gauges[gauge.index()].get()
    }

    /// An owned copy of every figure (histograms cloned) that can be sent
    /// to another shard. Nothing is reset: histograms and counters are
    /// cumulative, and [`Rates::between`] takes the differences.
    pub fn snapshot(&self, shard: usize) -> ShardSnapshot {
        ShardSnapshot {
            shard,
            counters: self.counters.each_ref().map(Cell::get),
            errors_by_code: self.errors_by_code.each_ref().map(Cell::get),
            gauges: self.gauges.each_ref().map(Cell::get),
            latencies: self
                .latencies
                .each_ref()
                .map(|histogram| histogram.borrow().clone()),
        }
    }
}

/// One shard's figures at one instant: owned, `Send`, cheap to merge.
#[derive(Clone, Debug)]
pub struct ShardSnapshot {
    /// The shard (mesh peer id) the figures come from.
    pub shard: usize,
    counters: [u64; Counter::COUNT],
    errors_by_code: [u64; ERROR_CODES.len()],
    gauges: [u64; Gauge::COUNT],
    latencies: [LatencyHistogram; Latency::COUNT],
}

impl ShardSnapshot {
    /// A snapshot with every figure zero.
    pub fn empty(shard: usize) -> Self {
        ShardSnapshot {
            shard,
            counters: [0; Counter::COUNT],
            errors_by_code: [0; ERROR_CODES.len()],
            gauges: [0; Gauge::COUNT],
            latencies: Default::default(),
        }
    }

    /// A counter's value.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter.index()]
    }

    /// A gauge's value.
    pub fn gauge(&self, gauge: Gauge) -> u64 {
        self.gauges[gauge.index()]
    }

    /// Errors answered with `code` (0 for a code not in [`ERROR_CODES`]).
    pub fn errors_with_code(&self, code: &str) -> u64 {
        error_code_index(code).map_or(0, |index| self.errors_by_code[index])
    }

    /// Errors answered, all codes together.
    pub fn errors_total(&self) -> u64 {
        self.errors_by_code
            .iter()
            .fold(0, |sum, &count| sum.wrapping_add(count))
    }

    /// Errors per code, in [`ERROR_CODES`] order.
    pub fn errors_by_code(&self) -> &[u64; ERROR_CODES.len()] {
        &self.errors_by_code
    }

    /// One latency histogram.
    pub fn latency(&self, latency: Latency) -> &LatencyHistogram {
        &self.latencies[latency.index()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send + 'static>() {}

    #[test]
    fn snapshots_cross_threads() {
        assert_send::<ShardSnapshot>();
        assert_send::<Aggregate>();
        assert_send::<Rates>();
        let metrics = ShardMetrics::new();
        metrics.count_message_in(10);
        let snapshot = metrics.snapshot(3);
        let joined = std::thread::spawn(move || snapshot.counter(Counter::MessagesIn)).join();
        assert_eq!(joined.ok(), Some(1));
    }

    #[test]
    fn enum_tables_match_their_indices() {
        for (position, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(counter.index(), position, "{counter:?}");
        }
        for (position, gauge) in Gauge::ALL.iter().enumerate() {
            assert_eq!(gauge.index(), position, "{gauge:?}");
        }
        for (position, latency) in Latency::ALL.iter().enumerate() {
            assert_eq!(latency.index(), position, "{latency:?}");
        }
    }

    #[test]
    fn counters_and_errors_accumulate() {
        let metrics = ShardMetrics::new();
        metrics.count_message_in(100);
        metrics.count_message_in(50);
        metrics.count_message_out(7);
        metrics.count_messages_out(3, 30);
        metrics.count_error("bad_json");
        metrics.count_error("bad_json");
        metrics.count_error("rate_limited");
        metrics.count_dropped_low();
        metrics.count_stale_closed();
        metrics.count_slow_consumer_closed();
        metrics.count_connection_opened();
        metrics.count_connection_closed();
        metrics.count_handshake_failure();

        let snapshot = metrics.snapshot(0);
        assert_eq!(snapshot.counter(Counter::MessagesIn), 2);
        assert_eq!(snapshot.counter(Counter::BytesIn), 150);
        assert_eq!(snapshot.counter(Counter::MessagesOut), 4);
        assert_eq!(snapshot.counter(Counter::BytesOut), 37);
        assert_eq!(snapshot.errors_with_code("bad_json"), 2);
        assert_eq!(snapshot.errors_with_code("rate_limited"), 1);
        assert_eq!(snapshot.errors_with_code("forbidden"), 0);
        assert_eq!(snapshot.errors_total(), 3);
        for counter in [
            Counter::DroppedLow,
            Counter::StaleClosed,
            Counter::SlowConsumersClosed,
            Counter::ConnectionsOpened,
            Counter::ConnectionsClosed,
            Counter::HandshakeFailures,
        ] {
            assert_eq!(snapshot.counter(counter), 1, "{counter:?}");
        }
    }

    #[test]
    fn every_protocol_error_code_has_a_slot() {
        let metrics = ShardMetrics::new();
        for code in ERROR_CODES {
            metrics.count_error(code);
        }
        let snapshot = metrics.snapshot(0);
        assert_eq!(snapshot.errors_total(), ERROR_CODES.len() as u64);
        assert!(snapshot.errors_by_code().iter().all(|&count| count == 1));
    }

    #[test]
    fn connections_gauge_raises_the_peak_only_upwards() {
        let metrics = ShardMetrics::new();
        metrics.set_connections(5);
        metrics.set_connections(12);
        metrics.set_connections(3);
        assert_eq!(metrics.gauge(Gauge::Connections), 3);
        assert_eq!(metrics.gauge(Gauge::ConnectionsPeak), 12);
        metrics.set_connections_peak(20);
        assert_eq!(metrics.gauge(Gauge::ConnectionsPeak), 20);
    }

    #[test]
    fn gauges_are_plain_settable_levels() {
        let metrics = ShardMetrics::new();
        metrics.set_outbox_queued_msgs(9);
        metrics.set_outbox_queued_bytes(900);
        metrics.set_mailbox_msgs(4);
        metrics.set_scheduled_msgs(2);
        metrics.set_pending_acks(1);
        metrics.set_dlq_msgs(8);
        metrics.set_mailbox_msgs(3);
        let snapshot = metrics.snapshot(0);
        assert_eq!(snapshot.gauge(Gauge::OutboxQueuedMsgs), 9);
        assert_eq!(snapshot.gauge(Gauge::OutboxQueuedBytes), 900);
        assert_eq!(snapshot.gauge(Gauge::MailboxMsgs), 3);
        assert_eq!(snapshot.gauge(Gauge::ScheduledMsgs), 2);
        assert_eq!(snapshot.gauge(Gauge::PendingAcks), 1);
        assert_eq!(snapshot.gauge(Gauge::DlqMsgs), 8);
    }

    #[test]
    fn snapshot_copies_histograms_without_resetting_them() {
        let metrics = ShardMetrics::new();
        metrics.record_delivery_latency_us(250);
        metrics.record_ping_rtt_us(1_000);
        metrics.record_handshake_us(5_000);
        let first = metrics.snapshot(1);
        metrics.record_delivery_latency_us(300);
        let second = metrics.snapshot(1);
        assert_eq!(first.shard, 1);
        assert_eq!(first.latency(Latency::Delivery).count(), 1);
        assert_eq!(second.latency(Latency::Delivery).count(), 2);
        assert_eq!(second.latency(Latency::PingRtt).sum_us(), 1_000);
        assert_eq!(second.latency(Latency::Handshake).sum_us(), 5_000);
    }

    #[test]
    fn dashboard_is_embedded() {
        assert!(DASHBOARD_HTML.contains("/metrics.json"));
        assert!(!DASHBOARD_HTML.contains("http://") && !DASHBOARD_HTML.contains("https://"));
    }
}
