//! Alert rules, sans-IO: thresholds compared with the latest figures once
//! per metrics interval. [`AlertState::evaluate`] returns what changed (an
//! alert fired or cleared) so the caller logs warn on fire and info on
//! clear; [`AlertState::active`] lists what is firing for the exporters.
//!
//! An alert fires when its value goes above the threshold and clears when
//! it falls to `clear_ratio` × threshold or below, so a value hovering at
//! the threshold does not flap. Latency alerts read the delivery latency of
//! the last interval only; an interval without deliveries has no latency
//! problem and clears them. A resource figure that could not be read leaves
//! its alert as it was.

use std::fmt;

use super::{Aggregate, Gauge, Latency, Rates};
use crate::metrics::resources::Resources;

/// The conditions watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// Delivery latency P95 over the last interval, in ms.
    LatencyP95,
    /// Delivery latency P99 over the last interval, in ms.
    LatencyP99,
    /// Process CPU as a share of the machine, in %.
    Cpu,
    /// System memory in use, in %.
    Memory,
    /// Errors answered per message received over the last interval (ratio).
    ErrorRate,
    /// Messages waiting in outboxes, all shards.
    OutboxQueueDepth,
    /// Messages waiting in offline mailboxes, all shards.
    MailboxQueueDepth,
}

impl AlertKind {
    /// How many kinds there are.
    pub const COUNT: usize = 7;
    /// Every kind, in the order alerts are evaluated and listed.
    pub const ALL: [AlertKind; AlertKind::COUNT] = [
        AlertKind::LatencyP95,
        AlertKind::LatencyP99,
        AlertKind::Cpu,
        AlertKind::Memory,
        AlertKind::ErrorRate,
        AlertKind::OutboxQueueDepth,
        AlertKind::MailboxQueueDepth,
    ];

    /// The stable name used in logs, JSON and Prometheus labels.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::LatencyP95 => "latency_p95",
            AlertKind::LatencyP99 => "latency_p99",
            AlertKind::Cpu => "cpu",
            AlertKind::Memory => "memory",
            AlertKind::ErrorRate => "error_rate",
            AlertKind::OutboxQueueDepth => "outbox_queue_depth",
            AlertKind::MailboxQueueDepth => "mailbox_queue_depth",
        }
    }

    /// The unit of the alert's value and threshold.
    pub fn unit(self) -> &'static str {
        match self {
            AlertKind::LatencyP95 | AlertKind::LatencyP99 => "ms",
            AlertKind::Cpu | AlertKind::Memory => "percent",
            AlertKind::ErrorRate => "ratio",
            AlertKind::OutboxQueueDepth | AlertKind::MailboxQueueDepth => "messages",
        }
    }

    /// What the alert means, for people reading logs or the dashboard.
    pub fn description(self) -> &'static str {
        match self {
            AlertKind::LatencyP95 => "delivery latency P95 is high",
            AlertKind::LatencyP99 => "delivery latency P99 is high",
            AlertKind::Cpu => "process CPU use is high",
            AlertKind::Memory => "system memory use is high",
            AlertKind::ErrorRate => "error rate is high",
            AlertKind::OutboxQueueDepth => "outbox queues are deep",
            AlertKind::MailboxQueueDepth => "offline mailboxes are deep",
        }
    }

    /// A value of this kind for people: `150.2 ms`, `85.0%`, `1200 messages`.
    pub fn format_value(self, value: f64) -> String {
        match self {
            AlertKind::LatencyP95 | AlertKind::LatencyP99 => format!("{value:.1} ms"),
            AlertKind::Cpu | AlertKind::Memory => format!("{value:.1}%"),
            AlertKind::ErrorRate => format!("{:.2}%", value * 100.0),
            AlertKind::OutboxQueueDepth | AlertKind::MailboxQueueDepth => {
                format!("{value:.0} messages")
            }
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The thresholds, each in the unit of its name. An alert fires above its
/// threshold; defaults are the original design's.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertThresholds {
    pub latency_p95_max_ms: f64,
    pub latency_p99_max_ms: f64,
    /// Process CPU as a share of all CPUs.
    pub cpu_max_percent: f64,
    /// System memory used, (total − available) / total.
    pub memory_max_percent: f64,
    /// Errors / messages received; 0.05 is 5%.
    pub error_rate_max: f64,
    /// Applies to outbox and mailbox depth alike.
    pub queue_depth_max_msgs: u64,
    /// An active alert clears at or below `clear_ratio` × threshold (0..=1).
    pub clear_ratio: f64,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        AlertThresholds {
            latency_p95_max_ms: 100.0,
            latency_p99_max_ms: 200.0,
            cpu_max_percent: 80.0,
            memory_max_percent: 85.0,
            error_rate_max: 0.05,
            queue_depth_max_msgs: 1_000,
            clear_ratio: 0.9,
        }
    }
}

