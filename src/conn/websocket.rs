//! The WebSocket loop of one connection: answer every complete message,
//! fill one write from the session's output (control frames, and replies
//! put there directly) and the outbox (highest lane first), then wait for
//! the socket, a signal or a deadline.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::timer::Timer;
use tungstenite::Message;

use super::commands::Mode;
use super::handle::{
    ConnHandle, SIGNAL_IDLE, SIGNAL_OUTBOX, SIGNAL_PING, SIGNAL_SHUTDOWN, SIGNAL_SLOW,
    SIGNAL_USER_LIMIT,
};
use crate::shard::ShardState;
use crate::ws::{WsSession, REPLIES_QUEUED_MAX_BYTES};

/// Most outbox bytes put into one write: a connection with a deep queue
/// yields the shard after this much, so it cannot starve the others.
pub const WRITE_BATCH_MAX_BYTES: usize = 64 * 1024;
/// Empty write buffers a shard keeps for reuse; a connection holds one only
/// while it has bytes waiting for the socket.
pub const SPARE_WRITE_BUFFERS_MAX: usize = 256;

thread_local! {
    /// This shard's empty write buffers (a shard is one thread).
    static SPARE_WRITE_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// How a WebSocket session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Close handshake completed, or our close frame was sent.
    Closed,
    /// Closed by us for silence (counted as stale).
    Stale,
    /// The socket closed or failed under us.
    PeerGone,
    /// Quiet and nothing in progress: the task may end and the connection
    /// rest in the shard's hibernation (`hibernate`).
    Hibernate,
}

/// What woke the connection task.
enum Wake {
    /// Bytes arrived, read at this time.
    Input(Instant),
    Wrote(usize),
    /// What the transport held back of a finished write went out.
    Flushed,
    PeerGone,
    Signals(u8),
    Deadline,
}

/// Bytes waiting for the socket: the session's output first (control
/// frames, direct replies), then outbox frames; control frames raised
/// while it is written are appended behind.
struct Pending {
    bytes: Vec<u8>,
    written: usize,
    /// How many bytes came from the outbox…
    from_outbox: usize,
    /// …starting at this offset (after the control frames).
    outbox_start: usize,
    /// Every byte was taken, but the transport may hold some back (TLS:
    /// rustls keeps the records a full socket did not take, and answers
    /// "written"): the write ends when a flush says it went out.
    flush_owed: bool,
}

impl Pending {
    /// Whether the write is over: every byte taken, and flushed.
    fn is_done(&self) -> bool {
        self.all_taken() && !self.flush_owed
    }

    fn all_taken(&self) -> bool {
        self.written == self.bytes.len()
    }
}

