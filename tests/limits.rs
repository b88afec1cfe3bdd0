//! Connection limits against the real binary: new connections per IP
//! (HTTP 429) and live connections per user (close 1008), both counted in
//! the metrics.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn prometheus_counter(port: u16, name: &str) -> u64 {
    let (status, text) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn new_connections_per_ip_are_limited_with_429() {
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--ip-connections-per-s",
        "1",
        "--ip-connections-burst",
        "4",
    ]);
    // The burst: four connections of any kind from 127.0.0.1.
    let (mut ws, _) = connect_welcomed(&server.url("?user=a"));
    for _ in 0..3 {
        assert_eq!(http_get(server.port, "/health").0, 200);
    }
    // Over it, plain HTTP and upgrades alike get 429 with Retry-After.
    let (status, text) = http_get(server.port, "/health");
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("Retry-After: 1"), "{text}");
    let (status, _) = http_raw(server.port, &upgrade_request("/ws?user=b"));
    assert_eq!(status, 429);
    // The connection already open is untouched.
    let echo = request(&mut ws, r#"{"op":"echo","data":1,"ref":"e"}"#);
    assert_eq!(echo["data"], 1);
    // One a second comes back.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        if http_get(server.port, "/health").0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the budget never refilled");
    }
    // /metrics itself needs a token from the budget: wait for one.
    std::thread::sleep(Duration::from_millis(1100));
    let refused = prometheus_counter(server.port, "wsuring_refused_ip_rate_total");
    assert!(refused >= 2, "refusals counted: {refused}");
}

#[test]
fn live_connections_per_user_are_limited_with_1008() {
    let server = TestServer::start(&["--shards", "2", "--max-connections-per-user", "2"]);
    let url = server.url("?user=carol");
    let (mut first, _) = connect_welcomed(&url);
    let (_second, _) = connect_welcomed(&url);
    // The third is upgraded, then closed with 1008 instead of welcomed.
    let mut third = connect(&url);
    assert_eq!(expect_close(&mut third), 1008);
    // Other users are not affected.
    let (_dave, _) = connect_welcomed(&server.url("?user=dave"));
    // Messages to carol still reach her live connections.
    let (mut sender, _) = connect_welcomed(&server.url("?user=erin"));
    let ok = request(
        &mut sender,
        r#"{"op":"send","to":"carol","data":"hi","ref":"s"}"#,
    );
    assert_eq!(ok["op"], "ok", "{ok}");
    assert_eq!(next_json(&mut first)["data"], "hi");
    // Once one closes, a new connection fits again.
    first.close(None).unwrap();
    let _ = expect_close_or_end(&mut first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect(&url);
        match again.read().expect("read") {
            tungstenite::Message::Text(t) if t.contains("welcome") => break,
            tungstenite::Message::Close(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(Instant::now() < deadline, "the freed slot never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(prometheus_counter(server.port, "wsuring_refused_user_limit_total") >= 1);
}

fn expect_close_or_end(ws: &mut Client) -> Option<u16> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}
