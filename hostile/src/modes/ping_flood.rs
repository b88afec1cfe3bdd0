//! Ping floods: valid clients sending WebSocket pings (125-byte payloads,
//! the most a control frame may carry) at a fixed rate. Some read their
//! pongs; others never read anything, at a rate that pushes them well past
//! what the kernel can buffer for one connection.
//!
//! Expected: readers are answered (RFC 6455 §5.5.2, "Pings are answered" in
//! docs/LOADGEN.md's server model) and keep their connection. Non-readers
//! must not make the server hold their pongs without bound ("Everything is
//! bounded", ARCHITECTURE.md): the server may stop reading them (TCP
//! backpressure), close them, or drop pongs it cannot send (RFC 6455 lets
//! it answer only the latest ping) — what it may not do is grow its memory
//! with every ping a non-reading client sends.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{ms_since, record_rss, run_clients, with_rss_watch, Ctx};
use crate::net::{self, io_kind, step, Step};
use crate::tally::{ClientEnd, Tally};
use crate::wire::{masked_frame, Rng, ServerEvent, OP_PING};

/// Payload of each ping: the RFC's maximum for a control frame.
pub const PING_PAYLOAD_BYTES: usize = 125;
/// Pings are written in batches this often.
const BATCH_EVERY: Duration = Duration::from_millis(10);
/// Most unsent bytes a client keeps queued (it stops adding when stalled).
const QUEUE_MAX_BYTES: usize = 256 * 1024;
/// No write progress for this long counts as backpressure from the server.
const STALL: Duration = Duration::from_secs(2);
/// What the kernel may hold for one connection without the server's help:
/// the server's send buffer (tcp_wmem max, 4 MiB by default) and our
/// receive buffer, generously rounded up.
pub const KERNEL_ALLOWANCE_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct PingFlood {
    /// Clients that read their pongs…
    pub readers: usize,
    /// …at this many pings a second each.
    pub rate: usize,
    /// Clients that never read…
    pub non_readers: usize,
    /// …at this many pings a second each.
    pub non_reader_rate: usize,
    pub ramp: Duration,
    pub duration: Duration,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    pings: u64,
    pongs: u64,
}

