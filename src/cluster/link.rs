//! A shard's connections to Redis, on the shard's own executor: a glommio
//! `TcpStream` and the `redis-protocol` RESP2 codec, no thread and no lock.
//!
//! - [`Link`]: the command connection. Handlers queue commands without
//!   waiting ([`Link::command`], [`Link::script`]); the link task writes
//!   everything queued as one pipelined batch, reads the replies in order and
//!   hands each to the shard with the continuation it was queued with. While
//!   Redis is unreachable, queueing fails at once, so a handler can fall
//!   back (local delivery) or answer `cluster_unavailable` synchronously.
//! - [`run_subscriber`]: the node's pub/sub connection (shard 0 only).
//!
//! Both reconnect with exponential backoff (from `RECONNECT_BACKOFF_MIN_MS`,
//! doubling, capped at `RECONNECT_BACKOFF_MAX_MS`) when Redis restarts.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::encode::extend_encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, BytesFrame};

use super::scripts::{self, Script};
use super::RedisAddr;

/// First wait before reconnecting.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 50;
/// Longest wait between reconnect attempts.
pub const RECONNECT_BACKOFF_MAX_MS: u64 = 2_000;
/// Commands one shard may have queued for Redis; past it, queueing fails
/// (`overloaded`).
pub const LINK_QUEUE_MAX_OPS: usize = 65_536;
/// Most commands written as one pipelined batch.
pub const LINK_BATCH_MAX_OPS: usize = 4_096;
/// A connect, or a batch's replies, taking longer than this means Redis is
/// gone: the connection is dropped and made again.
pub const REDIS_IO_TIMEOUT: Duration = Duration::from_secs(3);
/// An idle link pings Redis this often, to notice a restart early.
pub const LINK_IDLE_PING: Duration = Duration::from_millis(500);
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why a command got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("Redis is unreachable")]
    Down,
    #[error("the queue to Redis is full")]
    Full,
    #[error("Redis answered with an error: {0}")]
    Redis(String),
}

/// A queued command and what to do with its reply.
struct Op<T> {
    args: Vec<Bytes>,
    then: T,
}

/// A shard's command connection to Redis. `T` is the continuation the
/// shard attaches to each command.
pub struct Link<T> {
    queue: RefCell<VecDeque<Op<T>>>,
    waker: Cell<Option<Waker>>,
    up: Cell<bool>,
    /// The SHA of every script in [`scripts::ALL`], loaded at connect.
    shas: RefCell<Vec<Bytes>>,
}

impl<T> Link<T> {
    pub fn new() -> Rc<Self> {
        Rc::new(Link {
            queue: RefCell::new(VecDeque::new()),
            waker: Cell::new(None),
            up: Cell::new(false),
            shas: RefCell::new(Vec::new()),
        })
    }

    /// Whether the connection is established (scripts loaded).
    pub fn is_up(&self) -> bool {
        self.up.get()
    }