pub(super) async fn run_session<S: super::Transport>(
    shard: &Rc<ShardState>,
    stream: &mut S,
    session: &mut WsSession,
    handle: &ConnHandle,
    mode: Mode,
) -> Outcome {
    let close_grace = Duration::from_millis(shard.config.shutdown_timeout_ms);
    let mut pending = Pending {
        bytes: Vec::new(),
        written: 0,
        from_outbox: 0,
        outbox_start: 0,
        flush_owed: false,
    };
    let mut stale = false;
    let mut ended = false;
    let mut close_deadline: Option<Instant> = None;
    // A task (new, or resumed from hibernation) waits once before it may
    // hibernate: a resumed one must first read what woke it.
    let mut waited = false;
    let end = |stale: bool| {
        if stale {
            Outcome::Stale
        } else {
            Outcome::Closed
        }
    };
    // However the loop ends (or is dropped), its raises wake it again.
    let _parked_on_exit = LoopParkedOnDrop(handle);
    // When the bytes now being handled were read: the rate limiter's clock
    // for the messages they hold (one clock read per read, not per
    // message). Messages are only parsed on a turn that follows a read,
    // which sets it; the handshake's leftover bytes, parsed before any
    // read, take the clock once.
    let mut read_at: Option<Instant> = None;
    loop {
        // Its own raises from here to the next park wake nothing: the
        // loop reads its signals and outbox before it parks.
        handle.loop_running();
        while !ended {
            match session.next_message() {
                Ok(Some(message)) => {
                    let is_data = matches!(message, Message::Text(_) | Message::Binary(_));
                    if is_data {
                        handle.data_at_tick(shard.sweep_tick());
                    }
                    if is_data
                        && mode == Mode::Protocol
                        && !handle.take_command(
                            shard.config.rate_limit_per_s,
                            shard.config.rate_limit_burst,
                            *read_at.get_or_insert_with(Instant::now),
                        )
                    {
                        shard.refuse_rate_limited(handle, &message);
                        continue;
                    }
                    match &message {
                        Message::Text(t) => shard.metrics.count_message_in(t.len() as u64),
                        Message::Binary(b) => shard.metrics.count_message_in(b.len() as u64),
                        Message::Pong(payload) => {
                            // Our pings carry their send time, so each pong
                            // measures its own ping even when several were out.
                            if let Ok(sent) = <[u8; 8]>::try_from(&payload[..]) {
                                let now_us = shard.started_at.elapsed().as_micros() as u64;
                                let rtt_us = now_us.saturating_sub(u64::from_be_bytes(sent));
                                shard.metrics.record_ping_rtt_us(rtt_us);
                                handle.set_last_rtt_us(rtt_us);
                            }
                        }
                        _ => {}
                    }
                    // Nothing is being written: a reply may go straight
                    // into the session's output, ahead of the next write.
                    let take_reply = pending.is_done();
                    if let Some(frame) = shard.handle_message(handle, message, mode, take_reply) {
                        if session.append_reply(&frame) {
                            shard.metrics.count_messages_out(1, frame.len() as u64);
                        } else {
                            shard.reply(handle, frame);
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => ended = true,
            }
        }
        if pending.is_done() {
            refill(shard, session, handle, &mut pending);
        }
        if pending.is_done() && ended {
            return end(stale);
        }
        // Nothing in progress: idle connections keep no tungstenite state.
        session.rest();
        if waited
            && pending.is_done()
            && !ended
            && close_deadline.is_none()
            && session.is_resting()
            && shard.quiet_enough_to_hibernate(handle)
            && !handle.has_signals()
            && handle.outbox.borrow().is_empty()
        {
            return Outcome::Hibernate;
        }

        let wake = wait_for_wake(shard, stream, session, handle, &pending, close_deadline).await;
        waited = true;
        match wake {
            Wake::Input(at) => read_at = Some(at),
            Wake::Wrote(n) => {
                // The part of [written, written + n) inside the outbox range.
                let start = pending.written.max(pending.outbox_start);
                let end = (pending.written + n).min(pending.outbox_start + pending.from_outbox);
                let from_outbox = end.saturating_sub(start);
                pending.written += n;
                if S::WRITES_NEED_FLUSH && pending.all_taken() {
                    pending.flush_owed = true;
                }
                if from_outbox > 0 {
                    handle.outbox.borrow_mut().wrote(from_outbox);
                    shard.mailbox_written(handle);
                }
            }
            Wake::Flushed => pending.flush_owed = false,
            Wake::PeerGone => {
                // A stale peer that hangs up after our close is still stale.
                return if stale {
                    Outcome::Stale
                } else {
                    Outcome::PeerGone
                };
            }
            Wake::Deadline => return end(stale),
            Wake::Signals(signals) => {
                if signals & SIGNAL_USER_LIMIT != 0 && session.is_open() {
                    session.close(1008, "too many connections for this user");
                } else if signals & SIGNAL_SLOW != 0 && session.is_open() {
                    shard.count_slow_consumer();
                    shard.metrics.count_slow_consumer_closed();
                    session.close(1008, "slow consumer: outgoing queue over its bound");
                } else if signals & SIGNAL_IDLE != 0 && session.is_open() {
                    stale = true;
                    session.close(1001, "idle timeout");
                } else if signals & SIGNAL_SHUTDOWN != 0 {
                    session.close(1001, "server shutting down");
                } else if signals & SIGNAL_PING != 0 && session.is_open() {
                    let sent_us = shard.started_at.elapsed().as_micros() as u64;
                    let _ = session.send(Message::Ping(sent_us.to_be_bytes().to_vec().into()));
                }
                if !session.is_open() && close_deadline.is_none() {
                    close_deadline = Some(Instant::now() + close_grace);
                }
                // Pings and close frames go out behind what is being written
                // now, not after it: a stuck write must not hold back the
                // close frame of a slow consumer.
                if !pending.is_done() {
                    session.append_output(&mut pending.bytes);
                }
            }
        }
        // Many ready connections on one shard take turns.
        glommio::yield_if_needed().await;
    }
}

/// Starts a new write: the session's own output first (pongs, which answer
/// pings at once as RFC 6455 asks, in order with the replies put there
/// directly, at most `DIRECT_REPLIES_MAX_BYTES` of them), then outbox
/// frames while the session is open (a closed session takes none: nothing
/// follows a close).
fn refill(shard: &ShardState, session: &mut WsSession, handle: &ConnHandle, pending: &mut Pending) {
    pending.bytes.clear();
    if pending.bytes.capacity() == 0 {
        if let Some(spare) = SPARE_WRITE_BUFFERS.with(|b| b.borrow_mut().pop()) {
            pending.bytes = spare;
        }
    }
    pending.written = 0;
    pending.from_outbox = 0;
    session.append_output(&mut pending.bytes);
    pending.outbox_start = pending.bytes.len();
    // The outbox is read now (an open session's, up to a batch; the rest
    // once this write is done), so its signal needs no extra turn.
    handle.clear_signals(SIGNAL_OUTBOX);
    if session.is_open() {
        let mut anycasts = Vec::new();
        // Read once, and only if a message carries its acceptance time
        // (replies do not): clock reads were a tenth of the echo's user time.
        let mut now_us = None;
        let mut messages = 0u64;
        pending.from_outbox = handle.outbox.borrow_mut().take_into(
            &mut pending.bytes,
            WRITE_BATCH_MAX_BYTES,
            |item| {
                messages += 1;
                if item.accepted_unix_us > 0 {
                    let now_us = *now_us.get_or_insert_with(crate::routing::envelope::unix_us);
                    shard
                        .metrics
                        .record_delivery_latency_us(now_us.saturating_sub(item.accepted_unix_us));
                }
                if let Some(group) = &item.anycast_group {
                    anycasts.push(group.clone());
                }
            },
        );
        if messages > 0 {
            handle.data_at_tick(shard.sweep_tick());
            shard
                .metrics
                .count_messages_out(messages, pending.from_outbox as u64);
        }
        for group in anycasts {
            shard.anycast_done(&group, handle.id, 1);
        }
    }
    if pending.bytes.is_empty() {
        // Nothing to write: the buffer goes back to the shard, unless huge.
        let buffer = std::mem::take(&mut pending.bytes);
        if buffer.capacity() <= 4 * WRITE_BATCH_MAX_BYTES {
            SPARE_WRITE_BUFFERS.with(|b| {
                let mut spare = b.borrow_mut();
                if spare.len() < SPARE_WRITE_BUFFERS_MAX {
                    spare.push(buffer);
                }
            });
        }
    }
}

/// Waits for input (fed into the session), write progress, a signal, or the
/// close deadline.
async fn wait_for_wake<S: super::Transport>(
    shard: &ShardState,
    stream: &mut S,
    session: &mut WsSession,
    handle: &ConnHandle,
    pending: &Pending,
    deadline: Option<Instant>,
) -> Wake {
    let mut timer = deadline.map(|d| Timer::new(d.saturating_duration_since(Instant::now())));
    future::poll_fn(|cx| {
        handle.loop_running();
        let polled = poll_wake(cx, shard, stream, session, handle, pending, timer.as_mut());
        if polled.is_pending() {
            handle.loop_parked();
        }
        polled
    })
    .await
}

/// One look at everything `wait_for_wake` waits for; the task's waker is
/// parked wherever it returns `Pending`.
fn poll_wake<S: super::Transport>(
    cx: &mut Context<'_>,
    shard: &ShardState,
    stream: &mut S,
    session: &mut WsSession,
    handle: &ConnHandle,
    pending: &Pending,
    timer: Option<&mut Timer>,
) -> Poll<Wake> {
    let signals = handle.take_signals();
    if signals != 0 {
        return Poll::Ready(Wake::Signals(signals));
    }
    handle.park(cx.waker());
    if let Some(timer) = timer {
        if Pin::new(timer).poll(cx).is_ready() {
            return Poll::Ready(Wake::Deadline);
        }
    }
    if !pending.all_taken() {
        match Pin::new(&mut *stream).poll_write(cx, &pending.bytes[pending.written..]) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Wake::PeerGone),
            Poll::Ready(Ok(n)) => return Poll::Ready(Wake::Wrote(n)),
            Poll::Pending => {}
        }
    } else if pending.flush_owed {
        // Writable again wakes this task through the flush's own wait.
        match Pin::new(&mut *stream).poll_flush(cx) {
            Poll::Ready(Err(_)) => return Poll::Ready(Wake::PeerGone),
            Poll::Ready(Ok(())) => return Poll::Ready(Wake::Flushed),
            Poll::Pending => {}
        }
    }
    if !pending.is_done() && session.replies_queued_bytes() > REPLIES_QUEUED_MAX_BYTES {
        // The peer pings but does not read: stop reading it (TCP pushes
        // back) until our stuck write moves, so its pongs stay bounded.
        return Poll::Pending;
    }
    let mut buf = shard.rx_buffer.borrow_mut();
    match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Wake::PeerGone),
        Poll::Ready(Ok(n)) => {
            session.feed(&buf[..n]);
            let now = Instant::now();
            handle.heard_at(now);
            Poll::Ready(Wake::Input(now))
        }
        Poll::Pending => Poll::Pending,
    }
}

/// Marks a connection's message loop parked when the loop is left.
struct LoopParkedOnDrop<'a>(&'a ConnHandle);

impl Drop for LoopParkedOnDrop<'_> {
    fn drop(&mut self) {
        self.0.loop_parked();
    }
}
