//! One WebSocket connection's life: connect, handshake, message loop, close.
//!
//! The loop is a single task per connection: it reads, reacts to every frame
//! (recording latency, queueing the next message), then writes everything it
//! queued in one `write`. Open loop additionally wakes on a timer when the
//! next message is due. Buffers are allocated once per connection.

use std::os::unix::io::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use ws_uring_readiness::{counted, hold_naps, ReadyStream, ReadyTimer};

use super::{sleep_for, sleep_until, ThreadCtx, CONNECT_TIMEOUT};
use crate::frame::{encode_client_frame, parse_server_frame, Opcode};
use crate::handshake;
use crate::schedule::OpenLoopSchedule;
use crate::workload::{
    append_worker_reply, build_template, classify, identity, join_frame, Inbound, MessageTemplate,
    Role, JOIN_REF,
};

/// Largest frame accepted from the server.
const MAX_FRAME_BYTES: usize = 16 << 20;
/// Initial read buffer per connection; grows only for larger frames.
const READ_BUF_BYTES: usize = 16 << 10;
/// Anycast clients start this long after connecting (see `Session::run`).
const ANYCAST_CLIENT_DELAY_NS: u64 = 200_000_000;

/// How a session ended, for the slot's reconnect decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// Closed by us on schedule.
    Finished,
    /// Could not connect, or the connection broke (already counted as an error).
    Failed,
}

fn io_kind(prefix: &'static str, e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match (prefix, e.kind()) {
        ("connect", ConnectionRefused) => "connect_refused",
        ("connect", TimedOut) => "connect_timeout",
        ("connect", _) => "connect_error",
        (_, ConnectionReset) => "reset",
        (_, BrokenPipe) => "broken_pipe",
        (_, TimedOut) => "timeout",
        (_, UnexpectedEof) => "eof",
        _ => "io_error",
    }
}

/// Server error codes from PROTOCOL.md, as static error kinds.
fn server_error_kind(code: &str) -> &'static str {
    match code {
        "bad_json" => "server:bad_json",
        "bad_request" => "server:bad_request",
        "unknown_op" => "server:unknown_op",
        "forbidden" => "server:forbidden",
        "no_members" => "server:no_members",
        "too_large" => "server:too_large",
        "rate_limited" => "server:rate_limited",
        "overloaded" => "server:overloaded",
        "internal" => "server:internal",
        _ => "server:other",
    }
}

