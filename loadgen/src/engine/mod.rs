//! The load engine: one glommio executor per `--threads`, each pinned to a
//! core with core_affinity, each owning the connections it was dealt.
//!
//! Shared-nothing: a thread's connections, buffers and [`ThreadStats`] never
//! leave it until the run ends and the main thread merges the results. The
//! only cross-thread traffic during a run is a few relaxed atomic stores a
//! second for the progress line.
//!
//! Sockets and timers go through the readiness driver (ws-uring's own), with
//! naps: a thread with nothing runnable waits in `epoll_wait` until its next
//! reply or send time instead of parking through glommio, whose park costs
//! ~10 system calls a wake-up. So every timer here is a `ReadyTimer` (a
//! glommio timer would wait for the next reactor visit, up to `nap_max`),
//! every task is `counted`, and a connect, which completes through glommio's
//! io_uring, holds naps off until it has.

mod session;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::{LocalExecutorBuilder, Placement};
use ws_uring_readiness::{counted, enable_naps, ReadyTimer};

use crate::stats::{LatencyTrace, LiveCounters, ThreadStats};
use crate::url::{UrlError, WsUrl};
use crate::workload::{identity, Workload};

/// Pause before a slot reconnects after a failed or dropped connection.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// Limit for the TCP connect and for the WebSocket handshake, each.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `--nap-max-us`'s default, the server's too: long enough that a thread
/// sending on a grid of a few hundred µs never parks between sends.
pub const NAP_MAX_DEFAULT: Duration = Duration::from_millis(5);

/// When one connection slot opens, and how long each of its connections lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// First connect, ns after the run starts.
    pub start_ns: u64,
    /// Churn: lifetime of the first connection (staggered) and of later ones.
    /// `None`: one connection that lives until the run ends.
    pub churn: Option<ChurnSpec>,
}

/// A slot that closes and reopens its connection on a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChurnSpec {
    pub first_lifetime_ns: u64,
    pub lifetime_ns: u64,
}

/// Everything the engine needs for one scenario run.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub name: String,
    pub url: WsUrl,
    pub workload: Workload,
    pub slots: Vec<SlotSpec>,
    pub duration: Duration,
    /// Start of the measured (steady) window.
    pub measure_from: Duration,
    /// Open loop: total messages a second over all sending connections.
    /// `None`: closed loop with `in_flight` messages per connection.
    pub rate: Option<f64>,
    /// Open loop: send timers are kept to this grid (zero: exact), so that
    /// a thread's connections due within one tick share one wake-up.
    pub send_tick: Duration,
    /// Longest an engine thread waits for its sockets and `ReadyTimer`s in
    /// `epoll_wait` (a nap) before it parks through glommio; zero: it
    /// always parks. Naps end at the next send time or reply, so only
    /// glommio's own work (connects, which hold naps off) can wait for one.
    pub nap_max: Duration,
    pub in_flight: usize,
    /// Payload bytes to aim for.
    pub size: usize,
    /// Connections per group (`publish`, `anycast`).
    pub group_size: usize,
    pub threads: usize,
    /// Distinguishes user ids of different runs (mailboxes, groups).
    pub run_id: u32,
    /// How long a stopping connection waits for its last answers.
    pub grace: Duration,
    pub verbose: bool,
    /// Keep every measured message's time and latency (`--latency-trace`),
    /// up to `TRACE_MESSAGES_PER_THREAD_MAX` a thread.
    pub latency_trace: bool,
}

impl RunPlan {
    /// Highest number of connections open at once.
    pub fn peak_connections(&self) -> usize {
        self.slots.len()
    }
}

/// What a finished run hands back.
#[derive(Debug)]
pub struct RunOutcome {
    pub stats: ThreadStats,
    pub started_unix_ms: u64,
    /// The instant the run's clock (and its per-second series) starts at.
    pub epoch: Instant,
    pub wall: Duration,
}

