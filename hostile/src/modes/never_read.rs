//! Never-readers: valid clients that get traffic and never read their
//! socket. Even ones join a group that a publisher (ours, reading its own
//! socket) feeds; odd ones pump `echo` commands whose replies pile up.
//!
//! Expected: each connection's outgoing queue is bounded by
//! `outbox_max_bytes`; a connection that stays over it for
//! `slow_consumer_grace_ms`, or reaches twice it, is closed with 1008 and
//! counted in `slow_consumers_closed` (docs/PROTOCOL.md, "Backpressure").

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{ms_since, record_rss, run_clients, with_rss_watch, Ctx};
use crate::net::{self, io_kind, step, Step};
use crate::tally::{ClientEnd, Tally};
use crate::wire::{masked_frame, Rng, ServerEvent, OP_TEXT};

/// The kernel's share of a stuck connection (see ping_flood).
use super::ping_flood::KERNEL_ALLOWANCE_BYTES;

#[derive(Debug, Clone)]
pub struct NeverRead {
    pub clients: usize,
    pub ramp: Duration,
    /// `data` bytes of each published or echoed message.
    pub message_bytes: usize,
    /// Messages a second: the publisher's, and each echo pump's.
    pub rate: usize,
}

struct Shared {
    group: String,
    subscribers: usize,
    joined: Cell<usize>,
    /// Set when the server closed them all, or the window ran out.
    over: Cell<bool>,
}

pub async fn run(ctx: Rc<Ctx>, cfg: NeverRead) -> Tally {
    let limits = &ctx.limits;
    let bytes_per_s = (cfg.rate * cfg.message_bytes).max(1) as f64;
    // Time to fill what the kernel holds plus twice the outbox at this pace,
    // then the grace, then slack: the server must have closed them all by then.
    let fill = (KERNEL_ALLOWANCE_BYTES as f64 + 2.0 * limits.outbox_max_bytes as f64) / bytes_per_s;
    let window = cfg.ramp + Duration::from_secs_f64(fill) + limits.slow_consumer_grace + ctx.slack;

    let shared = Rc::new(Shared {
        group: format!("hostile-{}-nr", ctx.run_id),
        subscribers: cfg.clients.div_ceil(2),
        joined: Cell::new(0),
        over: Cell::new(false),
    });
    let before = net::server_metrics(&ctx.target).await;
    let base = net::counter(&before, "slow_consumers_closed");
    let started = Instant::now();
    let all_closed_at: Rc<Cell<Option<u64>>> = Rc::new(Cell::new(None));

    let publisher =
        glommio::spawn_local(publisher(Rc::clone(&ctx), cfg.clone(), Rc::clone(&shared)));
    let watcher = {
        let ctx = Rc::clone(&ctx);
        let shared = Rc::clone(&shared);
        let all_closed_at = Rc::clone(&all_closed_at);
        let n = cfg.clients as u64;
        glommio::spawn_local(async move {
            let deadline = started + window;
            let mut last = base;
            while Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(250)).await;
                let m = net::server_metrics(&ctx.target).await;
                last = net::counter(&m, "slow_consumers_closed").max(last);
                if last - base >= n {
                    all_closed_at.set(Some(ms_since(started)));
                    break;
                }
            }
            shared.over.set(true);
            last - base
        })
    };
    let work = run_clients(cfg.clients, cfg.ramp, |i| {
        client(Rc::clone(&ctx), i, cfg.clone(), Rc::clone(&shared))
    });
    let (ends, rss) = with_rss_watch(&ctx, work).await;
    let closed_delta = watcher.await;
    let published = publisher.await;

    let mut t = Tally::new(
        "never-read",
        format!(
            "outbox over outbox_max_bytes ({}) for slow_consumer_grace_ms ({} ms), or over twice it: close 1008, counted",
            limits.outbox_max_bytes,
            limits.slow_consumer_grace.as_millis()
        ),
        &ends,
    );
    t.figure("message_bytes", cfg.message_bytes as u64);
    t.figure("messages_per_s", cfg.rate as u64);
    t.figure("published", published);
    t.figure("server_slow_consumers_closed_delta", closed_delta);
    t.figure("window_ms", window.as_millis() as u64);
    if let Some(ms) = all_closed_at.get() {
        t.figure("server_closed_all_after_ms", ms);
    }
    record_rss(&mut t, rss);
    t.require_only(&["close_1008", "eof", "reset", "broken_pipe"]);
    t.require(
        closed_delta >= cfg.clients as u64,
        format!(
            "the server counted {closed_delta} slow consumers closed for {} never-readers within {} ms",
            cfg.clients,
            window.as_millis()
        ),
    );
    t
}

