//! Authentication with HS256 JWTs against the real binary.

mod common;

use std::net::TcpStream;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tungstenite::Message;

const SECRET: &str = "test-secret-of-some-length";

fn token(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn tokens_decide_who_connects_and_what_they_may_join() {
    let server = TestServer::start(&["--shards", "2", "--auth-secret", SECRET]);
    // A valid token in the query: its `sub` is the user.
    let t = token(
        SECRET,
        json!({"sub":"alice","groups":["team-*","lobby"],"exp":now() + 600}),
    );
    let (mut alice, welcome) = connect_welcomed(&server.url(&format!("?token={t}")));
    assert_eq!(welcome["user"], "alice");
    assert_eq!(
        request(&mut alice, r#"{"op":"join","group":"team-red","ref":1}"#)["op"],
        "ok"
    );
    assert_eq!(
        request(&mut alice, r#"{"op":"join","group":"lobby","ref":2}"#)["op"],
        "ok"
    );
    let e = request(&mut alice, r#"{"op":"join","group":"admins","ref":3}"#);
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_u64()),
        (Some("forbidden"), Some(3))
    );

    // In the Authorization header, without a groups claim: any group.
    let t = token(SECRET, json!({"sub":"bob"}));
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(server.url("")).unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (mut bob, _) = tungstenite::client(req, stream).unwrap();
    assert_eq!(next_json(&mut bob)["user"], "bob");
    bob.send(Message::text(r#"{"op":"join","group":"admins","ref":1}"#))
        .unwrap();
    assert_eq!(next_json(&mut bob)["op"], "ok");

    // Missing, forged, expired, or for someone else: 401 before the upgrade.
    let refused = |query: String| http_raw(server.port, &upgrade_request(&format!("/ws{query}"))).0;
    assert_eq!(refused(String::new()), 401);
    assert_eq!(refused("?user=alice".into()), 401);
    assert_eq!(
        refused(format!(
            "?token={}",
            token("wrong-secret", json!({"sub":"eve"}))
        )),
        401
    );
    assert_eq!(
        refused(format!(
            "?token={}",
            token(SECRET, json!({"sub":"eve","exp":now() - 3600}))
        )),
        401
    );
    assert_eq!(
        refused(format!(
            "?user=mallory&token={}",
            token(SECRET, json!({"sub":"eve"}))
        )),
        401
    );
    assert_eq!(refused("?token=garbage".into()), 401);
}

#[test]
fn browsers_from_other_origins_are_refused() {
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--allowed-origins",
        "https://app.example, http://127.0.0.1:8080",
    ]);
    let with_origin = |origin: &str| {
        let mut raw = upgrade_request("/ws?user=web");
        raw.truncate(raw.len() - 2);
        raw.extend_from_slice(format!("Origin: {origin}\r\n\r\n").as_bytes());
        http_raw(server.port, &raw).0
    };
    assert_eq!(with_origin("https://evil.example"), 403);
    // Allowed origins upgrade (101, then the connection stays open: read
    // only the status line).
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut raw = upgrade_request("/ws?user=web");
    raw.truncate(raw.len() - 2);
    raw.extend_from_slice(b"Origin: https://app.example\r\n\r\n");
    std::io::Write::write_all(&mut s, &raw).unwrap();
    let mut status = [0u8; 12];
    std::io::Read::read_exact(&mut s, &mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 101");
    // Non-browser clients (no Origin) are not affected.
    let (_ws, welcome) = connect_welcomed(&server.url("?user=backend"));
    assert_eq!(welcome["user"], "backend");
}