/// Why a run could not start.
#[derive(Debug)]
pub enum EngineError {
    Url(UrlError),
    Executor(String),
    /// A file the run writes as it goes (the latency trace).
    Output(String),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Url(e) => write!(f, "{e}"),
            EngineError::Executor(e) => write!(f, "cannot start executor: {e}"),
            EngineError::Output(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EngineError {}

/// A snapshot of the live counters, for the progress line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveSnapshot {
    pub elapsed: Duration,
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
    pub open_connections: u64,
}

/// Runs `plan` and blocks until it ends; `on_tick` is called about four
/// times a second on the calling thread.
pub fn run(
    plan: &RunPlan,
    mut on_tick: impl FnMut(LiveSnapshot),
) -> Result<RunOutcome, EngineError> {
    raise_fd_limit();
    let addr = plan.url.socket_addr().map_err(EngineError::Url)?;
    let threads = plan.threads.max(1);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let plan = Arc::new(plan.clone());
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let epoch = Instant::now();
    let finished = Arc::new(AtomicUsize::new(0));
    let lives: Vec<Arc<LiveCounters>> = (0..threads)
        .map(|_| Arc::new(LiveCounters::default()))
        .collect();

    let mut handles = Vec::with_capacity(threads);
    for (thread, live) in lives.iter().enumerate() {
        let core = cores.get(thread % cores.len().max(1)).copied();
        let plan = Arc::clone(&plan);
        let live = Arc::clone(live);
        let finished = Arc::clone(&finished);
        let spin = std::env::var("LOADGEN_SPIN_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let placement = match (core, spin) {
            (Some(core), s) if s > 0 => Placement::Fixed(core.id),
            _ => Placement::Unbound,
        };
        let handle = LocalExecutorBuilder::new(placement)
            .spin_before_park(Duration::from_micros(spin))
            .name(&format!("loadgen-{thread}"))
            .spawn(move || {
                counted(async move {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    if !plan.nap_max.is_zero() {
                        if let Err(e) = enable_naps(plan.nap_max, None) {
                            log::warn!("loadgen-{thread}: no naps ({e}): parks through glommio");
                        }
                    }
                    let stats = run_thread(plan, thread, threads, addr, epoch, live).await;
                    finished.fetch_add(1, Ordering::Release);
                    stats
                })
            })
            .map_err(|e| EngineError::Executor(e.to_string()))?;
        handles.push(handle);
    }

    while finished.load(Ordering::Acquire) < threads {
        std::thread::sleep(Duration::from_millis(250));
        let mut snap = LiveSnapshot {
            elapsed: epoch.elapsed(),
            ..LiveSnapshot::default()
        };
        for live in &lives {
            snap.sent += live.sent.load(Ordering::Relaxed);
            snap.received += live.received.load(Ordering::Relaxed);
            snap.errors += live.errors.load(Ordering::Relaxed);
            snap.open_connections += live.open_connections.load(Ordering::Relaxed);
        }
        on_tick(snap);
    }

    let mut merged = ThreadStats::new(plan.measure_from.as_nanos() as u64);
    let mut traces = Vec::new();
    for handle in handles {
        let mut stats = handle
            .join()
            .map_err(|e| EngineError::Executor(e.to_string()))?;
        // Traces are joined apart, moved rather than copied.
        traces.extend(stats.trace.take());
        merged.merge(&stats);
    }
    merged.trace = LatencyTrace::combine(traces);
    Ok(RunOutcome {
        stats: merged,
        started_unix_ms,
        epoch,
        wall: epoch.elapsed(),
    })
}

/// State shared by the tasks of one executor thread (never across threads).
pub(crate) struct ThreadCtx {
    pub plan: Arc<RunPlan>,
    pub addr: SocketAddr,
    pub epoch: Instant,
    pub end_ns: u64,
    pub grace_ns: u64,
    /// Open loop: messages a second for each sending connection.
    pub rate_per_conn: Option<f64>,
    pub stats: RefCell<ThreadStats>,
    pub open_connections: Cell<u64>,
}

impl ThreadCtx {
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

async fn run_thread(
    plan: Arc<RunPlan>,
    thread: usize,
    threads: usize,
    addr: SocketAddr,
    epoch: Instant,
    live: Arc<LiveCounters>,
) -> ThreadStats {
    let senders = (0..plan.slots.len())
        .filter(|&slot| {
            identity(plan.workload, plan.run_id, slot, plan.group_size)
                .1
                .sends()
        })
        .count()
        .max(1);
    let ctx = Rc::new(ThreadCtx {
        addr,
        epoch,
        end_ns: plan.duration.as_nanos() as u64,
        grace_ns: plan.grace.as_nanos() as u64,
        rate_per_conn: plan.rate.map(|rate| rate / senders as f64),
        stats: RefCell::new({
            let mut stats = ThreadStats::new(plan.measure_from.as_nanos() as u64);
            if plan.latency_trace {
                stats.enable_trace(crate::stats::TRACE_MESSAGES_PER_THREAD_MAX);
            }
            stats
        }),
        open_connections: Cell::new(0),
        plan,
    });

    let publisher = {
        let ctx = Rc::clone(&ctx);
        let live = Arc::clone(&live);
        glommio::spawn_local(counted(async move {
            loop {
                sleep_for(Duration::from_millis(100)).await;
                live.publish(&ctx.stats.borrow(), ctx.open_connections.get());
            }
        }))
    };

    // Past this point a slot is cancelled whatever it is doing. One timer
    // for the thread, not one raced against each slot: a glommio `Timer`
    // re-registers itself (a timer-tree removal and insertion) every time it
    // is polled, and a slot's future is polled for every message.
    let hard_stop_ns = ctx.end_ns + 3 * ctx.grace_ns;
    let mut tasks: Vec<_> = (thread..ctx.plan.slots.len())
        .step_by(threads)
        .map(|slot| glommio::spawn_local(counted(run_slot(Rc::clone(&ctx), slot))))
        .collect();
    futures_lite::future::or(
        async {
            for task in tasks.iter_mut() {
                task.await;
            }
        },
        sleep_until(&ctx, hard_stop_ns),
    )
    .await;
    // Dropping a glommio task cancels it: the slots still running stop here.
    drop(tasks);
    drop(publisher);
    live.publish(&ctx.stats.borrow(), ctx.open_connections.get());
    // Moved out, not cloned: a latency trace can be 96 MiB.
    ctx.stats.replace(ThreadStats::new(0))
}

/// Sleeps until `target_ns` on the run clock.
pub(crate) async fn sleep_until(ctx: &ThreadCtx, target_ns: u64) {
    let now = ctx.now_ns();
    if target_ns > now {
        sleep_for(Duration::from_nanos(target_ns - now)).await;
    }
}

/// Sleeps for `period` on a `ReadyTimer` (on time through naps), or on a
/// glommio timer if the thread cannot make one (out of descriptors: that
/// one may fire up to `nap_max` late).
pub(crate) async fn sleep_for(period: Duration) {
    match ReadyTimer::new(period) {
        Ok(timer) => timer.await,
        Err(_) => {
            glommio::timer::sleep(period).await;
        }
    }
}

/// One connection slot: connect at its start time, reconnect after failures
/// (and on every churn cycle) until the run ends.
async fn run_slot(ctx: Rc<ThreadCtx>, slot: usize) {
    let spec = ctx.plan.slots[slot];
    sleep_until(&ctx, spec.start_ns).await;
    let mut cycle = 0u64;
    loop {
        let now = ctx.now_ns();
        if now >= ctx.end_ns {
            return;
        }
        let until_ns = match spec.churn {
            Some(churn) if cycle == 0 => (now + churn.first_lifetime_ns).min(ctx.end_ns),
            Some(churn) => (now + churn.lifetime_ns).min(ctx.end_ns),
            None => ctx.end_ns,
        };
        cycle += 1;
        match session::connect_and_run(&ctx, slot, cycle, until_ns).await {
            session::SessionEnd::Finished => {
                if spec.churn.is_none() {
                    return;
                }
            }
            session::SessionEnd::Failed => {
                sleep_for(RECONNECT_BACKOFF).await;
            }
        }
    }
}

/// Lifts RLIMIT_NOFILE to its hard limit: 2000+ sockets need it.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
