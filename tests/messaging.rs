//! Messaging across shards, against the real binary over real WebSocket.

mod common;

use std::collections::HashMap;
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// Connects as `user` and returns the client and the shard it landed on.
fn user(server: &TestServer, name: &str) -> (Client, u64) {
    let (ws, welcome) = connect_welcomed(&server.url(&format!("?user={name}")));
    (ws, welcome["shard"].as_u64().unwrap())
}

/// Connects as `name` until the connection lands on `shard` (SO_REUSEPORT
/// spreads by hash, so a few tries reach every shard).
fn user_on_shard(server: &TestServer, name: &str, shard: u64) -> Client {
    for _ in 0..200 {
        let (ws, s) = user(server, name);
        if s == shard {
            return ws;
        }
    }
    panic!("no connection of {name} landed on shard {shard}");
}

/// Sends a command with a `ref` and returns the answer to that ref, keeping
/// any other frames that arrive meanwhile in `other`.
fn command(ws: &mut Client, mut cmd: Value, reference: &str, other: &mut Vec<Value>) -> Value {
    cmd["ref"] = json!(reference);
    ws.send(Message::text(cmd.to_string())).unwrap();
    loop {
        let event = next_json(ws);
        if event["ref"] == json!(reference) {
            return event;
        }
        other.push(event);
    }
}

fn ok(ws: &mut Client, cmd: Value) -> Value {
    let mut other = Vec::new();
    let answer = command(ws, cmd, "r", &mut other);
    assert_eq!(answer["op"], "ok", "{answer}");
    assert!(other.is_empty(), "unexpected frames: {other:?}");
    answer
}

/// Every JSON event that arrives within `quiet` of the previous one.
fn drain(ws: &mut Client, quiet: Duration) -> Vec<Value> {
    ws.get_mut().set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => out.push(serde_json::from_str(&t).unwrap()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => panic!("{e}"),
        }
    }
    ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    out
}

fn msgs(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["op"] == "msg").collect()
}

