//! The figures of one [`Report`] rendered three ways: Prometheus text
//! exposition format 0.0.4 (`/metrics`), JSON (`/metrics.json`, what the
//! dashboard reads) and CSV (`/metrics.csv`). Pure functions over values:
//! the HTTP layer only picks one and sets [`PROMETHEUS_CONTENT_TYPE`],
//! [`JSON_CONTENT_TYPE`] or [`CSV_CONTENT_TYPE`].
//!
//! Latencies: Prometheus summaries carry the quantiles of the last metrics
//! interval (as `client_golang` summaries report a recent window, `NaN` when
//! the window is empty) with `_sum`/`_count` since start-up, in seconds. JSON
//! and CSV carry both the last interval (`recent`) and the whole run
//! (`total`), in microseconds.

use std::fmt::{self, Display};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::alerts::{ActiveAlert, AlertKind};
use super::latency::SUMMARY_QUANTILES;
use super::resources::Resources;
use super::{Aggregate, Counter, Gauge, Latency, LatencySummary, Rates, ERROR_CODES};

/// `Content-Type` of [`prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// `Content-Type` of [`json`]'s output.
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// `Content-Type` of [`csv`]'s output.
pub const CSV_CONTENT_TYPE: &str = "text/csv; charset=utf-8";
/// Version of the JSON layout below; raised when a field changes meaning or goes.
pub const JSON_SCHEMA_VERSION: u64 = 1;

/// Every input an export needs, borrowed from whoever holds the latest figures.
#[derive(Clone, Copy, Debug)]
pub struct Report<'a> {
    pub aggregate: &'a Aggregate,
    pub rates: &'a Rates,
    pub resources: &'a Resources,
    pub alerts: &'a [ActiveAlert],
    pub uptime: Duration,
    pub shard_count: usize,
    /// Wall-clock time of the figures (unix ms): alerts' `since_unix_ms` is
    /// on the same clock, so readers compute how long an alert has fired.
    pub now_unix_ms: u64,
}

/// The server's name and version as `welcome` reports it.
fn server_name() -> String {
    format!("ws-uring/{}", env!("CARGO_PKG_VERSION"))
}

// ---------------------------------------------------------------- Prometheus

