//! The machine's own pauses during a scenario, measured the way jHiccup
//! does: one thread per CPU, pinned, at real-time priority where the
//! process may take it, sleeps `interval` at a time and records how late
//! each wake-up is.
//!
//! Why: a tail latency is only the server's if the machine kept running.
//! A virtual machine whose vCPUs the host stops, or a kernel with
//! interrupts off, stops the server and the load generator alike, and
//! every message due meanwhile is late by the whole pause and by the
//! backlog it leaves. A `SCHED_FIFO` thread preempts every ordinary
//! thread, so no server or load generator work can make it late; when the
//! samplers of *every* CPU were late over the same moment, the machine
//! stopped. A sampler without real-time priority (no `CAP_SYS_NICE`) also
//! waits for a CPU like any thread, and the report says so.
//!
//! The sans-IO part ([`PauseLog`], [`summarize`]) is fed samples; the
//! threads ([`PauseSampler`]) only sleep and read the clock.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats::{histogram, LatencySummary, LATENCY_MAX_US};

/// Finest `--pause-sample-us` accepted: a real-time thread waking more
/// often would take a real share of every CPU from the run it measures.
pub const SAMPLE_INTERVAL_US_MIN: u64 = 100;

/// Coarsest `--pause-sample-us` accepted: a pause shorter than the interval
/// can pass between two wake-ups unseen.
pub const SAMPLE_INTERVAL_US_MAX: u64 = 100_000;

/// A wake-up later than this is a pause.
pub const PAUSE_THRESHOLD: Duration = Duration::from_millis(2);

/// Late wake-ups kept per CPU; later ones are counted, not kept.
pub const LATE_WAKES_PER_CPU_MAX: usize = 10_000;

/// Pauses listed in the report; the rest are counted.
pub const PAUSES_LISTED_MAX: usize = 1_000;

/// One wake-up later than [`PAUSE_THRESHOLD`], in nanoseconds since the
/// sampler's epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LateWake {
    pub woke_ns: u64,
    pub late_ns: u64,
}

/// What one CPU's sampler saw.
#[derive(Clone, Debug)]
pub struct PauseLog {
    pub cpu: usize,
    late_us: Histogram<u64>,
    late_wakes: Vec<LateWake>,
    late_wakes_dropped: u64,
}

impl PauseLog {
    pub fn new(cpu: usize) -> PauseLog {
        PauseLog {
            cpu,
            late_us: histogram(2),
            late_wakes: Vec::new(),
            late_wakes_dropped: 0,
        }
    }

    /// One wake-up at `woke_ns` (since the epoch), `late_ns` after it was due.
    pub fn record(&mut self, woke_ns: u64, late_ns: u64) {
        self.late_us
            .saturating_record((late_ns / 1_000).clamp(1, LATENCY_MAX_US));
        if late_ns > PAUSE_THRESHOLD.as_nanos() as u64 {
            if self.late_wakes.len() < LATE_WAKES_PER_CPU_MAX {
                self.late_wakes.push(LateWake { woke_ns, late_ns });
            } else {
                self.late_wakes_dropped += 1;
            }
        }
    }

    pub fn samples(&self) -> u64 {
        self.late_us.len()
    }
}

/// One CPU's figures in the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuPauses {
    pub cpu: usize,
    pub samples: u64,
    pub late_p50_us: u64,
    pub late_p99_us: u64,
    pub late_max_us: u64,
    /// Wake-ups later than the threshold.
    pub late_wakes: u64,
}

/// A chain of late wake-ups, of one or more CPUs, each overlapping the next.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    /// When the first was due, in seconds since the scenario started (3
    /// decimals; negative before it).
    pub t_s: f64,
    /// The largest lateness of one wake-up in it, in microseconds.
    pub longest_us: u64,
    /// How many CPUs' samplers were late in it.
    pub cpus: usize,
    /// The longest stretch in it during which every sampled CPU (two or
    /// more) was overdue at once, in microseconds (0: never).
    pub all_cpus_us: u64,
}

