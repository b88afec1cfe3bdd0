//! Runs the chosen scenarios one after the other and assembles the report.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::engine::{self, EngineError};
use crate::pauses::PauseSampler;
use crate::progress::Progress;
use crate::report::{drift, grade_summary, Report, RunConfig, ScenarioReport, TraceReport};
use crate::scenario::{RunSettings, ScenarioKind, ScenarioSpec};
use crate::server_metrics::Sampler;
use crate::stats::LatencyTrace;
use crate::workload::Workload;

/// Pause between scenarios so the server can drop the previous connections.
pub const PAUSE_BETWEEN: Duration = Duration::from_secs(1);

/// Everything a suite run needs.
#[derive(Clone, Debug)]
pub struct SuiteConfig {
    pub settings: RunSettings,
    pub scenarios: Vec<ScenarioSpec>,
    pub quick: bool,
    /// Show the progress line (off in tests).
    pub progress: bool,
    /// Sample the server's /metrics.json.
    pub sample_server: bool,
    /// Run a pause sampler per CPU waking this often (none if zero).
    pub pause_sample: Duration,
    /// Write every measured message to this CSV file (`--latency-trace`).
    pub latency_trace: Option<PathBuf>,
}

/// The latency trace's first line.
pub const TRACE_HEADER: &str = "scenario,t_us,latency_us,connection\n";

/// Writes a scenario's trace rows in order of arrival: the scenario's name,
/// µs since its measured window began, the latency in µs, the connection
/// slot.
pub fn write_trace_rows(
    out: &mut impl Write,
    scenario: &str,
    trace: LatencyTrace,
) -> io::Result<TraceReport> {
    let trace = trace.sorted();
    for e in &trace.entries {
        writeln!(
            out,
            "{scenario},{},{},{}",
            e.at_us, e.latency_us, e.connection
        )?;
    }
    out.flush()?;
    Ok(TraceReport {
        messages: trace.entries.len() as u64,
        dropped: trace.dropped,
    })
}

/// The `scenario` column of the `i`th scenario's rows: its name, and for a
/// scenario run again in the same suite (`baseline,baseline`, `all,high`)
/// `name#2`, `name#3`…, so that two runs never share rows.
pub fn trace_label(scenarios: &[ScenarioSpec], i: usize) -> String {
    let name = scenarios[i].kind.name();
    let runs_before = scenarios[..i]
        .iter()
        .filter(|s| s.kind == scenarios[i].kind)
        .count();
    if runs_before == 0 {
        name.to_string()
    } else {
        format!("{name}#{}", runs_before + 1)
    }
}