/// Prometheus text exposition format 0.0.4. Every name starts `wsuring_`;
/// counters end `_total`. Counters and gauges the shards keep are one series
/// per shard (label `shard`; add them up with `sum`), except
/// `wsuring_connections_peak`, which is the process-wide peak. Latencies are
/// summaries over all shards; alerts are `wsuring_alert_active{alert}` 0/1.
pub fn prometheus(report: &Report<'_>) -> String {
    let mut out = PrometheusText::default();
    let aggregate = report.aggregate;
    let version = env!("CARGO_PKG_VERSION");

    out.family("info", "gauge", "Build information; the value is always 1.");
    out.sample("info", &[("version", version)], 1u64);
    out.family(
        "uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    out.sample("uptime_seconds", &[], Float(report.uptime.as_secs_f64()));
    out.family(
        "shards",
        "gauge",
        "Shards (threads with their own event loop).",
    );
    out.sample("shards", &[], report.shard_count);

    for counter in Counter::ALL {
        let name = format!("{}_total", counter.name());
        out.family(&name, "counter", counter.help());
        for shard in &aggregate.shards {
            let shard_label = shard.shard.to_string();
            out.sample(&name, &[("shard", &shard_label)], shard.counter(counter));
        }
    }

    out.family(
        "errors_total",
        "counter",
        "Commands answered with an error event, by error code.",
    );
    for shard in &aggregate.shards {
        let shard_label = shard.shard.to_string();
        for (code, count) in ERROR_CODES.iter().zip(shard.errors_by_code()) {
            out.sample(
                "errors_total",
                &[("shard", &shard_label), ("code", code)],
                *count,
            );
        }
    }

    for gauge in Gauge::ALL {
        out.family(gauge.name(), "gauge", gauge.help());
        if gauge == Gauge::ConnectionsPeak {
            out.sample(gauge.name(), &[], aggregate.gauge(gauge));
            continue;
        }
        for shard in &aggregate.shards {
            let shard_label = shard.shard.to_string();
            out.sample(gauge.name(), &[("shard", &shard_label)], shard.gauge(gauge));
        }
    }

    for latency in Latency::ALL {
        let name = prometheus_latency_name(latency);
        let help = format!(
            "{} Quantiles over the last metrics interval; sum and count since start.",
            latency.help()
        );
        out.family(name, "summary", &help);
        let recent = report.rates.recent_latency(latency);
        for quantile in SUMMARY_QUANTILES {
            let value = if recent.count == 0 {
                f64::NAN
            } else {
                microseconds_to_seconds(recent.quantile_us(quantile))
            };
            out.sample(name, &[("quantile", &quantile.to_string())], Float(value));
        }
        let total = aggregate.latency(latency);
        out.sample(
            &format!("{name}_sum"),
            &[],
            Float(microseconds_to_seconds(total.sum_us())),
        );
        out.sample(&format!("{name}_count"), &[], total.count());
    }

    let rates = report.rates;
    let interval_gauges: [(&str, &str, f64); 6] = [
        (
            "messages_in_per_second",
            "Messages received per second over the last interval.",
            rates.messages_in_per_s,
        ),
        (
            "messages_out_per_second",
            "Messages written per second over the last interval.",
            rates.messages_out_per_s,
        ),
        (
            "bytes_in_per_second",
            "Payload bytes received per second over the last interval.",
            rates.bytes_in_per_s,
        ),
        (
            "bytes_out_per_second",
            "Payload bytes written per second over the last interval.",
            rates.bytes_out_per_s,
        ),
        (
            "errors_per_second",
            "Error events per second over the last interval.",
            rates.errors_per_s,
        ),
        (
            "error_ratio",
            "Error events per message received over the last interval.",
            rates.error_rate,
        ),
    ];
    for (name, help, value) in interval_gauges {
        out.family(name, "gauge", help);
        out.sample(name, &[], Float(value));
    }

    write_resources(&mut out, report.resources);

    out.family(
        "alert_active",
        "gauge",
        "1 while the alert is firing, 0 otherwise.",
    );
    for kind in AlertKind::ALL {
        let firing = report.alerts.iter().any(|alert| alert.kind == kind);
        out.sample("alert_active", &[("alert", kind.name())], u64::from(firing));
    }
    out.text
}

fn write_resources(out: &mut PrometheusText, resources: &Resources) {
    let bytes_as_float = |bytes: Option<u64>| bytes.map(|bytes| bytes as f64);
    let families: [(&str, &str, &str, Option<f64>); 14] = [
        (
            "cpus",
            "gauge",
            "CPUs online; CPU percentages are shares of them.",
            Some(resources.cpus as f64),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the process.",
            resources.cpu_seconds_total,
        ),
        (
            "process_cpu_percent",
            "gauge",
            "Process CPU use as a share of all CPUs, 0 to 100.",
            resources.cpu_percent,
        ),
        (
            "process_cpu_core_percent",
            "gauge",
            "Process CPU use where 100 is one core busy.",
            resources.cpu_percent_one_core,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident set size of the process.",
            bytes_as_float(resources.rss_bytes),
        ),
        (
            "process_threads",
            "gauge",
            "Threads of the process.",
            bytes_as_float(resources.threads),
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors of the process.",
            bytes_as_float(resources.open_fds),
        ),
        (
            "network_receive_bytes_total",
            "counter",
            "Bytes received on all interfaces of the network namespace, loopback included.",
            bytes_as_float(resources.net_rx_bytes),
        ),
        (
            "network_transmit_bytes_total",
            "counter",
            "Bytes sent on all interfaces of the network namespace, loopback included.",
            bytes_as_float(resources.net_tx_bytes),
        ),
        (
            "network_receive_bytes_per_second",
            "gauge",
            "Bytes received per second, all interfaces, since the previous sample.",
            resources.net_rx_bytes_per_s,
        ),
        (
            "network_transmit_bytes_per_second",
            "gauge",
            "Bytes sent per second, all interfaces, since the previous sample.",
            resources.net_tx_bytes_per_s,
        ),
        (
            "system_memory_total_bytes",
            "gauge",
            "Total usable RAM of the machine.",
            bytes_as_float(resources.mem_total_bytes),
        ),
        (
            "system_memory_available_bytes",
            "gauge",
            "RAM available for new work without swapping.",
            bytes_as_float(resources.mem_available_bytes),
        ),
        (
            "system_memory_used_percent",
            "gauge",
            "System memory in use, (total - available) / total, 0 to 100.",
            resources.mem_used_percent,
        ),
    ];
    for (name, kind, help, value) in families {
        // A figure that could not be read is left out, not reported as 0.
        if let Some(value) = value {
            out.family(name, kind, help);
            out.sample(name, &[], Float(value));
        }
    }
}

fn prometheus_latency_name(latency: Latency) -> &'static str {
    match latency {
        Latency::Delivery => "delivery_latency_seconds",
        Latency::PingRtt => "ping_rtt_seconds",
        Latency::Handshake => "handshake_duration_seconds",
    }
}

fn microseconds_to_seconds(microseconds: u64) -> f64 {
    microseconds as f64 / 1e6
}

/// A float in Prometheus spelling (`NaN`, `+Inf`, `-Inf`).
struct Float(f64);

impl Display for Float {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            value if value.is_nan() => formatter.write_str("NaN"),
            f64::INFINITY => formatter.write_str("+Inf"),
            f64::NEG_INFINITY => formatter.write_str("-Inf"),
            value => write!(formatter, "{value}"),
        }
    }
}

/// Builds exposition text; prefixes names and escapes as the format requires.
#[derive(Default)]
struct PrometheusText {
    text: String,
}

const PROMETHEUS_PREFIX: &str = "wsuring_";

