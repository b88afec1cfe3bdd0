//! The results of a run: the stable JSON document (`--output`), the final
//! table, and the self-contained HTML report (`--report`).
//!
//! The JSON schema is versioned by [`SCHEMA`]; fields are only ever added
//! within a version. `docs/LOADGEN.md` describes every field.

pub mod html;
pub mod table;

use serde::{Deserialize, Serialize};

use crate::grade::{grade, GradeInput, GradeReport, LIMITS};
use crate::pauses::PauseReport;
use crate::server_metrics::ServerSample;
use crate::stats::{SeriesPoint, Summary};

/// Schema name and version of the JSON document.
pub const SCHEMA: &str = "ws-uring-loadgen/1";

/// The whole JSON document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub tool: Tool,
    pub started_unix_ms: u64,
    pub config: RunConfig,
    pub scenarios: Vec<ScenarioReport>,
    /// Worst grade over all scenarios.
    pub overall_grade: Option<crate::grade::Grade>,
    /// The grade limits used, best first (C is the seed's targets).
    pub grade_limits: Vec<crate::grade::Limits>,
}

/// Name and version of the generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tool {
    pub name: String,
    pub version: String,
}

/// The command line as the run understood it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub url: String,
    pub workload: String,
    /// `closed` (N in flight per connection) or `open` (fixed rate).
    pub mode: String,
    /// Open loop: total intended messages a second.
    pub rate: Option<f64>,
    /// Open loop: the grid of the send timers, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_tick_us: Option<u64>,
    /// The engine threads' longest nap, in microseconds (0: none). Absent
    /// from reports written before naps: they parked.
    #[serde(default)]
    pub nap_max_us: u64,
    /// How often each CPU's pause sampler wakes, in microseconds (0: no
    /// sampler). Absent from reports written before the samplers.
    #[serde(default)]
    pub pause_sample_us: u64,
    /// Whether the server was sampled during each scenario (`server[]`).
    /// Absent from reports written before `--no-server-sample`: it was.
    #[serde(default = "server_sampled_before_the_flag")]
    pub server_sampled: bool,
    /// The CSV file each measured message was written to
    /// (`--latency-trace`; absent without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_trace: Option<String>,
    pub in_flight: usize,
    pub message_bytes: usize,
    pub threads: usize,
    pub quick: bool,
}

fn server_sampled_before_the_flag() -> bool {
    true
}

/// One scenario's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub name: String,
    pub description: String,
    pub workload: String,
    /// `round_trip` or `one_way`.
    pub latency_kind: String,
    /// Highest number of connections the scenario opens at once.
    pub connections: usize,
    pub started_unix_ms: u64,
    pub duration_s: f64,
    /// The measured window starts this many seconds in.
    pub measure_from_s: f64,
    pub wall_s: f64,
    pub summary: Summary,
    pub grade: GradeReport,
    pub series: Vec<SeriesPoint>,
    pub server: Vec<ServerSample>,
    /// Endurance: how the first and last tenth of the run compare.
    pub drift: Option<Drift>,
    /// The machine's own pauses (absent with `--pause-sample-us 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pauses: Option<PauseReport>,
    /// What this scenario wrote to the latency trace (absent without
    /// `--latency-trace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_trace: Option<TraceReport>,
}

/// A scenario's rows in the latency trace file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    /// Measured messages written, one row each.
    pub messages: u64,
    /// Measured messages not written: past a thread's bound, or after the
    /// measured window's first 71 minutes.
    pub dropped: u64,
}

/// Change between the first and the last tenth of a long run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub window_s: u64,
    pub p99_first_us: u64,
    pub p99_last_us: u64,
    pub p99_change_pct: f64,
    pub msg_per_s_first: f64,
    pub msg_per_s_last: f64,
    pub server_memory_first_bytes: Option<u64>,
    pub server_memory_last_bytes: Option<u64>,
    pub server_memory_change_bytes: Option<i64>,
}

