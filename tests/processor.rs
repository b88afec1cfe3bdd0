//! A custom processor (`examples/moderation.rs`) running in the real server.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::json;
use tungstenite::Message;

/// `cargo test` builds the examples next to the test binaries.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "example not built: {} (run plain `cargo test`, which builds examples, or `cargo build --example {name}` first)",
        path.display()
    );
    path
}

#[test]
fn moderation_processor_publishes_clean_lines_and_blocks_others() {
    let server = TestServer::start_binary(&example("moderation"), &["--shards", "2"]);
    let (mut alice, _) = connect_welcomed(&server.url("?user=alice"));
    let (mut bob, _) = connect_welcomed(&server.url("?user=bob"));
    for ws in [&mut alice, &mut bob] {
        ws.send(Message::text(r#"{"op":"join","group":"room","ref":1}"#))
            .unwrap();
        assert_eq!(next_json(ws)["op"], "ok");
    }
    alice
        .send(Message::text(
            r#"{"op":"say","group":"room","text":"hello all","ref":"s1"}"#,
        ))
        .unwrap();
    let m = loop {
        let m = next_json(&mut bob);
        if m["op"] == "msg" {
            break m;
        }
    };
    assert_eq!(m["from"], "alice");
    assert_eq!(m["data"], json!({"user":"alice","text":"hello all"}));
    let mut got_ok = false;
    let mut got_echo = false;
    while !(got_ok && got_echo) {
        let e = next_json(&mut alice);
        got_ok |= e["op"] == "ok" && e["ref"] == "s1";
        got_echo |= e["op"] == "msg";
    }
    alice
        .send(Message::text(
            r#"{"op":"say","group":"room","text":"Cheap SCAM here","ref":"s2"}"#,
        ))
        .unwrap();
    let e = next_json(&mut alice);
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("forbidden"), Some("s2"))
    );
    alice
        .send(Message::text(r#"{"op":"say","ref":"s3"}"#))
        .unwrap();
    assert_eq!(next_json(&mut alice)["code"], "bad_request");
    // Without a `ref`, success is silent: the line comes back, no `ok`.
    alice
        .send(Message::text(
            r#"{"op":"say","group":"room","text":"quiet"}"#,
        ))
        .unwrap();
    let line = next_json(&mut alice);
    assert_eq!(
        (&line["op"], &line["data"]["text"]),
        (&json!("msg"), &json!("quiet"))
    );
    alice
        .send(Message::text(r#"{"op":"ping","ref":"p"}"#))
        .unwrap();
    assert_eq!(next_json(&mut alice)["op"], "pong", "nothing between");
    // A group name that is not one is the client's error.
    alice
        .send(Message::text(
            r#"{"op":"say","group":"bad group!","text":"hi","ref":"s4"}"#,
        ))
        .unwrap();
    let e = next_json(&mut alice);
    assert_eq!(
        (&e["code"], &e["ref"]),
        (&json!("bad_request"), &json!("s4"))
    );
    // Ops nobody registered stay unknown.
    alice.send(Message::text(r#"{"op":"shout"}"#)).unwrap();
    assert_eq!(next_json(&mut alice)["code"], "unknown_op");
}
