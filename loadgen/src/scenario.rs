//! The named scenarios and how each becomes a [`RunPlan`], sans-IO.
//!
//! | scenario | connections | shape |
//! |---|---|---|
//! | baseline | 100 | ramp-up, then steady |
//! | moderate | 500 | ramp-up, then steady |
//! | high | 1000 | ramp-up, then steady |
//! | extreme | 2000 | ramp-up, then steady |
//! | ramp | 1000 | five equal steps up to N, all measured |
//! | spike | 100 + 1000 | N/10 from the start; N more at once a third of the way in |
//! | endurance | 500 | long steady run; latency and server memory drift reported |
//! | churn | 500 | steady, while a tenth of the connections a second close and reopen |

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::engine::{ChurnSpec, RunPlan, SlotSpec};
use crate::url::WsUrl;
use crate::workload::Workload;

const SEC: u64 = 1_000_000_000;

/// One of the named scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScenarioKind {
    Baseline,
    Moderate,
    High,
    Extreme,
    Ramp,
    Spike,
    Endurance,
    Churn,
}

impl ScenarioKind {
    /// The full suite, in the order it runs.
    pub const ALL: [ScenarioKind; 8] = [
        ScenarioKind::Baseline,
        ScenarioKind::Moderate,
        ScenarioKind::High,
        ScenarioKind::Extreme,
        ScenarioKind::Ramp,
        ScenarioKind::Spike,
        ScenarioKind::Endurance,
        ScenarioKind::Churn,
    ];
    /// What `--quick` runs.
    pub const QUICK: [ScenarioKind; 2] = [ScenarioKind::Baseline, ScenarioKind::High];

    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Baseline => "baseline",
            ScenarioKind::Moderate => "moderate",
            ScenarioKind::High => "high",
            ScenarioKind::Extreme => "extreme",
            ScenarioKind::Ramp => "ramp",
            ScenarioKind::Spike => "spike",
            ScenarioKind::Endurance => "endurance",
            ScenarioKind::Churn => "churn",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            ScenarioKind::Baseline
            | ScenarioKind::Moderate
            | ScenarioKind::High
            | ScenarioKind::Extreme => "connections ramp up, then a measured steady phase",
            ScenarioKind::Ramp => {
                "connections step up to N in five equal steps; every step measured"
            }
            ScenarioKind::Spike => {
                "N/10 connections from the start, then N more at once a third of the way in"
            }
            ScenarioKind::Endurance => {
                "a long steady phase; latency and server memory drift reported"
            }
            ScenarioKind::Churn => "steady load while connections close and reopen at a fixed rate",
        }
    }

    /// Default shape; `quick` shortens every phase.
    pub fn defaults(self, quick: bool) -> ScenarioSpec {
        let s = |secs: u64| Duration::from_secs(secs);
        let (connections, ramp_up, steady) = match (self, quick) {
            (ScenarioKind::Baseline, false) => (100, s(2), s(20)),
            (ScenarioKind::Baseline, true) => (100, s(1), s(5)),
            (ScenarioKind::Moderate, false) => (500, s(3), s(20)),
            (ScenarioKind::Moderate, true) => (500, s(2), s(5)),
            (ScenarioKind::High, false) => (1000, s(5), s(20)),
            (ScenarioKind::High, true) => (1000, s(2), s(5)),
            (ScenarioKind::Extreme, false) => (2000, s(5), s(30)),
            (ScenarioKind::Extreme, true) => (2000, s(3), s(5)),
            (ScenarioKind::Ramp, false) => (1000, s(0), s(25)),
            (ScenarioKind::Ramp, true) => (1000, s(0), s(10)),
            (ScenarioKind::Spike, false) => (1000, s(1), s(30)),
            (ScenarioKind::Spike, true) => (1000, s(1), s(9)),
            (ScenarioKind::Endurance, false) => (500, s(5), s(600)),
            (ScenarioKind::Endurance, true) => (500, s(2), s(30)),
            (ScenarioKind::Churn, false) => (500, s(3), s(20)),
            (ScenarioKind::Churn, true) => (500, s(2), s(6)),
        };
        ScenarioSpec {
            kind: self,
            connections,
            ramp_up,
            steady,
            churn_per_s: if self == ScenarioKind::Churn {
                50.0
            } else {
                0.0
            },
        }
    }
}