impl AlertThresholds {
    /// The threshold of one kind, in its unit.
    pub fn threshold(&self, kind: AlertKind) -> f64 {
        match kind {
            AlertKind::LatencyP95 => self.latency_p95_max_ms,
            AlertKind::LatencyP99 => self.latency_p99_max_ms,
            AlertKind::Cpu => self.cpu_max_percent,
            AlertKind::Memory => self.memory_max_percent,
            AlertKind::ErrorRate => self.error_rate_max,
            AlertKind::OutboxQueueDepth | AlertKind::MailboxQueueDepth => {
                self.queue_depth_max_msgs as f64
            }
        }
    }
}

/// An alert that is firing.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveAlert {
    pub kind: AlertKind,
    /// When it fired (the `now_unix_ms` of that evaluation).
    pub since_unix_ms: u64,
    /// The latest value seen, in the kind's unit.
    pub value: f64,
    pub threshold: f64,
}

impl fmt::Display for ActiveAlert {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "alert {}: {} ({} > {})",
            self.kind.name(),
            self.kind.description(),
            self.kind.format_value(self.value),
            self.kind.format_value(self.threshold)
        )
    }
}

/// What one evaluation changed.
#[derive(Clone, Debug, PartialEq)]
pub enum AlertChange {
    /// Went above its threshold (log at warn).
    Fired(ActiveAlert),
    /// Went back down, or its condition has no data any more (log at info).
    Cleared {
        alert: ActiveAlert,
        /// The value that cleared it; `None` when the interval had no samples.
        value: Option<f64>,
        cleared_at_unix_ms: u64,
    },
}

impl fmt::Display for AlertChange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlertChange::Fired(alert) => write!(formatter, "{alert} fired"),
            AlertChange::Cleared {
                alert,
                value,
                cleared_at_unix_ms,
            } => {
                let active_s = cleared_at_unix_ms.saturating_sub(alert.since_unix_ms) as f64 / 1e3;
                write!(
                    formatter,
                    "alert {} cleared after {active_s:.1} s",
                    alert.kind.name()
                )?;
                match value {
                    Some(value) => write!(
                        formatter,
                        " ({}, threshold {})",
                        alert.kind.format_value(*value),
                        alert.kind.format_value(alert.threshold)
                    ),
                    None => write!(formatter, " (no samples)"),
                }
            }
        }
    }
}

/// What a rule sees for one kind in one evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Observation {
    Value(f64),
    /// Nothing to measure (no deliveries): clears an active alert.
    NoSamples,
    /// The source could not be read: leaves the alert as it is.
    Unknown,
}

/// Which alerts are firing; owned by whoever evaluates (one place).
#[derive(Clone, Debug, Default)]
pub struct AlertState {
    thresholds: AlertThresholds,
    active: [Option<ActiveAlert>; AlertKind::COUNT],
}

impl AlertState {
    /// No alert active.
    pub fn new(thresholds: AlertThresholds) -> Self {
        AlertState {
            thresholds,
            active: Default::default(),
        }
    }

    /// The thresholds in force.
    pub fn thresholds(&self) -> &AlertThresholds {
        &self.thresholds
    }

    /// Compares the latest figures with the thresholds; returns the alerts
    /// that fired or cleared, in `AlertKind::ALL` order.
    pub fn evaluate(
        &mut self,
        aggregate: &Aggregate,
        rates: &Rates,
        resources: &Resources,
        now_unix_ms: u64,
    ) -> Vec<AlertChange> {
        let mut changes = Vec::new();
        for kind in AlertKind::ALL {
            let observation = observe(kind, aggregate, rates, resources);
            if let Some(change) = self.apply(kind, observation, now_unix_ms) {
                changes.push(change);
            }
        }
        changes
    }

    /// The alerts firing now, in `AlertKind::ALL` order.
    pub fn active(&self) -> Vec<ActiveAlert> {
        self.active.iter().flatten().cloned().collect()
    }

    fn apply(
        &mut self,
        kind: AlertKind,
        observation: Observation,
        now_unix_ms: u64,
    ) -> Option<AlertChange> {
        let threshold = self.thresholds.threshold(kind);
        let clear_at_or_below = threshold * self.thresholds.clear_ratio.clamp(0.0, 1.0);
        let slot = &mut self.active[kind.index()];
        match (slot.as_mut(), observation) {
            (_, Observation::Unknown) => None,
            (None, Observation::NoSamples) => None,
            (None, Observation::Value(value)) => {
                if value > threshold {
                    let alert = ActiveAlert {
                        kind,
                        since_unix_ms: now_unix_ms,
                        value,
                        threshold,
                    };
                    *slot = Some(alert.clone());
                    Some(AlertChange::Fired(alert))
                } else {
                    None
                }
            }
            (Some(alert), Observation::Value(value)) if value > clear_at_or_below => {
                alert.value = value;
                None
            }
            (Some(_), Observation::Value(_) | Observation::NoSamples) => {
                let value = match observation {
                    Observation::Value(value) => Some(value),
                    _ => None,
                };
                slot.take().map(|alert| AlertChange::Cleared {
                    alert,
                    value,
                    cleared_at_unix_ms: now_unix_ms,
                })
            }
        }
    }
}