#[test]
fn messages_across_shards_do_not_wait_for_the_receiving_shard_to_end_its_nap() {
    // Naps of up to 100 ms: a mesh message that waited for the receiving
    // shard's nap to end would take tens of milliseconds. The sending
    // shard rings the receiver's doorbell instead.
    let server = TestServer::start(&["--shards", "2", "--nap-max-us", "100000"]);
    let mut alice = user_on_shard(&server, "alice", 0);
    let mut bob = user_on_shard(&server, "bob", 1);
    let mut waits = Vec::new();
    for i in 0..10 {
        // Input on bob's shard, then quiet: that shard naps.
        bob.send(Message::text(r#"{"op":"ping"}"#)).unwrap();
        assert_eq!(next_json(&mut bob)["op"], "pong");
        std::thread::sleep(Duration::from_millis(10));
        let sent = Instant::now();
        alice
            .send(Message::text(
                json!({"op":"send","to":"bob","data":i}).to_string(),
            ))
            .unwrap();
        let m = next_json(&mut bob);
        waits.push(sent.elapsed());
        assert_eq!(m["op"], "msg", "{m}");
        assert_eq!(m["data"], i);
    }
    waits.sort();
    let median = waits[waits.len() / 2];
    assert!(
        median < Duration::from_millis(25),
        "a message across shards took {median:?} (median of {}): it waited for a nap",
        waits.len()
    );
}

#[test]
fn send_crosses_shards_and_reaches_every_connection_once() {
    let server = TestServer::start(&["--shards", "3"]);
    let (mut alice, alice_shard) = user(&server, "alice");
    let mut carol: Vec<Client> = (0..3).map(|s| user_on_shard(&server, "carol", s)).collect();
    // Bob on another shard than alice.
    let mut bob = user_on_shard(&server, "bob", (alice_shard + 1) % 3);

    let answer = ok(
        &mut alice,
        json!({"op":"send","to":"bob","data":{"hello":"bob"},"priority":"high"}),
    );
    assert!(answer["id"].is_string());
    let m = next_json(&mut bob);
    assert_eq!(m["op"], "msg");
    assert_eq!(m["id"], answer["id"]);
    assert_eq!(m["from"], "alice");
    assert_eq!(m["to"], "bob");
    assert_eq!(m["group"], Value::Null);
    assert_eq!(m["priority"], "high");
    assert_eq!(m["data"], json!({"hello":"bob"}));
    assert!(m["ts"].as_u64().unwrap() > 1_600_000_000_000);

    let answer = ok(&mut alice, json!({"op":"send","to":"carol","data":7}));
    assert_eq!(answer["delivered"], 3);
    for ws in carol.iter_mut() {
        let got = drain(ws, Duration::from_millis(300));
        let got = msgs(&got);
        assert_eq!(got.len(), 1, "exactly once per connection: {got:?}");
        assert_eq!(got[0]["data"], 7);
    }
    // Offline user: nothing delivered, no error.
    let answer = ok(&mut alice, json!({"op":"send","to":"nobody","data":1}));
    assert_eq!(answer["delivered"], 0);
}

#[test]
fn publish_reaches_100_members_across_shards_exactly_once() {
    let server = TestServer::start(&["--shards", "3"]);
    let mut members: Vec<Client> = (0..100)
        .map(|i| {
            let (mut ws, _) = user(&server, &format!("m{i}"));
            ok(&mut ws, json!({"op":"join","group":"room/1"}));
            ws
        })
        .collect();
    let (mut publisher, _) = user(&server, "pub");
    let answer = ok(
        &mut publisher,
        json!({"op":"publish","group":"room/1","data":{"n":1}}),
    );
    assert_eq!(answer["delivered"], 100);
    for ws in members.iter_mut() {
        let m = next_json(ws);
        assert_eq!(
            (m["op"].as_str(), m["group"].as_str()),
            (Some("msg"), Some("room/1"))
        );
        assert_eq!(m["to"], Value::Null);
    }
    // Nobody got it twice.
    for ws in members.iter_mut().take(10) {
        assert!(msgs(&drain(ws, Duration::from_millis(100))).is_empty());
    }
    // A member that leaves, and one that disconnects, are no longer counted.
    ok(&mut members[0], json!({"op":"leave","group":"room/1"}));
    drop(members.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = ok(
            &mut publisher,
            json!({"op":"publish","group":"room/1","data":2}),
        );
        if answer["delivered"] == 98 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "membership not dropped: {answer}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn publish_skips_the_sender_unless_echo() {
    let server = TestServer::start(&["--shards", "2"]);
    let (mut a, _) = user(&server, "a");
    let (mut b, _) = user(&server, "b");
    ok(&mut a, json!({"op":"join","group":"g"}));
    ok(&mut b, json!({"op":"join","group":"g"}));
    assert_eq!(
        ok(&mut a, json!({"op":"publish","group":"g","data":1}))["delivered"],
        1
    );
    assert_eq!(next_json(&mut b)["data"], 1);
    let mut other = Vec::new();
    let answer = command(
        &mut a,
        json!({"op":"publish","group":"g","data":2,"echo":true}),
        "e",
        &mut other,
    );
    assert_eq!(answer["delivered"], 2);
    let mut mine = msgs(&other).into_iter().cloned().collect::<Vec<_>>();
    mine.extend(
        drain(&mut a, Duration::from_millis(200))
            .into_iter()
            .filter(|e| e["op"] == "msg"),
    );
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["data"], 2);
}

fn anycast_counts(server: &TestServer, strategy: &str, weights: &[u32], n: usize) -> Vec<usize> {
    let group = format!("workers-{strategy}");
    let mut members: Vec<Client> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let (mut ws, _) = user(server, &format!("w{i}"));
            ok(&mut ws, json!({"op":"join","group":group,"weight":w}));
            ws
        })
        .collect();
    let (mut boss, _) = user(server, "boss");
    ok(
        &mut boss,
        json!({"op":"strategy","group":group,"strategy":strategy}),
    );
    for i in 0..n {
        let answer = ok(&mut boss, json!({"op":"anycast","group":group,"data":i}));
        assert_eq!(answer["delivered"], 1);
    }
    members
        .iter_mut()
        .map(|ws| msgs(&drain(ws, Duration::from_millis(300))).len())
        .collect()
}

#[test]
fn round_robin_is_even() {
    let server = TestServer::start(&["--shards", "3"]);
    let counts = anycast_counts(&server, "round_robin", &[1, 1, 1], 300);
    assert_eq!(counts.iter().sum::<usize>(), 300);
    assert!(counts.iter().all(|&c| c.abs_diff(100) <= 1), "{counts:?}");
}

#[test]
fn weighted_follows_the_weights() {
    let server = TestServer::start(&["--shards", "2"]);
    let counts = anycast_counts(&server, "weighted", &[1, 3], 4000);
    assert_eq!(counts.iter().sum::<usize>(), 4000);
    let share = counts[1] as f64 / 4000.0;
    assert!((share - 0.75).abs() <= 0.05, "{counts:?}");
}

