//! Slowloris: many sockets each sending a valid upgrade request one byte
//! per interval, so the request would take minutes to complete.
//!
//! Expected: the server closes every one `handshake_timeout_ms` after it
//! accepted it, without an answer (src/conn/mod.rs: the request head is
//! read under one timer for the whole head, not per byte), and counts each
//! as a handshake failure.

use std::rc::Rc;
use std::time::{Duration, Instant};

use loadgen::handshake;

use super::{ms_since, run_clients, Ctx};
use crate::net::{self, io_kind, step, Step};
use crate::tally::{ClientEnd, Tally};
use crate::wire::{http_answer, HttpAnswer};

#[derive(Debug, Clone)]
pub struct Slowloris {
    pub sockets: usize,
    /// Time between two bytes of one socket.
    pub interval: Duration,
    /// Sockets are opened evenly over this time.
    pub ramp: Duration,
}

pub async fn run(ctx: Rc<Ctx>, cfg: Slowloris) -> Tally {
    let before = net::server_metrics(&ctx.target).await;
    let request_len = ctx
        .target
        .upgrade_request(Some("slowloris-000000"), &handshake::make_key(0))
        .len();
    let ends = run_clients(cfg.sockets, cfg.ramp, |i| {
        client(Rc::clone(&ctx), i, cfg.interval)
    })
    .await;
    let after = net::server_metrics(&ctx.target).await;

    let timeout_ms = ctx.limits.handshake_timeout.as_millis() as u64;
    let slack_ms = ctx.slack.as_millis() as u64;
    let mut t = Tally::new(
        "slowloris",
        format!("closed without an answer {timeout_ms} ms after accept (handshake_timeout_ms)"),
        &ends,
    );
    let connected = t.clients - t.count_where(|k| k.starts_with("connect_"));
    let closed = t.count("eof") + t.count("reset");
    let failures_delta = net::counter(&after, "handshake_failures")
        .saturating_sub(net::counter(&before, "handshake_failures"));
    t.figure("interval_ms", cfg.interval.as_millis() as u64);
    t.figure("request_bytes", request_len as u64);
    t.figure("connected", connected);
    t.figure("server_handshake_failures_delta", failures_delta);

    t.require(
        request_len as u128 * cfg.interval.as_millis() > 2 * u128::from(timeout_ms),
        format!(
            "misconfigured: {request_len} bytes at one per {} ms would finish inside the timeout",
            cfg.interval.as_millis()
        ),
    );
    t.require(
        connected * 100 >= t.clients * 99,
        format!("only {connected} of {} sockets connected", t.clients),
    );
    t.require(
        closed == connected,
        format!(
            "{} connected sockets were not closed by the server as expected: {}",
            connected - closed.min(connected),
            t.outcome_line()
        ),
    );
    t.require(
        t.disconnect.count == 0 || t.disconnect.min_ms + 50 >= timeout_ms * 95 / 100,
        format!(
            "closed after {} ms, before handshake_timeout_ms ({timeout_ms})",
            t.disconnect.min_ms
        ),
    );
    t.require(
        t.disconnect.max_ms <= timeout_ms + slack_ms,
        format!(
            "slowest close after {} ms, over handshake_timeout_ms + {slack_ms} ms slack",
            t.disconnect.max_ms
        ),
    );
    if before.is_some() && after.is_some() {
        t.require(
            failures_delta >= closed,
            format!(
                "the server counted {failures_delta} handshake failures for {closed} timed-out sockets"
            ),
        );
    }
    t
}

async fn client(ctx: Rc<Ctx>, i: usize, interval: Duration) -> ClientEnd {
    let mut stream = match net::connect(ctx.target.addr).await {
        Ok(s) => s,
        Err(kind) => return ClientEnd::new(kind),
    };
    let t0 = Instant::now();
    let user = format!("slowloris-{i:06}");
    let request = ctx
        .target
        .upgrade_request(Some(&user), &handshake::make_key(ctx.seed(1, i)));
    // Past this the socket counts as "still open": the server ignored its timer.
    let give_up = t0 + ctx.limits.handshake_timeout + 2 * ctx.slack;
    let mut sent = 0usize;
    let mut next_byte = t0;
    let mut rbuf = [0u8; 512];
    let mut answer = Vec::new();
    loop {
        let now = Instant::now();
        let due = now >= next_byte && sent < request.len();
        let wbuf = if due {
            &request[sent..sent + 1]
        } else {
            &[][..]
        };
        let deadline = if due { give_up } else { next_byte.min(give_up) };
        match step(&mut stream, Some(&mut rbuf), wbuf, Some(deadline)).await {
            Step::Wrote(n) => {
                sent += n;
                next_byte += interval;
            }
            Step::Read(n) => {
                answer.extend_from_slice(&rbuf[..n]);
                match http_answer(&answer) {
                    HttpAnswer::Partial => {}
                    HttpAnswer::Status { code, .. } => {
                        return ClientEnd::new(format!("http_{code}"))
                            .after_ms(ms_since(t0))
                            .sent(sent as u64)
                    }
                    HttpAnswer::NotHttp => {
                        return ClientEnd::new("garbage_answer")
                            .after_ms(ms_since(t0))
                            .sent(sent as u64)
                    }
                }
            }
            Step::Eof => {
                return ClientEnd::new("eof")
                    .after_ms(ms_since(t0))
                    .sent(sent as u64)
            }
            Step::ReadFailed(e) | Step::WriteFailed(e) => {
                return ClientEnd::new(io_kind(&e))
                    .after_ms(ms_since(t0))
                    .sent(sent as u64)
            }
            Step::Deadline => {
                if Instant::now() >= give_up {
                    return ClientEnd::new("still_open").sent(sent as u64);
                }
            }
        }
    }
}