fn observe(
    kind: AlertKind,
    aggregate: &Aggregate,
    rates: &Rates,
    resources: &Resources,
) -> Observation {
    let known = |value: Option<f64>| value.map_or(Observation::Unknown, Observation::Value);
    let recent_delivery = rates.recent_latency(Latency::Delivery);
    let latency_ms = |value_us: u64| {
        if recent_delivery.count == 0 {
            Observation::NoSamples
        } else {
            Observation::Value(value_us as f64 / 1_000.0)
        }
    };
    match kind {
        AlertKind::LatencyP95 => latency_ms(recent_delivery.p95_us),
        AlertKind::LatencyP99 => latency_ms(recent_delivery.p99_us),
        AlertKind::Cpu => known(resources.cpu_percent),
        AlertKind::Memory => known(resources.mem_used_percent),
        AlertKind::ErrorRate => Observation::Value(rates.error_rate),
        AlertKind::OutboxQueueDepth => {
            Observation::Value(aggregate.gauge(Gauge::OutboxQueuedMsgs) as f64)
        }
        AlertKind::MailboxQueueDepth => {
            Observation::Value(aggregate.gauge(Gauge::MailboxMsgs) as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::ShardMetrics;

    /// An aggregate and the rates of one second in which `deliveries`
    /// messages took `latency_us` each.
    fn interval(deliveries: u64, latency_us: u64, outbox_msgs: u64) -> (Aggregate, Rates) {
        let metrics = ShardMetrics::new();
        for _ in 0..deliveries {
            metrics.count_message_in(10);
            metrics.record_delivery_latency_us(latency_us);
        }
        metrics.set_outbox_queued_msgs(outbox_msgs);
        let aggregate = Aggregate::merge(vec![metrics.snapshot(0)]);
        let rates = Rates::between(&Aggregate::default(), &aggregate, Duration::from_secs(1));
        (aggregate, rates)
    }

    fn healthy_resources() -> Resources {
        Resources {
            cpu_percent: Some(10.0),
            mem_used_percent: Some(40.0),
            cpus: 2,
            ..Resources::default()
        }
    }

    #[test]
    fn default_thresholds_are_the_designs() {
        let thresholds = AlertThresholds::default();
        assert_eq!(thresholds.threshold(AlertKind::LatencyP95), 100.0);
        assert_eq!(thresholds.threshold(AlertKind::LatencyP99), 200.0);
        assert_eq!(thresholds.threshold(AlertKind::Cpu), 80.0);
        assert_eq!(thresholds.threshold(AlertKind::Memory), 85.0);
        assert_eq!(thresholds.threshold(AlertKind::ErrorRate), 0.05);
        assert_eq!(thresholds.threshold(AlertKind::OutboxQueueDepth), 1000.0);
        assert_eq!(thresholds.threshold(AlertKind::MailboxQueueDepth), 1000.0);
    }

    #[test]
    fn log_lines_read_naturally() {
        let alert = ActiveAlert {
            kind: AlertKind::ErrorRate,
            since_unix_ms: 1_000,
            value: 0.07,
            threshold: 0.05,
        };
        assert_eq!(
            AlertChange::Fired(alert.clone()).to_string(),
            "alert error_rate: error rate is high (7.00% > 5.00%) fired"
        );
        let cleared = AlertChange::Cleared {
            alert,
            value: Some(0.01),
            cleared_at_unix_ms: 61_000,
        };
        assert_eq!(
            cleared.to_string(),
            "alert error_rate cleared after 60.0 s (1.00%, threshold 5.00%)"
        );
        assert_eq!(
            AlertKind::OutboxQueueDepth.format_value(1500.0),
            "1500 messages"
        );
        assert_eq!(AlertKind::LatencyP99.format_value(250.04), "250.0 ms");
        assert_eq!(AlertKind::Memory.format_value(90.0), "90.0%");
    }

    #[test]
    fn healthy_figures_fire_nothing() {
        let mut state = AlertState::default();
        let (aggregate, rates) = interval(100, 2_000, 10);
        assert!(state
            .evaluate(&aggregate, &rates, &healthy_resources(), 1_000)
            .is_empty());
        assert!(state.active().is_empty());
    }

    #[test]
    fn latency_fires_once_then_clears() {
        let mut state = AlertState::default();
        let (slow, slow_rates) = interval(100, 150_000, 0);
        let changes = state.evaluate(&slow, &slow_rates, &healthy_resources(), 1_000);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let AlertChange::Fired(fired) = &changes[0] else {
            panic!("expected a fired alert: {changes:?}");
        };
        assert_eq!(fired.kind, AlertKind::LatencyP95);
        assert_eq!(fired.threshold, 100.0);
        assert!((fired.value - 150.0).abs() < 0.2, "{fired:?}");
        assert!(changes[0].to_string().contains("latency_p95"));

        // Still slow: no new change, the value is refreshed.
        let (slower, slower_rates) = interval(100, 180_000, 0);
        assert!(state
            .evaluate(&slower, &slower_rates, &healthy_resources(), 2_000)
            .is_empty());
        let active = state.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].since_unix_ms, 1_000);
        assert!((active[0].value - 180.0).abs() < 0.2);

        // P99 crosses too.
        let (slowest, slowest_rates) = interval(100, 250_000, 0);
        let changes = state.evaluate(&slowest, &slowest_rates, &healthy_resources(), 3_000);
        assert!(
            matches!(&changes[..], [AlertChange::Fired(alert)] if alert.kind == AlertKind::LatencyP99)
        );

        let (fast, fast_rates) = interval(100, 1_000, 0);
        let changes = state.evaluate(&fast, &fast_rates, &healthy_resources(), 4_000);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes
            .iter()
            .all(|change| matches!(change, AlertChange::Cleared { .. })));
        assert!(
            changes[0].to_string().contains("cleared after 3.0 s"),
            "{}",
            changes[0]
        );
        assert!(state.active().is_empty());
    }

    #[test]
    fn hysteresis_keeps_an_alert_near_its_threshold() {
        let mut state = AlertState::default();
        let (aggregate, rates) = interval(0, 0, 0);
        let mut resources = healthy_resources();
        resources.cpu_percent = Some(85.0);
        assert_eq!(state.evaluate(&aggregate, &rates, &resources, 0).len(), 1);
        resources.cpu_percent = Some(75.0);
        assert!(state.evaluate(&aggregate, &rates, &resources, 1).is_empty());
        resources.cpu_percent = Some(72.0);
        let changes = state.evaluate(&aggregate, &rates, &resources, 2);
        assert!(matches!(
            &changes[..],
            [AlertChange::Cleared { value: Some(value), .. }] if *value == 72.0
        ));
    }

    #[test]
    fn unknown_resources_hold_and_no_deliveries_clear() {
        let mut state = AlertState::default();
        let (slow, slow_rates) = interval(10, 500_000, 0);
        let mut resources = healthy_resources();
        resources.mem_used_percent = Some(90.0);
        let fired = state.evaluate(&slow, &slow_rates, &resources, 0);
        assert_eq!(fired.len(), 3, "{fired:?}");

        // Memory unreadable: stays active. No deliveries: latency clears.
        resources.mem_used_percent = None;
        let (idle, idle_rates) = interval(0, 0, 0);
        let changes = state.evaluate(&idle, &idle_rates, &resources, 1_000);
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(changes
            .iter()
            .all(|change| matches!(change, AlertChange::Cleared { value: None, .. })));
        assert!(changes[0].to_string().ends_with("(no samples)"));
        let active = state.active();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].kind, AlertKind::Memory);
    }

    #[test]
    fn error_rate_and_queue_depths() {
        let mut state = AlertState::new(AlertThresholds {
            queue_depth_max_msgs: 50,
            ..AlertThresholds::default()
        });
        let metrics = ShardMetrics::new();
        for _ in 0..100 {
            metrics.count_message_in(1);
        }
        for _ in 0..6 {
            metrics.count_error("bad_json");
        }
        metrics.set_outbox_queued_msgs(51);
        metrics.set_mailbox_msgs(60);
        let aggregate = Aggregate::merge(vec![metrics.snapshot(0)]);
        let rates = Rates::between(&Aggregate::default(), &aggregate, Duration::from_secs(1));
        let changes = state.evaluate(&aggregate, &rates, &healthy_resources(), 7);
        let fired: Vec<AlertKind> = changes
            .iter()
            .filter_map(|change| match change {
                AlertChange::Fired(alert) => Some(alert.kind),
                AlertChange::Cleared { .. } => None,
            })
            .collect();
        assert_eq!(
            fired,
            vec![
                AlertKind::ErrorRate,
                AlertKind::OutboxQueueDepth,
                AlertKind::MailboxQueueDepth
            ]
        );
        assert_eq!(state.active()[0].threshold, 0.05);
        assert_eq!(state.active()[1].value, 51.0);
    }
}