#[test]
fn anycast_to_an_empty_group_is_no_members() {
    let server = TestServer::start(&["--shards", "2"]);
    let (mut ws, _) = user(&server, "x");
    let mut other = Vec::new();
    let e = command(
        &mut ws,
        json!({"op":"anycast","group":"empty","data":1}),
        "1",
        &mut other,
    );
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("no_members"))
    );
    // Without ref the failure is still told, with ref null.
    ws.send(Message::text(
        r#"{"op":"anycast","group":"empty","data":1}"#,
    ))
    .unwrap();
    let e = next_json(&mut ws);
    assert_eq!(e["code"], "no_members");
    assert_eq!(e["ref"], Value::Null);
}

#[test]
fn least_connections_avoids_a_stalled_member() {
    let server = TestServer::start(&["--shards", "2"]);
    let mut stalled = tiny_buffer_client(&server, "stalled");
    ok(&mut stalled, json!({"op":"join","group":"pool"}));
    let mut healthy: Vec<Client> = (0..2)
        .map(|i| {
            let (mut ws, _) = user(&server, &format!("h{i}"));
            ok(&mut ws, json!({"op":"join","group":"pool"}));
            ws
        })
        .collect();
    let (mut boss, _) = user(&server, "boss");
    ok(
        &mut boss,
        json!({"op":"strategy","group":"pool","strategy":"least_connections"}),
    );
    // Large messages: loopback sockets buffer over a megabyte before a
    // reader that does not read holds anything up.
    let big = "x".repeat(60 * 1024);
    let mut received = vec![0usize; 2];
    for i in 0..300 {
        ok(&mut boss, json!({"op":"anycast","group":"pool","data":big}));
        // Healthy members keep up.
        if i % 10 == 9 {
            for (k, ws) in healthy.iter_mut().enumerate() {
                received[k] += msgs(&drain(ws, Duration::from_millis(5))).len();
            }
        }
    }
    for (k, ws) in healthy.iter_mut().enumerate() {
        received[k] += msgs(&drain(ws, Duration::from_millis(300))).len();
    }
    let to_stalled = 300 - received.iter().sum::<usize>();
    // Round robin would give it 100; it only got what its buffers held
    // before it stalled.
    assert!(
        to_stalled < 50,
        "stalled member got {to_stalled}: healthy {received:?}"
    );
    drop(stalled);
}