/// The `pauses` object of a scenario in the JSON report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PauseReport {
    /// `SCHED_FIFO` (lateness is the machine's) or `SCHED_OTHER` (no
    /// real-time priority: lateness includes waiting for a CPU).
    pub policy: String,
    pub interval_us: u64,
    pub threshold_us: u64,
    pub per_cpu: Vec<CpuPauses>,
    /// Pauses in time order, at most [`PAUSES_LISTED_MAX`].
    pub pauses: Vec<Pause>,
    pub pauses_total: u64,
    /// Pauses with a stretch over the threshold during which every sampled
    /// CPU was overdue at once: the machine stopped (never with one CPU).
    pub all_cpus: u64,
    pub all_cpus_longest_us: u64,
    /// Largest lateness of a wake-up that came in each second of the
    /// scenario (0: none over the threshold), aligned with the `series`
    /// (whose latencies are filed by the second they were measured in).
    pub per_second_longest_us: Vec<u64>,
    /// Longest stretch of every CPU overdue at once that ended in each
    /// second (0: none over the threshold), aligned with the `series`.
    pub per_second_all_cpus_us: Vec<u64>,
    /// Late wake-ups not kept because a CPU had over
    /// [`LATE_WAKES_PER_CPU_MAX`]: the pause list is then incomplete.
    pub late_wakes_dropped: u64,
}

impl PauseReport {
    /// One line for the table and the HTML report.
    pub fn summary_line(&self) -> String {
        let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
        let p99s: Vec<String> = self
            .per_cpu
            .iter()
            .map(|c| c.late_p99_us.to_string())
            .collect();
        let cpus = self.per_cpu.len();
        let mut line = format!(
            "machine pauses ({} sampler{} every {} us): ",
            self.policy,
            if cpus == 1 { "" } else { "s" },
            self.interval_us
        );
        if cpus >= 2 {
            line.push_str(&format!(
                "{} with all {cpus} CPUs stopped at once",
                self.all_cpus
            ));
            if self.all_cpus > 0 {
                line.push_str(&format!(" (longest {} ms)", ms(self.all_cpus_longest_us)));
            }
            line.push_str(", ");
        } else {
            line.push_str("1 CPU sampled: stops of the whole machine cannot be told apart, ");
        }
        line.push_str(&format!(
            "{} late wake-up chain{} over {} ms in all; late p99 per CPU {} us",
            self.pauses_total,
            if self.pauses_total == 1 { "" } else { "s" },
            ms(self.threshold_us),
            p99s.join(" / ")
        ));
        if self.policy != "SCHED_FIFO" {
            line.push_str(" (no real-time priority: lateness includes waiting for a CPU)");
        }
        if self.late_wakes_dropped > 0 {
            line.push_str(&format!(
                " (incomplete, counts are lower bounds: {} late wake-ups not kept)",
                self.late_wakes_dropped
            ));
        }
        line
    }
}

