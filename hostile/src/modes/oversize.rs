//! Oversize frames: after a valid upgrade, a frame header announcing more
//! than `max_message_bytes` (one byte more, or 2^62), followed by payload
//! trickling in.
//!
//! Expected: close 1009 as soon as the header is read (src/ws/mod.rs sets
//! tungstenite's `max_frame_size` to `max_message_bytes`, checked on the
//! header), so the server never buffers the announced payload.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{ms_since, run_clients, Ctx};
use crate::net::{self, io_kind, step, Step};
use crate::tally::{ClientEnd, Tally};
use crate::wire::{frame_header, Rng, ServerEvent, OP_BINARY, OP_TEXT};

/// Payload sent behind the header, per write, while waiting for the close.
const TRICKLE_BYTES: usize = 4096;
const TRICKLE_EVERY: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct Oversize {
    pub clients: usize,
    pub ramp: Duration,
}

pub async fn run(ctx: Rc<Ctx>, cfg: Oversize) -> Tally {
    let ends = run_clients(cfg.clients, cfg.ramp, |i| client(Rc::clone(&ctx), i)).await;
    let slack_ms = ctx.slack.as_millis() as u64;
    let mut t = Tally::new(
        "oversize",
        format!(
            "close 1009 on the header of a frame over max_message_bytes ({})",
            ctx.limits.max_message_bytes
        ),
        &ends,
    );
    t.require_only(&["close_1009"]);
    t.require(
        t.disconnect.max_ms <= slack_ms,
        format!(
            "slowest 1009 after {} ms (over the {slack_ms} ms slack)",
            t.disconnect.max_ms
        ),
    );
    t
}

async fn client(ctx: Rc<Ctx>, i: usize) -> ClientEnd {
    let user = format!("oversize-{}-{i}", ctx.run_id);
    let mut up = match net::upgrade(&ctx.target, Some(&user), ctx.seed(5, i)).await {
        Ok(u) => u,
        Err(kind) => return ClientEnd::new(kind),
    };
    let mut rng = Rng::new(ctx.seed(6, i));
    let mask = rng.mask();
    let max = ctx.limits.max_message_bytes as u64;
    let (opcode, announced) = if i.is_multiple_of(2) {
        (OP_TEXT, max + 1)
    } else {
        (OP_BINARY, 1 << 62)
    };
    let mut out = Vec::new();
    frame_header(true, opcode, announced, mask, &mut out);
    let t0 = Instant::now();
    // Never more than the frame itself; stop well before it completes.
    let budget = (max as usize).min(4 << 20);
    let give_up = t0 + Duration::from_secs(2) + ctx.slack;
    let mut sent = 0usize;
    let mut pos = 0usize;
    let mut next_trickle = Instant::now();
    let mut rbuf = vec![0u8; 16 * 1024];
    loop {
        while let Some(event) = match up.reader.next_event() {
            Ok(e) => e,
            Err(e) => return ClientEnd::new(format!("server_{}", e.kind())).after_ms(ms_since(t0)),
        } {
            if let ServerEvent::Close(code) = event {
                let kind = code.map_or("close_without_code".to_string(), |c| format!("close_{c}"));
                return ClientEnd::new(kind)
                    .after_ms(ms_since(t0))
                    .sent(sent as u64);
            }
        }
        if pos == out.len() && sent < budget && Instant::now() >= next_trickle {
            out.clear();
            out.resize(TRICKLE_BYTES, 0);
            pos = 0;
            next_trickle = Instant::now() + TRICKLE_EVERY;
        }
        let wbuf = &out[pos..];
        let deadline = if wbuf.is_empty() {
            next_trickle.min(give_up)
        } else {
            give_up
        };
        match step(&mut up.stream, Some(&mut rbuf), wbuf, Some(deadline)).await {
            Step::Wrote(n) => {
                pos += n;
                sent += n;
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
            Step::Deadline => {
                if Instant::now() >= give_up {
                    return ClientEnd::new("still_open").sent(sent as u64);
                }
            }
        }
    }
}