#[test]
fn priorities_are_delivered_in_order_after_a_pause() {
    let server = TestServer::start(&["--shards", "2", "--outbox-max-bytes", "67108864"]);
    let mut reader = tiny_buffer_client(&server, "reader");
    let (mut sender, _) = user(&server, "sender");
    // Fill the reader's socket so later messages wait in its outbox: 24 MB,
    // six times what the kernel buffers per socket at most (tcp_wmem max
    // 4 MiB), so the socket stays full however the kernel sizes it.
    let filler = "f".repeat(60 * 1024);
    for _ in 0..400 {
        ok(
            &mut sender,
            json!({"op":"send","to":"reader","data":filler,"priority":"low"}),
        );
    }
    let order = [
        "low", "critical", "normal", "high", "low", "high", "critical", "normal",
    ];
    for (seq, priority) in order.iter().cycle().take(40).enumerate() {
        ok(
            &mut sender,
            json!({"op":"send","to":"reader","data":{"seq":seq},"priority":priority}),
        );
    }
    // Resume reading.
    let mut tagged = Vec::new();
    while tagged.len() < 40 {
        let m = next_json(&mut reader);
        if m["data"].is_object() {
            tagged.push((
                m["priority"].as_str().unwrap().to_string(),
                m["data"]["seq"].as_u64().unwrap(),
            ));
        }
    }
    let rank = |p: &str| {
        ["critical", "high", "normal", "low"]
            .iter()
            .position(|x| *x == p)
            .unwrap()
    };
    for pair in tagged.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            rank(&a.0) < rank(&b.0) || (a.0 == b.0 && a.1 < b.1),
            "out of order: {a:?} then {b:?} in {tagged:?}"
        );
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_never_reading_client_is_closed_1008_and_others_keep_their_latency() {
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--outbox-max-bytes",
        "65536",
        "--slow-consumer-grace-ms",
        "300",
        "--shutdown-timeout-ms",
        "8000",
    ]);
    let mut sluggard = tiny_buffer_client(&server, "sluggard");
    ok(&mut sluggard, json!({"op":"join","group":"feed"}));
    let (tx, rx) = std::sync::mpsc::channel();
    let readers: Vec<_> = (0..50)
        .map(|i| {
            let (mut ws, _) = user(&server, &format!("r{i}"));
            ok(&mut ws, json!({"op":"join","group":"feed"}));
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                while latencies.len() < 200 {
                    let m = next_json(&mut ws);
                    if m["op"] == "msg" {
                        latencies.push(unix_ms().saturating_sub(m["ts"].as_u64().unwrap()));
                    }
                }
                tx.send(latencies).unwrap();
            })
        })
        .collect();
    let (mut publisher, _) = user(&server, "publisher");
    // 3 MB in all: more than loopback buffers for the sluggard.
    let payload = "p".repeat(16 * 1024);
    for _ in 0..200 {
        ok(
            &mut publisher,
            json!({"op":"publish","group":"feed","data":payload}),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut all: Vec<u64> = Vec::new();
    for _ in 0..50 {
        all.extend(rx.recv_timeout(WAIT).expect("every reader got all 200"));
    }
    for r in readers {
        r.join().unwrap();
    }
    all.sort_unstable();
    let p99 = all[all.len() * 99 / 100];
    assert!(p99 < 100, "p99 latency of the others {p99} ms");
    // The sluggard, once it reads again, finds its connection closed 1008.
    assert_eq!(expect_close(&mut sluggard), 1008);
}

#[test]
fn lz4_round_trip_between_compressing_and_plain_clients() {
    let server = TestServer::start(&["--shards", "2"]);
    let lz4_client = |name: &str| {
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(
            server.url(&format!("?user={name}")),
        )
        .unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "wsu.v1.lz4".parse().unwrap());
        let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let (mut ws, _) = tungstenite::client(req, stream).unwrap();
        assert_eq!(next_json(&mut ws)["op"], "welcome");
        ws
    };
    let mut zipped = lz4_client("zipped");
    let mut zipped_member = lz4_client("zipped-member");
    let (mut plain, _) = user(&server, "plain");
    for ws in [&mut zipped_member, &mut plain] {
        ok(ws, json!({"op":"join","group":"files"}));
    }
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 97) as u8).collect();
    let binary = |header: &str, body: &[u8]| {
        let mut frame = header.as_bytes().to_vec();
        frame.push(b'\n');
        frame.extend_from_slice(body);
        Message::binary(frame)
    };
    let read_binary = |ws: &mut Client| -> (Value, Vec<u8>) {
        loop {
            match ws.read().unwrap() {
                Message::Binary(b) => {
                    let split = b.iter().position(|&c| c == b'\n').unwrap();
                    return (
                        serde_json::from_slice(&b[..split]).unwrap(),
                        b[split + 1..].to_vec(),
                    );
                }
                Message::Text(t) => panic!("unexpected text {t}"),
                _ => continue,
            }
        }
    };
    // A compressing client publishes its payload compressed.
    let compressed = lz4_flex::compress_prepend_size(&payload);
    zipped
        .send(binary(
            r#"{"op":"publish","group":"files","lz4":true}"#,
            &compressed,
        ))
        .unwrap();
    let (h, body) = read_binary(&mut plain);
    assert_eq!(h["op"], "msg");
    assert_eq!(h.get("lz4"), None, "plain clients get plain payloads");
    assert_eq!(body, payload);
    let (h, body) = read_binary(&mut zipped_member);
    assert_eq!(h["lz4"], true);
    assert_eq!(lz4_flex::decompress_size_prepended(&body).unwrap(), payload);
    // A plain client's large payload reaches a compressing client compressed.
    plain
        .send(binary(r#"{"op":"send","to":"zipped"}"#, &payload))
        .unwrap();
    let (h, body) = read_binary(&mut zipped);
    assert_eq!(
        (h["lz4"].as_bool(), h["from"].as_str()),
        (Some(true), Some("plain"))
    );
    assert_eq!(lz4_flex::decompress_size_prepended(&body).unwrap(), payload);
    // Corrupt lz4 is a bad_request, and the connection lives on.
    zipped
        .send(binary(
            r#"{"op":"publish","group":"files","lz4":true,"ref":9}"#,
            b"\x40\x00\x00\x00\xff\xff\xff",
        ))
        .unwrap();
    let e = next_json(&mut zipped);
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_u64()),
        (Some("bad_request"), Some(9))
    );
    assert_eq!(request(&mut zipped, r#"{"op":"ping"}"#)["op"], "pong");
}

#[test]
fn many_users_on_many_shards_all_reachable() {
    let server = TestServer::start(&["--shards", "3"]);
    let mut clients: Vec<(String, Client)> = (0..30)
        .map(|i| {
            let name = format!("u{i}");
            let (ws, _) = user(&server, &name);
            (name, ws)
        })
        .collect();
    let names: Vec<String> = clients.iter().map(|(n, _)| n.clone()).collect();
    // Messages to a client may arrive before its own `ok`: keep them.
    let mut early: HashMap<String, Vec<Value>> = HashMap::new();
    for (i, (name, ws)) in clients.iter_mut().enumerate() {
        let to = &names[(i + 1) % names.len()];
        let mut other = Vec::new();
        let answer = command(ws, json!({"op":"send","to":to,"data":i}), "s", &mut other);
        assert_eq!(answer["delivered"], 1, "{answer}");
        early.entry(name.clone()).or_default().extend(other);
    }
    let mut from = HashMap::new();
    for (i, (name, ws)) in clients.iter_mut().enumerate() {
        let mut got = early.remove(name.as_str()).unwrap_or_default();
        if got.is_empty() {
            got.push(next_json(ws));
        }
        got.extend(
            msgs(&drain(ws, Duration::from_millis(50)))
                .into_iter()
                .cloned(),
        );
        assert_eq!(got.len(), 1, "{name}: {got:?}");
        assert_eq!(got[0]["to"], json!(name));
        let sender = &names[(i + names.len() - 1) % names.len()];
        assert_eq!(got[0]["from"], json!(sender));
        from.insert(name.clone(), sender.clone());
    }
    assert_eq!(from.len(), 30);
}

#[test]
fn ack_messages_to_a_full_queue_are_redelivered_and_low_ones_dropped() {
    let server = TestServer::start(&[
        "--shards",
        "2",
        "--outbox-max-bytes",
        "65536",
        "--slow-consumer-grace-ms",
        "60000",
        "--ack-timeout-ms",
        "300",
        "--max-retries",
        "20",
    ]);
    let mut sluggard = tiny_buffer_client(&server, "sluggard");
    let (mut sender, _) = user(&server, "sender");
    let big = "a".repeat(60 * 1024);
    let mut not_queued_at_once = 0;
    // 7 MB: past what the kernel buffers (4 MiB at most) and the outbox.
    for i in 0..120 {
        let answer = ok(
            &mut sender,
            json!({"op":"send","to":"sluggard","data":{"i":i,"big":big},"ack":true}),
        );
        if answer["delivered"] == 0 {
            not_queued_at_once += 1;
        }
    }
    assert!(not_queued_at_once > 0, "the queue filled up");
    // Low messages that do not fit are dropped (delivered 0).
    let answer = ok(
        &mut sender,
        json!({"op":"send","to":"sluggard","data":big,"priority":"low"}),
    );
    assert_eq!(answer["delivered"], 0);
    // …and counted in `dropped_low` (the metrics are gathered each second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = http_get(server.port, "/metrics.json");
        let dropped = body_json(&text)["counters"]["dropped_low"].as_u64();
        if dropped >= Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "dropped_low stayed {dropped:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Reading and acking, every ack:true message arrives, some redelivered.
    // A message that found no room waited 300 ms, 600 ms, 1.2 s… (the ack
    // timeout doubles per attempt), so while a slow machine drains the
    // queue for T seconds, the last one may come up to ~T after the one
    // before it: wait longer than the usual 10 s.
    sluggard
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut seen = HashMap::new();
    let mut redelivered = 0;
    while seen.len() < 120 {
        let m = next_json(&mut sluggard);
        if m["op"] != "msg" || m["ack"] != true {
            continue;
        }
        if m["attempt"].as_u64().unwrap_or(1) >= 2 {
            redelivered += 1;
        }
        let id = m["id"].as_str().unwrap().to_string();
        sluggard
            .send(Message::text(json!({"op":"ack","id":id}).to_string()))
            .unwrap();
        seen.insert(id, m["data"]["i"].as_u64().unwrap());
    }
    assert!(redelivered > 0, "messages that found no room came again");
    let mut values: Vec<u64> = seen.into_values().collect();
    values.sort_unstable();
    assert_eq!(values, (0..120).collect::<Vec<u64>>());
    let (_, text) = http_get(server.port, "/admin/dlq");
    assert_eq!(body_json(&text)["total"], 0, "{text}");
}