impl PrometheusText {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.push_line(format_args!(
            "# HELP {PROMETHEUS_PREFIX}{name} {}",
            escape_help(help)
        ));
        self.push_line(format_args!("# TYPE {PROMETHEUS_PREFIX}{name} {kind}"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        let mut label_text = String::new();
        if !labels.is_empty() {
            label_text.push('{');
            for (position, (label, label_value)) in labels.iter().enumerate() {
                if position > 0 {
                    label_text.push(',');
                }
                label_text.push_str(label);
                label_text.push_str("=\"");
                label_text.push_str(&escape_label_value(label_value));
                label_text.push('"');
            }
            label_text.push('}');
        }
        self.push_line(format_args!(
            "{PROMETHEUS_PREFIX}{name}{label_text} {value}"
        ));
    }

    fn push_line(&mut self, line: fmt::Arguments<'_>) {
        use fmt::Write;
        // Writing into a String only fails if a Display impl fails; ours don't.
        let written = writeln!(self.text, "{line}");
        debug_assert!(written.is_ok());
    }
}

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Escapes `# HELP` text: backslash and line feed.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

// ---------------------------------------------------------------------- JSON

/// One JSON object with every figure. Fields are only ever added; a change
/// of meaning raises `schema`. Counts are integers, rates and percentages
/// floats, unreadable figures `null`.
///
/// ```text
/// {
///   "schema": 1,
///   "server": "ws-uring/0.1.0",
///   "generated_unix_ms": 1700000012500,  // Report::now_unix_ms
///   "uptime_s": 12.5,
///   "shards": 2,
///   "interval_s": 1.0,                 // what "rates" and "recent" cover
///   "counters": {                      // since start, all shards
///     "messages_in": 0, "messages_out": 0, "bytes_in": 0, "bytes_out": 0,
///     "dropped_low": 0, "stale_closed": 0, "slow_consumers_closed": 0,
///     "connections_opened": 0, "connections_closed": 0, "handshake_failures": 0
///   },
///   "errors": {
///     "total": 0,
///     "by_code": { "bad_json": 0, "bad_request": 0, "unknown_op": 0, "forbidden": 0,
///                  "no_members": 0, "too_large": 0, "rate_limited": 0,
///                  "overloaded": 0, "internal": 0 }
///   },
///   "gauges": {                        // now, all shards (peak: process-wide)
///     "connections": 0, "connections_peak": 0, "outbox_queued_msgs": 0,
///     "outbox_queued_bytes": 0, "mailbox_msgs": 0, "scheduled_msgs": 0,
///     "pending_acks": 0, "dlq_msgs": 0
///   },
///   "rates": {                         // over the last interval
///     "messages_in_per_s": 0.0, "messages_out_per_s": 0.0,
///     "bytes_in_per_s": 0.0, "bytes_out_per_s": 0.0,
///     "errors_per_s": 0.0, "error_rate": 0.0          // 0..1
///   },
///   "latency_us": {                    // microseconds, all shards merged
///     "delivery_latency": { "recent": SUMMARY, "total": SUMMARY },
///     "ping_rtt":         { "recent": SUMMARY, "total": SUMMARY },
///     "handshake":        { "recent": SUMMARY, "total": SUMMARY }
///   },                                 // SUMMARY = {"count","p50","p95","p99",
///                                      //   "p999","max": integers, "mean": float}
///   "resources": {
///     "cpus": 2, "cpu_percent": 12.5|null,            // share of all CPUs, 0..100
///     "cpu_percent_one_core": 25.0|null, "cpu_seconds_total": 3.2|null,
///     "rss_bytes": 1|null, "threads": 1|null, "open_fds": 1|null,
///     "net_rx_bytes": 1|null, "net_tx_bytes": 1|null,
///     "net_rx_bytes_per_s": 1.0|null, "net_tx_bytes_per_s": 1.0|null,
///     "mem_total_bytes": 1|null, "mem_available_bytes": 1|null,
///     "mem_used_percent": 1.0|null
///   },
///   "alerts": [                        // firing now, in a fixed kind order
///     { "name": "latency_p95", "description": "delivery latency P95 is high",
///       "unit": "ms", "value": 150.2, "threshold": 100.0,
///       "since_unix_ms": 1700000000000 }
///   ],
///   "per_shard": [                     // ordered by shard
///     { "shard": 0, "counters": {..as above..}, "errors_total": 0,
///       "gauges": {..as above; connections_peak is this shard's own..},
///       "delivery_latency_p99_us": 0 }  // since start
///   ]
/// }
/// ```
pub fn json_value(report: &Report<'_>) -> Value {
    let aggregate = report.aggregate;
    let rates = report.rates;
    let resources = report.resources;

    let mut latencies = Map::new();
    for latency in Latency::ALL {
        latencies.insert(
            latency.name().to_owned(),
            json!({
                "recent": summary_json(&rates.recent_latency(latency)),
                "total": summary_json(&aggregate.latency_summary(latency)),
            }),
        );
    }

    let per_shard: Vec<Value> = aggregate
        .shards
        .iter()
        .map(|shard| {
            json!({
                "shard": shard.shard,
                "counters": named_values(Counter::ALL.map(|c| (c.name(), shard.counter(c)))),
                "errors_total": shard.errors_total(),
                "gauges": named_values(Gauge::ALL.map(|g| (g.name(), shard.gauge(g)))),
                "delivery_latency_p99_us": shard.latency(Latency::Delivery).value_at_quantile_us(0.99),
            })
        })
        .collect();

    let alerts: Vec<Value> = report
        .alerts
        .iter()
        .map(|alert| {
            json!({
                "name": alert.kind.name(),
                "description": alert.kind.description(),
                "unit": alert.kind.unit(),
                "value": alert.value,
                "threshold": alert.threshold,
                "since_unix_ms": alert.since_unix_ms,
            })
        })
        .collect();

    json!({
        "schema": JSON_SCHEMA_VERSION,
        "server": server_name(),
        "generated_unix_ms": report.now_unix_ms,
        "uptime_s": report.uptime.as_secs_f64(),
        "shards": report.shard_count,
        "interval_s": rates.interval_s,
        "counters": named_values(Counter::ALL.map(|c| (c.name(), aggregate.counter(c)))),
        "errors": {
            "total": aggregate.errors_total(),
            "by_code": named_values(ERROR_CODES.iter().copied().zip(aggregate.errors_by_code().iter().copied())),
        },
        "gauges": named_values(Gauge::ALL.map(|g| (g.name(), aggregate.gauge(g)))),
        "rates": {
            "messages_in_per_s": rates.messages_in_per_s,
            "messages_out_per_s": rates.messages_out_per_s,
            "bytes_in_per_s": rates.bytes_in_per_s,
            "bytes_out_per_s": rates.bytes_out_per_s,
            "errors_per_s": rates.errors_per_s,
            "error_rate": rates.error_rate,
        },
        "latency_us": latencies,
        "resources": {
            "cpus": resources.cpus,
            "cpu_percent": resources.cpu_percent,
            "cpu_percent_one_core": resources.cpu_percent_one_core,
            "cpu_seconds_total": resources.cpu_seconds_total,
            "rss_bytes": resources.rss_bytes,
            "threads": resources.threads,
            "open_fds": resources.open_fds,
            "net_rx_bytes": resources.net_rx_bytes,
            "net_tx_bytes": resources.net_tx_bytes,
            "net_rx_bytes_per_s": resources.net_rx_bytes_per_s,
            "net_tx_bytes_per_s": resources.net_tx_bytes_per_s,
            "mem_total_bytes": resources.mem_total_bytes,
            "mem_available_bytes": resources.mem_available_bytes,
            "mem_used_percent": resources.mem_used_percent,
        },
        "alerts": alerts,
        "per_shard": per_shard,
    })
}

/// [`json_value`] as compact text.
pub fn json(report: &Report<'_>) -> String {
    json_value(report).to_string()
}

fn summary_json(summary: &LatencySummary) -> Value {
    json!({
        "count": summary.count,
        "p50": summary.p50_us,
        "p95": summary.p95_us,
        "p99": summary.p99_us,
        "p999": summary.p999_us,
        "max": summary.max_us,
        "mean": summary.mean_us,
    })
}

fn named_values<'n>(pairs: impl IntoIterator<Item = (&'n str, u64)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(name, value)| (name.to_owned(), Value::from(value)))
            .collect(),
    )
}