/// Builds the report from every CPU's log. `offset_ns` is how long after the
/// samplers' epoch the scenario started; `seconds` how many per-second
/// entries to give (the length of the scenario's series).
pub fn summarize(
    logs: &[PauseLog],
    policy: &str,
    interval: Duration,
    offset_ns: u64,
    seconds: usize,
) -> PauseReport {
    let per_cpu = logs
        .iter()
        .map(|log| {
            let late = LatencySummary::from_histogram(&log.late_us);
            CpuPauses {
                cpu: log.cpu,
                samples: late.count,
                late_p50_us: late.p50,
                late_p99_us: late.p99,
                late_max_us: late.max,
                late_wakes: log.late_wakes.len() as u64 + log.late_wakes_dropped,
            }
        })
        .collect();

    // Each late wake-up covers [due, woke] on its CPU; overlapping ones, on
    // any CPUs, are one pause.
    let mut spans: Vec<Span> = logs
        .iter()
        .enumerate()
        .flat_map(|(cpu, log)| {
            log.late_wakes.iter().map(move |w| Span {
                due: w.woke_ns.saturating_sub(w.late_ns),
                woke: w.woke_ns,
                cpu,
            })
        })
        .collect();
    spans.sort_unstable_by_key(|s| (s.due, s.woke, s.cpu));
    let mut report = PauseReport {
        policy: policy.to_string(),
        interval_us: interval.as_micros() as u64,
        threshold_us: PAUSE_THRESHOLD.as_micros() as u64,
        per_cpu,
        per_second_longest_us: vec![0; seconds],
        per_second_all_cpus_us: vec![0; seconds],
        late_wakes_dropped: logs.iter().map(|l| l.late_wakes_dropped).sum(),
        ..PauseReport::default()
    };
    let second_of = |ns: u64| {
        ns.checked_sub(offset_ns)
            .map(|ns| (ns / 1_000_000_000) as usize)
    };
    let mut chain_start = 0;
    while chain_start < spans.len() {
        let mut chain_end = chain_start + 1;
        let mut reach = spans[chain_start].woke;
        while chain_end < spans.len() && spans[chain_end].due <= reach {
            reach = reach.max(spans[chain_end].woke);
            chain_end += 1;
        }
        let chain = &spans[chain_start..chain_end];
        chain_start = chain_end;

        let mut seen = vec![false; logs.len()];
        let mut longest_ns = 0;
        for span in chain {
            seen[span.cpu] = true;
            longest_ns = longest_ns.max(span.woke - span.due);
            if let Some(slot) =
                second_of(span.woke).and_then(|s| report.per_second_longest_us.get_mut(s))
            {
                *slot = (*slot).max((span.woke - span.due) / 1_000);
            }
        }
        let mut all_cpus_ns = 0;
        if logs.len() >= 2 {
            for (end, length_ns) in shared_stretches(chain, logs.len()) {
                all_cpus_ns = all_cpus_ns.max(length_ns);
                if length_ns > PAUSE_THRESHOLD.as_nanos() as u64 {
                    if let Some(slot) =
                        second_of(end).and_then(|s| report.per_second_all_cpus_us.get_mut(s))
                    {
                        *slot = (*slot).max(length_ns / 1_000);
                    }
                }
            }
        }
        report.pauses_total += 1;
        if all_cpus_ns > PAUSE_THRESHOLD.as_nanos() as u64 {
            report.all_cpus += 1;
            report.all_cpus_longest_us = report.all_cpus_longest_us.max(all_cpus_ns / 1_000);
        }
        if report.pauses.len() < PAUSES_LISTED_MAX {
            let t_ns = chain[0].due as i128 - offset_ns as i128;
            report.pauses.push(Pause {
                // `+ 0.0` turns a rounded -0.0 into 0.0.
                t_s: (t_ns as f64 / 1e6).round() / 1e3 + 0.0,
                longest_us: longest_ns / 1_000,
                cpus: seen.iter().filter(|&&s| s).count(),
                all_cpus_us: all_cpus_ns / 1_000,
            });
        }
    }
    report
}

/// One late wake-up: overdue on `cpu` from `due` to `woke` (ns).
#[derive(Clone, Copy, Debug)]
struct Span {
    due: u64,
    woke: u64,
    cpu: usize,
}

/// The stretches of `chain` during which all `cpus` CPUs were overdue at
/// once, as (end, length) in ns. A CPU's own late wake-ups never overlap
/// (it sleeps again only after waking), so a count of open spans equal to
/// `cpus` means every CPU is overdue.
fn shared_stretches(chain: &[Span], cpus: usize) -> Vec<(u64, u64)> {
    // Ends sort before starts at the same instant: touching is not overlap.
    let mut edges: Vec<(u64, i32)> = chain
        .iter()
        .flat_map(|s| [(s.due, 1), (s.woke, -1)])
        .collect();
    edges.sort_unstable();
    let mut open = 0usize;
    let mut since = None;
    let mut stretches = Vec::new();
    for (at, step) in edges {
        if step > 0 {
            open += 1;
            if open == cpus {
                since = Some(at);
            }
        } else {
            if let Some(start) = since.take() {
                stretches.push((at, at - start));
            }
            open = open.saturating_sub(1);
        }
    }
    stretches
}

