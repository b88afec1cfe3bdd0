//! A Rust client of ws-uring: connect as two users, join a group, publish,
//! send a direct message that must be acknowledged, and handle an error.
//! Its users are `alice-rs` and `bob-rs`, not the tour's `alice` and `bob`,
//! whose mailboxes may hold messages from the demo page.
//!
//! Run a server (`./target/release/ws-uring --port 8765`), then
//! `cargo run --release --example client -- ws://127.0.0.1:8765/ws`.
//! Exits non-zero if anything did not arrive as expected.

use std::process::ExitCode;

use serde_json::json;
use ws_uring::client::{Client, ClientError};

fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut alice = Client::connect(url, "alice-rs")?;
    let mut bob = Client::connect(url, "bob-rs")?;
    println!("connected: {} and {}", alice.welcome(), bob.welcome());

    for client in [&mut alice, &mut bob] {
        client.request(json!({"op": "join", "group": "room-rs"}))?;
    }

    // A group message: bob receives it (alice too, with echo).
    let ok = alice.request(
        json!({"op": "publish", "group": "room-rs", "data": {"text": "hello room"}, "echo": true}),
    )?;
    println!("publish ok: {ok}");
    let msg = bob.next_message()?;
    assert_eq!(
        msg["data"]["text"], "hello room",
        "bob got the group message"
    );
    assert_eq!(
        alice.next_message()?["from"],
        "alice-rs",
        "alice got her echo"
    );

    // A direct message with an ack: bob's `next_message` acknowledges it.
    let ok = alice.request(
        json!({"op": "send", "to": "bob-rs", "data": "psst", "priority": "high", "ack": true}),
    )?;
    let msg = bob.next_message()?;
    assert_eq!(
        (msg["data"].as_str(), msg["priority"].as_str()),
        (Some("psst"), Some("high"))
    );
    assert_eq!(msg["id"], ok["id"], "the id in ok is the id delivered");
    println!("direct message {} delivered and acked", ok["id"]);

    // Errors come back as ClientError::Refused and the connection lives on.
    match alice.request(json!({"op": "anycast", "group": "nobody-here", "data": 1})) {
        Err(ClientError::Refused { code, reason }) => {
            assert_eq!(code, "no_members");
            println!("refused as expected: {code}: {reason}");
        }
        other => return Err(format!("expected no_members, got {other:?}").into()),
    }
    alice.request(json!({"op": "ping"}))?;
    alice.close()?;
    bob.close()?;
    println!("ok");
    Ok(())
}

fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8765/ws".into());
    match run(&url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("client example failed: {e}");
            ExitCode::FAILURE
        }
    }
}
