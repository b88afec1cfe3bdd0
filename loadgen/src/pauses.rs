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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Coarsest `--pause-sample-us` accepted: a pause shorter than the interval
/// can pass between two wake-ups unseen.
pub const SAMPLE_INTERVAL_US_MAX: u64 = 100_000;

/// A wake-up later than this is a pause.
pub const PAUSE_THRESHOLD: Duration = Duration::from_millis(2);

/// Late wake-ups kept per CPU; later ones are counted, not kept.
pub const LATE_WAKES_PER_CPU_MAX: usize = 10_000;

/// Pauses listed in the report; the rest are counted.
pub const PAUSES_LISTED_MAX: usize = 1_000;

/// Highest lateness the histograms resolve (longer ones are clamped).
const LATE_MAX_US: u64 = 60_000_000;

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
            late_us: Histogram::new_with_bounds(1, LATE_MAX_US, 2).expect("valid histogram bounds"),
            late_wakes: Vec::new(),
            late_wakes_dropped: 0,
        }
    }

    /// One wake-up at `woke_ns` (since the epoch), `late_ns` after it was due.
    pub fn record(&mut self, woke_ns: u64, late_ns: u64) {
        self.late_us
            .saturating_record((late_ns / 1_000).clamp(1, LATE_MAX_US));
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

/// Late wake-ups of one or more CPUs that overlapped in time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pause {
    /// When it began, in seconds since the scenario started (3 decimals).
    pub t_s: f64,
    /// The latest of its wake-ups, in microseconds.
    pub longest_us: u64,
    /// How many CPUs' samplers were late in it.
    pub cpus: usize,
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
    /// Pauses every sampled CPU was late in: the machine stopped.
    pub all_cpus: u64,
    pub all_cpus_longest_us: u64,
    /// Longest late wake-up starting in each second of the scenario (0:
    /// none over the threshold), aligned with the `series`.
    pub per_second_longest_us: Vec<u64>,
    /// Late wake-ups not kept because a CPU had over
    /// [`LATE_WAKES_PER_CPU_MAX`]: the pause list is then incomplete.
    pub late_wakes_dropped: u64,
}

