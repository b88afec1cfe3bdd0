//! Observability on a shard: its `ShardMetrics` (shard-local, no atomics),
//! snapshots gathered over the mesh on demand, and, on shard 0, the
//! interval task that computes rates, evaluates alerts and appends the
//! export file. Resource figures (procfs) come from the sampler thread the
//! server starts, so reading `/proc` never runs on a shard.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::timer::Timer;

use super::mesh::MeshMsg;
use super::messaging::unix_ms;
use super::ShardState;
use crate::metrics::alerts::{ActiveAlert, AlertChange, AlertState};
use crate::metrics::export::{self, Report};
use crate::metrics::resources::Resources;
use crate::metrics::{Aggregate, Rates, ShardSnapshot};

/// How long a metrics request waits for the other shards.
pub const METRICS_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The latest interval figures, computed by shard 0.
#[derive(Clone, Debug, Default)]
pub struct MetricsView {
    pub rates: Rates,
    pub resources: Resources,
    pub alerts: Vec<ActiveAlert>,
    /// The peak carried across intervals (process-wide).
    pub connections_peak: u64,
}

/// What the sampler thread shares with shard 0.
pub type SharedResources = Arc<Mutex<Resources>>;

/// Which export format an endpoint wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Prometheus,
    Json,
    Csv,
}

/// Shard 0's interval state.
pub(super) struct IntervalState {
    previous: Aggregate,
    previous_at: Instant,
    alerts: AlertState,
    view: MetricsView,
}

impl IntervalState {
    pub(super) fn new(alerts: AlertState, started_at: Instant) -> Self {
        IntervalState {
            previous: Aggregate::default(),
            previous_at: started_at,
            alerts,
            view: MetricsView::default(),
        }
    }
}

impl ShardState {
    /// This shard's figures now, gauges refreshed.
    pub(super) fn metrics_snapshot(&self) -> ShardSnapshot {
        let m = &self.metrics;
        let (mut queued_msgs, mut queued_bytes) = (0u64, 0u64);
        for handle in self.conns.borrow().values() {
            let outbox = handle.outbox.borrow();
            queued_msgs += outbox.len() as u64;
            queued_bytes += outbox.bytes() as u64;
        }
        m.set_connections(self.connection_count() as u64);
        m.set_connections_hibernated(self.hibernation.as_ref().map_or(0, |h| h.len()) as u64);
        m.set_readiness_sockets(ws_uring_readiness::registered_sockets() as u64);
        m.set_outbox_queued_msgs(queued_msgs);
        m.set_outbox_queued_bytes(queued_bytes);
        let r = self.reliable.borrow();
        m.set_mailbox_msgs(r.mailbox_total() as u64);
        m.set_scheduled_msgs(r.scheduled_len() as u64);
        m.set_pending_acks(r.pending_len() as u64);
        m.set_dlq_msgs(r.dlq().len() as u64);
        m.snapshot(self.id)
    }

    pub(super) fn answer_metrics_query(&self, from: usize, request_id: u64) {
        let snapshot = Box::new(self.metrics_snapshot());
        let view = self
            .interval
            .borrow()
            .as_ref()
            .map(|i| Box::new(i.view.clone()));
        self.to_shard(
            from,
            MeshMsg::MetricsReply {
                request_id,
                snapshot,
                view,
            },
        );
    }

    pub(super) fn collect_metrics_reply(
        &self,
        request_id: u64,
        snapshot: Box<ShardSnapshot>,
        view: Option<Box<MetricsView>>,
    ) {
        if let Some(tx) = self.metrics_waiters.borrow().get(&request_id) {
            let _ = tx.try_send((snapshot, view));
        }
    }

    /// Every shard's snapshot (and shard 0's interval view).
    async fn gather_metrics(&self) -> (Vec<ShardSnapshot>, MetricsView) {
        let from = self.id;
        let answers = self
            .ask_shards(
                &self.metrics_waiters,
                0..self.shard_count,
                METRICS_QUERY_TIMEOUT,
                |request_id| MeshMsg::MetricsQuery { from, request_id },
            )
            .await;
        let mut view = MetricsView::default();
        let mut snapshots = Vec::with_capacity(answers.len());
        for (snapshot, shard_view) in answers {
            snapshots.push(*snapshot);
            if let Some(v) = shard_view {
                view = *v;
            }
        }
        (snapshots, view)
    }