// ----------------------------------------------------------------------- CSV

/// A header row and one data row (RFC 4180, CRLF line ends), the same
/// figures as JSON without the per-shard detail. The columns and their
/// order are fixed by [`csv_columns`]: new ones are only appended. An
/// unreadable figure is an empty field; `alerts` lists the firing alert
/// names separated by `;`.
pub fn csv(report: &Report<'_>) -> String {
    let columns = csv_columns(report);
    let header: Vec<String> = columns.iter().map(|(name, _)| csv_field(name)).collect();
    let row: Vec<String> = columns.iter().map(|(_, value)| csv_field(value)).collect();
    format!("{}\r\n{}\r\n", header.join(","), row.join(","))
}

/// The CSV columns in order, as (name, value) pairs.
pub fn csv_columns(report: &Report<'_>) -> Vec<(String, String)> {
    let aggregate = report.aggregate;
    let rates = report.rates;
    let resources = report.resources;
    let mut columns: Vec<(String, String)> = Vec::with_capacity(128);
    let mut push = |name: String, value: String| columns.push((name, value));
    let optional = |value: Option<String>| value.unwrap_or_default();

    push("unix_ms".into(), report.now_unix_ms.to_string());
    push("uptime_s".into(), report.uptime.as_secs_f64().to_string());
    push("shards".into(), report.shard_count.to_string());
    push("interval_s".into(), rates.interval_s.to_string());
    for counter in Counter::ALL {
        push(
            counter.name().into(),
            aggregate.counter(counter).to_string(),
        );
    }
    push("errors_total".into(), aggregate.errors_total().to_string());
    for (code, count) in ERROR_CODES.iter().zip(aggregate.errors_by_code()) {
        push(format!("errors_{code}"), count.to_string());
    }
    for gauge in Gauge::ALL {
        push(gauge.name().into(), aggregate.gauge(gauge).to_string());
    }
    for (name, value) in [
        ("messages_in_per_s", rates.messages_in_per_s),
        ("messages_out_per_s", rates.messages_out_per_s),
        ("bytes_in_per_s", rates.bytes_in_per_s),
        ("bytes_out_per_s", rates.bytes_out_per_s),
        ("errors_per_s", rates.errors_per_s),
        ("error_rate", rates.error_rate),
    ] {
        push(name.into(), value.to_string());
    }
    for latency in Latency::ALL {
        for (window, summary) in [
            ("recent", rates.recent_latency(latency)),
            ("total", aggregate.latency_summary(latency)),
        ] {
            let prefix = format!("{}_{window}", latency.name());
            push(format!("{prefix}_count"), summary.count.to_string());
            push(format!("{prefix}_p50_us"), summary.p50_us.to_string());
            push(format!("{prefix}_p95_us"), summary.p95_us.to_string());
            push(format!("{prefix}_p99_us"), summary.p99_us.to_string());
            push(format!("{prefix}_p999_us"), summary.p999_us.to_string());
            push(format!("{prefix}_max_us"), summary.max_us.to_string());
            push(format!("{prefix}_mean_us"), summary.mean_us.to_string());
        }
    }
    let text = |value: Option<u64>| optional(value.map(|value| value.to_string()));
    let float = |value: Option<f64>| optional(value.map(|value| value.to_string()));
    push("cpus".into(), resources.cpus.to_string());
    push("cpu_percent".into(), float(resources.cpu_percent));
    push(
        "cpu_percent_one_core".into(),
        float(resources.cpu_percent_one_core),
    );
    push(
        "cpu_seconds_total".into(),
        float(resources.cpu_seconds_total),
    );
    push("rss_bytes".into(), text(resources.rss_bytes));
    push("threads".into(), text(resources.threads));
    push("open_fds".into(), text(resources.open_fds));
    push("net_rx_bytes".into(), text(resources.net_rx_bytes));
    push("net_tx_bytes".into(), text(resources.net_tx_bytes));
    push(
        "net_rx_bytes_per_s".into(),
        float(resources.net_rx_bytes_per_s),
    );
    push(
        "net_tx_bytes_per_s".into(),
        float(resources.net_tx_bytes_per_s),
    );
    push("mem_total_bytes".into(), text(resources.mem_total_bytes));
    push(
        "mem_available_bytes".into(),
        text(resources.mem_available_bytes),
    );
    push("mem_used_percent".into(), float(resources.mem_used_percent));
    push("alerts_active".into(), report.alerts.len().to_string());
    let alert_names: Vec<&str> = report
        .alerts
        .iter()
        .map(|alert| alert.kind.name())
        .collect();
    push("alerts".into(), alert_names.join(";"));
    columns
}

