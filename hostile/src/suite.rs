//! Runs the chosen attacks on one glommio executor: every attack but the
//! flood at once (staggered by a second or two), then the flood alone, since
//! a full server refuses the other attacks' upgrades too. Then checks the
//! server is still healthy: `/health` and an echo from a fresh client.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::future;
use serde::Serialize;

use crate::modes::flood::{self, Flood};
use crate::modes::fragment::{self, Fragment};
use crate::modes::never_read::{self, NeverRead};
use crate::modes::oversize::{self, Oversize};
use crate::modes::ping_flood::{self, PingFlood};
use crate::modes::random::{self, RandomBytes};
use crate::modes::slowloris::{self, Slowloris};
use crate::modes::{capped, overran, Ctx, ServerLimits};
use crate::net::{self, step, Step, Target};
use crate::tally::{ClientEnd, Tally};
use crate::wire::{masked_frame, ServerEvent, OP_TEXT};

/// An attack that can be selected on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Slowloris,
    Random,
    Oversize,
    Fragment,
    PingFlood,
    NeverRead,
    Flood,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Slowloris => "slowloris",
            Mode::Random => "random",
            Mode::Oversize => "oversize",
            Mode::Fragment => "fragment",
            Mode::PingFlood => "ping-flood",
            Mode::NeverRead => "never-read",
            Mode::Flood => "flood",
        }
    }
}

/// Everything a run needs, resolved from the command line.
#[derive(Debug, Clone)]
pub struct Plan {
    pub url: String,
    pub modes: Vec<Mode>,
    pub quick: bool,
    pub server_pid: Option<u32>,
    pub limits: ServerLimits,
    pub slack: Duration,
    pub time_limit: Duration,
    /// The attacks run this many times over, one round after the other.
    pub rounds: u32,
    pub slowloris: Slowloris,
    pub random: RandomBytes,
    pub oversize: Oversize,
    pub fragment: Fragment,
    pub ping_flood: PingFlood,
    pub never_read: NeverRead,
    pub flood: Flood,
}

/// The JSON document (`--output`), schema `ws-uring-hostile/1`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub target: String,
    pub quick: bool,
    pub started_unix_ms: u64,
    pub wall_ms: u64,
    pub limits: LimitsJson,
    pub attacks: Vec<Tally>,
    /// Each round's duration and the server's RSS during it.
    pub rounds: Vec<RoundJson>,
    /// `/health` and a fresh client's echo after all attacks.
    pub aftermath: Tally,
    /// Server RSS over the whole run, when its pid was given.
    pub server_rss: Option<RssJson>,
    /// Every attack passed and the server was healthy afterwards.
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitsJson {
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub handshake_timeout_ms: u64,
    pub outbox_max_bytes: usize,
    pub slow_consumer_grace_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub slack_ms: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RoundJson {
    pub round: u32,
    pub wall_ms: u64,
    pub server_rss_peak_bytes: Option<u64>,
    pub server_rss_end_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RssJson {
    pub start_bytes: u64,
    pub peak_bytes: u64,
    pub end_bytes: u64,
}

/// Runs the plan; the executor is a single glommio thread.
pub fn run(plan: Plan) -> Result<Report, String> {
    let target = Target::parse(&plan.url)?;
    let fd_limit = net::raise_fd_limit();
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("hostile")
        .spawn(move || async move {
            let ctx = Rc::new(Ctx {
                target,
                limits: plan.limits.clone(),
                slack: plan.slack,
                server_pid: plan.server_pid,
                run_id: started_unix_ms % 1_000_000_007,
                fd_limit,
            });
            run_on_executor(ctx, plan, started_unix_ms).await
        })
        .map_err(|e| format!("cannot start the executor: {e}"))?;
    handle
        .join()
        .map_err(|e| format!("the executor failed: {e}"))?
}

async fn run_on_executor(ctx: Rc<Ctx>, plan: Plan, started_unix_ms: u64) -> Result<Report, String> {
    let started = Instant::now();
    if !matches!(net::http_get(&ctx.target, "/health").await, Ok((200, _))) {
        return Err(format!(
            "{} does not answer GET /health with 200: is the server running?",
            ctx.target.addr
        ));
    }
    let rss_start = plan.server_pid.and_then(net::rss_bytes);
    let rss_peak = Rc::new(std::cell::Cell::new(rss_start.unwrap_or(0)));
    let round_peak = Rc::new(std::cell::Cell::new(0));
    let rss_watch = plan.server_pid.map(|pid| {
        let peak = Rc::clone(&rss_peak);
        let round_peak = Rc::clone(&round_peak);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_millis(500)).await;
                if let Some(rss) = net::rss_bytes(pid) {
                    peak.set(peak.get().max(rss));
                    round_peak.set(round_peak.get().max(rss));
                }
            }
        })
    });

    let mut attacks = Vec::new();
    let mut rounds = Vec::new();
    for round in 1..=plan.rounds {
        let round_started = Instant::now();
        round_peak.set(plan.server_pid.and_then(net::rss_bytes).unwrap_or(0));
        let mut tallies = one_round(&ctx, &plan).await;
        for t in &mut tallies {
            t.round = round;
        }
        attacks.extend(tallies);
        let rss_end = plan.server_pid.and_then(net::rss_bytes);
        if let Some(end) = rss_end {
            rss_peak.set(rss_peak.get().max(end));
        }
        rounds.push(RoundJson {
            round,
            wall_ms: round_started.elapsed().as_millis() as u64,
            server_rss_peak_bytes: rss_end.map(|end| round_peak.get().max(end)),
            server_rss_end_bytes: rss_end,
        });
    }

    let aftermath = aftermath(&ctx).await;
    drop(rss_watch);
    let server_rss = match (plan.server_pid, rss_start) {
        (Some(pid), Some(start)) => {
            let end = net::rss_bytes(pid).unwrap_or(0);
            rss_peak.set(rss_peak.get().max(end));
            Some(RssJson {
                start_bytes: start,
                peak_bytes: rss_peak.get(),
                end_bytes: end,
            })
        }
        _ => None,
    };
    let pass = aftermath.pass && attacks.iter().all(|t| t.pass);
    Ok(Report {
        schema: "ws-uring-hostile/1",
        target: ctx.target.addr.to_string(),
        quick: plan.quick,
        started_unix_ms,
        wall_ms: started.elapsed().as_millis() as u64,
        limits: LimitsJson {
            max_connections: ctx.limits.max_connections,
            max_message_bytes: ctx.limits.max_message_bytes,
            handshake_timeout_ms: ctx.limits.handshake_timeout.as_millis() as u64,
            outbox_max_bytes: ctx.limits.outbox_max_bytes,
            slow_consumer_grace_ms: ctx.limits.slow_consumer_grace.as_millis() as u64,
            shutdown_timeout_ms: ctx.limits.shutdown_timeout.as_millis() as u64,
            slack_ms: ctx.slack.as_millis() as u64,
        },
        attacks,
        rounds,
        aftermath,
        server_rss,
        pass,
    })
}