    /// Commands waiting to be written.
    pub fn queued(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Queues a command. Fails at once, handing the continuation back,
    /// while Redis is unreachable or the queue is full.
    pub fn command(&self, args: Vec<Bytes>, then: T) -> Result<(), (LinkError, T)> {
        if !self.up.get() {
            return Err((LinkError::Down, then));
        }
        let mut queue = self.queue.borrow_mut();
        if queue.len() >= LINK_QUEUE_MAX_OPS {
            return Err((LinkError::Full, then));
        }
        queue.push_back(Op { args, then });
        drop(queue);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Queues `EVALSHA` of `script` with `keys` and `argv`.
    pub fn script(
        &self,
        script: Script,
        keys: &[String],
        argv: Vec<Bytes>,
        then: T,
    ) -> Result<(), (LinkError, T)> {
        let sha = match self.shas.borrow().get(script as usize) {
            Some(sha) => sha.clone(),
            None => return Err((LinkError::Down, then)),
        };
        let mut args = Vec::with_capacity(3 + keys.len() + argv.len());
        args.push(Bytes::from_static(b"EVALSHA"));
        args.push(sha);
        args.push(Bytes::from(keys.len().to_string()));
        args.extend(keys.iter().map(|k| Bytes::from(k.clone())));
        args.extend(argv);
        self.command(args, then)
    }

    fn take_batch(&self) -> Vec<Op<T>> {
        let mut queue = self.queue.borrow_mut();
        let n = queue.len().min(LINK_BATCH_MAX_OPS);
        queue.drain(..n).collect()
    }

    async fn wait_for_work(&self) {
        future::poll_fn(|cx| {
            if self.queue.borrow().is_empty() {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

/// What the link task tells its shard.
pub trait LinkEvents<T> {
    /// A command's reply (an error reply is `Err(LinkError::Redis)`).
    fn on_reply(&self, then: T, reply: Result<BytesFrame, LinkError>);
    /// The connection is (again) established: re-assert state.
    fn on_link_up(&self);
    /// The connection was lost.
    fn on_link_down(&self);
    /// Whether the task should stop (shutdown).
    fn stopping(&self) -> bool;
}

/// Encodes one command as a RESP array of bulk strings.
pub fn encode_command(args: &[Bytes], out: &mut BytesMut) {
    let frames: Vec<BorrowedFrame<'_>> =
        args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    extend_encode_borrowed(out, &BorrowedFrame::Array(&frames), false)
        .expect("RESP encoding into a growable buffer cannot fail");
}

/// A connection with a read buffer: one RESP frame at a time.
struct Conn {
    stream: TcpStream,
    rx: BytesMut,
    chunk: Vec<u8>,
}

impl Conn {
    async fn open(addr: &RedisAddr, sock: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect_timeout(sock, REDIS_IO_TIMEOUT)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stream,
            rx: BytesMut::with_capacity(READ_CHUNK_BYTES),
            chunk: vec![0; READ_CHUNK_BYTES],
        };
        if let Some(password) = &addr.password {
            let mut args = vec![Bytes::from_static(b"AUTH")];
            if let Some(user) = &addr.username {
                args.push(Bytes::from(user.clone()));
            }
            args.push(Bytes::from(password.clone()));
            conn.call(&args).await?;
        }
        if addr.db != 0 {
            conn.call(&[
                Bytes::from_static(b"SELECT"),
                Bytes::from(addr.db.to_string()),
            ])
            .await?;
        }
        Ok(conn)
    }

    /// One command, one reply (set-up only; the hot path pipelines).
    async fn call(&mut self, args: &[Bytes]) -> Result<BytesFrame, String> {
        let mut out = BytesMut::new();
        encode_command(args, &mut out);
        self.write(&out).await.map_err(|e| e.to_string())?;
        match self.read_frame().await.map_err(|e| e.to_string())? {
            BytesFrame::Error(e) => Err(format!(
                "Redis refused {:?}: {e}",
                String::from_utf8_lossy(&args[0])
            )),
            frame => Ok(frame),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    async fn read_frame(&mut self) -> std::io::Result<BytesFrame> {
        loop {
            match decode_bytes_mut(&mut self.rx) {
                Ok(Some((frame, _, _))) => return Ok(frame),
                Ok(None) => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("bad RESP from Redis: {e:?}"),
                    ))
                }
            }
            // Read into a scratch buffer: a read cancelled by a timeout
            // must leave `rx` holding only whole bytes from Redis.
            let n = self.stream.read(&mut self.chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.rx.extend_from_slice(&self.chunk[..n]);
        }
    }
}

/// Waits before reconnect attempt `attempt` (0-based): exponential, capped.
pub fn backoff_ms(attempt: u32) -> u64 {
    RECONNECT_BACKOFF_MIN_MS
        .saturating_mul(1u64 << attempt.min(16))
        .min(RECONNECT_BACKOFF_MAX_MS)
}

/// Runs a shard's command link until `events.stopping()`: connect (with
/// backoff), load the scripts, then write queued batches and dispatch
/// their replies.
pub async fn run_link<T, E: LinkEvents<T>>(
    link: Rc<Link<T>>,
    events: Rc<E>,
    addr: RedisAddr,
    sock: SocketAddr,
    label: String,
) {
    let mut attempt = 0u32;
    let mut logged_down = false;
    while !events.stopping() {
        let mut conn = match connect_and_load(&link, &addr, sock).await {
            Ok(conn) => conn,
            Err(e) => {
                if !logged_down {
                    log::warn!("{label}: {e}; retrying with backoff");
                    logged_down = true;
                }
                Timer::new(Duration::from_millis(backoff_ms(attempt))).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        if logged_down || attempt > 0 {
            log::info!("{label}: connected to {addr} again");
        } else {
            log::debug!("{label}: connected to {addr}");
        }
        attempt = 0;
        link.up.set(true);
        events.on_link_up();
        let error = serve_batches(&link, &*events, &mut conn).await;
        link.up.set(false);
        if events.stopping() {
            return;
        }
        log::warn!("{label}: lost Redis ({error}); cross-node operations fail until it is back");
        logged_down = true;
        // Whatever was queued will not be answered by this connection.
        let stranded: Vec<Op<T>> = link.queue.borrow_mut().drain(..).collect();
        for op in stranded {
            events.on_reply(op.then, Err(LinkError::Down));
        }
        events.on_link_down();
    }
}

async fn connect_and_load<T>(
    link: &Link<T>,
    addr: &RedisAddr,
    sock: SocketAddr,
) -> Result<Conn, String> {
    let mut conn = Conn::open(addr, sock).await?;
    let mut shas = Vec::with_capacity(scripts::ALL.len());
    for script in scripts::ALL {
        let args = [
            Bytes::from_static(b"SCRIPT"),
            Bytes::from_static(b"LOAD"),
            Bytes::from_static(script.as_bytes()),
        ];
        match conn.call(&args).await? {
            BytesFrame::BulkString(sha) | BytesFrame::SimpleString(sha) => shas.push(sha),
            other => return Err(format!("unexpected SCRIPT LOAD reply {other:?}")),
        }
    }
    *link.shas.borrow_mut() = shas;
    Ok(conn)
}

/// Writes batches and dispatches replies until the connection fails.
async fn serve_batches<T, E: LinkEvents<T>>(link: &Link<T>, events: &E, conn: &mut Conn) -> String {
    let mut out = BytesMut::new();
    loop {
        let got_work = future::or(
            async {
                link.wait_for_work().await;
                true
            },
            async {
                Timer::new(LINK_IDLE_PING).await;
                false
            },
        )
        .await;
        if events.stopping() {
            return "shutting down".into();
        }
        if !got_work {
            // Idle: make sure Redis is still there, so the first command
            // after a Redis restart does not find out the hard way.
            let pong = future::or(
                async { Some(conn.call(&[Bytes::from_static(b"PING")]).await) },
                async {
                    Timer::new(REDIS_IO_TIMEOUT).await;
                    None
                },
            )
            .await;
            match pong {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return e,
                None => return "no answer to PING within 3 s".into(),
            }
        }
        let batch = link.take_batch();
        if batch.is_empty() {
            continue;
        }
        out.clear();
        for op in &batch {
            encode_command(&op.args, &mut out);
        }
        let written = future::or(async { Some(conn.write(&out).await) }, async {
            Timer::new(REDIS_IO_TIMEOUT).await;
            None
        })
        .await;
        let mut pending = batch.into_iter();
        let failure = match written {
            None => Some("write timed out".to_string()),
            Some(Err(e)) => Some(e.to_string()),
            Some(Ok(())) => None,
        };
        if let Some(failure) = failure {
            for op in pending {
                events.on_reply(op.then, Err(LinkError::Down));
            }
            return failure;
        }
        for op in pending.by_ref() {
            let frame = future::or(async { Some(conn.read_frame().await) }, async {
                Timer::new(REDIS_IO_TIMEOUT).await;
                None
            })
            .await;
            match frame {
                Some(Ok(BytesFrame::Error(e))) => {
                    events.on_reply(op.then, Err(LinkError::Redis(e.to_string())))
                }
                Some(Ok(frame)) => events.on_reply(op.then, Ok(frame)),
                Some(Err(e)) => {
                    events.on_reply(op.then, Err(LinkError::Down));
                    for op in pending {
                        events.on_reply(op.then, Err(LinkError::Down));
                    }
                    return e.to_string();
                }
                None => {
                    events.on_reply(op.then, Err(LinkError::Down));
                    for op in pending {
                        events.on_reply(op.then, Err(LinkError::Down));
                    }
                    return "no reply within 3 s".into();
                }
            }
        }
    }
}

/// What the subscriber tells its shard.
pub trait SubscriberEvents {
    /// A payload published to the node's channel.
    fn on_published(&self, payload: Bytes);
    /// Subscribed (again): other nodes can reach this one from now on.
    fn on_subscribed(&self);
    /// The subscription was lost: other nodes cannot reach this one.
    fn on_unsubscribed(&self);
    fn stopping(&self) -> bool;
}

/// Keeps the node subscribed to `channel`, reconnecting with backoff, and
/// hands every message to `events`. A ping every `ping_every` detects a
/// Redis that went away without closing the socket.
pub async fn run_subscriber<E: SubscriberEvents>(
    events: Rc<E>,
    addr: RedisAddr,
    sock: SocketAddr,
    channel: String,
    ping_every: Duration,
) {
    let mut attempt = 0u32;
    while !events.stopping() {
        let subscribed = async {
            let mut conn = Conn::open(&addr, sock).await?;
            conn.call(&[
                Bytes::from_static(b"SUBSCRIBE"),
                Bytes::from(channel.clone()),
            ])
            .await?;
            Ok::<Conn, String>(conn)
        }
        .await;
        let mut conn = match subscribed {
            Ok(conn) => conn,
            Err(e) => {
                if attempt == 0 {
                    log::warn!("cluster subscriber: {e}; retrying with backoff");
                }
                Timer::new(Duration::from_millis(backoff_ms(attempt))).await;
                attempt = attempt.saturating_add(1);
                continue;
            }
        };
        log::info!("cluster: subscribed to {channel} on {addr}");
        attempt = 0;
        events.on_subscribed();
        let mut unanswered_pings = 0u32;
        let error = loop {
            if events.stopping() {
                return;
            }
            let frame = future::or(async { Some(conn.read_frame().await) }, async {
                Timer::new(ping_every).await;
                None
            })
            .await;
            match frame {
                None => {
                    if unanswered_pings >= 2 {
                        break "no answer to pings".to_string();
                    }
                    unanswered_pings += 1;
                    let mut out = BytesMut::new();
                    encode_command(&[Bytes::from_static(b"PING")], &mut out);
                    if let Err(e) = conn.write(&out).await {
                        break e.to_string();
                    }
                }
                Some(Err(e)) => break e.to_string(),
                Some(Ok(frame)) => {
                    unanswered_pings = 0;
                    if let Some(payload) = published_payload(frame) {
                        events.on_published(payload);
                    }
                }
            }
        };
        events.on_unsubscribed();
        if events.stopping() {
            return;
        }
        log::warn!("cluster subscriber: lost Redis ({error}); reconnecting");
    }
}

/// The payload of a pub/sub `message` push, if `frame` is one.
fn published_payload(frame: BytesFrame) -> Option<Bytes> {
    let BytesFrame::Array(mut parts) = frame else {
        return None;
    };
    if parts.len() != 3 {
        return None;
    }
    let kind_is_message = matches!(&parts[0], BytesFrame::BulkString(k) if &k[..] == b"message");
    match (kind_is_message, parts.pop()) {
        (true, Some(BytesFrame::BulkString(payload))) => Some(payload),
        _ => None,
    }
}

/// Reading replies.
pub mod reply {
    use super::BytesFrame;
    use bytes::Bytes;

    /// An integer reply (or a number in a bulk string).
    pub fn int(frame: &BytesFrame) -> Option<i64> {
        match frame {
            BytesFrame::Integer(i) => Some(*i),
            BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => {
                std::str::from_utf8(b).ok()?.parse().ok()
            }
            _ => None,
        }
    }

    /// A string reply's bytes (`None` for nil and non-strings).
    pub fn bytes(frame: &BytesFrame) -> Option<Bytes> {
        match frame {
            BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Some(b.clone()),
            _ => None,
        }
    }

    /// An array reply's elements.
    pub fn array(frame: BytesFrame) -> Option<Vec<BytesFrame>> {
        match frame {
            BytesFrame::Array(items) => Some(items),
            _ => None,
        }
    }

    /// `XRANGE` entries: `(entry id, value of field "m")`.
    pub fn stream_entries(frame: BytesFrame) -> Vec<(Bytes, Bytes)> {
        let Some(entries) = array(frame) else {
            return Vec::new();
        };
        entries
            .into_iter()
            .filter_map(|entry| {
                let mut parts = array(entry)?.into_iter();
                let id = bytes(&parts.next()?)?;
                let fields = array(parts.next()?)?;
                let value = fields
                    .chunks(2)
                    .find(|kv| kv.len() == 2 && bytes(&kv[0]).is_some_and(|k| &k[..] == b"m"))
                    .and_then(|kv| bytes(&kv[1]))?;
                Some((id, value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::resp2::decode::decode;

    #[test]
    fn commands_encode_as_resp_arrays() {
        let mut out = BytesMut::new();
        encode_command(
            &[
                Bytes::from_static(b"SET"),
                Bytes::from_static(b"k"),
                Bytes::from_static(b"v\r\n"),
            ],
            &mut out,
        );
        assert_eq!(&out[..], b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n");
        let (frame, used) = decode(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert!(
            matches!(frame, redis_protocol::resp2::types::OwnedFrame::Array(a) if a.len() == 3)
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let waits: Vec<u64> = (0..8).map(backoff_ms).collect();
        assert_eq!(waits[0], RECONNECT_BACKOFF_MIN_MS);
        assert_eq!(waits[1], 2 * RECONNECT_BACKOFF_MIN_MS);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(backoff_ms(1000), RECONNECT_BACKOFF_MAX_MS);
    }

    #[test]
    fn stream_entries_and_pushes_are_read() {
        let entry = |id: &'static [u8], v: &'static [u8]| {
            BytesFrame::Array(vec![
                BytesFrame::BulkString(Bytes::from_static(id)),
                BytesFrame::Array(vec![
                    BytesFrame::BulkString(Bytes::from_static(b"m")),
                    BytesFrame::BulkString(Bytes::from_static(v)),
                ]),
            ])
        };
        let got = reply::stream_entries(BytesFrame::Array(vec![
            entry(b"1-0", b"a"),
            entry(b"2-0", b"b"),
        ]));
        assert_eq!(got.len(), 2);
        assert_eq!(&got[1].0[..], b"2-0");
        assert_eq!(&got[1].1[..], b"b");
        let push = BytesFrame::Array(vec![
            BytesFrame::BulkString(Bytes::from_static(b"message")),
            BytesFrame::BulkString(Bytes::from_static(b"wsu:node:a")),
            BytesFrame::BulkString(Bytes::from_static(b"payload")),
        ]);
        assert_eq!(published_payload(push).as_deref(), Some(&b"payload"[..]));
        let subscribe_ack = BytesFrame::Array(vec![
            BytesFrame::BulkString(Bytes::from_static(b"subscribe")),
            BytesFrame::BulkString(Bytes::from_static(b"wsu:node:a")),
            BytesFrame::Integer(1),
        ]);
        assert_eq!(published_payload(subscribe_ack), None);
    }
}
