//! The process's use of the machine, read from `/proc` with `procfs`: CPU,
//! resident memory, threads, open file descriptors, network traffic and the
//! system's memory.
//!
//! Reading is split from arithmetic: [`ResourceSampler::read`] does the I/O
//! and yields a [`ResourceReading`]; [`Resources::between`] turns two
//! readings into percentages and rates without touching `/proc`, so it is
//! tested with made-up numbers. Every `/proc` file that cannot be read
//! leaves its fields `None`; nothing here panics on what the OS returns.
//!
//! Cost: a handful of small reads, except counting open descriptors, which
//! lists `/proc/self/fd` and so grows with the number of connections (tens
//! of milliseconds at 100k). Sample from a thread that is not a shard (the
//! sampler is `Send`), or turn the count off with
//! [`ResourceSampler::count_open_fds`].

use std::time::Instant;

use procfs::process::Process;
use procfs::{Current, Meminfo};

/// Raw counters read from `/proc` at one instant.
#[derive(Clone, Debug)]
pub struct ResourceReading {
    /// When the reading was taken (the caller's clock).
    pub at: Instant,
    /// User plus system CPU time of the whole process, in clock ticks.
    pub cpu_ticks: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    /// Bytes received by every interface of the process's network namespace.
    pub net_rx_bytes: Option<u64>,
    /// Bytes sent by every interface of the process's network namespace.
    pub net_tx_bytes: Option<u64>,
    pub mem_total_bytes: Option<u64>,
    pub mem_available_bytes: Option<u64>,
}

impl ResourceReading {
    /// A reading in which nothing could be read.
    pub fn unavailable(at: Instant) -> Self {
        ResourceReading {
            at,
            cpu_ticks: None,
            rss_bytes: None,
            threads: None,
            open_fds: None,
            net_rx_bytes: None,
            net_tx_bytes: None,
            mem_total_bytes: None,
            mem_available_bytes: None,
        }
    }
}

/// What the exporters and alerts use: levels from the latest reading, and
/// CPU and network rates over the time since the one before. A field is
/// `None` when its source could not be read, or, for rates, before a
/// second reading exists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// Process CPU as a share of the whole machine, 0..=100.
    pub cpu_percent: Option<f64>,
    /// Process CPU where 100 means one core busy (up to 100 × `cpus`).
    pub cpu_percent_one_core: Option<f64>,
    /// CPUs the machine has online (what `cpu_percent` is normalised by).
    pub cpus: usize,
    /// User plus system CPU time of the process since it started, in seconds.
    pub cpu_seconds_total: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    /// Bytes received on all interfaces (loopback included) since boot.
    pub net_rx_bytes: Option<u64>,
    /// Bytes sent on all interfaces (loopback included) since boot.
    pub net_tx_bytes: Option<u64>,
    pub net_rx_bytes_per_s: Option<f64>,
    pub net_tx_bytes_per_s: Option<f64>,
    pub mem_total_bytes: Option<u64>,
    pub mem_available_bytes: Option<u64>,
    /// System memory in use: (total − available) / total, 0..=100.
    pub mem_used_percent: Option<f64>,
}

impl Resources {
    /// Figures from `current`, with rates against `previous` when there is one.
    pub fn between(
        previous: Option<&ResourceReading>,
        current: &ResourceReading,
        ticks_per_second: u64,
        cpus: usize,
    ) -> Resources {
        let elapsed_s = previous
            .map(|previous| {
                current
                    .at
                    .saturating_duration_since(previous.at)
                    .as_secs_f64()
            })
            .filter(|&elapsed_s| elapsed_s > 0.0);
        // A counter that went down (an interface vanished) yields no rate
        // rather than a huge one.
        let per_second = |before: Option<u64>, after: Option<u64>| -> Option<f64> {
            let increase = after?.checked_sub(before?)?;
            Some(increase as f64 / elapsed_s?)
        };
        let previous_value = |field: fn(&ResourceReading) -> Option<u64>| previous.and_then(field);

        let cpu_percent_one_core = if ticks_per_second == 0 {
            None
        } else {
            per_second(previous_value(|r| r.cpu_ticks), current.cpu_ticks)
                .map(|ticks_per_s| ticks_per_s / ticks_per_second as f64 * 100.0)
        };
        let cpu_percent = cpu_percent_one_core
            .filter(|_| cpus > 0)
            .map(|percent| (percent / cpus as f64).min(100.0));

        let mem_used_percent = match (current.mem_total_bytes, current.mem_available_bytes) {
            (Some(total), Some(available)) if total > 0 => {
                Some(total.saturating_sub(available) as f64 / total as f64 * 100.0)
            }
            _ => None,
        };

        Resources {
            cpu_percent,
            cpu_percent_one_core,
            cpus,
            cpu_seconds_total: current
                .cpu_ticks
                .filter(|_| ticks_per_second > 0)
                .map(|ticks| ticks as f64 / ticks_per_second as f64),
            rss_bytes: current.rss_bytes,
            threads: current.threads,
            open_fds: current.open_fds,
            net_rx_bytes: current.net_rx_bytes,
            net_tx_bytes: current.net_tx_bytes,
            net_rx_bytes_per_s: per_second(
                previous_value(|r| r.net_rx_bytes),
                current.net_rx_bytes,
            ),
            net_tx_bytes_per_s: per_second(
                previous_value(|r| r.net_tx_bytes),
                current.net_tx_bytes,
            ),
            mem_total_bytes: current.mem_total_bytes,
            mem_available_bytes: current.mem_available_bytes,
            mem_used_percent,
        }
    }
}

