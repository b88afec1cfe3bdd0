//! The command line (argh) and its translation into a [`SuiteConfig`].

use std::time::Duration;

use argh::FromArgs;

use crate::pauses::{SAMPLE_INTERVAL_US_MAX, SAMPLE_INTERVAL_US_MIN};
use crate::scenario::{parse_list, RunSettings, ScenarioKind};
use crate::suite::SuiteConfig;
use crate::url::WsUrl;
use crate::workload::Workload;
use ws_uring_readiness::NAP_MAX_US_LIMIT;

/// Coarsest `--send-tick-us` accepted: beyond it the grid, not the server,
/// would be what a run measures.
const SEND_TICK_US_MAX: u64 = 10_000;

/// Load generator for ws-uring (and any RFC 6455 echo server): runs scenarios,
/// grades them A+..F, writes JSON and HTML reports.
#[derive(FromArgs, Debug, Clone, PartialEq)]
pub struct Args {
    /// websocket URL (default ws://127.0.0.1:8765/ws)
    #[argh(option, default = "String::from(\"ws://127.0.0.1:8765/ws\")")]
    pub url: String,

    /// scenarios, comma-separated: baseline, moderate, high, extreme, ramp,
    /// spike, endurance, churn, all (default: the full suite)
    #[argh(option)]
    pub scenario: Option<String>,

    /// workload: echo, ping, direct, publish, anycast (default ping)
    #[argh(option, default = "String::from(\"ping\")")]
    pub workload: String,

    /// connections (overrides each scenario's N)
    #[argh(option)]
    pub connections: Option<usize>,

    /// open loop: total messages per second over all connections; latency is
    /// measured from each message's intended send time (default: closed loop)
    #[argh(option)]
    pub rate: Option<f64>,

    /// open loop: a thread sleeping for its next sends wakes on this grid of
    /// microseconds, so connections due within one tick share a wake-up
    /// (default 250; 0 wakes for each send time exactly). Latency is still
    /// measured from each message's intended time.
    #[argh(option, default = "250")]
    pub send_tick_us: u64,

    /// microseconds an engine thread with nothing to do may wait for its
    /// sockets and send timers itself (epoll_wait) before it parks through
    /// glommio, which costs ~10 system calls a wake-up (default 5000; 0:
    /// never; at most 100000). Sends and replies are never late for it.
    #[argh(option, default = "crate::engine::NAP_MAX_DEFAULT.as_micros() as u64")]
    pub nap_max_us: u64,

    /// run a pause sampler on every CPU the process may use, waking every
    /// this many microseconds at real-time priority (where allowed): their
    /// lateness shows the machine itself stopping, as a VM's host can. 1000 is
    /// jHiccup's interval (default 0: no samplers, because their wake-ups
    /// slow a loadgen that has one core; else 100 to 100000)
    #[argh(option, default = "0")]
    pub pause_sample_us: u64,

    /// do not sample the server during scenarios (its /metrics.json once a
    /// second, else its process's CPU and memory): for runs that measure
    /// the server themselves, such as side-by-side comparisons, where the
    /// request would be work on the measured server's core that a server
    /// without /metrics.json does not get
    #[argh(switch)]
    pub no_server_sample: bool,

    /// measured (steady) phase: 30, 30s, 500ms, 2m (overrides each scenario's)
    #[argh(option)]
    pub duration: Option<String>,

    /// executor threads, each pinned to one core (default: all allowed cores)
    #[argh(option)]
    pub threads: Option<usize>,

    /// short run of baseline + high
    #[argh(switch)]
    pub quick: bool,

    /// write the results as JSON to this file
    #[argh(option)]
    pub output: Option<String>,

    /// write a self-contained HTML report to this file
    #[argh(option)]
    pub report: Option<String>,

    /// write every measured message to this CSV file (scenario, t_us since
    /// the measured window began, latency_us, connection), at most 8388608
    /// a thread: whether a tail is made of slow moments or of slow
    /// connections (scripts/latency_trace.py reads it)
    #[argh(option)]
    pub latency_trace: Option<String>,

    /// log per-second figures and connection errors
    #[argh(switch, short = 'v')]
    pub verbose: bool,

    /// closed loop: messages in flight per connection (default 1)
    #[argh(option, default = "1")]
    pub in_flight: usize,