/// Cheap per-connection mask; masking only has to defeat proxy caches,
/// which a benchmark on loopback does not have.
fn mask_for(slot: usize, cycle: u64) -> [u8; 4] {
    let mut x = (slot as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ cycle.wrapping_mul(0xD1B5_4A32_D192_ED03);
    x ^= x >> 29;
    let m = (x as u32).to_le_bytes();
    if m == [0; 4] {
        [1, 2, 3, 4]
    } else {
        m
    }
}

/// Connects, runs the message loop until `until_ns`, and closes.
pub(crate) async fn connect_and_run(
    ctx: &Rc<ThreadCtx>,
    slot: usize,
    cycle: u64,
    until_ns: u64,
) -> SessionEnd {
    let started = ctx.now_ns();
    // Made first: it fails only if the thread has no epoll set or timerfd
    // and cannot make them (out of descriptors), when no stream could join
    // the set either.
    let timer = match ReadyTimer::new(Duration::from_secs(1)) {
        Ok(timer) => timer,
        Err(e) => {
            let now = ctx.now_ns();
            let mut stats = ctx.stats.borrow_mut();
            stats.on_connect(now, false, now - started);
            stats.on_error(now, io_kind("connect", &e), 1);
            return SessionEnd::Failed;
        }
    };
    let (user, role) = identity(
        ctx.plan.workload,
        ctx.plan.run_id,
        slot,
        ctx.plan.group_size,
    );
    let connect_fail = |kind: &str| {
        let now = ctx.now_ns();
        let mut stats = ctx.stats.borrow_mut();
        stats.on_connect(now, false, now - started);
        stats.on_error(now, kind, 1);
        SessionEnd::Failed
    };

    // The connect completes through glommio's io_uring, which a napping
    // thread visits only every `nap_max`: no naps until it has.
    let connecting = hold_naps();
    let connected = TcpStream::connect_timeout(ctx.addr, CONNECT_TIMEOUT).await;
    drop(connecting);
    let stream = match connected {
        Ok(s) => s,
        Err(e) => {
            let e = std::io::Error::from(e);
            if ctx.plan.verbose {
                log::debug!("slot {slot}: connect failed: {e}");
            }
            return connect_fail(io_kind("connect", &e));
        }
    };
    let _ = stream.set_nodelay(true);
    // Off glommio's stream (one io_uring poll per read) onto this thread's
    // epoll set: the loadgen must not be the slower side of a run.
    let mut stream = match ReadyStream::from_glommio(stream) {
        Ok(s) => s,
        Err(e) => return connect_fail(io_kind("connect", &e)),
    };

    let mut rbuf = vec![0u8; READ_BUF_BYTES];
    let key = handshake::make_key((slot as u64) << 20 ^ cycle);
    let target = ctx.plan.url.request_target(if role.expects_json() {
        Some(&user)
    } else {
        None
    });
    let request = handshake::request(&ctx.plan.url.host_header(), &target, &key);
    let handshake_result = futures_lite::future::or(
        async {
            stream
                .write_all(&request)
                .await
                .map_err(|e| io_kind("io", &e).to_string())?;
            let mut filled = 0;
            loop {
                if filled == rbuf.len() {
                    return Err("handshake_invalid".to_string());
                }
                let n = stream
                    .read(&mut rbuf[filled..])
                    .await
                    .map_err(|e| io_kind("io", &e).to_string())?;
                if n == 0 {
                    return Err("handshake_eof".to_string());
                }
                filled += n;
                match handshake::parse_response(&rbuf[..filled], &key) {
                    Ok(Some(head)) => {
                        rbuf.copy_within(head..filled, 0);
                        return Ok(filled - head);
                    }
                    Ok(None) => continue,
                    Err(e) => return Err(e.kind()),
                }
            }
        },
        async {
            sleep_for(CONNECT_TIMEOUT).await;
            Err("handshake_timeout".to_string())
        },
    )
    .await;
    let leftover = match handshake_result {
        Ok(n) => n,
        Err(kind) => return connect_fail(&kind),
    };

    {
        let now = ctx.now_ns();
        ctx.stats.borrow_mut().on_connect(now, true, now - started);
        ctx.open_connections.set(ctx.open_connections.get() + 1);
    }

    // Past `until + 2 × grace` the socket is shut down under the session, which
    // wakes a read that would otherwise wait forever on a silent server.
    let fd = stream.as_raw_fd();
    let watchdog = {
        let ctx = Rc::clone(ctx);
        glommio::spawn_local(counted(async move {
            sleep_until(&ctx, until_ns + 2 * ctx.grace_ns).await;
            // SAFETY: the session owns `fd` and cancels this task (by dropping
            // it) before the stream is closed, so `fd` is still this socket.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }))
    };

    let mask = mask_for(slot, cycle);
    let mut session = Session::new(ctx, slot, role, user, mask, until_ns, timer);
    let end = session.run(&mut stream, rbuf, leftover).await;
    drop(watchdog);

    let now = ctx.now_ns();
    ctx.open_connections.set(ctx.open_connections.get() - 1);
    {
        let mut stats = ctx.stats.borrow_mut();
        stats.on_disconnect(now);
        if session.role.records_latency() {
            stats.on_connection_done(session.measured_messages, session.measured_latency_sum_us);
        }
    }
    let _ = stream.close().await;
    end
}

/// The message loop of one established connection.
struct Session<'a> {
    ctx: &'a ThreadCtx,
    /// The connection slot, for the latency trace.
    slot: usize,
    role: Role,
    user: String,
    mask: [u8; 4],
    until_ns: u64,
    template: Option<MessageTemplate>,
    schedule: Option<OpenLoopSchedule>,
    wbuf: Vec<u8>,
    /// Messages queued in `wbuf`, counted as sent once written.
    queued: u64,
    scratch: Vec<u8>,
    /// Reassembly of a fragmented message.
    fragments: Vec<u8>,
    fragmented: bool,
    /// Request/reply roles: messages sent and not answered yet.
    outstanding: u64,
    /// Group joined (or none needed): may send.
    ready: bool,
    stopping_since: Option<u64>,
    close_sent: bool,
    /// Wakes the loop when the next message is due (open loop) or the grace
    /// period ends; re-armed, never re-created.
    timer: ReadyTimer,
    /// The run-clock time `timer` is armed for.
    timer_armed_for_ns: u64,
    /// Messages received in the measured window, and their latencies'
    /// sum (µs): this connection's mean, reported when it ends.
    measured_messages: u64,
    measured_latency_sum_us: u64,
}

enum Step {
    Continue,
    End(SessionEnd),
}

impl<'a> Session<'a> {
    fn new(
        ctx: &'a ThreadCtx,
        slot: usize,
        role: Role,
        user: String,
        mask: [u8; 4],
        until_ns: u64,
        timer: ReadyTimer,
    ) -> Session<'a> {
        let template = build_template(&role, ctx.plan.size, mask);
        let frame_len = template.as_ref().map_or(64, MessageTemplate::wire_len);
        Session {
            ctx,
            slot,
            template,
            schedule: None,
            wbuf: Vec::with_capacity(frame_len * ctx.plan.in_flight.max(8) + 256),
            queued: 0,
            scratch: Vec::with_capacity(256),
            fragments: Vec::new(),
            fragmented: false,
            outstanding: 0,
            ready: role.join_group().is_none(),
            stopping_since: None,
            close_sent: false,
            timer,
            timer_armed_for_ns: u64::MAX,
            measured_messages: 0,
            measured_latency_sum_us: 0,
            role,
            user,
            mask,
            until_ns,
        }
    }

    fn closed_loop(&self) -> bool {
        self.ctx.plan.rate.is_none()
    }

    /// Whether new messages may be queued now.
    fn may_send(&self) -> bool {
        self.ready && self.stopping_since.is_none() && self.role.sends()
    }

    fn queue_message(&mut self, stamp_ns: u64) {
        if let Some(template) = self.template.as_mut() {
            template.append_stamped(stamp_ns, &mut self.wbuf);
            self.queued += 1;
            if self.role.is_request_reply() {
                self.outstanding += 1;
            }
        }
    }

    /// Starts sending: the first `in_flight` messages (closed loop) or the
    /// schedule (open loop).
    fn start_sending(&mut self, now_ns: u64, slot_phase: f64) {
        if !self.may_send() {
            return;
        }
        match self.ctx.rate_per_conn {
            None => {
                for _ in 0..self.ctx.plan.in_flight.max(1) {
                    self.queue_message(now_ns);
                }
            }
            Some(rate) => self.schedule = Some(OpenLoopSchedule::new(now_ns, rate, slot_phase)),
        }
    }

    async fn flush(&mut self, stream: &mut ReadyStream) -> Result<(), &'static str> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        stream
            .write_all(&self.wbuf)
            .await
            .map_err(|e| io_kind("io", &e))?;
        let now = self.ctx.now_ns();
        self.ctx
            .stats
            .borrow_mut()
            .on_sent(now, self.queued, self.wbuf.len() as u64);
        self.queued = 0;
        self.wbuf.clear();
        Ok(())
    }

    fn begin_close(&mut self, now_ns: u64) {
        if self.close_sent {
            return;
        }
        if self.role.is_request_reply() && self.outstanding > 0 {
            // Still unanswered after the grace period: lost.
            self.ctx
                .stats
                .borrow_mut()
                .on_error(now_ns, "timeout", self.outstanding);
            self.outstanding = 0;
        }
        encode_client_frame(
            Opcode::Close,
            &1000u16.to_be_bytes(),
            self.mask,
            &mut self.wbuf,
        );
        self.close_sent = true;
    }

    /// Handles time: stop at `until`, close once answers are in or grace ran out.
    fn on_clock(&mut self, now_ns: u64) {
        if self.stopping_since.is_none() && now_ns >= self.until_ns {
            self.stopping_since = Some(now_ns);
        }
        if let Some(since) = self.stopping_since {
            // Workers keep answering through the grace period: clients may
            // still wait for them. Request/reply roles close once answered.
            let drained = match self.role {
                Role::AnycastWorker { .. } => false,
                _ => !self.role.is_request_reply() || self.outstanding == 0,
            };
            if drained || now_ns >= since + self.ctx.grace_ns {
                self.begin_close(now_ns);
            }
        } else if let Some(schedule) = self.schedule.as_mut() {
            let template = self.template.as_mut().expect("senders have a template");
            let wbuf = &mut self.wbuf;
            let taken =
                schedule.take_due(now_ns, |intended| template.append_stamped(intended, wbuf));
            self.queued += taken;
            if self.role.is_request_reply() {
                self.outstanding += taken;
            }
        }
    }

    /// When the loop must wake up even without incoming data.
    fn wake_at(&self) -> Option<u64> {
        if self.close_sent {
            return None; // the watchdog bounds the wait for the server's close
        }
        if let Some(since) = self.stopping_since {
            return Some(since + self.ctx.grace_ns);
        }
        // Closed loop: answers wake us; a silent connection is stopped by the watchdog.
        self.schedule
            .as_ref()
            .map(|schedule| schedule.next_due_ns().min(self.until_ns))
    }

    async fn run(
        &mut self,
        stream: &mut ReadyStream,
        mut rbuf: Vec<u8>,
        mut filled: usize,
    ) -> SessionEnd {
        let now = self.ctx.now_ns();
        if let Some(group) = self.role.join_group() {
            let group = group.to_string();
            join_frame(&group, self.mask, &mut self.wbuf);
        }
        let phase = (self.mask[0] as f64) / 256.0;
        let mut now = now;
        if matches!(self.role, Role::AnycastClient { .. }) {
            // Let the group's workers (the slots just before) finish joining,
            // so the first anycasts do not meet an empty group.
            sleep_until(self.ctx, (now + ANYCAST_CLIENT_DELAY_NS).min(self.until_ns)).await;
            now = self.ctx.now_ns();
        }
        self.start_sending(now, phase);
        if let Err(kind) = self.flush(stream).await {
            return self.fail(kind);
        }

        if filled > 0 {
            // Frames the server sent right behind its handshake answer (welcome).
            let now = self.ctx.now_ns();
            let (consumed, step) = self.process_new(&mut rbuf, 0, filled, now, phase);
            filled -= consumed;
            if let Step::End(end) = step {
                let _ = self.flush(stream).await;
                return end;
            }
        }

        loop {
            let now = self.ctx.now_ns();
            self.on_clock(now);
            if let Err(kind) = self.flush(stream).await {
                return self.on_io_error(kind);
            }
            if filled == rbuf.len() {
                rbuf.resize((rbuf.len() * 2).min(MAX_FRAME_BYTES + 16), 0);
            }

            let read = match self.wake_at() {
                None => stream.read(&mut rbuf[filled..]).await.map(Some),
                Some(at) => {
                    // One timer per connection, re-armed only when its time
                    // changes (a reply wakes the loop, the next message's time
                    // stays): no allocation and no timer-wheel update per
                    // wake-up. Times are rounded up to the plan's send tick
                    // so that the thread's connections due within one tick
                    // wake it once instead of once each (tens of thousands
                    // of times a second at `extreme` rates). A message still
                    // carries its intended time: a late tick is measured.
                    let tick_ns = (self.ctx.plan.send_tick.as_nanos() as u64).max(1);
                    let at = at.div_ceil(tick_ns) * tick_ns;
                    if at != self.timer_armed_for_ns {
                        // On the grid exactly: the connections due at one
                        // tick share a deadline and fire in one pass.
                        self.timer
                            .reset_at(self.ctx.epoch + Duration::from_nanos(at));
                        self.timer_armed_for_ns = at;
                    }
                    let timer = &mut self.timer;
                    futures_lite::future::or(
                        async { stream.read(&mut rbuf[filled..]).await.map(Some) },
                        async {
                            timer.await;
                            Ok(None)
                        },
                    )
                    .await
                }
            };
            match read {
                Ok(Some(0)) => return self.on_eof(),
                Ok(Some(n)) => {
                    let now = self.ctx.now_ns();
                    let (consumed, step) = self.process_new(&mut rbuf, filled, n, now, phase);
                    filled = filled + n - consumed;
                    if let Step::End(end) = step {
                        let _ = self.flush(stream).await;
                        return end;
                    }
                }
                Ok(None) => {} // timer: loop to on_clock
                Err(e) => return self.on_io_error(io_kind("io", &e)),
            }
        }
    }

    /// Processes `n` new bytes appended at `filled`; compacts the buffer.
    fn process_new(
        &mut self,
        rbuf: &mut [u8],
        filled: usize,
        n: usize,
        now: u64,
        phase: f64,
    ) -> (usize, Step) {
        self.ctx.stats.borrow_mut().on_bytes_received(now, n as u64);
        let total = filled + n;
        let (consumed, step) = self.process(&rbuf[..total], now, phase);
        rbuf.copy_within(consumed..total, 0);
        (consumed, step)
    }

    /// A broken socket is an error, unless we were closing it anyway (the
    /// watchdog shuts sockets down once `until + grace` has passed).
    fn on_io_error(&mut self, kind: &'static str) -> SessionEnd {
        if self.close_sent || self.ctx.now_ns() >= self.until_ns {
            self.finish_after_stop()
        } else {
            self.fail(kind)
        }
    }

    fn on_eof(&mut self) -> SessionEnd {
        if self.close_sent || self.ctx.now_ns() >= self.until_ns {
            self.finish_after_stop()
        } else {
            self.fail("eof")
        }
    }

    fn finish_after_stop(&mut self) -> SessionEnd {
        if self.role.is_request_reply() && self.outstanding > 0 {
            let now = self.ctx.now_ns();
            self.ctx
                .stats
                .borrow_mut()
                .on_error(now, "timeout", self.outstanding);
            self.outstanding = 0;
        }
        SessionEnd::Finished
    }

    fn fail(&mut self, kind: &str) -> SessionEnd {
        let now = self.ctx.now_ns();
        if self.ctx.plan.verbose {
            log::debug!("{}: connection failed: {kind}", self.user);
        }
        let mut stats = self.ctx.stats.borrow_mut();
        stats.on_error(now, kind, 1);
        // What was in flight on a broken connection is lost, not "slow".
        if self.role.is_request_reply() && self.outstanding > 0 {
            stats.on_error(now, "lost_in_flight", self.outstanding);
            self.outstanding = 0;
        }
        SessionEnd::Failed
    }

    /// Parses and handles every complete frame in `buf`; returns bytes consumed.
    fn process(&mut self, buf: &[u8], now: u64, phase: f64) -> (usize, Step) {
        let mut pos = 0;
        while pos < buf.len() {
            let frame = match parse_server_frame(&buf[pos..], MAX_FRAME_BYTES) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return (pos, Step::End(self.fail(e.kind()))),
            };
            let payload = &buf[pos + frame.payload_start..pos + frame.payload_end];
            pos += frame.wire_len();
            let step = match frame.opcode {
                Opcode::Text | Opcode::Binary if frame.fin && !self.fragmented => {
                    self.on_data(payload, now, phase)
                }
                Opcode::Text | Opcode::Binary | Opcode::Continuation => {
                    self.fragments.extend_from_slice(payload);
                    self.fragmented = !frame.fin;
                    if frame.fin {
                        let whole = std::mem::take(&mut self.fragments);
                        let step = self.on_data(&whole, now, phase);
                        self.fragments = whole;
                        self.fragments.clear();
                        step
                    } else {
                        Step::Continue
                    }
                }
                Opcode::Ping => {
                    encode_client_frame(Opcode::Pong, payload, self.mask, &mut self.wbuf);
                    Step::Continue
                }
                Opcode::Pong => Step::Continue,
                Opcode::Close => self.on_close(payload),
            };
            if let Step::End(_) = step {
                return (pos, step);
            }
        }
        (pos, Step::Continue)
    }

    fn on_close(&mut self, payload: &[u8]) -> Step {
        if self.close_sent || self.stopping_since.is_some() {
            if !self.close_sent {
                encode_client_frame(
                    Opcode::Close,
                    &payload[..payload.len().min(2)],
                    self.mask,
                    &mut self.wbuf,
                );
                self.close_sent = true;
            }
            return Step::End(self.finish_after_stop());
        }
        let code = if payload.len() >= 2 {
            u16::from_be_bytes([payload[0], payload[1]])
        } else {
            1005
        };
        encode_client_frame(
            Opcode::Close,
            &payload[..payload.len().min(2)],
            self.mask,
            &mut self.wbuf,
        );
        self.close_sent = true;
        let kind = format!("server_close_{code}");
        Step::End(self.fail(&kind))
    }

    fn on_data(&mut self, payload: &[u8], now: u64, phase: f64) -> Step {
        let closed = self.closed_loop();
        match classify(payload) {
            Inbound::Reply { stamp_ns } => {
                self.record(now, stamp_ns);
                self.outstanding = self.outstanding.saturating_sub(1);
                if closed && self.may_send() {
                    self.queue_message(now);
                }
            }
            Inbound::Deliver { stamp_ns, from } => match &self.role {
                Role::AnycastWorker { .. } => {
                    if !self.close_sent {
                        append_worker_reply(
                            from,
                            stamp_ns,
                            self.mask,
                            &mut self.scratch,
                            &mut self.wbuf,
                        );
                        self.queued += 1;
                    }
                }
                Role::Publisher { .. } => {
                    self.record(now, stamp_ns);
                    if from == self.user && closed && self.may_send() {
                        self.queue_message(now);
                    }
                }
                Role::AnycastClient { .. } | Role::Echo | Role::Ping => {
                    self.record(now, stamp_ns);
                    self.outstanding = self.outstanding.saturating_sub(1);
                    if closed && self.may_send() {
                        self.queue_message(now);
                    }
                }
                Role::Direct { .. } => {
                    self.record(now, stamp_ns);
                    if closed && self.may_send() {
                        self.queue_message(now);
                    }
                }
            },
            Inbound::Ok { reference } => {
                if reference == Some(JOIN_REF) && !self.ready {
                    self.ready = true;
                    self.start_sending(now, phase);
                }
            }
            Inbound::Error { code } => {
                self.ctx
                    .stats
                    .borrow_mut()
                    .on_error(now, server_error_kind(code), 1);
                // The command that failed will not complete: keep the closed loop going.
                self.outstanding = self.outstanding.saturating_sub(1);
                if closed && self.may_send() {
                    self.queue_message(now);
                }
            }
            Inbound::Welcome | Inbound::Other => {}
        }
        Step::Continue
    }

    fn record(&mut self, now: u64, stamp_ns: u64) {
        let mut stats = self.ctx.stats.borrow_mut();
        let measured_us = stats.on_message(now, now.saturating_sub(stamp_ns));
        if let Some(us) = measured_us {
            stats.trace_message(now, us, self.slot);
            self.measured_messages += 1;
            self.measured_latency_sum_us += us;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_nonzero_and_vary() {
        assert_ne!(mask_for(0, 1), mask_for(1, 1));
        assert_ne!(mask_for(0, 1), mask_for(0, 2));
        for slot in 0..1000 {
            assert_ne!(mask_for(slot, 1), [0; 4]);
        }
    }

    #[test]
    fn error_kinds_are_static_names() {
        assert_eq!(server_error_kind("rate_limited"), "server:rate_limited");
        assert_eq!(server_error_kind("whatever"), "server:other");
    }
}
