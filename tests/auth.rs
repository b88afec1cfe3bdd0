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
