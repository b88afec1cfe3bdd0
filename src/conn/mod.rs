//! One connection's life on its shard: read the HTTP request (bounded by
//! `handshake_timeout_ms`), route it, and for an upgrade run the WebSocket
//! loop. The task only moves bytes; the decisions are in `http`, `ws`,
//! `commands` and `liveness`.

pub mod commands;
pub mod liveness;

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use futures_lite::{future, AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use tungstenite::Message;

use crate::http::router::{self, Endpoint, Route};
use crate::http::{self, upgrade, RequestHead, Response};
use crate::protocol::{self, identity};
use crate::registry::ConnInfo;
use crate::shard::ShardState;
use crate::ws::{SessionEnd, WsSession};
use commands::Mode;

/// Longest we keep reading after our last response or close frame, so the
/// peer sees our bytes before the socket goes away (no RST on unread data).
const LINGER: Duration = Duration::from_millis(1000);
/// Most bytes drained while lingering.
const LINGER_MAX_BYTES: usize = 256 * 1024;

const SIGNAL_PING: u8 = 1;
const SIGNAL_IDLE: u8 = 2;
const SIGNAL_SHUTDOWN: u8 = 4;

/// The shard's handle on a live WebSocket connection: the sweeper and
/// shutdown raise signals; the connection's task acts on them.
pub struct ConnHandle {
    pub id: u64,
    signals: Cell<u8>,
    waker: Cell<Option<Waker>>,
    last_rx: Cell<Instant>,
    last_ping: Cell<Option<Instant>>,
}

impl ConnHandle {
    fn new(id: u64, now: Instant) -> Self {
        ConnHandle {
            id,
            signals: Cell::new(0),
            waker: Cell::new(None),
            last_rx: Cell::new(now),
            last_ping: Cell::new(None),
        }
    }

    /// When the peer last sent anything (pongs included).
    pub fn last_rx(&self) -> Instant {
        self.last_rx.get()
    }

    /// When we last pinged.
    pub fn last_ping(&self) -> Option<Instant> {
        self.last_ping.get()
    }

    /// Asks the task to send a ping.
    pub fn raise_ping(&self, now: Instant) {
        self.last_ping.set(Some(now));
        self.raise(SIGNAL_PING);
    }

    /// Asks the task to close with 1001 as stale.
    pub fn raise_idle(&self) {
        self.raise(SIGNAL_IDLE);
    }

    /// Asks the task to close with 1001 for shutdown.
    pub fn raise_shutdown(&self) {
        self.raise(SIGNAL_SHUTDOWN);
    }

    fn raise(&self, signal: u8) {
        self.signals.set(self.signals.get() | signal);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn take_signals(&self) -> u8 {
        self.signals.replace(0)
    }

    fn park(&self, waker: &Waker) {
        let current = self.waker.take();
        match current {
            Some(w) if w.will_wake(waker) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }
}

/// Serves one accepted TCP connection to the end.
pub async fn serve(shard: Rc<ShardState>, mut stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    // Small frames must leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);

    let timeout = Duration::from_millis(shard.config.handshake_timeout_ms);
    let head = future::or(
        async { Some(read_request_head(&shard, &mut stream).await) },
        async {
            Timer::new(timeout).await;
            None
        },
    )
    .await;
    let (head, buffered) = match head {
        None => {
            log::debug!("{peer}: handshake timed out");
            return;
        }
        Some(Err(HeadError::Closed)) => return,
        Some(Err(HeadError::Io(e))) => {
            log::debug!("{peer}: read failed during handshake: {e}");
            return;
        }
        Some(Err(HeadError::Http(e))) => {
            respond_and_close(&shard, &mut stream, &Response::error(400, &e.to_string())).await;
            return;
        }
        Some(Ok(parsed)) => parsed,
    };

    match router::route(&head, &shard.config.path) {
        Route::Respond(response) => respond_and_close(&shard, &mut stream, &response).await,
        Route::Serve(Endpoint::Health) => {
            let health = shard.cluster_health().await;
            let body = health.to_json(shard.started_at.elapsed().as_secs());
            let response = Response::json(health.status().1, body);
            respond_and_close(&shard, &mut stream, &response).await;
        }
        Route::Serve(Endpoint::WebSocket) => {
            upgrade_and_run(&shard, stream, peer, head, buffered).await;
        }
    }
}

enum HeadError {
    Closed,
    Io(io::Error),
    Http(http::HttpError),
}

/// Reads until a complete request head; returns it with every byte read so
/// far (frames a client sent right behind its upgrade request included).
async fn read_request_head(
    shard: &ShardState,
    stream: &mut TcpStream,
) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buffered = Vec::new();
    loop {
        let n = read_via_shard_buffer(shard, stream, &mut buffered)
            .await
            .map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        match http::parse_request_head(&buffered) {
            Ok(Some(head)) => return Ok((head, buffered)),
            Ok(None) => continue,
            Err(e) => return Err(HeadError::Http(e)),
        }
    }
}

/// One read through the shard's buffer, appended to `into`.
async fn read_via_shard_buffer(
    shard: &ShardState,
    stream: &mut TcpStream,
    into: &mut Vec<u8>,
) -> io::Result<usize> {
    future::poll_fn(|cx| {
        let mut buf = shard.rx_buffer.borrow_mut();
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(n)) => {
                into.extend_from_slice(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
    .await
}

/// Sends a plain HTTP response, then closes gracefully.
async fn respond_and_close(shard: &ShardState, stream: &mut TcpStream, response: &Response) {
    if stream.write_all(&response.to_bytes()).await.is_ok() {
        linger_and_close(shard, stream).await;
    }
}

/// Half-closes, then reads (and discards) until the peer closes or
/// `LINGER` passes, so our last bytes are not lost to a reset.
async fn linger_and_close(shard: &ShardState, stream: &mut TcpStream) {
    let _ = stream.flush().await;
    let _ = stream.shutdown(Shutdown::Write).await;
    let drain = async {
        let mut drained = 0;
        while drained < LINGER_MAX_BYTES {
            // Discarded bytes go through the shard buffer: no per-connection sink.
            let read = future::poll_fn(|cx| {
                let mut buf = shard.rx_buffer.borrow_mut();
                Pin::new(&mut *stream).poll_read(cx, &mut buf)
            });
            match read.await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let deadline = async {
        Timer::new(LINGER).await;
    };
    future::or(drain, deadline).await;
}

async fn upgrade_and_run(
    shard: &Rc<ShardState>,
    mut stream: TcpStream,
    peer: SocketAddr,
    head: RequestHead,
    buffered: Vec<u8>,
) {
    let upgrade = match upgrade::check_upgrade(&head) {
        Ok(u) => u,
        Err(response) => return respond_and_close(shard, &mut stream, &response).await,
    };
    if shard.is_shutting_down() {
        let response = Response::error(503, "server is shutting down");
        return respond_and_close(shard, &mut stream, &response).await;
    }
    let admission = match shard.registry.admit() {
        Ok(a) => a,
        Err(e) => {
            log::debug!("{peer}: refused: {e}");
            let response = Response::error(503, &format!("server full: {e}"));
            return respond_and_close(shard, &mut stream, &response).await;
        }
    };
    let requested_user = upgrade.user.clone();
    let inserted = shard.registry.insert_with(admission, |conn_id| ConnInfo {
        shard: shard.id,
        user: requested_user.unwrap_or_else(|| identity::anonymous_user(conn_id)),
        peer,
        connected_at: SystemTime::now(),
    });
    let conn_id = match inserted {
        Ok(id) => id,
        Err(e) => {
            log::error!("{peer}: cannot register connection: {e}");
            let response = Response::error(503, "connection table exhausted");
            return respond_and_close(shard, &mut stream, &response).await;
        }
    };
    let user = upgrade
        .user
        .clone()
        .unwrap_or_else(|| identity::anonymous_user(conn_id));
    log::debug!(
        "{peer}: connection {conn_id} open as {user:?} on shard {}",
        shard.id
    );

    let mode = if shard.config.echo {
        Mode::Echo
    } else {
        Mode::Protocol
    };
    let mut session = WsSession::new(shard.config.max_message_bytes, &buffered[head.head_len..]);
    // The request is not needed past this point: free it before the
    // connection settles into its (possibly long) idle life.
    drop(buffered);
    drop(head);
    if mode == Mode::Protocol {
        let welcome = protocol::encode_welcome(&protocol::Welcome {
            user: &user,
            conn: conn_id,
            shard: shard.id,
            heartbeat_ms: shard.config.ping_interval_ms,
        });
        // Cannot fail: the session is new and open.
        let _ = session.send(Message::text(welcome));
    }
    let mut first_write = upgrade.response_bytes();
    let mut frames = Vec::new();
    session.take_output(&mut frames);
    first_write.extend_from_slice(&frames);
    if let Err(e) = stream.write_all(&first_write).await {
        log::debug!("{peer}: write failed during upgrade: {e}");
        shard.registry.remove(conn_id);
        return;
    }

    let handle = Rc::new(ConnHandle::new(conn_id, Instant::now()));
    shard.add_conn(handle.clone());
    let outcome = run_session(shard, &mut stream, &mut session, &handle, mode).await;
    let stale = outcome == Outcome::Stale;
    if outcome != Outcome::PeerGone {
        linger_and_close(shard, &mut stream).await;
    }
    shard.remove_conn(conn_id, stale);
    log::debug!("{peer}: connection {conn_id} closed ({outcome:?})");
}

/// How a WebSocket session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Close handshake completed or close frame sent.
    Closed,
    /// Closed by us for silence (counted as stale).
    Stale,
    /// The socket closed or failed under us.
    PeerGone,
}

/// What woke the connection task.
enum Wake {
    Input,
    PeerGone,
    Signals(u8),
    Deadline,
}

/// The WebSocket loop: answer every complete message, write all replies in
/// one send, then wait for input or a signal.
async fn run_session(
    shard: &ShardState,
    stream: &mut TcpStream,
    session: &mut WsSession,
    handle: &ConnHandle,
    mode: Mode,
) -> Outcome {
    let close_grace = Duration::from_millis(shard.config.shutdown_timeout_ms);
    let mut out = Vec::new();
    let mut stale = false;
    let mut close_deadline: Option<Instant> = None;
    loop {
        let mut ended = false;
        loop {
            match session.next_message() {
                Ok(Some(message)) => {
                    if let Some(reply) = commands::reply_to(message, mode) {
                        if session.send(reply).is_err() {
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(SessionEnd::Closed) | Err(SessionEnd::Failed { .. }) => {
                    ended = true;
                    break;
                }
            }
        }
        session.take_output(&mut out);
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return Outcome::PeerGone;
        }
        if ended {
            return if stale {
                Outcome::Stale
            } else {
                Outcome::Closed
            };
        }

        match wait_for_wake(shard, stream, session, handle, close_deadline).await {
            Wake::Input => {}
            // A stale peer that hangs up after our close is still stale.
            Wake::PeerGone if stale => return Outcome::Stale,
            Wake::PeerGone => return Outcome::PeerGone,
            Wake::Deadline => {
                return if stale {
                    Outcome::Stale
                } else {
                    Outcome::Closed
                }
            }
            Wake::Signals(signals) => {
                if signals & SIGNAL_IDLE != 0 && session.is_open() {
                    stale = true;
                    session.close(1001, "idle timeout");
                } else if signals & SIGNAL_SHUTDOWN != 0 {
                    session.close(1001, "server shutting down");
                } else if signals & SIGNAL_PING != 0 && session.is_open() {
                    let _ = session.send(Message::Ping(Default::default()));
                }
                if !session.is_open() && close_deadline.is_none() {
                    close_deadline = Some(Instant::now() + close_grace);
                }
            }
        }
    }
}

/// Waits for input (fed into the session), a signal, or the close deadline.
async fn wait_for_wake(
    shard: &ShardState,
    stream: &mut TcpStream,
    session: &mut WsSession,
    handle: &ConnHandle,
    deadline: Option<Instant>,
) -> Wake {
    let mut timer = deadline.map(|d| Timer::new(d.saturating_duration_since(Instant::now())));
    future::poll_fn(|cx| {
        let signals = handle.take_signals();
        if signals != 0 {
            return Poll::Ready(Wake::Signals(signals));
        }
        handle.park(cx.waker());
        if let Some(timer) = timer.as_mut() {
            if Pin::new(timer).poll(cx).is_ready() {
                return Poll::Ready(Wake::Deadline);
            }
        }
        let mut buf = shard.rx_buffer.borrow_mut();
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Wake::PeerGone),
            Poll::Ready(Ok(n)) => {
                session.feed(&buf[..n]);
                handle.last_rx.set(Instant::now());
                Poll::Ready(Wake::Input)
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
