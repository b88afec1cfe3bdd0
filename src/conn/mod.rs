//! One connection's life on its shard: read the HTTP request (bounded by
//! `handshake_timeout_ms`), route it, and for an upgrade run the WebSocket
//! loop (`websocket`). The task only moves bytes; the decisions are in
//! `http`, `ws`, `commands`, `outbox` and `liveness`.

pub mod commands;
pub mod endpoints;
pub mod handle;
pub mod hibernate;
pub mod ip_limit;
pub mod liveness;
pub mod outbox;
pub mod rate_limit;
mod websocket;

pub use handle::ConnHandle;
pub use ws_uring_readiness::{ReadyListener, ReadyStream};

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::timer::Timer;

use crate::http::router::{self, Endpoint, Route};
use crate::http::{self, upgrade, RequestHead, Response};
use crate::protocol::identity;
use crate::registry::ConnInfo;
use crate::shard::ShardState;
use crate::ws::WsSession;
use commands::Mode;

/// Longest we keep reading after our last response or close frame, so the
/// peer sees our bytes before the socket goes away (no RST on unread data).
const LINGER: Duration = Duration::from_millis(1000);
/// Room for a request body's JSON around a message of `max_message_bytes`.
const REQUEST_BODY_OVERHEAD_BYTES: usize = 64 * 1024;
/// Most bytes drained while lingering.
const LINGER_MAX_BYTES: usize = 256 * 1024;

/// A byte stream a connection is served over: the TCP stream itself, or
/// TLS on top of it.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Sized + 'static {
    /// Whether a quiet connection over it may hibernate (`hibernate`).
    const CAN_HIBERNATE: bool = false;

    /// Whether a write it answered in full may still sit inside it until
    /// flushed (TLS records a full socket did not take).
    const WRITES_NEED_FLUSH: bool = false;

    /// Hands a quiet connection to its shard's hibernation; `Err` hands it
    /// back to keep its task.
    #[allow(clippy::result_large_err)] // moved once per hibernation; see hibernate.rs
    fn hibernate(shard: &Rc<ShardState>, upgraded: Upgraded<Self>) -> Result<(), Upgraded<Self>> {
        let _ = shard;
        Err(upgraded)
    }
}

impl Transport for ReadyStream {
    const CAN_HIBERNATE: bool = true;

    #[allow(clippy::result_large_err)]
    fn hibernate(shard: &Rc<ShardState>, upgraded: Upgraded<Self>) -> Result<(), Upgraded<Self>> {
        match &shard.hibernation {
            Some(hibernation) => hibernation.sleep(shard, upgraded),
            None => Err(upgraded),
        }
    }
}

/// TLS: rustls's state is large and has no resting form, so these keep
/// their tasks. futures-rustls answers a write in full once rustls took the
/// plaintext, even when the socket took only part of the records.
impl Transport for Box<futures_rustls::server::TlsStream<ReadyStream>> {
    const WRITES_NEED_FLUSH: bool = true;
}

/// Serves one accepted TCP connection to the end.
pub async fn serve(shard: Rc<ShardState>, mut stream: ReadyStream) {
    let accepted_at = Instant::now();
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    // Small frames must leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);

    if let Some(limiter) = &shard.ip_limiter {
        if !limiter.try_admit(peer.ip(), accepted_at) {
            log::debug!("{peer}: refused: over ip_connections_per_s");
            shard.metrics.count_refused_ip_rate();
            if shard.tls.is_none() {
                let response = Response::error(429, "too many new connections from your address")
                    .with_header("Retry-After", "1");
                respond_and_close(&shard, &mut stream, &response).await;
            }
            // Over TLS the refusal costs no handshake: the socket just closes.
            return;
        }
    }

    let timeout = Duration::from_millis(shard.config.handshake_timeout_ms);
    match shard.tls.clone() {
        None => serve_transport(shard, stream, peer, accepted_at, timeout).await,
        Some(acceptor) => {
            // Boxed: the handshake state is large and short-lived, and the
            // connection's own future should not carry its size for life.
            let accepted = Box::pin(future::or(
                async { Some(acceptor.accept(stream).await) },
                async {
                    Timer::new(timeout).await;
                    None
                },
            ))
            .await;
            match accepted {
                Some(Ok(tls)) => {
                    let left = timeout.saturating_sub(accepted_at.elapsed());
                    serve_transport(shard, Box::new(tls), peer, accepted_at, left).await;
                }
                Some(Err(e)) => {
                    log::debug!("{peer}: TLS handshake failed: {e}");
                    shard.metrics.count_handshake_failure();
                }
                None => {
                    log::debug!("{peer}: TLS handshake timed out");
                    shard.metrics.count_handshake_failure();
                }
            }
        }
    }
}

