//! TLS (`--tls-cert`/`--tls-key`) against the real binary, with rustls as
//! the client: wss:// echo and protocol, https:// endpoints, and what
//! happens to plain text and bad files.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::*;
use futures_rustls::rustls::pki_types::{CertificateDer, ServerName};
use futures_rustls::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::Message;

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

struct Pki {
    dir: PathBuf,
    cert_der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = fresh_data_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), generated.key_pair.serialize_pem()).unwrap();
        Pki {
            dir,
            cert_der: generated.cert.der().clone(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    fn connect(&self, port: u16) -> TlsStream {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(self.client_config(), name).unwrap();
        StreamOwned::new(conn, tcp)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn https_get(pki: &Pki, port: u16, path: &str) -> (u16, String) {
    let mut tls = pki.connect(port);
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    // The server ends with close_notify, so EOF is clean.
    tls.read_to_end(&mut out).expect("a complete TLS response");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn wss_connect(pki: &Pki, port: u16, query: &str) -> tungstenite::WebSocket<TlsStream> {
    let url = format!("wss://localhost:{port}/ws{query}");
    let (ws, response) = tungstenite::client(url, pki.connect(port)).expect("wss handshake");
    assert_eq!(response.status(), 101);
    ws
}

fn next_text(ws: &mut tungstenite::WebSocket<TlsStream>) -> serde_json::Value {
    loop {
        match ws.read().expect("read") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[test]
fn wss_and_https_share_the_tls_port() {
    let pki = Pki::new();
    let cert = pki.path("cert.pem");
    let key = pki.path("key.pem");
    let server = TestServer::start(&["--shards", "2", "--tls-cert", &cert, "--tls-key", &key]);

    // Protocol over wss: welcome, then a direct message between two users.
    let mut alice = wss_connect(&pki, server.port, "?user=alice");
    assert_eq!(next_text(&mut alice)["op"], "welcome");
    let mut bob = wss_connect(&pki, server.port, "?user=bob");
    assert_eq!(next_text(&mut bob)["op"], "welcome");
    alice
        .send(Message::text(
            r#"{"op":"send","to":"bob","data":{"hi":1},"ref":"r1"}"#,
        ))
        .unwrap();
    assert_eq!(next_text(&mut alice)["op"], "ok");
    let got = next_text(&mut bob);
    assert_eq!(got["op"], "msg");
    assert_eq!(got["data"]["hi"], 1);

    // A large binary message crosses many TLS records intact.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut frame = br#"{"op":"echo"}"#.to_vec();
    frame.push(b'\n');
    frame.extend_from_slice(&payload);
    alice.send(Message::binary(frame)).unwrap();
    let echoed = loop {
        match alice.read().unwrap() {
            Message::Binary(b) => break b,
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected binary, got {other:?}"),
        }
    };
    let split = echoed.iter().position(|&b| b == b'\n').unwrap();
    assert_eq!(&echoed[split + 1..], &payload[..]);

    // HTTPS endpoints on the same port.
    let (status, body) = https_get(&pki, server.port, "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""connections":2"#), "{body}");
    let (status, _) = https_get(&pki, server.port, "/nowhere");
    assert_eq!(status, 404);

    // The close handshake works over TLS.
    alice.close(None).unwrap();
    loop {
        match alice.read() {
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("close over TLS failed: {e}"),
        }
    }

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out);
    assert!(!out.starts_with(b"HTTP/1.1 200"), "plain text was served");

    // And the server is still fine.
    let (status, _) = https_get(&pki, server.port, "/health");
    assert_eq!(status, 200);
}

#[test]
fn echo_mode_over_tls() {
    let pki = Pki::new();
    let cert = pki.path("cert.pem");
    let key = pki.path("key.pem");
    let server = TestServer::start(&["--echo", "--tls-cert", &cert, "--tls-key", &key]);
    let mut ws = wss_connect(&pki, server.port, "");
    for i in 0..100 {
        ws.send(Message::text(format!("hello {i}"))).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(format!("hello {i}")));
    }
}

#[test]
fn bad_tls_files_stop_the_start_with_one_clear_line() {
    let pki = Pki::new();
    let cert = pki.path("cert.pem");
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["--host", "127.0.0.1", "--port", "0", "--no-persist"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--tls-cert", &cert]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("tls_cert and tls_key must be given together"),
        "{err}"
    );
    let (code, err) = run(&["--tls-cert", "/nonexistent.pem", "--tls-key", &cert]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot read the TLS certificate /nonexistent.pem"),
        "{err}"
    );
    let (code, err) = run(&["--tls-cert", &cert, "--tls-key", &cert]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot read the TLS key"), "{err}");
}

/// A write that fills the socket leaves its last TLS records inside rustls
/// (futures-rustls takes the plaintext and answers "written"); they must
/// still go out once the socket drains, not wait for the next write (a
/// ping, 20 s later). Twenty 512 KiB echoes, each to a client that reads
/// nothing for a moment through a 4 KiB receive buffer, come back whole.
#[test]
fn a_large_reply_to_a_slow_tls_reader_arrives_whole() {
    let pki = Pki::new();
    let cert = pki.path("cert.pem");
    let key = pki.path("key.pem");
    let server = TestServer::start(&[
        "--echo",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--max-message-bytes",
        "16777216",
    ]);
    // Segments as on a real network: the server's send buffer then starts
    // small (a few dozen KiB, not loopback's megabytes), so a socket that
    // says writable again has less room than rustls's 64 KiB of records.
    let tcp = small_window_socket(server.port, 4096, Some(536));
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(pki.client_config(), name).unwrap();
    let url = format!("wss://localhost:{}/ws", server.port);
    let (mut ws, _) = tungstenite::client(url, StreamOwned::new(conn, tcp)).expect("wss handshake");
    // Each reply's last records may be the ones a full socket leaves in
    // rustls; eight make that all but certain to happen once.
    for round in 0..8u8 {
        let payload: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8 ^ round).collect();
        ws.send(Message::binary(payload.clone())).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        match ws.read() {
            Ok(Message::Binary(echoed)) => {
                assert!(echoed[..] == payload[..], "echo {round} differs")
            }
            other => panic!("expected echo {round} whole within {WAIT:?}, got {other:?}"),
        }
    }
}
