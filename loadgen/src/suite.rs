//! Runs the chosen scenarios one after the other and assembles the report.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::engine::{self, EngineError};
use crate::pauses::PauseSampler;
use crate::progress::Progress;
use crate::report::{drift, grade_summary, Report, RunConfig, ScenarioReport};
use crate::scenario::{RunSettings, ScenarioKind, ScenarioSpec};
use crate::server_metrics::Sampler;
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
            in_flight: s.in_flight,
            message_bytes: s.size,
            threads: s.threads,
            quick: config.quick,
        },
    );
    let addr = s.url.socket_addr().map_err(EngineError::Url)?;
    for (i, spec) in config.scenarios.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(PAUSE_BETWEEN);
        }
        let mut settings = s.clone();
        settings.run_id = s.run_id.wrapping_add(i as u32);
        let plan = spec.plan(&settings);
        let sampler = config
            .sample_server
            .then(|| Sampler::start(addr, s.url.host_header()));
        let pause_sampler =
            (!config.pause_sample.is_zero()).then(|| PauseSampler::start(config.pause_sample));
        let mut progress = config
            .progress
            .then(|| Progress::new(spec.kind.name(), plan.duration, s.verbose));
        let outcome = engine::run(&plan, |snap| {
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
        };
        on_done(&scenario);
        report.push(scenario);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::GROUP_SIZE;

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