/// Serves the HTTP request (and the WebSocket after an upgrade) over
/// `stream`; `timeout` is what is left of `handshake_timeout_ms`.
async fn serve_transport<S: Transport>(
    shard: Rc<ShardState>,
    stream: S,
    peer: SocketAddr,
    accepted_at: Instant,
    timeout: Duration,
) {
    // The WebSocket phase is a task of its own: this one, sized for the
    // request phase (HTTP parsing, endpoints, TLS), ends here, and an idle
    // connection keeps only what `run_upgraded` holds.
    if let Some(upgraded) = handle_request(&shard, stream, peer, accepted_at, timeout).await {
        crate::spawn_local(run_upgraded(shard, upgraded)).detach();
    }
}

/// A connection past its 101 response.
pub struct Upgraded<S> {
    stream: S,
    session: WsSession,
    handle: Rc<ConnHandle>,
    mode: Mode,
    peer: SocketAddr,
}

/// Reads and answers the request; an upgrade returns the connection.
async fn handle_request<S: Transport>(
    shard: &Rc<ShardState>,
    mut stream: S,
    peer: SocketAddr,
    accepted_at: Instant,
    timeout: Duration,
) -> Option<Upgraded<S>> {
    let shard = shard.clone();
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
            shard.metrics.count_handshake_failure();
            return None;
        }
        Some(Err(HeadError::Closed)) => return None,
        Some(Err(HeadError::Io(e))) => {
            log::debug!("{peer}: read failed during handshake: {e}");
            return None;
        }
        Some(Err(HeadError::Refused(response))) => {
            respond_and_close(&shard, &mut stream, &response).await;
            return None;
        }
        Some(Err(HeadError::Http(e))) => {
            respond_and_close(&shard, &mut stream, &Response::error(400, &e.to_string())).await;
            return None;
        }
        Some(Ok(parsed)) => parsed,
    };

    match router::route(&head, &shard.config.path) {
        Route::Respond(response) => {
            respond_and_close(&shard, &mut stream, &response).await;
            None
        }
        Route::Serve(Endpoint::WebSocket) => {
            upgrade(&shard, stream, peer, head, buffered, accepted_at).await
        }
        Route::Serve(endpoint) => {
            let body_len = http::body_length(&head, usize::MAX).unwrap_or(0);
            let body = &buffered[head.head_len..head.head_len + body_len];
            let response = endpoints::serve(&shard, endpoint, &head, body, peer).await;
            respond_and_close(&shard, &mut stream, &response).await;
            None
        }
    }
}

enum HeadError {
    Closed,
    Io(io::Error),
    Http(http::HttpError),
    Refused(Response),
}

/// Reads until a complete request head; returns it with every byte read so
/// far (frames a client sent right behind its upgrade request included).
async fn read_request_head<S: Transport>(
    shard: &ShardState,
    stream: &mut S,
) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buffered = Vec::new();
    let head = loop {
        let n = read_via_shard_buffer(shard, stream, &mut buffered)
            .await
            .map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        match http::parse_request_head(&buffered) {
            Ok(Some(head)) => break head,
            Ok(None) => continue,
            Err(e) => return Err(HeadError::Http(e)),
        }
    };
    // A body (POST /api/...) is read whole, bounded, before routing.
    let body_max = shard.config.max_message_bytes + REQUEST_BODY_OVERHEAD_BYTES;
    let body_len = http::body_length(&head, body_max).map_err(HeadError::Refused)?;
    while buffered.len() < head.head_len + body_len {
        let n = read_via_shard_buffer(shard, stream, &mut buffered)
            .await
            .map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
    }
    Ok((head, buffered))
}

