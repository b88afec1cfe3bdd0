//! Metrics against the real binary: exact counters, latency percentiles,
//! alerts that fire and clear, and exports real parsers accept.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

fn metrics_json(server: &TestServer) -> Value {
    let (status, text) = http_get(server.port, "/metrics.json");
    assert_eq!(status, 200, "{text}");
    body_json(&text)
}

fn body(text: &str) -> &str {
    text.split("\r\n\r\n").nth(1).expect("a body")
}

/// Polls until `check` holds for `/metrics.json` (bounded).
fn wait_for(server: &TestServer, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics_json(server);
        if check(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what} never held: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn counters_move_by_exactly_the_traffic_sent() {
    let server = TestServer::start(&["--shards", "2", "--no-persist"]);
    let before = metrics_json(&server);
    assert_eq!(before["counters"]["messages_in"], 0);
    let (mut ws, _) = connect_welcomed(&server.url("?user=counter"));
    for i in 0..10 {
        assert_eq!(
            request(&mut ws, &format!(r#"{{"op":"ping","t":{i}}}"#))["op"],
            "pong"
        );
    }
    for _ in 0..3 {
        assert_eq!(request(&mut ws, "not json")["code"], "bad_json");
    }
    assert_eq!(request(&mut ws, r#"{"op":"nope"}"#)["code"], "unknown_op");
    let m = metrics_json(&server);
    assert_eq!(m["counters"]["messages_in"], 14);
    // welcome + 14 answers, all written before the last answer was read.
    assert_eq!(m["counters"]["messages_out"], 15);
    assert_eq!(m["errors"]["by_code"]["bad_json"], 3);
    assert_eq!(m["errors"]["by_code"]["unknown_op"], 1);
    assert_eq!(m["errors"]["total"], 4);
    assert_eq!(m["gauges"]["connections"], 1);
    assert_eq!(m["counters"]["connections_opened"], 1);
    assert_eq!(m["latency_us"]["handshake"]["total"]["count"], 1);
    // CSV carries the same figures.
    let (_, csv) = http_get(server.port, "/metrics.csv");
    let mut lines = body(&csv).lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(col("messages_in"), "14");
    assert_eq!(col("errors_bad_json"), "3");
    drop(ws);
    wait_for(&server, "the close counted", |m| {
        m["counters"]["connections_closed"] == 1
    });
}

#[test]
fn ping_rtt_percentiles_match_an_injected_delay() {
    let server = TestServer::start(&[
        "--shards",
        "1",
        "--no-persist",
        "--ping-interval-ms",
        "200",
        "--idle-timeout-ms",
        "10000",
    ]);
    let mut s = raw_upgraded(server.port, false);
    let delay = Duration::from_millis(120);
    let mut answered = 0;
    while answered < 5 {
        let (opcode, payload) = read_server_frame(&mut s).expect("frames");
        if opcode == 9 {
            std::thread::sleep(delay);
            s.write_all(&masked_frame(0x8A, &payload, [1, 2, 3, 4]))
                .unwrap();
            answered += 1;
        }
    }
    let m = wait_for(&server, "5 ping round trips", |m| {
        m["latency_us"]["ping_rtt"]["total"]["count"].as_u64() >= Some(5)
    });
    let p50 = m["latency_us"]["ping_rtt"]["total"]["p50"]
        .as_f64()
        .unwrap();
    // Injected 120 ms (one ping out at a time: the interval is longer than
    // the delay); the histogram keeps 3 significant digits.
    assert!((120_000.0..=150_000.0).contains(&p50), "p50 {p50} µs");
}

#[test]
fn queue_depth_alert_fires_and_clears() {
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--no-persist",
        "--metrics-interval-ms",
        "100",
        "--alert-queue-depth",
        "5",
        "--outbox-max-bytes",
        "67108864",
        "--slow-consumer-grace-ms",
        "60000",
    ]);
    // A reader whose socket is small and who stops reading.
    let mut slow = tiny_buffer_client(&server, "slow");
    let (mut sender, _) = connect_welcomed(&server.url("?user=sender"));
    let big = "q".repeat(60 * 1024);
    for i in 0..150 {
        sender
            .send(Message::text(
                json!({"op":"send","to":"slow","data":{"i":i,"b":big},"ref":i}).to_string(),
            ))
            .unwrap();
        assert_eq!(next_json(&mut sender)["op"], "ok");
    }
    let fired = wait_for(&server, "the queue-depth alert", |m| {
        m["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "outbox_queue_depth")
    });
    assert!(fired["gauges"]["outbox_queued_msgs"].as_u64().unwrap() > 5);
    // The reader catches up: the alert clears.
    let mut got = 0;
    while got < 150 {
        if let Message::Text(_) = slow.read().unwrap() {
            got += 1;
        }
    }
    wait_for(&server, "the alert to clear", |m| {
        m["alerts"].as_array().unwrap().is_empty()
    });
    let log = server.drain_log().join("\n");
    assert!(
        log.contains("WARN") && log.contains("outbox_queue_depth"),
        "{log}"
    );
}

#[test]
fn prometheus_text_parses_with_the_reference_parser() {
    let server = TestServer::start(&["--shards", "3", "--no-persist"]);
    let (mut ws, _) = connect_welcomed(&server.url("?user=prom"));
    assert_eq!(request(&mut ws, r#"{"op":"ping"}"#)["op"], "pong");
    assert_eq!(request(&mut ws, "{")["code"], "bad_json");
    let (status, text) = http_get(server.port, "/metrics");
    assert_eq!(status, 200);
    assert!(
        text.contains("Content-Type: text/plain; version=0.0.4"),
        "{text}"
    );
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
families = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
msgs = sum(s.value for s in families["wsuring_messages_in"].samples if s.name == "wsuring_messages_in_total")
errors = [s for s in families["wsuring_errors"].samples if s.labels.get("code") == "bad_json"]
shards = {s.labels["shard"] for s in families["wsuring_messages_in"].samples}
print(int(msgs), int(sum(s.value for s in errors)), len(shards), len(families))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test.sh installs it with prometheus_client)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body(&text).as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "parser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<u64> = stdout
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(fields[0], 2, "messages in");
    assert_eq!(fields[1], 1, "bad_json errors");
    assert_eq!(fields[2], 3, "one series per shard");
    assert!(fields[3] > 20, "families: {}", fields[3]);
}

#[test]
fn export_file_and_dashboard_and_connections() {
    let dir = fresh_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let export = dir.join("figures.json");
    let export_arg = export.to_str().unwrap().to_string();
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--no-persist",
        "--metrics-interval-ms",
        "100",
        "--metrics-export",
        &export_arg,
    ]);
    let (mut ws, _) = connect_welcomed(&server.url("?user=exp"));
    assert_eq!(request(&mut ws, r#"{"op":"ping"}"#)["op"], "pong");
    std::thread::sleep(Duration::from_millis(500));
    let mut text = String::new();
    std::fs::File::open(&export)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "one line per interval: {}", lines.len());
    assert_eq!(lines.last().unwrap()["counters"]["messages_in"], 1);
    let (status, page) = http_get(server.port, "/dashboard");
    assert_eq!(status, 200);
    assert!(page.contains("text/html") && page.contains("/metrics.json"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no external assets"
    );
    let (status, conns) = http_get(server.port, "/admin/connections?sort=latency");
    assert_eq!(status, 200);
    let conns = body_json(&conns);
    assert_eq!(conns["total"], 1);
    assert_eq!(conns["connections"][0]["user"], "exp");
    assert_eq!(http_get(server.port, "/admin/connections?sort=x").0, 400);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