impl fmt::Display for ScenarioKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScenarioKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScenarioKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            format!("unknown scenario {s:?} (baseline, moderate, high, extreme, ramp, spike, endurance, churn, all)")
        })
    }
}

/// Parses `--scenario`: a comma-separated list, or `all`.
pub fn parse_list(text: &str) -> Result<Vec<ScenarioKind>, String> {
    let mut kinds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "all" {
            kinds.extend(ScenarioKind::ALL);
        } else {
            kinds.push(part.parse()?);
        }
    }
    if kinds.is_empty() {
        return Err("--scenario is empty".into());
    }
    Ok(kinds)
}

/// The shape of one scenario after the command line's overrides.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScenarioSpec {
    pub kind: ScenarioKind,
    pub connections: usize,
    pub ramp_up: Duration,
    /// The measured phase (for ramp and spike: the whole run).
    pub steady: Duration,
    /// Churn: connections closed and reopened per second.
    pub churn_per_s: f64,
}

/// Settings shared by every scenario of a run.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub url: WsUrl,
    pub workload: Workload,
    pub rate: Option<f64>,
    /// Open loop: the grid the threads' send timers are kept to.
    pub send_tick: Duration,
    /// Longest an engine thread naps (zero: never); see `RunPlan`.
    pub nap_max: Duration,
    pub in_flight: usize,
    pub size: usize,
    /// Connections per group (`publish`, `anycast`).
    pub group_size: usize,
    pub threads: usize,
    pub run_id: u32,
    pub verbose: bool,
}

impl ScenarioSpec {
    /// Total run time (ramp-up + steady, or the whole stepped run).
    pub fn total(&self) -> Duration {
        match self.kind {
            ScenarioKind::Ramp | ScenarioKind::Spike => self.steady,
            _ => self.ramp_up + self.steady,
        }
    }