/// One read through the shard's buffer, appended to `into`.
async fn read_via_shard_buffer<S: Transport>(
    shard: &ShardState,
    stream: &mut S,
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
async fn respond_and_close<S: Transport>(shard: &ShardState, stream: &mut S, response: &Response) {
    if stream.write_all(&response.to_bytes()).await.is_ok() {
        linger_and_close(shard, stream).await;
    }
}

/// Half-closes, then reads (and discards) until the peer closes or
/// `LINGER` passes, so our last bytes are not lost to a reset.
async fn linger_and_close<S: Transport>(shard: &ShardState, stream: &mut S) {
    // A half-close: TCP sends FIN (after TLS's close_notify); reads go on.
    let _ = stream.close().await;
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

/// Checks and answers an upgrade request; registers the connection.
async fn upgrade<S: Transport>(
    shard: &Rc<ShardState>,
    mut stream: S,
    peer: SocketAddr,
    head: RequestHead,
    buffered: Vec<u8>,
    accepted_at: Instant,
) -> Option<Upgraded<S>> {
    let upgrade = match upgrade::check_upgrade(
        &head,
        shard.auth.as_ref(),
        shard.allowed_origins.as_deref(),
    ) {
        Ok(u) => u,
        Err(response) => {
            shard.metrics.count_handshake_failure();
            respond_and_close(shard, &mut stream, &response).await;
            return None;
        }
    };
    if shard.is_shutting_down() {
        let response = Response::error(503, "server is shutting down");
        respond_and_close(shard, &mut stream, &response).await;
        return None;
    }
    let admission = match shard.registry.admit() {
        Ok(a) => a,
        Err(e) => {
            log::debug!("{peer}: refused: {e}");
            shard.metrics.count_handshake_failure();
            let response = Response::error(503, &format!("server full: {e}"));
            respond_and_close(shard, &mut stream, &response).await;
            return None;
        }
    };
    let requested_user = upgrade.user.clone();
    let inserted = shard.registry.insert_with(admission, |conn_id| ConnInfo {
        shard: shard.id as u32,
        user: requested_user
            .unwrap_or_else(|| identity::anonymous_user(conn_id))
            .into(),
        peer,
        connected_unix_ms: crate::shard::messaging::unix_ms(),
    });
    let conn_id = match inserted {
        Ok(id) => id,
        Err(e) => {
            log::error!("{peer}: cannot register connection: {e}");
            let response = Response::error(503, "connection table exhausted");
            respond_and_close(shard, &mut stream, &response).await;
            return None;
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

    let mode = Mode::of(&shard.config);
    let session = WsSession::new(shard.config.max_message_bytes, &buffered[head.head_len..]);
    // The request is not needed past this point: free it before the
    // connection settles into its (possibly long) idle life.
    drop(buffered);
    drop(head);
    if let Err(e) = stream.write_all(&upgrade.response_bytes()).await {
        log::debug!("{peer}: write failed during upgrade: {e}");
        shard.registry.remove(conn_id);
        return None;
    }
    shard
        .metrics
        .record_handshake_us(accepted_at.elapsed().as_micros() as u64);

    let handle = Rc::new(
        ConnHandle::new(
            conn_id,
            Rc::from(user.as_str()),
            upgrade.wants_lz4(),
            shard.config.outbox_max_bytes,
            rate_limit::TokenBucket::new(shard.config.rate_limit_burst, Instant::now()),
            Instant::now(),
        )
        .with_allowed_groups(upgrade.allowed_groups.clone()),
    );
    if S::CAN_HIBERNATE && shard.hibernation.is_some() {
        handle.allow_hibernation();
    }
    // In protocol mode the connection is announced to its user's home shard
    // and greeted (`welcome`, the first frame) once the home has it.
    shard.add_conn(handle.clone(), mode == Mode::Protocol);
    Some(Upgraded {
        stream,
        session,
        handle,
        mode,
        peer,
    })
}

/// The WebSocket phase, to the end of the connection.
async fn run_upgraded<S: Transport>(shard: Rc<ShardState>, mut upgraded: Upgraded<S>) {
    // Fields are used in place: moving them out would keep two copies in
    // this future, which every idle connection holds.
    let shard = &shard;
    let outcome = loop {
        let outcome = websocket::run_session(
            shard,
            &mut upgraded.stream,
            &mut upgraded.session,
            &upgraded.handle,
            upgraded.mode,
        )
        .await;
        if outcome != websocket::Outcome::Hibernate {
            break outcome;
        }
        // The task ends here; the hibernation resumes the connection in a
        // new one.
        match S::hibernate(shard, upgraded) {
            Ok(()) => return,
            Err(back) => {
                // Out of descriptors, say: it keeps its task for good.
                upgraded = back;
                upgraded.handle.forbid_hibernation();
            }
        }
    };
    let stale = outcome == websocket::Outcome::Stale;
    if outcome != websocket::Outcome::PeerGone {
        linger_and_close(shard, &mut upgraded.stream).await;
    }
    shard.remove_conn(&upgraded.handle, stale);
    log::debug!(
        "{}: connection {} closed ({outcome:?})",
        upgraded.peer,
        upgraded.handle.id
    );
}