/// Compares the first and last tenth (at least 1 s) of the measured window
/// `[from_s, until_s)`: the closing second after the run is left out.
pub fn drift(
    series: &[SeriesPoint],
    from_s: u64,
    until_s: u64,
    server: &[ServerSample],
) -> Option<Drift> {
    let measured: Vec<&SeriesPoint> = series
        .iter()
        .filter(|p| p.t_s >= from_s && p.t_s < until_s)
        .collect();
    if measured.len() < 4 {
        return None;
    }
    let window = (measured.len() / 10).max(1);
    let (first, last) = (&measured[..window], &measured[measured.len() - window..]);
    let p99 = |points: &[&SeriesPoint]| points.iter().map(|p| p.p99_us).max().unwrap_or(0);
    let rate = |points: &[&SeriesPoint]| {
        points.iter().map(|p| p.received).sum::<u64>() as f64 / points.len() as f64
    };
    let (p99_first_us, p99_last_us) = (p99(first), p99(last));
    let memory: Vec<u64> = server
        .iter()
        .filter(|s| s.t_s >= from_s as f64 && s.t_s < until_s as f64)
        .filter_map(|s| s.memory_bytes)
        .collect();
    let server_memory_first_bytes = memory.first().copied();
    let server_memory_last_bytes = memory.last().copied();
    Some(Drift {
        window_s: window as u64,
        p99_first_us,
        p99_last_us,
        p99_change_pct: if p99_first_us == 0 {
            0.0
        } else {
            ((p99_last_us as f64 / p99_first_us as f64 - 1.0) * 1000.0).round() / 10.0
        },
        msg_per_s_first: rate(first),
        msg_per_s_last: rate(last),
        server_memory_first_bytes,
        server_memory_last_bytes,
        server_memory_change_bytes: match (server_memory_first_bytes, server_memory_last_bytes) {
            (Some(a), Some(b)) => Some(b as i64 - a as i64),
            _ => None,
        },
    })
}

/// Grades a summary against the open-loop target, if any.
pub fn grade_summary(summary: &Summary, intended_per_s: Option<f64>) -> GradeReport {
    grade(&GradeInput::from_summary(summary, intended_per_s))
}

impl Report {
    pub fn new(started_unix_ms: u64, config: RunConfig) -> Report {
        Report {
            schema: SCHEMA.to_string(),
            tool: Tool {
                name: "loadgen".into(),
                version: env!("CARGO_PKG_VERSION").into(),
            },
            started_unix_ms,
            config,
            scenarios: Vec::new(),
            overall_grade: None,
            grade_limits: LIMITS.to_vec(),
        }
    }

