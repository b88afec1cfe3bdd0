//! Connection flood: upgrades until the server is full, and `extra` more,
//! holding every connection it gets.
//!
//! Expected: HTTP 503 before the upgrade once `max_connections` live
//! WebSocket connections exist (src/registry.rs: one atomic admission
//! counter), never more live connections than that, plain HTTP (`/health`)
//! still answered while full, and the slots given back once the flood lets
//! go.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;
use glommio::sync::Semaphore;

use super::{ms_since, run_clients, Ctx};
use crate::net;
use crate::tally::{ClientEnd, Tally};

/// Descriptors kept free for everything else in this process.
const FD_HEADROOM: u64 = 256;

#[derive(Debug, Clone)]
pub struct Flood {
    /// Attempts past the free slots.
    pub extra: usize,
    /// Upgrades in progress at once.
    pub concurrency: usize,
    /// Attempts are started evenly over this time.
    pub ramp: Duration,
    /// How long the flood holds its connections once the server is full.
    pub hold: Duration,
}

pub async fn run(ctx: Rc<Ctx>, cfg: Flood) -> Tally {
    let max = ctx.limits.max_connections as u64;
    let before = net::server_metrics(&ctx.target).await;
    let live_before = net::gauge(&before, "connections").unwrap_or(0);
    let free = max.saturating_sub(live_before);
    let attempts = free as usize + cfg.extra;
    let expected = format!(
        "HTTP 503 before the upgrade past max_connections ({max}); never more live; /health answered while full; slots given back"
    );
    if before.is_none() || attempts as u64 + FD_HEADROOM > ctx.fd_limit {
        let mut t = Tally::new("flood", expected, &[]);
        t.require(
            before.is_some(),
            "cannot read /metrics.json: the live connection count is needed",
        );
        t.require(
            attempts as u64 + FD_HEADROOM <= ctx.fd_limit,
            format!(
                "{attempts} attempts need more descriptors than this process has ({}): lower the server's max_connections",
                ctx.fd_limit
            ),
        );
        return t;
    }

    let held: Rc<RefCell<Vec<TcpStream>>> =
        Rc::new(RefCell::new(Vec::with_capacity(free as usize)));
    let gate = Rc::new(Semaphore::new(cfg.concurrency.max(1) as u64));
    let ends = run_clients(attempts, cfg.ramp, |i| {
        let ctx = Rc::clone(&ctx);
        let held = Rc::clone(&held);
        let gate = Rc::clone(&gate);
        async move {
            let Ok(_permit) = gate.acquire_permit(1).await else {
                return ClientEnd::new("not_started");
            };
            let t0 = Instant::now();
            match net::upgrade(&ctx.target, None, ctx.seed(15, i)).await {
                Ok(up) => {
                    held.borrow_mut().push(up.stream);
                    ClientEnd::new("upgraded").after_ms(ms_since(t0))
                }
                Err(kind) => ClientEnd::new(kind).after_ms(ms_since(t0)),
            }
        }
    })
    .await;

    // Full now: the server must still answer plain HTTP.
    let full = net::server_metrics(&ctx.target).await;
    let health_while_full = net::http_get(&ctx.target, "/health")
        .await
        .map(|(status, _)| status);
    glommio::timer::sleep(cfg.hold).await;
    let held_count = held.borrow().len() as u64;
    held.borrow_mut().clear();
    // Given back: live connections return to where they were.
    let release_deadline = Instant::now() + Duration::from_secs(5) + ctx.slack;
    let mut live_after = None;
    while Instant::now() < release_deadline {
        glommio::timer::sleep(Duration::from_millis(250)).await;
        let m = net::server_metrics(&ctx.target).await;
        live_after = net::gauge(&m, "connections");
        if live_after.is_some_and(|n| n <= live_before) {
            break;
        }
    }

    let mut t = Tally::new("flood", expected, &ends);
    let upgraded = t.count("upgraded");
    let refused = t.count("http_503");
    let closed_during = net::counter(&full, "connections_closed")
        .saturating_sub(net::counter(&before, "connections_closed"));
    let peak = net::gauge(&full, "connections_peak");
    t.figure("max_connections", max);
    t.figure("live_before", live_before);
    t.figure("attempts", attempts as u64);
    t.figure("held", held_count);
    t.figure("closed_by_others_during", closed_during);
    if let Some(p) = peak {
        t.figure("server_connections_peak", p);
    }
    if let Some(n) = live_after {
        t.figure("live_after_release", n);
    }
    t.require_only(&["upgraded", "http_503"]);
    t.require(
        refused > 0,
        format!("no 503 in {attempts} attempts: the flood never got past max_connections"),
    );
    t.require(
        live_before + upgraded <= max + closed_during,
        format!(
            "{live_before} live + {upgraded} upgraded - {closed_during} closed meanwhile is over max_connections ({max})"
        ),
    );
    t.require(
        peak.is_none_or(|p| p <= max),
        format!("the server reports a connection peak of {peak:?}, over {max}"),
    );
    t.require(
        health_while_full == Ok(200),
        format!("/health while full: {health_while_full:?}"),
    );
    t.require(
        t.disconnect.p99_ms <= ctx.slack.as_millis() as u64,
        format!(
            "answers took up to {} ms (p99 {} ms), over the {} ms slack",
            t.disconnect.max_ms,
            t.disconnect.p99_ms,
            ctx.slack.as_millis()
        ),
    );
    t.require(
        live_after.is_some_and(|n| n <= live_before),
        format!("live connections after the flood let go: {live_after:?}, were {live_before}"),
    );
    t
}