pub async fn run(ctx: Rc<Ctx>, cfg: PingFlood) -> Vec<Tally> {
    let work = run_clients(cfg.readers + cfg.non_readers, cfg.ramp, |i| {
        let ctx = Rc::clone(&ctx);
        let cfg = cfg.clone();
        async move {
            if i < cfg.readers {
                reader(ctx, i, cfg).await
            } else {
                non_reader(ctx, i, cfg).await
            }
        }
    });
    let (results, rss) = with_rss_watch(&ctx, work).await;
    let (mut pings, mut pongs) = (0, 0);
    for (_, c) in &results[..cfg.readers] {
        pings += c.pings;
        pongs += c.pongs;
    }
    let ends: Vec<ClientEnd> = results.into_iter().map(|(e, _)| e).collect();
    let (readers, non_readers) = ends.split_at(cfg.readers);

    let mut t_read = Tally::new(
        "ping-flood",
        "every ping answered with a pong, connection kept (RFC 6455 5.5.2)",
        readers,
    );
    t_read.figure("pings_per_s_per_client", cfg.rate as u64);
    t_read.figure("pings_sent", pings);
    t_read.figure("pongs_received", pongs);
    t_read.require_only(&["served"]);
    t_read.require(
        pongs > 0 && pongs <= pings,
        format!("{pongs} pongs for {pings} pings"),
    );

    let mut t_quiet = Tally::new(
        "ping-flood-no-read",
        "pongs for a client that never reads are not held without bound: backpressure, close, or dropped pongs",
        non_readers,
    );
    let accepted: u64 = non_readers.iter().map(|e| e.bytes_sent).sum();
    t_quiet.figure("pings_per_s_per_client", cfg.non_reader_rate as u64);
    t_quiet.figure("ping_bytes_accepted", accepted);
    record_rss(&mut t_quiet, rss);
    let allowed = [
        "backpressured",
        "eof",
        "reset",
        "broken_pipe",
        "accepted_all",
    ];
    t_quiet.require_only(&allowed);
    // A client that could send everything must have sent enough to tell
    // kernel buffering from server memory, or the check below proves nothing.
    let weak = non_readers
        .iter()
        .filter(|e| e.outcome == "accepted_all" && e.bytes_sent < 2 * KERNEL_ALLOWANCE_BYTES)
        .count();
    t_quiet.require(
        weak == 0,
        format!(
            "inconclusive: {weak} non-readers sent less than {} MiB; raise --ping-no-read-rate or --ping-seconds",
            (2 * KERNEL_ALLOWANCE_BYTES) >> 20
        ),
    );
    /// RSS changes this small are allocator noise, not held pongs.
    const RSS_NOISE_BYTES: u64 = 4 << 20;
    if let Some((start, peak)) = rss {
        // Beyond what the kernel can hold, pongs for non-readers must not
        // turn into server memory: fail when the server grew by more than
        // half of what those clients got it to accept past that allowance.
        let beyond_kernel =
            accepted.saturating_sub(non_readers.len() as u64 * KERNEL_ALLOWANCE_BYTES);
        let growth = peak.saturating_sub(start);
        t_quiet.figure("server_rss_growth_bytes", growth);
        // Below a few MiB, RSS moves with the allocator and the server's
        // own pools whatever the clients do: not evidence either way.
        t_quiet.require(
            beyond_kernel == 0 || growth < (beyond_kernel / 2).max(RSS_NOISE_BYTES),
            format!(
                "server RSS grew {} MiB while {} non-reading clients had it accept {} MiB of pings \
                 ({} MiB past what the kernel can buffer): pongs are held without bound",
                growth >> 20,
                non_readers.len(),
                accepted >> 20,
                beyond_kernel >> 20
            ),
        );
    } else {
        t_quiet.require(
            t_quiet.count("accepted_all") == 0,
            "non-readers could send everything and the server's RSS is unknown (--server-pid)",
        );
    }
    // A group with no clients has nothing to report.
    [t_read, t_quiet]
        .into_iter()
        .filter(|t| t.clients > 0)
        .collect()
}

fn batch(rng: &mut Rng, pings: usize, out: &mut Vec<u8>) {
    let payload = [b'p'; PING_PAYLOAD_BYTES];
    for _ in 0..pings {
        masked_frame(true, OP_PING, &payload, rng.mask(), out);
    }
}

/// Pings per batch for `rate` a second.
fn per_batch(rate: usize) -> usize {
    (rate as f64 * BATCH_EVERY.as_secs_f64()).ceil().max(1.0) as usize
}