/// Quotes a field when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;
    use crate::metrics::alerts::{AlertState, AlertThresholds};
    use crate::metrics::ShardMetrics;

    /// Figures from two shards with traffic, errors, queues and one alert.
    struct Fixture {
        aggregate: Aggregate,
        rates: Rates,
        resources: Resources,
        alerts: Vec<ActiveAlert>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let shards: Vec<ShardMetrics> = (0..2).map(|_| ShardMetrics::new()).collect();
            for (index, metrics) in shards.iter().enumerate() {
                metrics.set_connections(10 + index as u64);
                metrics.set_outbox_queued_msgs(2_000);
                for _ in 0..100 {
                    metrics.count_message_in(64);
                    metrics.count_message_out(80);
                    metrics.record_delivery_latency_us(1_500);
                }
                metrics.record_ping_rtt_us(400);
                metrics.record_handshake_us(2_000);
                metrics.count_error("bad_json");
            }
            let previous = Aggregate::merge(
                shards
                    .iter()
                    .enumerate()
                    .map(|(i, m)| m.snapshot(i))
                    .collect(),
            );
            for metrics in &shards {
                for _ in 0..50 {
                    metrics.count_message_in(64);
                    metrics.record_delivery_latency_us(3_000);
                }
            }
            let aggregate = Aggregate::merge(
                shards
                    .iter()
                    .enumerate()
                    .map(|(i, m)| m.snapshot(i))
                    .collect(),
            );
            let rates = Rates::between(&previous, &aggregate, Duration::from_secs(1));
            let resources = Resources {
                cpu_percent: Some(42.5),
                cpu_percent_one_core: Some(85.0),
                cpus: 2,
                cpu_seconds_total: Some(3.25),
                rss_bytes: Some(50 << 20),
                threads: Some(4),
                open_fds: Some(30),
                net_rx_bytes: Some(1_000),
                net_tx_bytes: Some(2_000),
                net_rx_bytes_per_s: Some(10.0),
                net_tx_bytes_per_s: Some(20.0),
                mem_total_bytes: Some(8 << 30),
                mem_available_bytes: None,
                mem_used_percent: None,
            };
            let mut alert_state = AlertState::new(AlertThresholds::default());
            alert_state.evaluate(&aggregate, &rates, &resources, 1_700_000_000_000);
            Fixture {
                aggregate,
                rates,
                resources,
                alerts: alert_state.active(),
            }
        }

        fn report(&self) -> Report<'_> {
            Report {
                aggregate: &self.aggregate,
                rates: &self.rates,
                resources: &self.resources,
                alerts: &self.alerts,
                uptime: Duration::from_millis(12_500),
                shard_count: 2,
                now_unix_ms: 1_700_000_012_500,
            }
        }
    }

    // ----- a strict reader of the text exposition format, for the tests

    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: Labels,
        value: f64,
    }

    fn is_metric_name(name: &str) -> bool {
        let mut characters = name.chars();
        matches!(characters.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && characters.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn is_label_name(name: &str) -> bool {
        let mut characters = name.chars();
        matches!(characters.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && characters.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with("__")
    }

    fn parse_value(text: &str) -> Result<f64, String> {
        match text {
            "NaN" => Ok(f64::NAN),
            "+Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            _ if text
                .chars()
                .all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) =>
            {
                text.parse()
                    .map_err(|error| format!("bad value {text:?}: {error}"))
            }
            _ => Err(format!("bad value {text:?}")),
        }
    }

    type Labels = Vec<(String, String)>;

    /// Parses `{a="x",b="y"}` at the start of `text`; returns labels and the rest.
    fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
        let mut labels = Vec::new();
        let mut rest = text.strip_prefix('{').ok_or("labels must start with {")?;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                return Ok((labels, after));
            }
            let equals = rest.find('=').ok_or("label without =")?;
            let name = &rest[..equals];
            if !is_label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            if labels.iter().any(|(existing, _)| existing == name) {
                return Err(format!("label {name} given twice"));
            }
            rest = rest[equals + 1..]
                .strip_prefix('"')
                .ok_or("label value must be quoted")?;
            let mut value = String::new();
            let mut characters = rest.char_indices();
            let end = loop {
                match characters.next() {
                    None => return Err("unterminated label value".into()),
                    Some((index, '"')) => break index,
                    Some((_, '\\')) => match characters.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, '\n')) => return Err("raw line feed in label value".into()),
                    Some((_, character)) => value.push(character),
                }
            };
            labels.push((name.to_owned(), value));
            rest = &rest[end + 1..];
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
                if rest.starts_with('}') {
                    return Err("trailing comma in labels".into());
                }
            } else if !rest.starts_with('}') {
                return Err(format!("expected , or }} in labels at {rest:?}"));
            }
        }
    }

    /// Checks the grammar of format 0.0.4 strictly and returns the samples:
    /// every line is HELP, TYPE or a sample `name{labels} value` (no
    /// timestamps, no blank lines); HELP and TYPE at most once per family
    /// and before its samples; a family's samples contiguous and named for
    /// its type; no series twice.
    fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
        if !text.ends_with('\n') {
            return Err("text must end with a line feed".into());
        }
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped: HashSet<String> = HashSet::new();
        let mut finished_families: HashSet<String> = HashSet::new();
        let mut current_family: Option<String> = None;
        let mut seen_series: HashSet<String> = HashSet::new();
        let mut samples = Vec::new();

        for (number, line) in text.lines().enumerate() {
            let fail = |message: String| Err(format!("line {}: {message}: {line:?}", number + 1));
            if line.is_empty() {
                return fail("blank line".into());
            }
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                let keyword = parts.next().unwrap_or_default();
                let name = parts.next().unwrap_or_default().to_owned();
                let rest = parts.next().unwrap_or_default();
                if !is_metric_name(&name) {
                    return fail(format!("bad metric name {name:?}"));
                }
                if finished_families.contains(&name)
                    || samples
                        .iter()
                        .any(|s: &Sample| family_of(&s.name, &types) == name)
                {
                    return fail("HELP/TYPE after the family's samples".into());
                }
                if current_family.as_deref() != Some(name.as_str()) {
                    if let Some(previous) = current_family.take() {
                        finished_families.insert(previous);
                    }
                    current_family = Some(name.clone());
                }
                match keyword {
                    "HELP" => {
                        if !helped.insert(name) {
                            return fail("second HELP".into());
                        }
                        if rest.contains('\\')
                            && rest.replace("\\\\", "").replace("\\n", "").contains('\\')
                        {
                            return fail("bad escape in HELP".into());
                        }
                    }
                    "TYPE" => {
                        if !["counter", "gauge", "summary", "histogram", "untyped"].contains(&rest)
                        {
                            return fail(format!("bad type {rest:?}"));
                        }
                        if types.insert(name, rest.to_owned()).is_some() {
                            return fail("second TYPE".into());
                        }
                    }
                    _ => return fail("comment that is neither HELP nor TYPE".into()),
                }
                continue;
            }
            if line.starts_with('#') {
                return fail("malformed comment".into());
            }

            let name_end = line.find(['{', ' ']).ok_or("sample without value")?;
            let name = &line[..name_end];
            if !is_metric_name(name) {
                return fail(format!("bad metric name {name:?}"));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                match parse_labels(&line[name_end..]) {
                    Ok(parsed) => parsed,
                    Err(error) => return fail(error),
                }
            } else {
                (Vec::new(), &line[name_end..])
            };
            let Some(value_text) = rest.strip_prefix(' ') else {
                return fail("no single space before the value".into());
            };
            if value_text.contains(' ') {
                return fail("trailing fields (timestamps are not emitted)".into());
            }
            let value = match parse_value(value_text) {
                Ok(value) => value,
                Err(error) => return fail(error),
            };

            let family = family_of(name, &types);
            let Some(kind) = types.get(&family) else {
                return fail("sample before its TYPE".into());
            };
            if current_family.as_deref() != Some(family.as_str()) {
                return fail("sample outside its family's group".into());
            }
            match kind.as_str() {
                "counter" => {
                    if !name.ends_with("_total") {
                        return fail("counter without _total".into());
                    }
                    if value.is_nan() || value < 0.0 {
                        return fail("negative or NaN counter".into());
                    }
                }
                "summary" => {
                    let has_quantile = labels.iter().any(|(label, _)| label == "quantile");
                    if (name == family) != has_quantile {
                        return fail("quantile label only on the summary's own samples".into());
                    }
                }
                _ => {}
            }
            let mut sorted_labels = labels.clone();
            sorted_labels.sort();
            if !seen_series.insert(format!("{name}{sorted_labels:?}")) {
                return fail("duplicate series".into());
            }
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Ok(samples)
    }

    /// The family a sample belongs to: its name, or a summary's/histogram's
    /// name without `_sum`, `_count` or `_bucket`.
    fn family_of(sample_name: &str, types: &HashMap<String, String>) -> String {
        for suffix in ["_sum", "_count", "_bucket"] {
            if let Some(base) = sample_name.strip_suffix(suffix) {
                if matches!(
                    types.get(base).map(String::as_str),
                    Some("summary" | "histogram")
                ) {
                    return base.to_owned();
                }
            }
        }
        sample_name.to_owned()
    }

    fn find<'s>(samples: &'s [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'s Sample> {
        samples.iter().find(|sample| {
            sample.name == name
                && sample.labels.len() == labels.len()
                && labels.iter().all(|(label, value)| {
                    sample.labels.iter().any(|(l, v)| l == label && v == value)
                })
        })
    }

    #[test]
    fn prometheus_output_parses_strictly_and_carries_the_figures() {
        let fixture = Fixture::new();
        let text = prometheus(&fixture.report());
        let samples = parse_exposition(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
        assert!(samples
            .iter()
            .all(|sample| sample.name.starts_with("wsuring_")));

        let value = |name: &str, labels: &[(&str, &str)]| {
            find(&samples, name, labels)
                .unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
                .value
        };
        assert_eq!(value("wsuring_messages_in_total", &[("shard", "0")]), 150.0);
        assert_eq!(value("wsuring_messages_in_total", &[("shard", "1")]), 150.0);
        assert_eq!(
            value(
                "wsuring_errors_total",
                &[("shard", "1"), ("code", "bad_json")]
            ),
            1.0
        );
        assert_eq!(
            value(
                "wsuring_errors_total",
                &[("shard", "1"), ("code", "internal")]
            ),
            0.0
        );
        assert_eq!(value("wsuring_connections", &[("shard", "1")]), 11.0);
        assert_eq!(value("wsuring_connections_peak", &[]), 21.0);
        assert_eq!(value("wsuring_shards", &[]), 2.0);
        assert_eq!(value("wsuring_uptime_seconds", &[]), 12.5);
        assert_eq!(value("wsuring_delivery_latency_seconds_count", &[]), 300.0);
        let recent_p50 = value("wsuring_delivery_latency_seconds", &[("quantile", "0.5")]);
        assert!(
            (recent_p50 - 0.003).abs() < 0.00001,
            "recent window only: {recent_p50}"
        );
        let sum = value("wsuring_delivery_latency_seconds_sum", &[]);
        assert!(
            (sum - (200.0 * 0.0015 + 100.0 * 0.003)).abs() < 1e-9,
            "{sum}"
        );
        assert!(
            value("wsuring_ping_rtt_seconds", &[("quantile", "0.99")]).is_nan(),
            "no pings in the interval"
        );
        assert_eq!(value("wsuring_messages_in_per_second", &[]), 100.0);
        assert_eq!(value("wsuring_process_cpu_percent", &[]), 42.5);
        assert_eq!(
            value("wsuring_process_resident_memory_bytes", &[]),
            (50 << 20) as f64
        );
        assert_eq!(
            value("wsuring_alert_active", &[("alert", "outbox_queue_depth")]),
            1.0
        );
        assert_eq!(value("wsuring_alert_active", &[("alert", "cpu")]), 0.0);
        assert!(find(
            &samples,
            "wsuring_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        )
        .is_some());
        // Unreadable figures are left out, not reported as zero.
        assert!(find(&samples, "wsuring_system_memory_used_percent", &[]).is_none());
        assert!(!text.contains("system_memory_used_percent"));
        for quantile in ["0.5", "0.95", "0.99", "0.999"] {
            assert!(find(
                &samples,
                "wsuring_handshake_duration_seconds",
                &[("quantile", quantile)]
            )
            .is_some());
        }
    }

    #[test]
    fn prometheus_output_of_an_empty_server_is_valid() {
        let aggregate = Aggregate::default();
        let rates = Rates::default();
        let resources = Resources::default();
        let report = Report {
            aggregate: &aggregate,
            rates: &rates,
            resources: &resources,
            alerts: &[],
            uptime: Duration::ZERO,
            shard_count: 0,
            now_unix_ms: 0,
        };
        let text = prometheus(&report);
        parse_exposition(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
    }

    #[test]
    fn the_strict_reader_rejects_what_the_format_forbids() {
        let valid = "# HELP a_total x\n# TYPE a_total counter\na_total{s=\"1\"} 2\n";
        assert!(parse_exposition(valid).is_ok());
        let broken = [
            "# TYPE a_total counter\na_total 1\na_total 2\n", // duplicate series
            "a 1\n",                                          // no TYPE
            "# TYPE a gauge\na{l=\"\\x\"} 1\n",               // bad escape
            "# TYPE a gauge\na{l=\"v\",} 1\n",                // trailing comma
            "# TYPE a gauge\na{l=\"v\"}  1\n",                // two spaces
            "# TYPE a gauge\na 1 1700000000\n",               // timestamp
            "# TYPE a gauge\na one\n",                        // bad value
            "# TYPE a counter\na 1\n",                        // counter without _total
            "# TYPE a gauge\n# TYPE b gauge\na 1\n",          // sample outside group
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# HELP a late\n", // HELP after samples
            "# TYPE a gauge\na 1",                            // no final line feed
            "# TYPE s summary\ns_sum 1\ns 2\n",               // summary sample lacks quantile
            "# TYPE a gauge\n\na 1\n",                        // blank line
        ];
        for text in broken {
            assert!(parse_exposition(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value("plain"), "plain");
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(escape_help("line\\one\ntwo"), "line\\\\one\\ntwo");

        let mut out = PrometheusText::default();
        out.family("tricky", "gauge", "Help with a \\ and a\nline feed.");
        out.sample("tricky", &[("path", "C:\\dir \"quoted\"\nnext")], 1u64);
        let samples =
            parse_exposition(&out.text).unwrap_or_else(|error| panic!("{error}\n{}", out.text));
        assert_eq!(samples[0].labels[0].1, "C:\\dir \"quoted\"\nnext");
    }

    #[test]
    fn prometheus_floats_use_its_spelling() {
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
        assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Float(0.25).to_string(), "0.25");
        assert_eq!(Float(3.0).to_string(), "3");
    }

    #[test]
    fn json_has_the_documented_shape() {
        let fixture = Fixture::new();
        let value: Value = serde_json::from_str(&json(&fixture.report())).expect("valid JSON");
        assert_eq!(value["schema"], 1);
        assert_eq!(
            value["server"],
            format!("ws-uring/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(value["uptime_s"], 12.5);
        assert_eq!(value["generated_unix_ms"], 1_700_000_012_500u64);
        assert_eq!(value["shards"], 2);
        assert_eq!(value["interval_s"], 1.0);
        assert_eq!(value["counters"]["messages_in"], 300);
        assert_eq!(value["counters"]["bytes_out"], 16_000);
        assert_eq!(
            value["counters"].as_object().map(Map::len),
            Some(Counter::COUNT)
        );
        assert_eq!(value["errors"]["total"], 2);
        assert_eq!(value["errors"]["by_code"]["bad_json"], 2);
        assert_eq!(
            value["errors"]["by_code"].as_object().map(Map::len),
            Some(ERROR_CODES.len())
        );
        assert_eq!(value["gauges"]["connections"], 21);
        assert_eq!(value["gauges"]["connections_peak"], 21);
        assert_eq!(value["gauges"]["outbox_queued_msgs"], 4_000);
        assert_eq!(value["rates"]["messages_in_per_s"], 100.0);
        assert_eq!(value["rates"]["error_rate"], 0.0);
        let delivery = &value["latency_us"]["delivery_latency"];
        assert_eq!(delivery["recent"]["count"], 100);
        assert_eq!(delivery["total"]["count"], 300);
        assert!(delivery["recent"]["p99"]
            .as_u64()
            .is_some_and(|p99| (2_990..=3_010).contains(&p99)));
        assert_eq!(delivery["total"]["mean"], 2_000.0);
        for name in ["ping_rtt", "handshake"] {
            for field in ["count", "p50", "p95", "p99", "p999", "max", "mean"] {
                assert!(
                    value["latency_us"][name]["recent"][field].is_number(),
                    "{name}.{field}"
                );
            }
        }
        assert_eq!(value["resources"]["cpu_percent"], 42.5);
        assert_eq!(value["resources"]["cpus"], 2);
        assert!(value["resources"]["mem_used_percent"].is_null());
        let alerts = value["alerts"].as_array().expect("alerts is an array");
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0]["name"], "outbox_queue_depth");
        assert_eq!(alerts[0]["unit"], "messages");
        assert_eq!(alerts[0]["value"], 4_000.0);
        assert_eq!(alerts[0]["threshold"], 1_000.0);
        assert_eq!(alerts[0]["since_unix_ms"], 1_700_000_000_000u64);
        let per_shard = value["per_shard"]
            .as_array()
            .expect("per_shard is an array");
        assert_eq!(per_shard.len(), 2);
        assert_eq!(per_shard[1]["shard"], 1);
        assert_eq!(per_shard[1]["gauges"]["connections_peak"], 11);
        assert_eq!(per_shard[1]["counters"]["messages_in"], 150);
        assert_eq!(per_shard[1]["errors_total"], 1);
    }

    #[test]
    fn csv_is_one_header_and_one_row_of_the_same_figures() {
        let fixture = Fixture::new();
        let text = csv(&fixture.report());
        assert!(text.ends_with("\r\n"));
        let lines: Vec<&str> = text.split("\r\n").filter(|line| !line.is_empty()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        let header: Vec<&str> = lines[0].split(',').collect();
        let row: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(header.len(), row.len());
        let unique: HashSet<&&str> = header.iter().collect();
        assert_eq!(unique.len(), header.len(), "column names are unique");
        let column = |name: &str| {
            let position = header.iter().position(|&column| column == name);
            row[position.unwrap_or_else(|| panic!("no column {name}"))]
        };
        assert_eq!(header[0], "unix_ms");
        assert_eq!(column("unix_ms"), "1700000012500");
        assert_eq!(column("messages_in"), "300");
        assert_eq!(column("errors_bad_json"), "2");
        assert_eq!(column("connections_peak"), "21");
        assert_eq!(column("messages_in_per_s"), "100");
        assert_eq!(column("delivery_latency_total_count"), "300");
        assert_eq!(column("cpu_percent"), "42.5");
        assert_eq!(
            column("mem_used_percent"),
            "",
            "unreadable figures are empty"
        );
        assert_eq!(column("alerts_active"), "1");
        assert_eq!(column("alerts"), "outbox_queue_depth");
    }

    #[test]
    fn csv_columns_do_not_depend_on_the_figures() {
        let fixture = Fixture::new();
        let empty_aggregate = Aggregate::default();
        let empty_rates = Rates::default();
        let empty_resources = Resources::default();
        let empty = Report {
            aggregate: &empty_aggregate,
            rates: &empty_rates,
            resources: &empty_resources,
            alerts: &[],
            uptime: Duration::ZERO,
            shard_count: 0,
            now_unix_ms: 0,
        };
        let names = |report: &Report<'_>| -> Vec<String> {
            csv_columns(report)
                .into_iter()
                .map(|(name, _)| name)
                .collect()
        };
        assert_eq!(names(&fixture.report()), names(&empty));
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
