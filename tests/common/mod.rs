//! Test harness: start the real `ws-uring` binary on an ephemeral loopback
//! port and talk to it over real sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

pub const BIN: &str = env!("CARGO_BIN_EXE_ws-uring");
/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);
/// Bound on a server's start-up (tests run many servers side by side on
/// two cores).
pub const START_WAIT: Duration = Duration::from_secs(30);

/// A running server; killed on drop (its own data directory removed).
pub struct TestServer {
    pub child: Child,
    pub port: u16,
    pub log: mpsc::Receiver<String>,
    /// The data directory this test owns, if the harness made it.
    pub data_dir: Option<std::path::PathBuf>,
}

/// A fresh data directory for one server of this test process.
pub fn fresh_data_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("ws-uring-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl TestServer {
    /// Starts `ws-uring --host 127.0.0.1 --port 0 ARGS` and waits for its
    /// `listening on` line.
    pub fn start(args: &[&str]) -> TestServer {
        Self::start_binary(std::path::Path::new(BIN), args)
    }

    /// Like `start`, for another binary built on ws-uring (an example).
    pub fn start_binary(bin: &std::path::Path, args: &[&str]) -> TestServer {
        let owns_dir = !args
            .iter()
            .any(|a| *a == "--data-dir" || *a == "--no-persist");
        let data_dir = owns_dir.then(fresh_data_dir);
        let mut command = Command::new(bin);
        command
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args);
        if let Some(dir) = &data_dir {
            command.arg("--data-dir").arg(dir);
        }
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ws-uring");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + START_WAIT;
        loop {
            let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!("server did not log `listening on` in time ({status:?})");
                }
            };
            if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                let port = rest
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                return TestServer {
                    child,
                    port,
                    log: rx,
                    data_dir,
                };
            }
        }
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/ws{}", self.port, query)
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit in time");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every log line received so far.
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub type Client = WebSocket<TcpStream>;

/// Opens a WebSocket client (read timeout `WAIT`).
pub fn connect(url: &str) -> Client {
    let (ws, _response) = try_connect(url).expect("WebSocket connect");
    ws
}

pub fn try_connect(
    url: &str,
) -> Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    tungstenite::client(url, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
    })
}

/// Connects and returns the client with its parsed `welcome`.
pub fn connect_welcomed(url: &str) -> (Client, Value) {
    let mut ws = connect(url);
    let welcome = next_json(&mut ws);
    assert_eq!(welcome["op"], "welcome", "first frame must be welcome");
    (ws, welcome)
}

/// The next text frame as JSON (pings answered along the way).
pub fn next_json(ws: &mut Client) -> Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(&t).expect("server sent JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Sends a text frame and returns the next JSON event.
pub fn request(ws: &mut Client, text: &str) -> Value {
    ws.send(Message::text(text)).unwrap();
    next_json(ws)
}

/// Reads until the server's close frame; returns its code.
pub fn expect_close(ws: &mut Client) -> u16 {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return u16::from(frame.code),
            Ok(Message::Close(None)) => panic!("close without a code"),
            Ok(_) => continue,
            Err(e) => panic!("connection ended without a close frame: {e}"),
        }
    }
}

/// A raw HTTP exchange: sends `raw`, reads to EOF. Returns (status, whole response).
pub fn http_raw(port: u16, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("server answered and closed");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// `GET path` over raw HTTP.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    http_raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes(),
    )
}

/// The JSON body of a raw HTTP response.
pub fn body_json(response: &str) -> Value {
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).expect("JSON body")
}

/// An upgrade request's bytes.
pub fn upgrade_request(path_and_query: &str) -> Vec<u8> {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// A raw socket after a successful upgrade (101 and the welcome consumed
/// unless `echo_mode`).
pub fn raw_upgraded(port: u16, echo_mode: bool) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    raw_upgrade(&mut s, "/ws", echo_mode);
    s
}

/// Upgrades a connected raw socket: sends the request for
/// `path_and_query`, checks the 101, and consumes the welcome unless
/// `echo_mode`.
pub fn raw_upgrade(s: &mut TcpStream, path_and_query: &str, echo_mode: bool) {
    s.write_all(&upgrade_request(path_and_query)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    if !echo_mode {
        let (opcode, payload) = read_server_frame(s).expect("welcome frame");
        assert_eq!(opcode, 1);
        assert!(String::from_utf8_lossy(&payload).contains("welcome"));
    }
}

/// A TCP connection to `port` whose receive buffer is `recv_buffer_bytes`
/// (the server's writes stall until it reads), with segments of at most
/// `mss` bytes if given (set before connecting: the server's send buffer
/// then starts as small as on a real network, not loopback's megabytes).
pub fn small_window_socket(port: u16, recv_buffer_bytes: usize, mss: Option<u32>) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(recv_buffer_bytes).unwrap();
    if let Some(mss) = mss {
        socket.set_mss(mss).unwrap();
    }
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// One unmasked server frame: (opcode, payload). `None` at EOF.
pub fn read_server_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let opcode = h[0] & 0x0f;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((opcode, payload))
}

/// Reads server frames until a close frame; returns its code.
pub fn raw_expect_close(s: &mut TcpStream) -> u16 {
    loop {
        let (opcode, payload) = read_server_frame(s).expect("a close frame before EOF");
        if opcode == 8 {
            assert!(payload.len() >= 2, "close frame without a code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

/// A client frame masked with `mask`.
pub fn masked_frame(first_byte: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![first_byte];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A client whose socket takes almost nothing until it reads.
pub fn tiny_buffer_client(server: &TestServer, name: &str) -> Client {
    let stream = small_window_socket(server.port, 4096, None);
    let (mut ws, _) = tungstenite::client(server.url(&format!("?user={name}")), stream).unwrap();
    assert_eq!(next_json(&mut ws)["op"], "welcome");
    ws
}
