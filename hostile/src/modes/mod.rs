//! The attacks. Each is a bounded number of clients, each client bounded in
//! bytes and time, and each attack ends with a [`Tally`] whose verdict says
//! whether the server defended itself as documented.

pub mod flood;
pub mod fragment;
pub mod never_read;
pub mod oversize;
pub mod ping_flood;
pub mod random;
pub mod slowloris;

use std::future::Future;
use std::time::{Duration, Instant};

use crate::net::{self, Target};
use crate::tally::Tally;

/// The server's settings the verdicts are judged against (its defaults
/// unless the server was started otherwise: pass the same values to both).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub handshake_timeout: Duration,
    pub outbox_max_bytes: usize,
    pub slow_consumer_grace: Duration,
    pub shutdown_timeout: Duration,
}

/// What every attack needs.
pub struct Ctx {
    pub target: Target,
    pub limits: ServerLimits,
    /// Scheduling slack allowed on top of the server's own timers (both
    /// processes share two cores with the good clients).
    pub slack: Duration,
    /// The server's pid, to read its RSS (`/proc/PID/status`).
    pub server_pid: Option<u32>,
    /// Distinguishes this run's users and groups from earlier runs'.
    pub run_id: u64,
    /// Most descriptors this process may open.
    pub fd_limit: u64,
}

impl Ctx {
    /// A seed unique to (run, mode, client).
    pub fn seed(&self, mode: u64, client: usize) -> u64 {
        self.run_id
            .wrapping_mul(0x100_0000_01B3)
            .wrapping_add(mode << 40)
            .wrapping_add(client as u64)
    }
}

/// Runs `n` clients as glommio tasks, client `i` starting `ramp * i / n`
/// after the call, and collects how each ended.
pub async fn run_clients<T, F, Fut>(n: usize, ramp: Duration, client: F) -> Vec<T>
where
    T: 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = T> + 'static,
{
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let offset = ramp.mul_f64(i as f64 / n.max(1) as f64);
        let fut = client(i);
        tasks.push(glommio::spawn_local(async move {
            glommio::timer::sleep(offset.saturating_sub(started.elapsed())).await;
            fut.await
        }));
    }
    let mut ends = Vec::with_capacity(n);
    for task in tasks {
        ends.push(task.await);
    }
    ends
}

/// Milliseconds since `t`.
pub fn ms_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

/// Samples the server's RSS every 250 ms while `work` runs; returns the
/// work's result and (start, peak) in bytes when the pid is known.
pub async fn with_rss_watch<T>(
    ctx: &Ctx,
    work: impl Future<Output = T>,
) -> (T, Option<(u64, u64)>) {
    let Some(pid) = ctx.server_pid else {
        return (work.await, None);
    };
    let start = net::rss_bytes(pid).unwrap_or(0);
    let peak = std::cell::Cell::new(start);
    let watch = async {
        loop {
            glommio::timer::sleep(Duration::from_millis(250)).await;
            if let Some(rss) = net::rss_bytes(pid) {
                peak.set(peak.get().max(rss));
            }
        }
    };
    let out = futures_lite::future::or(work, async {
        watch.await;
        unreachable!("the RSS watch loops until the work is done")
    })
    .await;
    if let Some(rss) = net::rss_bytes(pid) {
        peak.set(peak.get().max(rss));
    }
    (out, Some((start, peak.get())))
}

/// Records the server RSS figures of a mode.
pub fn record_rss(tally: &mut Tally, rss: Option<(u64, u64)>) {
    if let Some((start, peak)) = rss {
        tally.figure("server_rss_start_bytes", start);
        tally.figure("server_rss_peak_bytes", peak);
    }
}

/// A mode that did not finish within its time cap.
pub fn overran(mode: &str, cap: Duration) -> Tally {
    let mut t = Tally::new(mode, "finish within its time cap", &[]);
    t.require(
        false,
        format!("did not finish within {} s", cap.as_secs_f64()),
    );
    t
}

/// Runs one mode under a hard time cap.
pub async fn capped(mode: &str, cap: Duration, work: impl Future<Output = Tally>) -> Tally {
    let started = Instant::now();
    let mut tally = futures_lite::future::or(work, async {
        glommio::timer::sleep(cap).await;
        overran(mode, cap)
    })
    .await;
    tally.wall_ms = ms_since(started);
    tally
}
