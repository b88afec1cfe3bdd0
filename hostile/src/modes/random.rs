//! Random bytes: half the clients send garbage instead of an HTTP request,
//! half upgrade properly and then send garbage instead of frames.
//!
//! Expected before the upgrade: HTTP 400 ("Malformed request → 400", and
//! heads over 16 KiB are 400 too: `REQUEST_HEAD_MAX_BYTES`). After the
//! upgrade: a close frame with 1002 (protocol violation: unmasked frame,
//! reserved bits, bad opcode…), 1007 (invalid UTF-8 in a text message) or
//! 1009 (a frame announcing more than `max_message_bytes`), never a hang
//! and never 1011.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{ms_since, run_clients, Ctx};
use crate::net::{self, io_kind, step, Step};
use crate::tally::{ClientEnd, Tally};
use crate::wire::{http_answer, HttpAnswer, Rng, ServerEvent};

/// Garbage sent before the upgrade: past the 16 KiB head limit.
pub const PRE_UPGRADE_BUDGET_BYTES: usize = 20 * 1024;
/// Garbage sent after the upgrade: enough to finish any frame announcing
/// a 16-bit length (64 KiB) several times over; longer lengths are over
/// `max_message_bytes` at the defaults and end at once with 1009.
pub const POST_UPGRADE_BUDGET_BYTES: usize = 256 * 1024;
const CHUNK_BYTES: usize = 1024;

#[derive(Debug, Clone)]
pub struct RandomBytes {
    pub clients: usize,
    pub ramp: Duration,
}

pub async fn run(ctx: Rc<Ctx>, cfg: RandomBytes) -> Vec<Tally> {
    let ends = run_clients(cfg.clients, cfg.ramp, |i| {
        let ctx = Rc::clone(&ctx);
        async move {
            if i.is_multiple_of(2) {
                before_upgrade(ctx, i).await
            } else {
                after_upgrade(ctx, i).await
            }
        }
    })
    .await;
    let (pre, post): (Vec<_>, Vec<_>) = ends
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i.is_multiple_of(2));
    let pre: Vec<ClientEnd> = pre.into_iter().map(|(_, e)| e).collect();
    let post: Vec<ClientEnd> = post.into_iter().map(|(_, e)| e).collect();

    let mut t_pre = Tally::new(
        "random-pre-upgrade",
        "HTTP 400 for a malformed request (or a head over 16 KiB), then close",
        &pre,
    );
    t_pre.require_only(&["http_400"]);
    t_pre.require(
        t_pre.disconnect.max_ms <= ctx.slack.as_millis() as u64,
        format!(
            "slowest 400 after {} ms (over the {} ms slack)",
            t_pre.disconnect.max_ms,
            ctx.slack.as_millis()
        ),
    );

    let mut t_post = Tally::new(
        "random-post-upgrade",
        "close 1002 (protocol violation), 1007 (bad UTF-8) or 1009 (over max_message_bytes); never a hang or 1011",
        &post,
    );
    t_post.require_only(&["close_1002", "close_1007", "close_1009"]);
    [t_pre, t_post]
        .into_iter()
        .filter(|t| t.clients > 0)
        .collect()
}

async fn before_upgrade(ctx: Rc<Ctx>, i: usize) -> ClientEnd {
    let mut stream = match net::connect(ctx.target.addr).await {
        Ok(s) => s,
        Err(kind) => return ClientEnd::new(kind),
    };
    let t0 = Instant::now();
    let mut rng = Rng::new(ctx.seed(2, i));
    let give_up = t0 + ctx.limits.handshake_timeout + 2 * ctx.slack;
    let mut chunk = vec![0u8; CHUNK_BYTES];
    rng.fill(&mut chunk);
    let mut chunk_pos = 0;
    let mut sent = 0usize;
    let mut rbuf = [0u8; 2048];
    let mut answer = Vec::new();
    loop {
        let wbuf = if sent < PRE_UPGRADE_BUDGET_BYTES {
            &chunk[chunk_pos..]
        } else {
            &[][..]
        };
        match step(&mut stream, Some(&mut rbuf), wbuf, Some(give_up)).await {
            Step::Wrote(n) => {
                sent += n;
                chunk_pos += n;
                if chunk_pos == chunk.len() {
                    rng.fill(&mut chunk);
                    chunk_pos = 0;
                }
            }
            Step::Read(n) => {
                answer.extend_from_slice(&rbuf[..n]);
                match http_answer(&answer) {
                    HttpAnswer::Partial if answer.len() < 64 * 1024 => {}
                    HttpAnswer::Status { code, .. } => {
                        return ClientEnd::new(format!("http_{code}"))
                            .after_ms(ms_since(t0))
                            .sent(sent as u64)
                    }
                    _ => {
                        return ClientEnd::new("garbage_answer")
                            .after_ms(ms_since(t0))
                            .sent(sent as u64)
                    }
                }
            }
            Step::Eof => {
                return ClientEnd::new("eof_without_answer")
                    .after_ms(ms_since(t0))
                    .sent(sent as u64)
            }
            Step::ReadFailed(e) | Step::WriteFailed(e) => {
                return ClientEnd::new(io_kind(&e))
                    .after_ms(ms_since(t0))
                    .sent(sent as u64)
            }
            Step::Deadline => return ClientEnd::new("still_open").sent(sent as u64),
        }
    }
}

async fn after_upgrade(ctx: Rc<Ctx>, i: usize) -> ClientEnd {
    let user = format!("random-{}-{i}", ctx.run_id);
    let mut up = match net::upgrade(&ctx.target, Some(&user), ctx.seed(3, i)).await {
        Ok(u) => u,
        Err(kind) => return ClientEnd::new(kind),
    };
    let t0 = Instant::now();
    let mut rng = Rng::new(ctx.seed(4, i));
    let mut chunk = vec![0u8; CHUNK_BYTES];
    rng.fill(&mut chunk);
    let mut chunk_pos = 0;
    let mut sent = 0usize;
    let mut rbuf = vec![0u8; 16 * 1024];
    // Time to finish the budget and for the server to answer the last byte.
    let give_up = t0 + Duration::from_secs(5) + ctx.slack;
    loop {
        loop {
            match up.reader.next_event() {
                Ok(Some(ServerEvent::Close(code))) => {
                    let kind =
                        code.map_or("close_without_code".to_string(), |c| format!("close_{c}"));
                    return ClientEnd::new(kind)
                        .after_ms(ms_since(t0))
                        .sent(sent as u64);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    return ClientEnd::new(format!("server_{}", e.kind()))
                        .after_ms(ms_since(t0))
                        .sent(sent as u64)
                }
            }
        }
        let wbuf = if sent < POST_UPGRADE_BUDGET_BYTES {
            &chunk[chunk_pos..]
        } else {
            &[][..]
        };
        match step(&mut up.stream, Some(&mut rbuf), wbuf, Some(give_up)).await {
            Step::Wrote(n) => {
                sent += n;
                chunk_pos += n;
                if chunk_pos == chunk.len() {
                    rng.fill(&mut chunk);
                    chunk_pos = 0;
                }
            }
            Step::Read(n) => up.reader.feed(&rbuf[..n]),
            Step::Eof => {
                return ClientEnd::new("eof_without_close")
                    .after_ms(ms_since(t0))
                    .sent(sent as u64)
            }
            Step::ReadFailed(e) | Step::WriteFailed(e) => {
                return ClientEnd::new(io_kind(&e))
                    .after_ms(ms_since(t0))
                    .sent(sent as u64)
            }
            Step::Deadline => return ClientEnd::new("still_open").sent(sent as u64),
        }
    }
}