    /// Adds a scenario and updates the overall grade.
    pub fn push(&mut self, scenario: ScenarioReport) {
        let g = scenario.grade.grade;
        self.overall_grade = Some(self.overall_grade.map_or(g, |o| o.max(g)));
        self.scenarios.push(scenario);
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::ThreadStats;

    /// Every path of the JSON document. Changing this list changes the
    /// schema: bump [`SCHEMA`] when removing or renaming anything.
    const SCHEMA_PATHS: &str = "
config config.in_flight config.message_bytes config.mode config.nap_max_us config.latency_trace config.pause_sample_us config.quick config.rate config.server_sampled config.threads config.url config.workload
grade_limits grade_limits[] grade_limits[].grade grade_limits[].max_error_rate grade_limits[].min_connect_success
grade_limits[].min_throughput_ratio grade_limits[].p95_us grade_limits[].p999_us grade_limits[].p99_us
overall_grade schema scenarios scenarios[] scenarios[].connections scenarios[].description
scenarios[].drift scenarios[].drift.msg_per_s_first scenarios[].drift.msg_per_s_last scenarios[].drift.p99_change_pct
scenarios[].drift.p99_first_us scenarios[].drift.p99_last_us scenarios[].drift.server_memory_change_bytes
scenarios[].drift.server_memory_first_bytes scenarios[].drift.server_memory_last_bytes scenarios[].drift.window_s
scenarios[].duration_s scenarios[].pauses scenarios[].pauses.all_cpus scenarios[].pauses.all_cpus_longest_us
scenarios[].pauses.interval_us scenarios[].pauses.late_wakes_dropped scenarios[].pauses.pauses scenarios[].pauses.pauses[]
scenarios[].pauses.pauses[].all_cpus_us scenarios[].pauses.pauses[].cpus scenarios[].pauses.pauses[].longest_us scenarios[].pauses.pauses[].t_s
scenarios[].pauses.pauses_total scenarios[].pauses.per_cpu scenarios[].pauses.per_cpu[] scenarios[].pauses.per_cpu[].cpu
scenarios[].pauses.per_cpu[].late_max_us scenarios[].pauses.per_cpu[].late_p50_us scenarios[].pauses.per_cpu[].late_p99_us
scenarios[].pauses.per_cpu[].late_wakes scenarios[].pauses.per_cpu[].samples scenarios[].pauses.per_second_longest_us
scenarios[].pauses.per_second_longest_us[] scenarios[].pauses.per_second_all_cpus_us scenarios[].pauses.per_second_all_cpus_us[] scenarios[].pauses.policy scenarios[].pauses.threshold_us scenarios[].grade scenarios[].grade.grade scenarios[].grade.reasons scenarios[].grade.reasons[]
scenarios[].grade.seed_targets_met scenarios[].latency_kind scenarios[].latency_trace scenarios[].latency_trace.dropped scenarios[].latency_trace.messages scenarios[].measure_from_s scenarios[].name
scenarios[].series scenarios[].series[] scenarios[].series[].bytes scenarios[].series[].connections
scenarios[].series[].connects scenarios[].series[].disconnects scenarios[].series[].errors scenarios[].series[].max_us
scenarios[].series[].p50_us scenarios[].series[].p95_us scenarios[].series[].p99_us scenarios[].series[].received
scenarios[].series[].sent scenarios[].series[].t_s scenarios[].server scenarios[].server[] scenarios[].server[].connections
scenarios[].server[].cpu scenarios[].server[].memory_bytes scenarios[].server[].source scenarios[].server[].t_s scenarios[].started_unix_ms
scenarios[].summary scenarios[].summary.bytes_per_s scenarios[].summary.bytes_received scenarios[].summary.bytes_sent
scenarios[].summary.connect scenarios[].summary.connect.attempted scenarios[].summary.connect.failed
scenarios[].summary.connect.success_rate scenarios[].summary.connect.succeeded scenarios[].summary.connect.time_us
scenarios[].summary.connect.time_us.count scenarios[].summary.connect.time_us.max scenarios[].summary.connect.time_us.mean
scenarios[].summary.connect.time_us.min scenarios[].summary.connect.time_us.p50 scenarios[].summary.connect.time_us.p95
scenarios[].summary.connect.time_us.p99 scenarios[].summary.connect.time_us.p999 scenarios[].summary.error_rate
scenarios[].summary.errors scenarios[].summary.errors.eof scenarios[].summary.errors_total scenarios[].summary.latency_us
scenarios[].summary.latency_us.count scenarios[].summary.latency_us.max scenarios[].summary.latency_us.mean
scenarios[].summary.latency_us.min scenarios[].summary.latency_us.p50 scenarios[].summary.latency_us.p95
scenarios[].summary.latency_us.p99 scenarios[].summary.latency_us.p999 scenarios[].summary.messages_received
scenarios[].summary.messages_sent scenarios[].summary.msg_per_s scenarios[].summary.per_connection_mean_latency_us
scenarios[].summary.per_connection_mean_latency_us.count scenarios[].summary.per_connection_mean_latency_us.max
scenarios[].summary.per_connection_mean_latency_us.mean scenarios[].summary.per_connection_mean_latency_us.min
scenarios[].summary.per_connection_mean_latency_us.p50 scenarios[].summary.per_connection_mean_latency_us.p95
scenarios[].summary.per_connection_mean_latency_us.p99 scenarios[].summary.per_connection_mean_latency_us.p999
scenarios[].summary.sent_per_s scenarios[].summary.slowest_connection_vs_median
scenarios[].summary.connections_without_measured_message
scenarios[].summary.total_received scenarios[].summary.total_sent scenarios[].summary.window_s scenarios[].wall_s
scenarios[].workload started_unix_ms tool tool.name tool.version";

    fn paths(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.push(p.clone());
                    paths(&p, v, out);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items.iter().take(1) {
                    let p = format!("{prefix}[]");
                    out.push(p.clone());
                    paths(&p, item, out);
                }
            }
            _ => {}
        }
    }

    fn sample_report() -> Report {
        let mut stats = ThreadStats::new(0);
        stats.on_connect(0, true, 1_000_000);
        stats.on_sent(0, 10, 1000);
        for _ in 0..10 {
            stats.on_message(500_000_000, 2_000_000);
        }
        stats.on_error(0, "eof", 1);
        stats.on_connection_done(10, 10 * 2_000);
        stats.on_connection_done(10, 10 * 3_000);
        let summary = stats.summary(1.0);
        let series = stats.series();
        let server = vec![ServerSample {
            t_s: 0.0,
            source: "procfs".into(),
            cpu: Some(1.0),
            memory_bytes: Some(10),
            connections: Some(1),
        }];
        let mut report = Report::new(
            1,
            RunConfig {
                url: "ws://127.0.0.1:1/ws".into(),
                workload: "echo".into(),
                mode: "closed".into(),
                rate: None,
                send_tick_us: None,
                nap_max_us: 5000,
                pause_sample_us: 1000,
                server_sampled: true,
                latency_trace: Some("trace.csv".into()),
                in_flight: 1,
                message_bytes: 64,
                threads: 1,
                quick: true,
            },
        );
        report.push(ScenarioReport {
            name: "baseline".into(),
            description: "d".into(),
            workload: "echo".into(),
            latency_kind: "round_trip".into(),
            connections: 1,
            started_unix_ms: 1,
            duration_s: 1.0,
            measure_from_s: 0.0,
            wall_s: 1.0,
            grade: grade_summary(&summary, None),
            summary,
            drift: Some(Drift {
                server_memory_change_bytes: Some(0),
                server_memory_first_bytes: Some(1),
                server_memory_last_bytes: Some(1),
                ..Drift::default()
            }),
            series,
            server,
            pauses: Some({
                // Both CPUs overdue from 0.495 s to 0.5 s: a 5 ms stop.
                let mut logs = [
                    crate::pauses::PauseLog::new(0),
                    crate::pauses::PauseLog::new(1),
                ];
                for log in &mut logs {
                    log.record(500_000_000, 5_000_000);
                }
                crate::pauses::summarize(
                    &logs,
                    "SCHED_FIFO",
                    std::time::Duration::from_millis(1),
                    0,
                    1,
                )
            }),
            latency_trace: Some(TraceReport {
                messages: 100,
                dropped: 0,
            }),
        });
        report
    }

    #[test]
    fn json_schema_is_stable() {
        let report = sample_report();
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let mut found = Vec::new();
        paths("", &value, &mut found);
        found.sort();
        found.dedup();
        let mut expected: Vec<String> = SCHEMA_PATHS.split_whitespace().map(String::from).collect();
        expected.sort();
        assert_eq!(
            found, expected,
            "JSON schema changed: update SCHEMA_PATHS, docs/LOADGEN.md (and SCHEMA if breaking)"
        );
        assert_eq!(value["schema"], SCHEMA);
    }

    #[test]
    fn the_table_and_the_html_show_the_machines_pauses_when_sampled() {
        let mut report = sample_report();
        let table = table::render(&report);
        assert!(
            table.contains("machine pauses (SCHED_FIFO samplers every 1000 us): 1 with all 2 CPUs stopped at once (longest 5.00 ms)"),
            "{table}"
        );
        let page = html::render(&report);
        assert!(page.contains("Machine pauses against the slowest message"));
        assert!(page.contains("1 with all 2 CPUs stopped at once"));
        report.scenarios[0].pauses = None;
        assert!(!table::render(&report).contains("machine pauses"));
        assert!(!html::render(&report).contains("Machine pauses"));
    }

    #[test]
    fn the_table_shows_how_connections_were_served_when_measured() {
        let mut report = sample_report();
        let table = table::render(&report);
        assert!(
            table.contains("per connection (2): mean latency p50 2.00 / p99 3.00 / max 3.00 ms; slowest 1.50x the median"),
            "{table}"
        );
        report.scenarios[0]
            .summary
            .connections_without_measured_message = 3;
        assert!(table::render(&report).contains(
            "slowest 1.50x the median; 3 ended without a measured message (ramp-up closes, or starved)"
        ));
        report.scenarios[0].summary.per_connection_mean_latency_us = Default::default();
        report.scenarios[0]
            .summary
            .connections_without_measured_message = 0;
        assert!(!table::render(&report).contains("per connection"));
    }

    #[test]
    fn reports_written_before_the_per_connection_fields_still_load() {
        let report = sample_report();
        let mut value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let summary = value["scenarios"][0]["summary"].as_object_mut().unwrap();
        for key in [
            "per_connection_mean_latency_us",
            "slowest_connection_vs_median",
            "connections_without_measured_message",
        ] {
            assert!(summary.remove(key).is_some(), "{key}");
        }
        let back: Report = serde_json::from_value(value).unwrap();
        let summary = &back.scenarios[0].summary;
        assert_eq!(summary.per_connection_mean_latency_us.count, 0);
        assert_eq!(summary.slowest_connection_vs_median, 0.0);
        assert_eq!(summary.connections_without_measured_message, 0);
    }

    #[test]
    fn the_table_says_what_the_trace_holds() {
        let mut report = sample_report();
        let text = table::render(&report);
        assert!(
            text.contains("latency trace: 100 messages written to trace.csv\n"),
            "{text}"
        );
        report.scenarios[0].latency_trace = Some(TraceReport {
            messages: 100,
            dropped: 7,
        });
        let text = table::render(&report);
        assert!(
            text.contains("trace.csv; 7 more not written (past the bound of 8388608 a thread"),
            "{text}"
        );
        report.scenarios[0].latency_trace = None;
        assert!(!table::render(&report).contains("latency trace"));
    }

    #[test]
    fn reports_written_before_no_server_sample_say_the_server_was_sampled() {
        let mut report = sample_report();
        report.config.server_sampled = false;
        let mut value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(value["config"]["server_sampled"], false);
        let config = value["config"].as_object_mut().unwrap();
        assert!(config.remove("server_sampled").is_some());
        let back: Report = serde_json::from_value(value).unwrap();
        assert!(back.config.server_sampled);
    }

    #[test]
    fn json_round_trips() {
        let mut report = sample_report();
        let mut back: Report = serde_json::from_str(&report.to_json()).unwrap();
        // Floats survive to within serde_json's shortest-representation
        // parsing: compared here, then set equal for the rest.
        let close_then_zeroed = |a: &mut f64, b: &mut f64| {
            assert!((*a - *b).abs() < 1e-12, "{a} against {b}");
            (*a, *b) = (0.0, 0.0);
        };
        let (mine, theirs) = (
            &mut report.scenarios[0].summary,
            &mut back.scenarios[0].summary,
        );
        close_then_zeroed(&mut mine.error_rate, &mut theirs.error_rate);
        close_then_zeroed(
            &mut mine.slowest_connection_vs_median,
            &mut theirs.slowest_connection_vs_median,
        );
        assert_eq!(back, report);
        assert_eq!(back.overall_grade, Some(back.scenarios[0].grade.grade));
    }

    #[test]
    fn drift_compares_first_and_last_tenth() {
        let series: Vec<SeriesPoint> = (0..20)
            .map(|t| SeriesPoint {
                t_s: t,
                received: 100,
                p99_us: if t < 10 { 1000 } else { 1500 },
                ..SeriesPoint::default()
            })
            .collect();
        let server = vec![
            ServerSample {
                memory_bytes: Some(100),
                ..ServerSample::default()
            },
            ServerSample {
                memory_bytes: Some(150),
                ..ServerSample::default()
            },
        ];
        let d = drift(&series, 0, 20, &server).unwrap();
        assert_eq!(d.window_s, 2);
        assert_eq!((d.p99_first_us, d.p99_last_us), (1000, 1500));
        assert_eq!(d.p99_change_pct, 50.0);
        assert_eq!(d.server_memory_change_bytes, Some(50));
        assert!(drift(&series[..3], 0, 20, &server).is_none());
        // The closing second after the run does not count.
        let mut with_tail = series.clone();
        with_tail.push(SeriesPoint {
            t_s: 20,
            received: 1,
            p99_us: 99_000,
            ..SeriesPoint::default()
        });
        assert_eq!(drift(&with_tail, 0, 20, &server).unwrap().p99_last_us, 1500);
    }
}
