//! Endlessly fragmented messages: a text frame without FIN, then
//! continuation frames without FIN, forever (bounded here by bytes and time).
//!
//! Expected: close 1009 once the fragments add up to more than
//! `max_message_bytes` (tungstenite's `max_message_size`, checked on every
//! continuation in `IncompleteMessage::extend`), so a message that never
//! ends costs the server at most `max_message_bytes`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{ms_since, run_clients, Ctx};
use crate::net::{self, io_kind, step, Step};
use crate::tally::{ClientEnd, Tally};
use crate::wire::{masked_frame, Rng, ServerEvent, OP_CONTINUATION, OP_TEXT};

#[derive(Debug, Clone)]
pub struct Fragment {
    pub clients: usize,
    pub ramp: Duration,
    /// Payload bytes per fragment.
    pub fragment_bytes: usize,
    /// Pace of each client, payload bytes a second.
    pub bytes_per_s: usize,
}

pub async fn run(ctx: Rc<Ctx>, cfg: Fragment) -> Tally {
    let max = ctx.limits.max_message_bytes;
    // The time the fragments need to pass the limit at this pace, plus slack.
    let expected = Duration::from_secs_f64(max as f64 / cfg.bytes_per_s.max(1) as f64);
    let give_up = expected * 2 + ctx.slack;
    let ends = run_clients(cfg.clients, cfg.ramp, |i| {
        client(Rc::clone(&ctx), i, cfg.clone(), give_up)
    })
    .await;
    let mut t = Tally::new(
        "fragment",
        format!("close 1009 once the unfinished message passes max_message_bytes ({max})"),
        &ends,
    );
    t.figure("fragment_bytes", cfg.fragment_bytes as u64);
    t.figure("bytes_per_s_per_client", cfg.bytes_per_s as u64);
    t.require_only(&["close_1009"]);
    // The server cannot have counted bytes we did not send: a close when
    // even the fragment in flight could not take the message past max
    // would mean a lower limit than documented.
    let early = ends
        .iter()
        .filter(|e| {
            e.outcome == "close_1009" && e.bytes_sent + cfg.fragment_bytes as u64 <= max as u64
        })
        .count();
    t.require(
        early == 0,
        format!("{early} clients got 1009 before sending max_message_bytes"),
    );
    t
}

async fn client(ctx: Rc<Ctx>, i: usize, cfg: Fragment, give_up_after: Duration) -> ClientEnd {
    let user = format!("fragment-{}-{i}", ctx.run_id);
    let mut up = match net::upgrade(&ctx.target, Some(&user), ctx.seed(7, i)).await {
        Ok(u) => u,
        Err(kind) => return ClientEnd::new(kind),
    };
    let mut rng = Rng::new(ctx.seed(8, i));
    let payload = vec![b'a'; cfg.fragment_bytes];
    let every = Duration::from_secs_f64(cfg.fragment_bytes as f64 / cfg.bytes_per_s.max(1) as f64);
    let t0 = Instant::now();
    let give_up = t0 + give_up_after;
    // Bounded even if the server never enforces its limit.
    let budget = 4 * ctx.limits.max_message_bytes as u64;
    let mut out = Vec::new();
    let mut pos = 0;
    let mut payload_sent = 0u64;
    let mut fragments = 0u64;
    let mut next_fragment = t0;
    let mut rbuf = vec![0u8; 16 * 1024];
    loop {
        loop {
            match up.reader.next_event() {
                Ok(Some(ServerEvent::Close(code))) => {
                    let kind =
                        code.map_or("close_without_code".to_string(), |c| format!("close_{c}"));
                    return ClientEnd::new(kind)
                        .after_ms(ms_since(t0))
                        .sent(payload_sent);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    return ClientEnd::new(format!("server_{}", e.kind()))
                        .after_ms(ms_since(t0))
                        .sent(payload_sent)
                }
            }
        }
        if pos == out.len() && payload_sent < budget && Instant::now() >= next_fragment {
            out.clear();
            pos = 0;
            let opcode = if fragments == 0 {
                OP_TEXT
            } else {
                OP_CONTINUATION
            };
            masked_frame(false, opcode, &payload, rng.mask(), &mut out);
            fragments += 1;
            next_fragment += every;
        }
        let wbuf = &out[pos..];
        let deadline = if wbuf.is_empty() {
            next_fragment.min(give_up)
        } else {
            give_up
        };
        match step(&mut up.stream, Some(&mut rbuf), wbuf, Some(deadline)).await {
            Step::Wrote(n) => {
                pos += n;
                if pos == out.len() {
                    payload_sent += cfg.fragment_bytes as u64;
                }
            }
            Step::Read(n) => up.reader.feed(&rbuf[..n]),
            Step::Eof => {
                return ClientEnd::new("eof_without_close")
                    .after_ms(ms_since(t0))
                    .sent(payload_sent)
            }
            Step::ReadFailed(e) | Step::WriteFailed(e) => {
                return ClientEnd::new(io_kind(&e))
                    .after_ms(ms_since(t0))
                    .sent(payload_sent)
            }
            Step::Deadline => {
                if Instant::now() >= give_up {
                    return ClientEnd::new("still_open").sent(payload_sent);
                }
            }
        }
    }
}