    /// Turns the shape into connection slots and windows.
    pub fn plan(&self, settings: &RunSettings) -> RunPlan {
        let n = self.connections.max(1);
        let ramp_ns = self.ramp_up.as_nanos() as u64;
        let total_ns = self.total().as_nanos() as u64;
        let spread =
            |i: usize, count: usize, over_ns: u64| over_ns * i as u64 / count.max(1) as u64;
        let (slots, measure_from_ns) = match self.kind {
            ScenarioKind::Ramp => {
                let steps = 5;
                let step_ns = total_ns / steps as u64;
                let slots = (0..n)
                    .map(|i| SlotSpec {
                        start_ns: (i * steps / n) as u64 * step_ns,
                        churn: None,
                    })
                    .collect();
                (slots, 0)
            }
            ScenarioKind::Spike => {
                let base = (n / 10).max(1);
                let spike_at = total_ns / 3;
                let slots = (0..base)
                    .map(|i| SlotSpec {
                        start_ns: spread(i, base, ramp_ns),
                        churn: None,
                    })
                    .chain((0..n).map(|_| SlotSpec {
                        start_ns: spike_at,
                        churn: None,
                    }))
                    .collect();
                (slots, 0)
            }
            ScenarioKind::Churn => {
                let per_s = if self.churn_per_s > 0.0 {
                    self.churn_per_s
                } else {
                    1.0
                };
                let lifetime_ns = ((n as f64 / per_s) * SEC as f64) as u64;
                let slots = (0..n)
                    .map(|i| {
                        let start_ns = spread(i, n, ramp_ns);
                        // First closes spread evenly from the end of the ramp-up.
                        let first_close = ramp_ns + lifetime_ns * (i as u64 + 1) / n as u64;
                        SlotSpec {
                            start_ns,
                            churn: Some(ChurnSpec {
                                first_lifetime_ns: first_close - start_ns,
                                lifetime_ns,
                            }),
                        }
                    })
                    .collect();
                (slots, ramp_ns)
            }
            _ => {
                let slots = (0..n)
                    .map(|i| SlotSpec {
                        start_ns: spread(i, n, ramp_ns),
                        churn: None,
                    })
                    .collect();
                (slots, ramp_ns)
            }
        };
        RunPlan {
            name: self.kind.name().to_string(),
            url: settings.url.clone(),
            workload: settings.workload,
            slots,
            duration: self.total(),
            measure_from: Duration::from_nanos(measure_from_ns),
            rate: settings.rate,
            send_tick: settings.send_tick,
            nap_max: settings.nap_max,
            in_flight: settings.in_flight,
            size: settings.size,
            group_size: settings.group_size,
            threads: settings.threads,
            run_id: settings.run_id,
            grace: Duration::from_secs(1),
            verbose: settings.verbose,
            // The suite turns it on for `--latency-trace`.
            latency_trace: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RunSettings {
        RunSettings {
            url: WsUrl::parse("ws://127.0.0.1:1/ws").unwrap(),
            workload: Workload::Echo,
            rate: None,
            send_tick: Duration::from_micros(250),
            nap_max: crate::engine::NAP_MAX_DEFAULT,
            in_flight: 1,
            size: 64,
            group_size: crate::workload::GROUP_SIZE,
            threads: 2,
            run_id: 1,
            verbose: false,
        }
    }

    #[test]
    fn steady_scenarios_ramp_then_measure() {
        let spec = ScenarioKind::High.defaults(true);
        let plan = spec.plan(&settings());
        assert_eq!(plan.slots.len(), 1000);
        assert_eq!(plan.measure_from, Duration::from_secs(2));
        assert_eq!(plan.duration, Duration::from_secs(7));
        assert!(plan.slots.iter().all(|s| s.start_ns < 2 * SEC));
    }

    #[test]
    fn ramp_steps_up_in_five() {
        let plan = ScenarioKind::Ramp.defaults(true).plan(&settings());
        let mut starts: Vec<u64> = plan.slots.iter().map(|s| s.start_ns).collect();
        starts.dedup();
        assert_eq!(starts, vec![0, 2 * SEC, 4 * SEC, 6 * SEC, 8 * SEC]);
    }

    #[test]
    fn spike_opens_n_at_once_a_third_in() {
        let plan = ScenarioKind::Spike.defaults(true).plan(&settings());
        assert_eq!(plan.slots.len(), 1100);
        assert_eq!(
            plan.slots.iter().filter(|s| s.start_ns == 3 * SEC).count(),
            1000
        );
    }

    #[test]
    fn churn_closes_at_the_requested_rate() {
        let spec = ScenarioKind::Churn.defaults(true);
        let plan = spec.plan(&settings());
        // 500 connections at 50/s: each lives 10 s.
        let churn = plan.slots[0].churn.unwrap();
        assert_eq!(churn.lifetime_ns, 10 * SEC);
        // First closes are spread over one lifetime after the ramp-up.
        let first_closes: Vec<u64> = plan
            .slots
            .iter()
            .map(|s| s.start_ns + s.churn.unwrap().first_lifetime_ns)
            .collect();
        let in_first_second = first_closes.iter().filter(|&&t| t <= 3 * SEC).count();
        assert_eq!(in_first_second, 50);
    }

    #[test]
    fn parses_scenario_lists() {
        assert_eq!(
            parse_list("baseline,high").unwrap(),
            ScenarioKind::QUICK.to_vec()
        );
        assert_eq!(parse_list("all").unwrap().len(), 8);
        assert!(parse_list("bogus").is_err());
    }
}