/// Reads `/proc` and keeps the previous reading for rates.
#[derive(Debug)]
pub struct ResourceSampler {
    /// `/proc/self`, opened once; retried on the next read if it failed.
    process: Option<Process>,
    ticks_per_second: u64,
    cpus: usize,
    count_open_fds: bool,
    previous: Option<ResourceReading>,
}

impl Default for ResourceSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceSampler {
    /// A sampler for this process; the first [`sample`](Self::sample) has no
    /// CPU or network rates yet.
    pub fn new() -> Self {
        ResourceSampler {
            process: Process::myself().ok(),
            ticks_per_second: procfs::ticks_per_second(),
            cpus: online_cpus(),
            count_open_fds: true,
            previous: None,
        }
    }

    /// Whether to count open descriptors (O(descriptors) per sample).
    pub fn count_open_fds(mut self, enabled: bool) -> Self {
        self.count_open_fds = enabled;
        self
    }

    /// The number of CPUs CPU figures are normalised by.
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// Reads `/proc` and computes figures against the previous sample.
    pub fn sample(&mut self, now: Instant) -> Resources {
        let current = self.read(now);
        let resources = Resources::between(
            self.previous.as_ref(),
            &current,
            self.ticks_per_second,
            self.cpus,
        );
        self.previous = Some(current);
        resources
    }

    /// Reads the raw counters; fields whose file failed are `None`.
    pub fn read(&mut self, now: Instant) -> ResourceReading {
        let mut reading = ResourceReading::unavailable(now);

        if let Ok(meminfo) = Meminfo::current() {
            reading.mem_total_bytes = Some(meminfo.mem_total);
            // MemAvailable exists since Linux 3.14; MemFree underestimates
            // what is available but is the honest fallback.
            reading.mem_available_bytes = Some(meminfo.mem_available.unwrap_or(meminfo.mem_free));
        }

        if self.process.is_none() {
            self.process = Process::myself().ok();
        }
        let Some(process) = &self.process else {
            return reading;
        };

        if let Ok(stat) = process.stat() {
            reading.cpu_ticks = Some(stat.utime.saturating_add(stat.stime));
            reading.rss_bytes = Some(stat.rss.saturating_mul(procfs::page_size()));
            reading.threads = u64::try_from(stat.num_threads).ok();
        }
        if self.count_open_fds {
            reading.open_fds = process.fd_count().ok().map(|count| count as u64);
        }
        if let Ok(devices) = process.dev_status() {
            let (rx_bytes, tx_bytes) = devices.values().fold((0u64, 0u64), |(rx, tx), device| {
                (
                    rx.saturating_add(device.recv_bytes),
                    tx.saturating_add(device.sent_bytes),
                )
            });
            reading.net_rx_bytes = Some(rx_bytes);
            reading.net_tx_bytes = Some(tx_bytes);
        }
        reading
    }
}