impl PauseReport {
    /// One line for the table and the HTML report.
    pub fn summary_line(&self) -> String {
        let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
        let p99s: Vec<String> = self.per_cpu.iter().map(|c| ms(c.late_p99_us)).collect();
        let mut line = format!(
            "machine pauses ({} samplers every {} us on {} CPUs): {} on every CPU at once{}, {} in all over {} ms; late p99 per CPU {} ms",
            self.policy,
            self.interval_us,
            self.per_cpu.len(),
            self.all_cpus,
            if self.all_cpus > 0 {
                format!(", longest {} ms", ms(self.all_cpus_longest_us))
            } else {
                String::new()
            },
            self.pauses_total,
            ms(self.threshold_us),
            p99s.join(" / ")
        );
        if self.policy != "SCHED_FIFO" {
            line.push_str(" (no real-time priority: lateness includes waiting for a CPU)");
        }
        if self.late_wakes_dropped > 0 {
            line.push_str(&format!(
                " (incomplete: {} late wake-ups not kept)",
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
        .map(|log| CpuPauses {
            cpu: log.cpu,
            samples: log.samples(),
            late_p50_us: quantile(&log.late_us, 0.50),
            late_p99_us: quantile(&log.late_us, 0.99),
            late_max_us: if log.late_us.is_empty() {
                0
            } else {
                log.late_us.max()
            },
            late_wakes: log.late_wakes.len() as u64 + log.late_wakes_dropped,
        })
        .collect();

    // Each late wake-up covers [due, woke] on its CPU; overlapping ones, on
    // any CPUs, are one pause.
    let mut spans: Vec<(u64, u64, usize)> = logs
        .iter()
        .enumerate()
        .flat_map(|(i, log)| {
            log.late_wakes
                .iter()
                .map(move |w| (w.woke_ns.saturating_sub(w.late_ns), w.woke_ns, i))
        })
        .collect();
    spans.sort_unstable();
    let mut report = PauseReport {
        policy: policy.to_string(),
        interval_us: interval.as_micros() as u64,
        threshold_us: PAUSE_THRESHOLD.as_micros() as u64,
        per_cpu,
        per_second_longest_us: vec![0; seconds],
        late_wakes_dropped: logs.iter().map(|l| l.late_wakes_dropped).sum(),
        ..PauseReport::default()
    };
    let mut finish = |start: u64, longest_ns: u64, cpus: &[bool]| {
        let cpus = cpus.iter().filter(|&&seen| seen).count();
        report.pauses_total += 1;
        let longest_us = longest_ns / 1_000;
        if cpus == logs.len() {
            report.all_cpus += 1;
            report.all_cpus_longest_us = report.all_cpus_longest_us.max(longest_us);
        }
        if report.pauses.len() < PAUSES_LISTED_MAX {
            let t_ns = start as i128 - offset_ns as i128;
            report.pauses.push(Pause {
                t_s: (t_ns as f64 / 1e6).round() / 1e3,
                longest_us,
                cpus,
            });
        }
        if let Some(second) = start
            .checked_sub(offset_ns)
            .map(|ns| (ns / 1_000_000_000) as usize)
        {
            if let Some(slot) = report.per_second_longest_us.get_mut(second) {
                *slot = (*slot).max(longest_us);
            }
        }
    };
    let mut current: Option<(u64, u64, u64, Vec<bool>)> = None; // start, end, longest, cpus
    for (start, end, cpu) in spans {
        match current.as_mut() {
            Some((_, cur_end, longest, cpus)) if start <= *cur_end => {
                *cur_end = (*cur_end).max(end);
                *longest = (*longest).max(end - start);
                cpus[cpu] = true;
            }
            _ => {
                if let Some((s, _, longest, cpus)) = current.take() {
                    finish(s, longest, &cpus);
                }
                let mut cpus = vec![false; logs.len()];
                cpus[cpu] = true;
                current = Some((start, end, end - start, cpus));
            }
        }
    }
    if let Some((s, _, longest, cpus)) = current {
        finish(s, longest, &cpus);
    }
    report
}

fn quantile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

/// The sampler threads of one scenario; [`PauseSampler::stop`] returns
/// what they saw.
pub struct PauseSampler {
    stop: Arc<AtomicBool>,
    epoch: Instant,
    interval: Duration,
    realtime: Arc<AtomicBool>,
    handles: Vec<JoinHandle<PauseLog>>,
}

impl PauseSampler {
    /// Starts one sampler per CPU this process may run on, each waking every
    /// `interval`. Threads that cannot be made are left out (and logged).
    pub fn start(interval: Duration) -> PauseSampler {
        let stop = Arc::new(AtomicBool::new(false));
        // Cleared by any sampler refused real-time priority.
        let realtime = Arc::new(AtomicBool::new(true));
        let epoch = Instant::now();
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let handles = cores
            .into_iter()
            .filter_map(|core| {
                let stop = Arc::clone(&stop);
                let realtime = Arc::clone(&realtime);
                std::thread::Builder::new()
                    .name(format!("pause-sampler-{}", core.id))
                    .spawn(move || {
                        let pinned = core_affinity::set_for_current(core);
                        if !pinned || !take_realtime_priority() {
                            realtime.store(false, Ordering::Relaxed);
                        }
                        sample(core.id, epoch, interval, &stop)
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
            handles,
        }
    }

    /// Stops the samplers and reports what they saw, aligned with a
    /// scenario that began at `scenario_epoch` and has `seconds` seconds of
    /// series.
    pub fn stop(self, scenario_epoch: Instant, seconds: usize) -> PauseReport {
        self.stop.store(true, Ordering::Relaxed);
        let logs: Vec<PauseLog> = self
            .handles
            .into_iter()
            .filter_map(|h| h.join().ok())
            .collect();
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
}

/// Lowest real-time priority: above every ordinary thread, below the
/// kernel's own real-time threads. False when not permitted.
fn take_realtime_priority() -> bool {
    let param = libc::sched_param { sched_priority: 1 };
    // SAFETY: `param` is a valid sched_param for the duration of the call;
    // pid 0 is the calling thread.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
}

fn sample(cpu: usize, epoch: Instant, interval: Duration, stop: &AtomicBool) -> PauseLog {
    let mut log = PauseLog::new(cpu);
    while !stop.load(Ordering::Relaxed) {
        let due = Instant::now() + interval;
        std::thread::sleep(interval);
        let woke = Instant::now();
        log.record(
            woke.duration_since(epoch).as_nanos() as u64,
            woke.saturating_duration_since(due).as_nanos() as u64,
        );
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn log(cpu: usize, late_wakes: &[(u64, u64)]) -> PauseLog {
        let mut log = PauseLog::new(cpu);
        for _ in 0..100 {
            log.record(0, 50_000);
        }
        for &(woke_ms, late_ms) in late_wakes {
            log.record(woke_ms * MS, late_ms * MS);
        }
        log
    }

    #[test]
    fn late_wakes_overlapping_on_every_cpu_are_the_machine_stopping() {
        // CPU 0 due at 1000 ms and woke at 1015; CPU 1 due at 1003, woke at
        // 1015: one pause on both. CPU 0 alone at 2500 ms: one CPU only.
        let logs = [
            log(0, &[(1015, 15), (2505, 5)]),
            log(1, &[(1015, 12), (4000, 1)]),
        ];
        let report = summarize(&logs, "SCHED_FIFO", Duration::from_millis(1), 0, 5);
        assert_eq!(report.pauses_total, 2);
        assert_eq!(report.all_cpus, 1);
        assert_eq!(report.all_cpus_longest_us, 15_000);
        assert_eq!(
            report.pauses,
            vec![
                Pause {
                    t_s: 1.0,
                    longest_us: 15_000,
                    cpus: 2
                },
                Pause {
                    t_s: 2.5,
                    longest_us: 5_000,
                    cpus: 1
                },
            ]
        );
        assert_eq!(report.per_second_longest_us, vec![0, 15_000, 5_000, 0, 0]);
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
    fn the_summary_line_names_the_machine_wide_pauses() {
        let logs = [log(0, &[(1015, 15)]), log(1, &[(1015, 12)])];
        let report = summarize(&logs, "SCHED_FIFO", Duration::from_millis(1), 0, 2);
        assert_eq!(
            report.summary_line(),
            "machine pauses (SCHED_FIFO samplers every 1000 us on 2 CPUs): 1 on every CPU at once, \
             longest 15.00 ms, 1 in all over 2.00 ms; late p99 per CPU 0.05 / 0.05 ms"
        );
        let other = summarize(&logs[..1], "SCHED_OTHER", Duration::from_millis(1), 0, 2);
        assert!(other.summary_line().contains("includes waiting for a CPU"));
    }

    #[test]
    fn pauses_that_do_not_overlap_stay_apart() {
        let logs = [log(0, &[(1010, 5)]), log(1, &[(1020, 5)])];
        let report = summarize(&logs, "SCHED_FIFO", Duration::from_millis(1), 0, 2);
        assert_eq!(report.pauses_total, 2);
        assert_eq!(report.all_cpus, 0);
        assert!(report.pauses.iter().all(|p| p.cpus == 1));
    }

    #[test]
    fn times_are_the_scenarios_and_earlier_ones_are_kept_but_not_binned() {
        // The samplers began 500 ms before the scenario.
        let logs = [log(0, &[(300, 10), (1_800, 10)])];
        let report = summarize(&logs, "SCHED_OTHER", Duration::from_millis(1), 500 * MS, 3);
        assert_eq!(report.all_cpus, 2, "one CPU sampled: it is all of them");
        assert_eq!(report.pauses[0].t_s, -0.21);
        assert_eq!(report.pauses[1].t_s, 1.29);
        assert_eq!(report.per_second_longest_us, vec![0, 10_000, 0]);
        assert_eq!(report.policy, "SCHED_OTHER");
    }

    #[test]
    fn late_wakes_and_listed_pauses_are_bounded() {
        let mut one = PauseLog::new(0);
        for i in 0..(LATE_WAKES_PER_CPU_MAX as u64 + 7) {
            one.record(i * 10 * MS, 3 * MS);
        }
        let report = summarize(&[one], "SCHED_FIFO", Duration::from_millis(1), 0, 1);
        assert_eq!(report.late_wakes_dropped, 7);
        assert_eq!(
            report.per_cpu[0].late_wakes,
            LATE_WAKES_PER_CPU_MAX as u64 + 7
        );
        assert_eq!(report.pauses_total, LATE_WAKES_PER_CPU_MAX as u64);
        assert_eq!(report.pauses.len(), PAUSES_LISTED_MAX);
    }

    #[test]
    fn samplers_cover_every_cpu_and_stop() {
        let sampler = PauseSampler::start(Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(200));
        let report = sampler.stop(Instant::now(), 1);
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        assert_eq!(report.per_cpu.len(), cores.len());
        for cpu in &report.per_cpu {
            assert!(cpu.samples >= 20, "{cpu:?}");
        }
        assert!(["SCHED_FIFO", "SCHED_OTHER"].contains(&report.policy.as_str()));
        assert_eq!(report.interval_us, 1_000);
    }
}