/// Publishes to the group until the window is over; returns the count.
async fn publisher(ctx: Rc<Ctx>, cfg: NeverRead, shared: Rc<Shared>) -> u64 {
    let user = format!("hostile-{}-publisher", ctx.run_id);
    let Ok(mut up) = net::upgrade(&ctx.target, Some(&user), ctx.seed(11, 0)).await else {
        shared.over.set(true);
        return 0;
    };
    // Subscribers join first (bounded wait).
    let wait_until = Instant::now() + Duration::from_secs(10);
    while shared.joined.get() < shared.subscribers && Instant::now() < wait_until {
        if shared.over.get() {
            return 0;
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    let command = format!(
        "{{\"op\":\"publish\",\"group\":\"{}\",\"data\":\"{}\"}}",
        shared.group,
        "x".repeat(cfg.message_bytes)
    );
    let mut rng = Rng::new(ctx.seed(12, 0));
    let every = Duration::from_secs_f64(1.0 / cfg.rate.max(1) as f64);
    let mut next = Instant::now();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut published = 0u64;
    let mut rbuf = vec![0u8; 64 * 1024];
    while !shared.over.get() {
        if pos == out.len() && Instant::now() >= next {
            out.clear();
            pos = 0;
            masked_frame(true, OP_TEXT, command.as_bytes(), rng.mask(), &mut out);
            published += 1;
            next += every;
        }
        // Short deadlines so the end of the window is noticed.
        let deadline = next.min(Instant::now() + Duration::from_millis(50));
        match step(&mut up.stream, Some(&mut rbuf), &out[pos..], Some(deadline)).await {
            Step::Wrote(n) => pos += n,
            Step::Read(_) | Step::Deadline => {}
            Step::Eof | Step::ReadFailed(_) | Step::WriteFailed(_) => break,
        }
    }
    published
}

async fn client(ctx: Rc<Ctx>, i: usize, cfg: NeverRead, shared: Rc<Shared>) -> ClientEnd {
    let user = format!("hostile-{}-nr-{i}", ctx.run_id);
    let mut up = match net::upgrade(&ctx.target, Some(&user), ctx.seed(13, i)).await {
        Ok(u) => u,
        Err(kind) => return ClientEnd::new(kind),
    };
    let mut rng = Rng::new(ctx.seed(14, i));
    let mut rbuf = vec![0u8; 64 * 1024];
    let t0 = Instant::now();
    let mut sent = 0u64;
    if i.is_multiple_of(2) {
        // Subscriber: join, read up to the `ok` (welcome + ok), then never again.
        let join = format!(
            "{{\"op\":\"join\",\"group\":\"{}\",\"ref\":1}}",
            shared.group
        );
        let mut out = Vec::new();
        masked_frame(true, OP_TEXT, join.as_bytes(), rng.mask(), &mut out);
        let mut pos = 0;
        let mut frames = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while frames < 2 || pos < out.len() {
            while let Ok(Some(ServerEvent::Data(_))) = up.reader.next_event() {
                frames += 1;
            }
            if frames >= 2 && pos == out.len() {
                break;
            }
            match step(&mut up.stream, Some(&mut rbuf), &out[pos..], Some(deadline)).await {
                Step::Wrote(n) => pos += n,
                Step::Read(n) => up.reader.feed(&rbuf[..n]),
                Step::Deadline => return ClientEnd::new("join_unanswered"),
                Step::Eof | Step::ReadFailed(_) | Step::WriteFailed(_) => {
                    return ClientEnd::new("closed_before_join")
                }
            }
        }
        shared.joined.set(shared.joined.get() + 1);
        while !shared.over.get() {
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
    } else {
        // Echo pump: commands whose replies are never read.
        let command = format!(
            "{{\"op\":\"echo\",\"data\":\"{}\"}}",
            "y".repeat(cfg.message_bytes)
        );
        let every = Duration::from_secs_f64(1.0 / cfg.rate.max(1) as f64);
        let mut next = Instant::now();
        let mut out = Vec::new();
        let mut pos = 0;
        while !shared.over.get() {
            if pos == out.len() && Instant::now() >= next {
                out.clear();
                pos = 0;
                masked_frame(true, OP_TEXT, command.as_bytes(), rng.mask(), &mut out);
                next += every;
            }
            let deadline = next.min(Instant::now() + Duration::from_millis(100));
            match step(&mut up.stream, None, &out[pos..], Some(deadline)).await {
                Step::Wrote(n) => {
                    pos += n;
                    sent += n as u64;
                }
                Step::WriteFailed(e) => {
                    // The server gave up on us: its close made our writes fail.
                    return ClientEnd::new(io_kind(&e))
                        .after_ms(ms_since(t0))
                        .sent(sent);
                }
                _ => {}
            }
        }
    }
    // The window is over: now read what is there, to see how it ended.
    drain(&mut up, &mut rbuf, ctx.slack + Duration::from_secs(3), sent).await
}

/// Reads to the end: `close_<code>` when a close frame was among the data
/// and the socket then ended, `eof`/`reset` when it ended without one,
/// `still_open` when the server is still holding the connection.
async fn drain(up: &mut net::Upgraded, rbuf: &mut [u8], within: Duration, sent: u64) -> ClientEnd {
    let deadline = Instant::now() + within;
    let mut close: Option<u16> = None;
    loop {
        loop {
            match up.reader.next_event() {
                Ok(Some(ServerEvent::Close(code))) => close = Some(code.unwrap_or(0)),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => return ClientEnd::new(format!("server_{}", e.kind())).sent(sent),
            }
        }
        let ended = match step(&mut up.stream, Some(rbuf), &[], Some(deadline)).await {
            Step::Read(n) => {
                up.reader.feed(&rbuf[..n]);
                continue;
            }
            Step::Eof => "eof".to_string(),
            Step::ReadFailed(e) | Step::WriteFailed(e) => io_kind(&e).to_string(),
            Step::Deadline => return ClientEnd::new("still_open").sent(sent),
            Step::Wrote(_) => unreachable!("nothing to write"),
        };
        return match close {
            Some(code) => ClientEnd::new(format!("close_{code}")).sent(sent),
            None => ClientEnd::new(ended).sent(sent),
        };
    }
}
