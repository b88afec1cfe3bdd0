//! The few socket operations the attacks are made of, on glommio: connect,
//! upgrade, one step of "read and/or write until something happens", and a
//! plain HTTP GET for the server's own figures. Every wait has a deadline.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::timer::Timer;
use loadgen::handshake;
use loadgen::url::WsUrl;

use crate::wire::FrameReader;

/// Longest a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest HTTP answer we read (`/metrics.json` is a few KiB).
const HTTP_ANSWER_MAX_BYTES: usize = 8 << 20;

/// The server under attack: always an address in 127.0.0.0/8.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub url: WsUrl,
}

impl Target {
    /// Parses a `ws://` URL and refuses anything outside 127.0.0.0/8.
    pub fn parse(url: &str) -> Result<Target, String> {
        let url = WsUrl::parse(url).map_err(|e| e.to_string())?;
        let addr = url.socket_addr().map_err(|e| e.to_string())?;
        match addr {
            SocketAddr::V4(v4) if v4.ip().is_loopback() => Ok(Target { addr, url }),
            _ => Err(format!(
                "refusing {addr}: the hostile suite only targets 127.0.0.0/8"
            )),
        }
    }

    /// The upgrade request for `user` (anonymous when `None`).
    pub fn upgrade_request(&self, user: Option<&str>, key: &str) -> Vec<u8> {
        handshake::request(&self.url.host_header(), &self.url.request_target(user), key)
    }
}

/// A stable name for an I/O error.
pub fn io_kind(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNRESET) => return "reset",
        Some(libc::EPIPE) => return "broken_pipe",
        Some(libc::ECONNREFUSED) => return "connect_refused",
        Some(libc::ETIMEDOUT) | Some(libc::ECANCELED) => return "timeout",
        Some(libc::EMFILE) | Some(libc::ENFILE) => return "out_of_fds",
        Some(libc::EADDRNOTAVAIL) => return "out_of_ports",
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::ConnectionReset => "reset",
        io::ErrorKind::BrokenPipe => "broken_pipe",
        io::ErrorKind::ConnectionRefused => "connect_refused",
        io::ErrorKind::TimedOut => "timeout",
        _ => "io_error",
    }
}

/// Opens a TCP connection; the error is a stable kind (`connect_refused`…).
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).await {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(e) => {
            let e = io::Error::from(e);
            Err(format!(
                "connect_{}",
                io_kind(&e).trim_start_matches("connect_")
            ))
        }
    }
}

/// What one [`step`] saw first.
#[derive(Debug)]
pub enum Step {
    Read(usize),
    Wrote(usize),
    /// The server closed its side (read returned 0).
    Eof,
    ReadFailed(io::Error),
    WriteFailed(io::Error),
    Deadline,
}

/// Waits until the socket has data (when `rbuf` is given), takes some of
/// `wbuf` (when not empty), or `deadline` passes; reads win ties so a close
/// is seen before the next write hits a reset.
pub async fn step(
    stream: &mut TcpStream,
    mut rbuf: Option<&mut [u8]>,
    wbuf: &[u8],
    deadline: Option<Instant>,
) -> Step {
    let mut timer = deadline.map(|d| Timer::new(d.saturating_duration_since(Instant::now())));
    future::poll_fn(|cx| {
        if let Some(buf) = rbuf.as_deref_mut() {
            match Pin::new(&mut *stream).poll_read(cx, buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Step::Eof),
                Poll::Ready(Ok(n)) => return Poll::Ready(Step::Read(n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Step::ReadFailed(e)),
                Poll::Pending => {}
            }
        }
        if !wbuf.is_empty() {
            match Pin::new(&mut *stream).poll_write(cx, wbuf) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Step::WriteFailed(io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => return Poll::Ready(Step::Wrote(n)),
                Poll::Ready(Err(e)) => return Poll::Ready(Step::WriteFailed(e)),
                Poll::Pending => {}
            }
        }
        if let Some(timer) = timer.as_mut() {
            if Pin::new(timer).poll(cx).is_ready() {
                return Poll::Ready(Step::Deadline);
            }
        }
        Poll::Pending
    })
    .await
}