    /// The figures of every shard, rendered for an endpoint.
    pub async fn render_metrics(&self, format: ExportFormat) -> String {
        let (snapshots, view) = self.gather_metrics().await;
        let mut aggregate = Aggregate::merge(snapshots);
        aggregate.raise_connections_peak(view.connections_peak);
        let report = Report {
            aggregate: &aggregate,
            rates: &view.rates,
            resources: &view.resources,
            alerts: &view.alerts,
            uptime: self.started_at.elapsed(),
            shard_count: self.shard_count,
            now_unix_ms: unix_ms(),
        };
        match format {
            ExportFormat::Prometheus => export::prometheus(&report),
            ExportFormat::Json => export::json(&report),
            ExportFormat::Csv => export::csv(&report),
        }
    }

    /// Shard 0: every `metrics_interval_ms`, rates, resources, alerts, and
    /// the export file.
    pub(super) async fn run_metrics_interval(self: std::rc::Rc<Self>) {
        let period = Duration::from_millis(self.config.metrics_interval_ms);
        while !self.is_shutting_down() {
            Timer::new(period).await;
            let (snapshots, _) = self.gather_metrics().await;
            let now = Instant::now();
            let resources = self
                .resources
                .as_ref()
                .and_then(|r| r.lock().ok().map(|r| r.clone()))
                .unwrap_or_default();
            let mut interval_ref = self.interval.borrow_mut();
            let Some(interval) = interval_ref.as_mut() else {
                return;
            };
            let mut aggregate = Aggregate::merge(snapshots);
            aggregate.carry_peak_from(&interval.previous);
            let elapsed = now.saturating_duration_since(interval.previous_at);
            let rates = Rates::between(&interval.previous, &aggregate, elapsed);
            let now_ms = unix_ms();
            for change in interval
                .alerts
                .evaluate(&aggregate, &rates, &resources, now_ms)
            {
                match change {
                    AlertChange::Fired(_) => log::warn!("{change}"),
                    AlertChange::Cleared { .. } => log::info!("{change}"),
                }
            }
            let alerts = interval.alerts.active();
            if let Some(tx) = &self.export_tx {
                let report = Report {
                    aggregate: &aggregate,
                    rates: &rates,
                    resources: &resources,
                    alerts: &alerts,
                    uptime: self.started_at.elapsed(),
                    shard_count: self.shard_count,
                    now_unix_ms: now_ms,
                };
                let _ = tx.send(ExportLine {
                    json: export::json(&report),
                    csv: export::csv(&report),
                });
            }
            interval.view = MetricsView {
                rates,
                resources,
                alerts,
                connections_peak: aggregate.gauge(crate::metrics::Gauge::ConnectionsPeak),
            };
            interval.previous = aggregate;
            interval.previous_at = now;
        }
    }
}

impl ShardState {
    pub(super) fn answer_connections_query(&self, from: usize, request_id: u64) {
        let now = Instant::now();
        let connections = self
            .conns
            .borrow()
            .values()
            .map(|h| {
                let outbox = h.outbox.borrow();
                super::mesh::ConnectionView {
                    conn: h.id,
                    shard: self.id,
                    user: h.user.to_string(),
                    outbox_msgs: outbox.len() as u64,
                    outbox_bytes: outbox.bytes() as u64,
                    last_rtt_us: h.last_rtt_us(),
                    idle_ms: now.saturating_duration_since(h.last_rx()).as_millis() as u64,
                }
            })
            .collect();
        self.to_shard(
            from,
            MeshMsg::ConnectionsReply {
                request_id,
                connections,
            },
        );
    }

    /// Every shard's connections.
    pub async fn connection_views(&self) -> Vec<super::mesh::ConnectionView> {
        let from = self.id;
        self.ask_shards(
            &self.connections_waiters,
            0..self.shard_count,
            METRICS_QUERY_TIMEOUT,
            |request_id| MeshMsg::ConnectionsQuery { from, request_id },
        )
        .await
        .into_iter()
        .flatten()
        .collect()
    }
}

/// One interval's figures for the export file (`--metrics-export`).
#[derive(Debug, Clone)]
pub struct ExportLine {
    pub json: String,
    /// A header row and a data row (CRLF-terminated).
    pub csv: String,
}