/// One round: slowloris throughout; phase 1 the attacks that hold memory
/// by design; phase 2 the ping floods; phase 3 the flood.
async fn one_round(ctx: &Rc<Ctx>, plan: &Plan) -> Vec<Tally> {
    let has = |m: Mode| plan.modes.contains(&m);
    let slack = plan.slack;
    // Slowloris runs through the first two phases: its sockets cost the
    // server little memory and no admission slot.
    let slow = has(Mode::Slowloris).then(|| {
        let cfg = plan.slowloris.clone();
        let cap = cfg.ramp + ctx.limits.handshake_timeout + 3 * slack + Duration::from_secs(5);
        spawn_after(
            Duration::ZERO,
            one(capped(
                "slowloris",
                cap,
                slowloris::run(Rc::clone(ctx), cfg),
            )),
        )
    });
    // Phase 1: the attacks that hold memory by design (partial messages,
    // full outboxes) or misbehave briefly.
    let mut phase1 = Vec::new();
    if has(Mode::Random) {
        let cfg = plan.random.clone();
        let cap = cfg.ramp + ctx.limits.handshake_timeout + 3 * slack + Duration::from_secs(15);
        let work = random::run(Rc::clone(ctx), cfg);
        phase1.push(spawn_after(
            Duration::from_millis(500),
            capped_many("random", cap, work),
        ));
    }
    if has(Mode::Oversize) {
        let cfg = plan.oversize.clone();
        let cap = cfg.ramp + 3 * slack + Duration::from_secs(15);
        let work = capped("oversize", cap, oversize::run(Rc::clone(ctx), cfg));
        phase1.push(spawn_after(Duration::from_secs(1), one(work)));
    }
    if has(Mode::Fragment) {
        let cfg = plan.fragment.clone();
        let pace =
            Duration::from_secs_f64(ctx.limits.max_message_bytes as f64 / cfg.bytes_per_s as f64);
        let cap = cfg.ramp + 2 * pace + 3 * slack + Duration::from_secs(15);
        let work = capped("fragment", cap, fragment::run(Rc::clone(ctx), cfg));
        phase1.push(spawn_after(Duration::from_secs(1), one(work)));
    }
    if has(Mode::NeverRead) {
        let cfg = plan.never_read.clone();
        let cap = Duration::from_secs(90) + 3 * slack;
        let work = capped("never-read", cap, never_read::run(Rc::clone(ctx), cfg));
        phase1.push(spawn_after(Duration::from_millis(1500), one(work)));
    }
    let mut attacks = Vec::new();
    for task in phase1 {
        attacks.extend(task.await);
    }
    // Phase 2: ping floods, alone but for slowloris, so that the server's
    // memory growth during it is theirs.
    if has(Mode::PingFlood) {
        let cfg = plan.ping_flood.clone();
        let cap = cfg.ramp + cfg.duration + 3 * slack + Duration::from_secs(15);
        attacks.extend(capped_many("ping-flood", cap, ping_flood::run(Rc::clone(ctx), cfg)).await);
    }
    if let Some(task) = slow {
        attacks.extend(task.await);
    }
    // Phase 3: the flood fills every admission slot, so it runs last.
    if has(Mode::Flood) {
        let cfg = plan.flood.clone();
        let cap = cfg.ramp + cfg.hold + 4 * slack + Duration::from_secs(30);
        attacks.push(capped("flood", cap, flood::run(Rc::clone(ctx), cfg)).await);
    }
    attacks.sort_by_key(|t| order(&t.mode));
    attacks
}