/// An upgraded WebSocket connection and what came behind the 101.
pub struct Upgraded {
    pub stream: TcpStream,
    pub reader: FrameReader,
    pub at: Instant,
}

/// Connects and upgrades. The error is the outcome kind: `connect_*`,
/// `http_<status>`, `handshake_eof`, `handshake_timeout`, `handshake_*`.
pub async fn upgrade(target: &Target, user: Option<&str>, seed: u64) -> Result<Upgraded, String> {
    let mut stream = connect(target.addr).await?;
    let key = handshake::make_key(seed);
    let request = target.upgrade_request(user, &key);
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut written = 0;
    let mut answer = Vec::with_capacity(512);
    let mut rbuf = [0u8; 2048];
    loop {
        let pending = &request[written..];
        match step(&mut stream, Some(&mut rbuf), pending, Some(deadline)).await {
            Step::Wrote(n) => written += n,
            Step::Read(n) => {
                answer.extend_from_slice(&rbuf[..n]);
                match handshake::parse_response(&answer, &key) {
                    Ok(Some(head)) => {
                        return Ok(Upgraded {
                            stream,
                            reader: FrameReader::with_leftover(&answer[head..]),
                            at: Instant::now(),
                        })
                    }
                    Ok(None) if answer.len() < 16 * 1024 => {}
                    Ok(None) => return Err("handshake_invalid".into()),
                    Err(e) => return Err(e.kind().replace("handshake_http_", "http_")),
                }
            }
            Step::Eof => return Err("handshake_eof".into()),
            Step::ReadFailed(e) | Step::WriteFailed(e) => {
                return Err(format!("handshake_{}", io_kind(&e)))
            }
            Step::Deadline => return Err("handshake_timeout".into()),
        }
    }
}

/// `GET path` on the target's host and port; the status and body.
pub async fn http_get(target: &Target, path: &str) -> Result<(u16, Vec<u8>), String> {
    let exchange = async {
        let mut stream = TcpStream::connect_timeout(target.addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            target.url.host_header()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 || answer.len() + n > HTTP_ANSWER_MAX_BYTES {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        crate::wire::http_body(&answer)
            .map(|(code, body)| (code, body.to_vec()))
            .ok_or_else(|| "not an HTTP answer".to_string())
    };
    let timeout = async {
        glommio::timer::sleep(Duration::from_secs(5)).await;
        Err(format!("GET {path}: no answer within 5 s"))
    };
    future::or(exchange, timeout).await
}

/// The server's `/metrics.json`, when it answers.
pub async fn server_metrics(target: &Target) -> Option<serde_json::Value> {
    match http_get(target, "/metrics.json").await {
        Ok((200, body)) => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}

/// A counter of `/metrics.json` (`counters.<name>`), 0 when absent.
pub fn counter(metrics: &Option<serde_json::Value>, name: &str) -> u64 {
    metrics
        .as_ref()
        .and_then(|m| m["counters"][name].as_u64())
        .unwrap_or(0)
}

/// A gauge of `/metrics.json` (`gauges.<name>`).
pub fn gauge(metrics: &Option<serde_json::Value>, name: &str) -> Option<u64> {
    metrics.as_ref().and_then(|m| m["gauges"][name].as_u64())
}

/// Resident memory of process `pid` in bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Raises the soft open-file limit to the hard one; returns the limit now.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        limit.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(Target::parse("ws://127.0.0.1:8765/ws").is_ok());
        assert!(Target::parse("ws://127.3.2.1:8765/ws").is_ok());
        assert!(Target::parse("ws://10.0.0.1:8765/ws").is_err());
        assert!(Target::parse("ws://192.168.1.2/ws").is_err());
        assert!(Target::parse("ws://[::1]:8765/ws").is_err());
    }

    #[test]
    fn error_kinds_are_stable() {
        let reset = io::Error::from_raw_os_error(libc::ECONNRESET);
        assert_eq!(io_kind(&reset), "reset");
        assert_eq!(
            io_kind(&io::Error::from_raw_os_error(libc::EPIPE)),
            "broken_pipe"
        );
        assert_eq!(io_kind(&io::Error::other("x")), "io_error");
    }
}