/// Online CPUs of the machine. Not `available_parallelism`: that reads the
/// calling thread's affinity, which is one core on a pinned shard thread.
fn online_cpus() -> usize {
    procfs::CpuInfo::current()
        .map(|info| info.num_cores())
        .ok()
        .filter(|&cores| cores > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn reading(at: Instant, cpu_ticks: u64, rx: u64, tx: u64) -> ResourceReading {
        ResourceReading {
            at,
            cpu_ticks: Some(cpu_ticks),
            rss_bytes: Some(64 << 20),
            threads: Some(5),
            open_fds: Some(12),
            net_rx_bytes: Some(rx),
            net_tx_bytes: Some(tx),
            mem_total_bytes: Some(16 << 30),
            mem_available_bytes: Some(4 << 30),
        }
    }

    #[test]
    fn cpu_and_network_rates_between_two_readings() {
        let start = Instant::now();
        let first = reading(start, 1_000, 10_000, 20_000);
        // 150 ticks at 100 Hz over 1 s: one and a half cores busy.
        let second = reading(start + Duration::from_secs(1), 1_150, 15_000, 21_000);
        let resources = Resources::between(Some(&first), &second, 100, 4);
        assert_eq!(resources.cpu_percent_one_core, Some(150.0));
        assert_eq!(resources.cpu_percent, Some(37.5));
        assert_eq!(resources.cpus, 4);
        assert_eq!(resources.cpu_seconds_total, Some(11.5));
        assert_eq!(resources.net_rx_bytes_per_s, Some(5_000.0));
        assert_eq!(resources.net_tx_bytes_per_s, Some(1_000.0));
        assert_eq!(resources.net_rx_bytes, Some(15_000));
        assert_eq!(resources.rss_bytes, Some(64 << 20));
        assert_eq!(resources.threads, Some(5));
        assert_eq!(resources.open_fds, Some(12));
        assert_eq!(resources.mem_used_percent, Some(75.0));
    }

    #[test]
    fn first_reading_has_levels_but_no_rates() {
        let resources = Resources::between(None, &reading(Instant::now(), 5, 1, 1), 100, 2);
        assert_eq!(resources.cpu_percent, None);
        assert_eq!(resources.net_rx_bytes_per_s, None);
        assert_eq!(resources.rss_bytes, Some(64 << 20));
        assert_eq!(resources.mem_used_percent, Some(75.0));
    }

    #[test]
    fn unreadable_sources_and_odd_clocks_give_none_not_panics() {
        let now = Instant::now();
        let nothing = ResourceReading::unavailable(now);
        assert_eq!(
            Resources::between(Some(&nothing), &nothing, 100, 2),
            Resources {
                cpus: 2,
                ..Resources::default()
            }
        );
        // Same instant twice: no division by zero.
        let same = reading(now, 10, 10, 10);
        assert_eq!(
            Resources::between(Some(&same), &same, 100, 2).cpu_percent,
            None
        );
        // Counters that went down (an interface vanished): no rate.
        let later = reading(now + Duration::from_secs(1), 20, 5, 5);
        let resources = Resources::between(Some(&same), &later, 100, 2);
        assert_eq!(resources.net_rx_bytes_per_s, None);
        assert_eq!(resources.cpu_percent_one_core, Some(10.0));
        // No clock tick rate or no CPUs known: no CPU figure.
        assert_eq!(
            Resources::between(Some(&same), &later, 0, 2).cpu_percent,
            None
        );
        assert_eq!(
            Resources::between(Some(&same), &later, 100, 0).cpu_percent,
            None
        );
        // Zero total memory: no percentage.
        let mut empty_memory = reading(now, 1, 1, 1);
        empty_memory.mem_total_bytes = Some(0);
        assert_eq!(
            Resources::between(None, &empty_memory, 100, 1).mem_used_percent,
            None
        );
    }

    #[test]
    fn cpu_share_of_the_machine_is_capped_at_100() {
        let start = Instant::now();
        let first = reading(start, 0, 0, 0);
        // Tick accounting can run ahead of the wall clock by a tick or two.
        let second = reading(start + Duration::from_millis(100), 30, 0, 0);
        let resources = Resources::between(Some(&first), &second, 100, 2);
        assert_eq!(resources.cpu_percent, Some(100.0));
    }

    #[test]
    fn samples_this_process_from_proc() {
        let mut sampler = ResourceSampler::new();
        assert!(sampler.cpus() >= 1);
        let first = sampler.sample(Instant::now());
        assert!(first.rss_bytes.is_some_and(|rss| rss > 0), "{first:?}");
        assert!(
            first.threads.is_some_and(|threads| threads >= 1),
            "{first:?}"
        );
        assert!(first.open_fds.is_some_and(|fds| fds >= 1), "{first:?}");
        assert!(
            first.mem_total_bytes.is_some_and(|total| total > 0),
            "{first:?}"
        );
        assert!(first.net_rx_bytes.is_some(), "{first:?}");
        assert!(first
            .mem_used_percent
            .is_some_and(|used| (0.0..=100.0).contains(&used)));
        assert_eq!(first.cpu_percent, None);

        std::thread::sleep(Duration::from_millis(20));
        let second = sampler.sample(Instant::now());
        let cpu = second
            .cpu_percent
            .expect("a second sample has a CPU figure");
        assert!((0.0..=100.0).contains(&cpu), "{second:?}");
        assert!(second.net_rx_bytes_per_s.is_some_and(|rate| rate >= 0.0));
    }

    #[test]
    fn open_fd_count_can_be_turned_off() {
        let mut sampler = ResourceSampler::new().count_open_fds(false);
        assert_eq!(sampler.sample(Instant::now()).open_fds, None);
    }
}