/// The sampler threads of one scenario; [`PauseSampler::stop`] returns
/// what they saw. Dropping it stops them too.
pub struct PauseSampler {
    stop: Arc<AtomicBool>,
    epoch: Instant,
    interval: Duration,
    realtime: Arc<AtomicBool>,
    /// Samplers that have recorded their first wake-up.
    sampling: Arc<AtomicUsize>,
    handles: Vec<JoinHandle<Option<PauseLog>>>,
}

impl PauseSampler {
    /// Starts one sampler per CPU this process may run on, each waking every
    /// `interval`. A sampler that cannot be made or pinned to its CPU is
    /// left out (and logged).
    pub fn start(interval: Duration) -> PauseSampler {
        let stop = Arc::new(AtomicBool::new(false));
        // Cleared by any sampler refused real-time priority.
        let realtime = Arc::new(AtomicBool::new(true));
        let sampling = Arc::new(AtomicUsize::new(0));
        let epoch = Instant::now();
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let handles = cores
            .into_iter()
            .filter_map(|core| {
                let stop = Arc::clone(&stop);
                let realtime = Arc::clone(&realtime);
                let sampling = Arc::clone(&sampling);
                std::thread::Builder::new()
                    .name(format!("pause-sampler-{}", core.id))
                    .spawn(move || {
                        if !core_affinity::set_for_current(core) {
                            log::warn!("pause sampler: cannot pin to CPU {}: left out", core.id);
                            return None;
                        }
                        if !take_realtime_priority() {
                            realtime.store(false, Ordering::Relaxed);
                        }
                        Some(sample(core.id, epoch, interval, &stop, &sampling))
                    })
                    .map_err(|e| log::warn!("pause sampler for CPU {}: {e}", core.id))
                    .ok()
            })
            .collect();
        PauseSampler {
            stop,
            epoch,
            interval,
            realtime,
            sampling,
            handles,
        }
    }

    /// Waits until every sampler has recorded a wake-up (false after
    /// `limit`, or if none was started).
    pub fn wait_until_sampling(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.sampling.load(Ordering::Acquire) < self.handles.len() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        !self.handles.is_empty()
    }

    /// Stops the samplers and reports what they saw, aligned with a
    /// scenario that began at `scenario_epoch` and has `seconds` seconds of
    /// series.
    pub fn stop(mut self, scenario_epoch: Instant, seconds: usize) -> PauseReport {
        let logs = self.join();
        let policy = if self.realtime.load(Ordering::Relaxed) {
            "SCHED_FIFO"
        } else {
            "SCHED_OTHER"
        };
        let offset_ns = scenario_epoch
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64;
        summarize(&logs, policy, self.interval, offset_ns, seconds)
    }

    fn join(&mut self) -> Vec<PauseLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.handles
            .drain(..)
            .filter_map(|h| match h.join() {
                Ok(log) => log,
                Err(_) => {
                    log::warn!("a pause sampler panicked: its CPU is left out");
                    None
                }
            })
            .collect()
    }
}

impl Drop for PauseSampler {
    fn drop(&mut self) {
        // A run that failed never called `stop`: real-time threads must not
        // outlive it.
        self.join();
    }
}

/// Lowest real-time priority: above every ordinary thread, below the
/// kernel's own real-time threads. False when not permitted.
fn take_realtime_priority() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: `param` is a valid sched_param for the duration of the call;
    // pid 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