async fn reader(ctx: Rc<Ctx>, i: usize, cfg: PingFlood) -> (ClientEnd, Counts) {
    let mut counts = Counts::default();
    let user = format!("pingflood-{}-{i}", ctx.run_id);
    let mut up = match net::upgrade(&ctx.target, Some(&user), ctx.seed(9, i)).await {
        Ok(u) => u,
        Err(kind) => return (ClientEnd::new(kind), counts),
    };
    let mut rng = Rng::new(ctx.seed(10, i));
    let t0 = Instant::now();
    let stop_sending = t0 + cfg.duration;
    // After the last ping, time for the answers still on their way.
    let give_up = stop_sending + Duration::from_secs(2);
    let n = per_batch(cfg.rate);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut next_batch = t0;
    let mut sent_bytes = 0u64;
    let mut rbuf = vec![0u8; 64 * 1024];
    loop {
        loop {
            match up.reader.next_event() {
                Ok(Some(ServerEvent::Pong)) => counts.pongs += 1,
                Ok(Some(ServerEvent::Close(code))) => {
                    let kind = code.map_or("close_without_code".into(), |c| format!("close_{c}"));
                    return (
                        ClientEnd::new(kind).after_ms(ms_since(t0)).sent(sent_bytes),
                        counts,
                    );
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    return (
                        ClientEnd::new(format!("server_{}", e.kind())).sent(sent_bytes),
                        counts,
                    )
                }
            }
        }
        let now = Instant::now();
        if now >= stop_sending && pos == out.len() && counts.pongs >= counts.pings {
            return (ClientEnd::new("served").sent(sent_bytes), counts);
        }
        if now < stop_sending && now >= next_batch {
            // A full queue skips the batch: the client cannot send faster.
            if out.len() - pos < QUEUE_MAX_BYTES {
                out.drain(..pos);
                pos = 0;
                batch(&mut rng, n, &mut out);
                counts.pings += n as u64;
            }
            next_batch += BATCH_EVERY;
        }
        let deadline = if now < stop_sending {
            next_batch.min(give_up)
        } else {
            give_up
        };
        match step(&mut up.stream, Some(&mut rbuf), &out[pos..], Some(deadline)).await {
            Step::Wrote(n) => {
                pos += n;
                sent_bytes += n as u64;
            }
            Step::Read(n) => up.reader.feed(&rbuf[..n]),
            Step::Eof => return (ClientEnd::new("eof").sent(sent_bytes), counts),
            Step::ReadFailed(e) | Step::WriteFailed(e) => {
                return (ClientEnd::new(io_kind(&e)).sent(sent_bytes), counts)
            }
            Step::Deadline => {
                if Instant::now() >= give_up {
                    // Still open, answered most pings: the pongs still
                    // missing are the ones RFC 6455 lets a server skip.
                    let kind = if counts.pongs > 0 {
                        "served"
                    } else {
                        "unanswered"
                    };
                    return (ClientEnd::new(kind).sent(sent_bytes), counts);
                }
            }
        }
    }
}

async fn non_reader(ctx: Rc<Ctx>, i: usize, cfg: PingFlood) -> (ClientEnd, Counts) {
    let mut counts = Counts::default();
    let user = format!("pingflood-{}-{i}", ctx.run_id);
    let mut up = match net::upgrade(&ctx.target, Some(&user), ctx.seed(9, i)).await {
        Ok(u) => u,
        Err(kind) => return (ClientEnd::new(kind), counts),
    };
    let mut rng = Rng::new(ctx.seed(10, i));
    let t0 = Instant::now();
    let stop = t0 + cfg.duration;
    let n = per_batch(cfg.non_reader_rate);
    let mut out = Vec::new();
    let mut pos = 0;
    let mut next_batch = t0;
    let mut sent_bytes = 0u64;
    let mut last_progress = t0;
    let mut stalled = false;
    loop {
        let now = Instant::now();
        if now >= stop {
            let kind = if stalled {
                "backpressured"
            } else {
                "accepted_all"
            };
            return (ClientEnd::new(kind).sent(sent_bytes), counts);
        }
        if now >= next_batch {
            if out.len() - pos < QUEUE_MAX_BYTES {
                out.drain(..pos);
                pos = 0;
                batch(&mut rng, n, &mut out);
                counts.pings += n as u64;
            }
            next_batch += BATCH_EVERY;
        }
        if pos < out.len() && now.duration_since(last_progress) >= STALL {
            stalled = true;
        }
        let mut deadline = next_batch.min(stop);
        if !stalled && pos < out.len() {
            deadline = deadline.min(last_progress + STALL);
        }
        // Never read: the reader is not given a buffer.
        match step(&mut up.stream, None, &out[pos..], Some(deadline)).await {
            Step::Wrote(n) => {
                pos += n;
                sent_bytes += n as u64;
                last_progress = Instant::now();
            }
            Step::WriteFailed(e) => {
                return (
                    ClientEnd::new(io_kind(&e))
                        .after_ms(ms_since(t0))
                        .sent(sent_bytes),
                    counts,
                )
            }
            Step::Deadline => {
                if pos == out.len() {
                    last_progress = Instant::now();
                }
            }
            Step::Read(_) | Step::Eof | Step::ReadFailed(_) => {
                unreachable!("no read was asked for")
            }
        }
    }
}