/// Runs `work` as its own task after `delay`.
fn spawn_after(
    delay: Duration,
    work: impl std::future::Future<Output = Vec<Tally>> + 'static,
) -> glommio::Task<Vec<Tally>> {
    glommio::spawn_local(async move {
        glommio::timer::sleep(delay).await;
        work.await
    })
}

/// A mode's single tally as a list.
async fn one(work: impl std::future::Future<Output = Tally>) -> Vec<Tally> {
    vec![work.await]
}

/// [`capped`] for the modes that report several tallies.
async fn capped_many(
    mode: &str,
    cap: Duration,
    work: impl std::future::Future<Output = Vec<Tally>>,
) -> Vec<Tally> {
    let started = Instant::now();
    let tallies = future::or(async { Some(work.await) }, async {
        glommio::timer::sleep(cap).await;
        None
    })
    .await;
    match tallies {
        Some(mut tallies) => {
            for t in &mut tallies {
                t.wall_ms = started.elapsed().as_millis() as u64;
            }
            tallies
        }
        None => vec![overran(mode, cap)],
    }
}

/// Report order: the order of `cli::ALL_MODES`, variants after their mode.
fn order(mode: &str) -> usize {
    crate::cli::ALL_MODES
        .iter()
        .position(|m| mode.starts_with(m.name()))
        .unwrap_or(usize::MAX)
}

/// After the attacks: `/health` answers `ok`, and a fresh client's `echo`
/// comes back.
async fn aftermath(ctx: &Rc<Ctx>) -> Tally {
    let health = net::http_get(&ctx.target, "/health").await;
    let health_ok = match &health {
        Ok((200, body)) => serde_json::from_slice::<serde_json::Value>(body)
            .map(|v| v["status"] == "ok")
            .unwrap_or(false),
        _ => false,
    };
    let echo = fresh_echo(ctx).await;
    let mut t = Tally::new(
        "aftermath",
        "/health answers ok; a fresh client's echo comes back",
        std::slice::from_ref(&echo),
    );
    t.figure(
        "health",
        match &health {
            Ok((code, body)) => format!("{code} {}", String::from_utf8_lossy(body)),
            Err(e) => e.clone(),
        },
    );
    t.require(health_ok, "GET /health did not answer 200 with status ok");
    t.require_only(&["echoed"]);
    t
}

async fn fresh_echo(ctx: &Rc<Ctx>) -> ClientEnd {
    let user = format!("hostile-{}-after", ctx.run_id);
    let mut up = match net::upgrade(&ctx.target, Some(&user), ctx.seed(16, 0)).await {
        Ok(u) => u,
        Err(kind) => return ClientEnd::new(kind),
    };
    let t0 = Instant::now();
    let command = br#"{"op":"echo","data":"hostile-aftermath","ref":"after"}"#;
    let mut out = Vec::new();
    masked_frame(true, OP_TEXT, command, [1, 2, 3, 4], &mut out);
    let mut pos = 0;
    let mut rbuf = vec![0u8; 16 * 1024];
    let deadline = t0 + Duration::from_secs(5);
    // `welcome` first, then the echo: {"op":"echo","ref":"after","data":…}.
    loop {
        while let Ok(Some(event)) = up.reader.next_event() {
            match event {
                ServerEvent::Data(_) => {
                    let reply: serde_json::Value =
                        serde_json::from_slice(up.reader.last_payload()).unwrap_or_default();
                    if reply["op"] == "echo" && reply["data"] == "hostile-aftermath" {
                        return ClientEnd::new("echoed").after_ms(t0.elapsed().as_millis() as u64);
                    }
                }
                ServerEvent::Close(code) => {
                    return ClientEnd::new(format!("close_{}", code.unwrap_or(0)))
                }
                _ => {}
            }
        }
        match step(&mut up.stream, Some(&mut rbuf), &out[pos..], Some(deadline)).await {
            Step::Wrote(n) => pos += n,
            Step::Read(n) => up.reader.feed(&rbuf[..n]),
            Step::Deadline => return ClientEnd::new("no_echo"),
            Step::Eof => return ClientEnd::new("eof"),
            Step::ReadFailed(e) | Step::WriteFailed(e) => return ClientEnd::new(net::io_kind(&e)),
        }
    }
}