/// Sleeps to a fixed-rate schedule and records each wake-up's lateness.
/// Every deadline comes from the previous one, never from a fresh clock
/// reading, so a stop at any instant falls inside some [due, woke].
fn sample(
    cpu: usize,
    epoch: Instant,
    interval: Duration,
    stop: &AtomicBool,
    sampling: &AtomicUsize,
) -> PauseLog {
    let mut log = PauseLog::new(cpu);
    let mut due = Instant::now() + interval;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let woke = Instant::now();
        log.record(
            woke.duration_since(epoch).as_nanos() as u64,
            woke.saturating_duration_since(due).as_nanos() as u64,
        );
        if log.samples() == 1 {
            sampling.fetch_add(1, Ordering::Release);
        }
        // After a pause longer than the interval, start again from the
        // wake-up rather than crowd the missed wake-ups in.
        due = if woke > due + interval {
            woke + interval
        } else {
            due + interval
        };
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;

    /// A CPU's log: 100 wake-ups 50 µs late, then `late_wakes` as
    /// (woke, late) in µs.
    fn log(cpu: usize, late_wakes: &[(u64, u64)]) -> PauseLog {
        let mut log = PauseLog::new(cpu);
        for _ in 0..100 {
            log.record(0, 50 * US);
        }
        for &(woke_us, late_us) in late_wakes {
            log.record(woke_us * US, late_us * US);
        }
        log
    }

    fn fifo(logs: &[PauseLog], seconds: usize) -> PauseReport {
        summarize(logs, "SCHED_FIFO", Duration::from_millis(1), 0, seconds)
    }

    #[test]
    fn every_cpu_overdue_at_once_is_the_machine_stopping_for_as_long_as_they_all_were() {
        // CPU 0 due at 1000 ms, woke at 1015; CPU 1 due at 1003, woke at
        // 1015: both overdue from 1003 to 1015. CPU 0 alone at 2500 ms.
        let logs = [
            log(0, &[(1_015_000, 15_000), (2_505_000, 5_000)]),
            log(1, &[(1_015_000, 12_000), (4_000_000, 1_000)]),
        ];
        let report = fifo(&logs, 5);
        assert_eq!(report.pauses_total, 2);
        assert_eq!(report.all_cpus, 1);
        assert_eq!(report.all_cpus_longest_us, 12_000);
        assert_eq!(
            report.pauses,
            vec![
                Pause {
                    t_s: 1.0,
                    longest_us: 15_000,
                    cpus: 2,
                    all_cpus_us: 12_000,
                },
                Pause {
                    t_s: 2.5,
                    longest_us: 5_000,
                    cpus: 1,
                    all_cpus_us: 0,
                },
            ]
        );
        assert_eq!(report.per_second_longest_us, vec![0, 15_000, 5_000, 0, 0]);
        assert_eq!(report.per_second_all_cpus_us, vec![0, 12_000, 0, 0, 0]);
        assert_eq!(report.per_cpu[0].late_wakes, 2);
        assert_eq!(
            report.per_cpu[1].late_wakes, 1,
            "1 ms is under the threshold"
        );
        assert_eq!(report.per_cpu[1].samples, 102);
        assert_eq!(report.per_cpu[0].late_p50_us, 50);
        assert!((14_900..=15_100).contains(&report.per_cpu[0].late_max_us));
    }

    #[test]
    fn a_chain_of_late_cpus_is_not_a_stop_unless_they_overlap_all_at_once() {
        // Three CPUs late one after another, each overlapping the next:
        // one chain, never all three at once.
        let chain = [
            log(0, &[(3_000, 3_000)]),
            log(1, &[(5_500, 3_000)]),
            log(2, &[(8_000, 3_000)]),
        ];
        let report = fifo(&chain, 1);
        assert_eq!(report.pauses_total, 1);
        assert_eq!(report.pauses[0].cpus, 3);
        assert_eq!(report.pauses[0].all_cpus_us, 0);
        assert_eq!(report.all_cpus, 0);
        // One CPU 37 ms late, the other 2.5 ms inside it: the machine
        // stopped for 2.5 ms, not 37.
        let one_long = [
            log(0, &[(1_037_000, 37_000)]),
            log(1, &[(1_020_000, 2_500)]),
        ];
        let report = fifo(&one_long, 2);
        assert_eq!(report.pauses[0].longest_us, 37_000);
        assert_eq!(report.all_cpus_longest_us, 2_500);
        assert_eq!(report.all_cpus, 1);
    }

    #[test]
    fn pauses_that_do_not_overlap_stay_apart() {
        let logs = [log(0, &[(1_010_000, 5_000)]), log(1, &[(1_020_000, 5_000)])];
        let report = fifo(&logs, 2);
        assert_eq!(report.pauses_total, 2);
        assert_eq!(report.all_cpus, 0);
        assert!(report.pauses.iter().all(|p| p.cpus == 1));
    }

    #[test]
    fn seconds_are_the_scenarios_and_a_pause_is_filed_where_its_wake_up_came() {
        // The samplers began 500 ms before the scenario; both CPUs stopped
        // from 3.99 s to 4.01 s of the scenario.
        let logs = [
            log(0, &[(300_000, 10_000), (4_510_000, 20_000)]),
            log(1, &[(4_510_000, 20_000)]),
        ];
        let report = summarize(&logs, "SCHED_FIFO", Duration::from_millis(1), 500 * MS, 6);
        assert_eq!(report.pauses[0].t_s, -0.21);
        assert_eq!(report.pauses[1].t_s, 3.99);
        assert_eq!(report.per_second_longest_us, vec![0, 0, 0, 0, 20_000, 0]);
        assert_eq!(report.per_second_all_cpus_us, vec![0, 0, 0, 0, 20_000, 0]);
    }

    #[test]
    fn one_cpu_sampled_never_counts_as_the_machine_stopping() {
        let report = fifo(&[log(0, &[(1_000_000, 30_000)])], 1);
        assert_eq!(report.pauses_total, 1);
        assert_eq!(report.all_cpus, 0);
        assert_eq!(report.pauses[0].all_cpus_us, 0);
        assert!(
            report.summary_line().contains("1 CPU sampled"),
            "{}",
            report.summary_line()
        );
    }

    #[test]
    fn late_wakes_and_listed_pauses_are_bounded() {
        let mut one = PauseLog::new(0);
        for i in 0..(LATE_WAKES_PER_CPU_MAX as u64 + 7) {
            one.record(i * 10 * MS, 3 * MS);
        }
        let report = fifo(&[one], 1);
        assert_eq!(report.late_wakes_dropped, 7);
        assert_eq!(
            report.per_cpu[0].late_wakes,
            LATE_WAKES_PER_CPU_MAX as u64 + 7
        );
        assert_eq!(report.pauses_total, LATE_WAKES_PER_CPU_MAX as u64);
        assert_eq!(report.pauses.len(), PAUSES_LISTED_MAX);
        assert!(report.summary_line().contains("lower bounds"));
    }

    #[test]
    fn the_summary_line_names_the_machine_wide_stops() {
        let logs = [
            log(0, &[(1_015_000, 15_000)]),
            log(1, &[(1_015_000, 12_000)]),
        ];
        assert_eq!(
            fifo(&logs, 2).summary_line(),
            "machine pauses (SCHED_FIFO samplers every 1000 us): 1 with all 2 CPUs stopped at once \
             (longest 12.00 ms), 1 late wake-up chain over 2.00 ms in all; late p99 per CPU 50 / 50 us"
        );
        let other = summarize(&logs, "SCHED_OTHER", Duration::from_millis(1), 0, 2);
        assert!(other.summary_line().contains("includes waiting for a CPU"));
    }

    #[test]
    fn samplers_cover_every_cpu_start_and_stop() {
        let sampler = PauseSampler::start(Duration::from_millis(1));
        assert!(sampler.wait_until_sampling(Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(100));
        let report = sampler.stop(Instant::now(), 1);
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        assert_eq!(report.per_cpu.len(), cores.len());
        for cpu in &report.per_cpu {
            assert!(cpu.samples >= 10, "{cpu:?}");
        }
        assert!(["SCHED_FIFO", "SCHED_OTHER"].contains(&report.policy.as_str()));
        assert_eq!(report.interval_us, 1_000);
    }

    #[test]
    fn dropping_the_sampler_stops_its_threads() {
        let sampler = PauseSampler::start(Duration::from_millis(1));
        assert!(sampler.wait_until_sampling(Duration::from_secs(10)));
        // Each thread holds a clone of the stop flag until it has returned.
        let stop = Arc::clone(&sampler.stop);
        assert!(Arc::strong_count(&stop) > 2);
        drop(sampler);
        assert_eq!(Arc::strong_count(&stop), 1);
    }
}