    /// payload bytes per message (default 64)
    #[argh(option, default = "64")]
    pub size: usize,

    /// connections per group for publish and anycast (default 10; the whole
    /// run in one group for a fan-out test: --group-size 2000)
    #[argh(option, default = "crate::workload::GROUP_SIZE")]
    pub group_size: usize,
}

/// Parses `30`, `30s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("bad --duration {text:?} (try 30, 30s, 500ms, 2m)");
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&text[..i], &text[i..]),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(bad()),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn default_threads() -> usize {
    core_affinity::get_core_ids().map_or(1, |c| c.len().max(1))
}

impl Args {
    /// Validates the flags and builds the suite.
    pub fn to_config(&self) -> Result<SuiteConfig, String> {
        let url = WsUrl::parse(&self.url).map_err(|e| e.to_string())?;
        let workload: Workload = self.workload.parse()?;
        let kinds = match (&self.scenario, self.quick) {
            (Some(list), _) => parse_list(list)?,
            (None, true) => ScenarioKind::QUICK.to_vec(),
            (None, false) => ScenarioKind::ALL.to_vec(),
        };
        let duration = self.duration.as_deref().map(parse_duration).transpose()?;
        if let Some(rate) = self.rate {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err("--rate must be a positive number of messages per second".into());
            }
        }
        if self.send_tick_us > SEND_TICK_US_MAX {
            return Err(format!(
                "--send-tick-us must be at most {SEND_TICK_US_MAX} (10 ms), not {}",
                self.send_tick_us
            ));
        }
        if self.nap_max_us > NAP_MAX_US_LIMIT {
            return Err(format!(
                "--nap-max-us must be at most {NAP_MAX_US_LIMIT} (100 ms), not {}",
                self.nap_max_us
            ));
        }
        if self.pause_sample_us != 0
            && !(SAMPLE_INTERVAL_US_MIN..=SAMPLE_INTERVAL_US_MAX).contains(&self.pause_sample_us)
        {
            return Err(format!(
                "--pause-sample-us must be 0 (off) or {SAMPLE_INTERVAL_US_MIN} to {SAMPLE_INTERVAL_US_MAX}, not {}",
                self.pause_sample_us
            ));
        }
        if self.connections == Some(0) {
            return Err("--connections must be at least 1".into());
        }
        if self.threads == Some(0) {
            return Err("--threads must be at least 1".into());
        }
        if self.group_size == 0 || self.group_size > 1_000_000 {
            return Err(format!(
                "--group-size must be 1 to 1000000, not {}",
                self.group_size
            ));
        }
        if self.in_flight == 0 || self.in_flight > 4096 {
            return Err("--in-flight must be between 1 and 4096".into());
        }
        if self.size > 1 << 20 {
            return Err("--size must be at most 1 MiB".into());
        }
        let scenarios = kinds
            .into_iter()
            .map(|kind| {
                let mut spec = kind.defaults(self.quick);
                if let Some(n) = self.connections {
                    spec.connections = n;
                    if kind == ScenarioKind::Churn {
                        // Keep churning a tenth of the connections a second.
                        spec.churn_per_s = (n as f64 / 10.0).max(1.0);
                    }
                }
                if let Some(d) = duration {
                    spec.steady = d;
                }
                spec
            })
            .collect();
        let run_id = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
            % 1_000_000) as u32;
        Ok(SuiteConfig {
            settings: RunSettings {
                url,
                workload,
                rate: self.rate,
                send_tick: Duration::from_micros(self.send_tick_us),
                nap_max: Duration::from_micros(self.nap_max_us),
                in_flight: self.in_flight,
                size: self.size,
                group_size: self.group_size,
                threads: self.threads.unwrap_or_else(default_threads),
                run_id,
                verbose: self.verbose,
            },
            scenarios,
            quick: self.quick,
            progress: true,
            sample_server: !self.no_server_sample,
            pause_sample: Duration::from_micros(self.pause_sample_us),
            latency_trace: self.latency_trace.as_ref().map(std::path::PathBuf::from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        Args::from_args(&["loadgen"], list).map_err(|e| e.output)
    }

    #[test]
    fn accepts_every_documented_flag() {
        let a = args(&[
            "--url",
            "ws://127.0.0.1:9/ws",
            "--scenario",
            "baseline,churn",
            "--workload",
            "echo",
            "--connections",
            "50",
            "--rate",
            "1000",
            "--duration",
            "2s",
            "--threads",
            "1",
            "--quick",
            "--output",
            "o.json",
            "--report",
            "r.html",
            "--verbose",
            "--send-tick-us",
            "0",
            "--pause-sample-us",
            "2000",
            "--no-server-sample",
            "--latency-trace",
            "t.csv",
        ])
        .unwrap();
        let c = a.to_config().unwrap();
        assert_eq!(c.settings.send_tick, Duration::ZERO);
        assert_eq!(c.pause_sample, Duration::from_millis(2));
        assert!(!c.sample_server);
        assert_eq!(c.latency_trace, Some(std::path::PathBuf::from("t.csv")));
        assert_eq!(c.scenarios.len(), 2);
        assert_eq!(c.scenarios[0].connections, 50);
        assert_eq!(c.scenarios[1].steady, Duration::from_secs(2));
        assert_eq!(c.scenarios[1].churn_per_s, 5.0);
        assert_eq!(c.settings.rate, Some(1000.0));
        assert_eq!(c.settings.threads, 1);
        assert_eq!(c.settings.workload, Workload::Echo);
    }

    #[test]
    fn defaults_to_the_full_suite_and_quick_to_two() {
        assert_eq!(args(&[]).unwrap().to_config().unwrap().scenarios.len(), 8);
        let quick = args(&["--quick"]).unwrap().to_config().unwrap();
        let names: Vec<_> = quick.scenarios.iter().map(|s| s.kind).collect();
        assert_eq!(names, ScenarioKind::QUICK.to_vec());
    }

    #[test]
    fn rejects_bad_values() {
        assert!(args(&["--workload", "nope"]).unwrap().to_config().is_err());
        assert!(args(&["--rate", "0"]).unwrap().to_config().is_err());
        assert!(args(&["--url", "http://x"]).unwrap().to_config().is_err());
        assert!(args(&["--duration", "abc"]).unwrap().to_config().is_err());
        let tick = args(&["--send-tick-us", "10001"]).unwrap().to_config();
        assert!(tick.unwrap_err().contains("--send-tick-us"));
        let naps = args(&["--nap-max-us", "100001"]).unwrap().to_config();
        assert!(naps.unwrap_err().contains("--nap-max-us"));
        let pauses = args(&["--pause-sample-us", "100001"]).unwrap().to_config();
        assert!(pauses.unwrap_err().contains("--pause-sample-us"));
        // A real-time thread waking every few microseconds would starve the run.
        let busy = args(&["--pause-sample-us", "99"]).unwrap().to_config();
        assert!(busy.unwrap_err().contains("--pause-sample-us"));
    }

    #[test]
    fn the_help_gives_the_latency_traces_real_bound() {
        // argh wraps the help: compare it with its spaces evened out.
        let help = args(&["--help"]).unwrap_err();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let bound = crate::stats::TRACE_MESSAGES_PER_THREAD_MAX.to_string();
        assert!(help.contains(&format!("at most {bound}")), "{help}");
    }

    #[test]
    fn the_server_is_sampled_unless_told_not_to() {
        assert!(args(&[]).unwrap().to_config().unwrap().sample_server);
        let c = args(&["--no-server-sample"]).unwrap().to_config().unwrap();
        assert!(!c.sample_server);
    }

    #[test]
    fn pause_samplers_are_off_unless_asked_for() {
        let c = args(&[]).unwrap().to_config().unwrap();
        assert_eq!(c.pause_sample, Duration::ZERO);
        let c = args(&["--pause-sample-us", "1000"])
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(c.pause_sample, Duration::from_millis(1));
    }

    #[test]
    fn open_loop_sends_keep_to_a_250_us_grid_by_default() {
        let c = args(&[]).unwrap().to_config().unwrap();
        assert_eq!(c.settings.send_tick, Duration::from_micros(250));
    }

    #[test]
    fn threads_nap_up_to_5_ms_by_default_and_0_turns_naps_off() {
        let c = args(&[]).unwrap().to_config().unwrap();
        assert_eq!(c.settings.nap_max, Duration::from_millis(5));
        let c = args(&["--nap-max-us", "0"]).unwrap().to_config().unwrap();
        assert_eq!(c.settings.nap_max, Duration::ZERO);
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5x").is_err());
    }
}
