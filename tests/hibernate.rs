//! Hibernation against the real binary: quiet connections give up their
//! tasks (the `connections_hibernated` gauge counts them) and come back for
//! a delivery, for their own input (whole or a byte at a time), for a ping
//! and for shutdown, losing nothing.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// A gauge from `/metrics.json`.
fn gauge(port: u16, name: &str) -> u64 {
    let (status, text) = http_get(port, "/metrics.json");
    assert_eq!(status, 200, "{text}");
    body_json(&text)["gauges"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("gauge {name}"))
}

/// The `connections_hibernated` gauge.
fn hibernated(port: u16) -> u64 {
    gauge(port, "connections_hibernated")
}

/// Waits (bounded) until exactly `n` connections hibernate.
fn wait_hibernated(port: u16, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = hibernated(port);
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} connections hibernating, expected {n}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Server flags: hibernate after 100 ms of quiet, pings rare enough not to
/// keep anyone awake during a test step.
const QUICK_HIBERNATION: &[&str] = &["--shards", "2", "--hibernate-after-ms", "100"];

#[test]
fn quiet_connections_hibernate_and_wake_for_deliveries_and_input() {
    let server = TestServer::start(QUICK_HIBERNATION);
    let (mut alice, _) = connect_welcomed(&server.url("?user=alice"));
    let (mut bob, _) = connect_welcomed(&server.url("?user=bob"));
    wait_hibernated(server.port, 2);
    // Hibernating sockets stay in the shards' epoll sets, as sleepers: the
    // sets hold them, the two shards' listeners and the metrics request's
    // own connection (once the previous requests' connections have
    // finished lingering).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sockets = gauge(server.port, "readiness_sockets");
        if sockets == 3 + 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{sockets} sockets in the epoll sets with both connections hibernating"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A delivery wakes the recipient; the sender's command wakes the sender.
    bob.send(Message::text(
        json!({"op":"send","to":"alice","data":{"n":1},"ref":"s1"}).to_string(),
    ))
    .unwrap();
    assert_eq!(next_json(&mut bob)["op"], "ok");
    let m = next_json(&mut alice);
    assert_eq!(m["op"], "msg");
    assert_eq!(m["data"], json!({"n":1}));
    wait_hibernated(server.port, 2);

    // Its own input wakes a connection: many commands in a row, all answered.
    for i in 0..50 {
        let answer = request(
            &mut alice,
            &json!({"op":"echo","data":i,"ref":format!("e{i}")}).to_string(),
        );
        assert_eq!(answer["data"], i, "{answer}");
    }
    wait_hibernated(server.port, 2);

    // A group publish reaches every hibernating member once.
    let mut members: Vec<Client> = (0..20)
        .map(|i| {
            let (mut ws, _) = connect_welcomed(&server.url(&format!("?user=m{i}")));
            assert_eq!(
                request(&mut ws, r#"{"op":"join","group":"room","ref":"j"}"#)["op"],
                "ok"
            );
            ws
        })
        .collect();
    wait_hibernated(server.port, 22);
    let answer = request(
        &mut bob,
        r#"{"op":"publish","group":"room","data":"hi","ref":"p"}"#,
    );
    assert_eq!(answer["op"], "ok", "{answer}");
    for ws in &mut members {
        let m = next_json(ws);
        assert_eq!(
            (m["op"].clone(), m["data"].clone()),
            (json!("msg"), json!("hi"))
        );
    }
    wait_hibernated(server.port, 22);
}

#[test]
fn a_frame_split_across_wakeups_is_read_whole() {
    let server = TestServer::start(QUICK_HIBERNATION);
    // Upgraded, welcome read.
    let mut raw = raw_upgraded(server.port, false);
    wait_hibernated(server.port, 1);
    // One command a byte at a time, slower than hibernate_after_ms: the
    // connection must stay awake (or wake) with the partial frame kept.
    let frame = masked_frame(
        0x81,
        br#"{"op":"echo","data":"split","ref":"x"}"#,
        [1, 2, 3, 4],
    );
    for (i, byte) in frame.iter().enumerate() {
        raw.write_all(&[*byte]).unwrap();
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    let (opcode, payload) = read_server_frame(&mut raw).expect("echo answer");
    assert_eq!(opcode, 0x1);
    let answer: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(answer["data"], "split", "{answer}");
    wait_hibernated(server.port, 1);
}

#[test]
fn hibernating_connections_are_pinged_closed_when_silent_and_closed_at_shutdown() {
    let mut server = TestServer::start(&[
        "--shards",
        "1",
        "--hibernate-after-ms",
        "100",
        "--ping-interval-ms",
        "300",
        "--idle-timeout-ms",
        "1500",
    ]);
    // A client that answers pings stays; one that never reads is closed as
    // stale, though both spend most of the time hibernating.
    let (mut lively, _) = connect_welcomed(&server.url("?user=lively"));
    let mut silent = raw_upgraded(server.port, false);
    lively
        .get_mut()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut pings = 0;
    let mut seen_hibernating = 0;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        match lively.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("lively client lost: {e}"),
        }
        // The pong tungstenite queued goes out with the next flush.
        let _ = lively.flush();
        seen_hibernating = seen_hibernating.max(hibernated(server.port));
    }
    assert!(
        pings >= 4,
        "pings reached a hibernating connection: {pings}"
    );
    assert!(seen_hibernating >= 1, "nobody hibernated");
    assert_eq!(
        raw_expect_close(&mut silent),
        1001,
        "silent one closed as idle"
    );
    // The lively one is still served, then closed with 1001 at shutdown
    // while hibernating.
    lively
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let answer = request(&mut lively, r#"{"op":"echo","data":"still","ref":"z"}"#);
    assert_eq!(answer["data"], "still");
    wait_hibernated(server.port, 1);
    server.signal(libc::SIGTERM);
    assert_eq!(expect_close(&mut lively), 1001);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn echo_mode_and_hibernation_off() {
    let server = TestServer::start(&["--echo", "--shards", "1", "--hibernate-after-ms", "100"]);
    let mut ws = connect(&server.url(""));
    wait_hibernated(server.port, 1);
    for i in 0..20 {
        ws.send(Message::binary(vec![i as u8; 100 + i])).unwrap();
        match ws.read().unwrap() {
            Message::Binary(b) => assert_eq!(b.to_vec(), vec![i as u8; 100 + i]),
            other => panic!("{other:?}"),
        }
        if i % 5 == 0 {
            wait_hibernated(server.port, 1);
        }
    }

    let server = TestServer::start(&["--shards", "1", "--hibernate-after-ms", "0"]);
    let (_ws, _) = connect_welcomed(&server.url("?user=a"));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        hibernated(server.port),
        0,
        "hibernate_after_ms = 0 keeps tasks"
    );
}