fn trace_error(path: &Path, e: io::Error) -> EngineError {
    EngineError::Output(format!(
        "cannot write the latency trace {}: {e}",
        path.display()
    ))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Completions a second an open-loop run intends, for the throughput grade;
/// only for scenarios whose connection count is steady.
fn intended_per_s(
    kind: ScenarioKind,
    workload: Workload,
    rate: Option<f64>,
    group_size: usize,
) -> Option<f64> {
    let rate = rate?;
    match kind {
        ScenarioKind::Ramp | ScenarioKind::Spike => None,
        _ => Some(match workload {
            Workload::Publish => rate * group_size as f64,
            _ => rate,
        }),
    }
}

/// Runs every scenario of `config`; `on_done` sees each result as it lands.
pub fn run(
    config: &SuiteConfig,
    mut on_done: impl FnMut(&ScenarioReport),
) -> Result<Report, EngineError> {
    let s = &config.settings;
    let mut report = Report::new(
        unix_ms(),
        RunConfig {
            url: s.url.to_string(),
            workload: s.workload.name().to_string(),
            mode: if s.rate.is_some() { "open" } else { "closed" }.to_string(),
            rate: s.rate,
            send_tick_us: s.rate.map(|_| s.send_tick.as_micros() as u64),
            nap_max_us: s.nap_max.as_micros() as u64,
            pause_sample_us: config.pause_sample.as_micros() as u64,
            server_sampled: config.sample_server,
            latency_trace: config
                .latency_trace
                .as_ref()
                .map(|p| p.display().to_string()),
            in_flight: s.in_flight,
            message_bytes: s.size,
            threads: s.threads,
            quick: config.quick,
        },
    );
    let addr = s.url.socket_addr().map_err(EngineError::Url)?;
    // Made before the first scenario, so a path that cannot be written
    // fails the run at once, not after it.
    let mut trace_file = match &config.latency_trace {
        Some(path) => {
            let mut file = std::fs::File::create(path)
                .map(io::BufWriter::new)
                .map_err(|e| trace_error(path, e))?;
            file.write_all(TRACE_HEADER.as_bytes())
                .map_err(|e| trace_error(path, e))?;
            Some((path, file))
        }
        None => None,
    };
    for (i, spec) in config.scenarios.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(PAUSE_BETWEEN);
        }
        let mut settings = s.clone();
        settings.run_id = s.run_id.wrapping_add(i as u32);
        let mut plan = spec.plan(&settings);
        plan.latency_trace = trace_file.is_some();
        let sampler = config
            .sample_server
            .then(|| Sampler::start(addr, s.url.host_header()));
        let pause_sampler =
            (!config.pause_sample.is_zero()).then(|| PauseSampler::start(config.pause_sample));
        let mut progress = config
            .progress
            .then(|| Progress::new(spec.kind.name(), plan.duration, s.verbose));
        let mut outcome = engine::run(&plan, |snap| {
            if let Some(p) = progress.as_mut() {
                p.tick(snap);
            }
        })?;
        if let Some(p) = progress {
            p.finish();
        }
        let server = sampler.map(|s| s.stop().0).unwrap_or_default();
        let window = plan
            .duration
            .saturating_sub(plan.measure_from)
            .as_secs_f64();
        let summary = outcome.stats.summary(window);
        let series = outcome.stats.series();
        let pauses = pause_sampler.map(|p| p.stop(outcome.epoch, series.len()));
        // Written once the samplers have stopped, so they do not run
        // (at real-time priority) through the writing.
        let latency_trace = match (&mut trace_file, outcome.stats.trace.take()) {
            (Some((path, file)), Some(trace)) => Some(
                write_trace_rows(file, &trace_label(&config.scenarios, i), trace)
                    .map_err(|e| trace_error(path, e))?,
            ),
            _ => None,
        };
        let grade = grade_summary(
            &summary,
            intended_per_s(spec.kind, s.workload, s.rate, s.group_size),
        );
        let drift = (spec.kind == ScenarioKind::Endurance)
            .then(|| {
                drift(
                    &series,
                    plan.measure_from.as_secs(),
                    plan.duration.as_secs(),
                    &server,
                )
            })
            .flatten();
        let scenario = ScenarioReport {
            name: spec.kind.name().to_string(),
            description: spec.kind.description().to_string(),
            workload: s.workload.name().to_string(),
            latency_kind: s.workload.latency_kind().to_string(),
            connections: plan.peak_connections(),
            started_unix_ms: outcome.started_unix_ms,
            duration_s: plan.duration.as_secs_f64(),
            measure_from_s: plan.measure_from.as_secs_f64(),
            wall_s: (outcome.wall.as_secs_f64() * 100.0).round() / 100.0,
            summary,
            grade,
            series,
            server,
            drift,
            pauses,
            latency_trace,
        };
        on_done(&scenario);
        report.push(scenario);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::TraceEntry;
    use crate::workload::GROUP_SIZE;

    #[test]
    fn a_scenario_run_again_gets_its_own_trace_label() {
        let specs: Vec<ScenarioSpec> = [
            ScenarioKind::Baseline,
            ScenarioKind::High,
            ScenarioKind::Baseline,
            ScenarioKind::Baseline,
        ]
        .iter()
        .map(|k| k.defaults(true))
        .collect();
        let labels: Vec<String> = (0..specs.len()).map(|i| trace_label(&specs, i)).collect();
        assert_eq!(labels, ["baseline", "high", "baseline#2", "baseline#3"]);
    }

    #[test]
    fn trace_rows_are_written_in_order_of_arrival() {
        let mut trace = LatencyTrace::new(10);
        for (at_us, latency_us, connection) in [(30, 5, 2), (10, 7, 1), (10, 6, 0)] {
            trace.entries.push(TraceEntry {
                at_us,
                latency_us,
                connection,
            });
        }
        trace.dropped = 4;
        let mut out = Vec::new();
        let written = write_trace_rows(&mut out, "high", trace).unwrap();
        assert_eq!(
            written,
            TraceReport {
                messages: 3,
                dropped: 4
            }
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "high,10,6,0\nhigh,10,7,1\nhigh,30,5,2\n"
        );
    }

    #[test]
    fn throughput_target_only_for_steady_open_loop() {
        assert_eq!(
            intended_per_s(ScenarioKind::High, Workload::Echo, None, GROUP_SIZE),
            None
        );
        assert_eq!(
            intended_per_s(ScenarioKind::High, Workload::Echo, Some(1000.0), GROUP_SIZE),
            Some(1000.0)
        );
        assert_eq!(
            intended_per_s(ScenarioKind::Ramp, Workload::Echo, Some(1000.0), GROUP_SIZE),
            None
        );
        assert_eq!(
            intended_per_s(
                ScenarioKind::Baseline,
                Workload::Publish,
                Some(100.0),
                GROUP_SIZE
            ),
            Some(100.0 * GROUP_SIZE as f64)
        );
    }
}
