//! Reliable delivery against the real binary: acks, retries, the DLQ,
//! mailboxes, TTLs, scheduling, and the HTTP API.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

fn user(server: &TestServer, name: &str) -> Client {
    connect_welcomed(&server.url(&format!("?user={name}"))).0
}

/// A server with `shards`, whose unacked messages are retried after
/// `ack_timeout_ms` (doubling), `max_retries` times.
fn retrying_server(shards: usize, ack_timeout_ms: u64, max_retries: u32) -> TestServer {
    let (shards, timeout, retries) = (
        shards.to_string(),
        ack_timeout_ms.to_string(),
        max_retries.to_string(),
    );
    TestServer::start(&[
        "--shards",
        &shards,
        "--ack-timeout-ms",
        &timeout,
        "--max-retries",
        &retries,
    ])
}

fn ok(ws: &mut Client, mut cmd: Value) -> Value {
    cmd["ref"] = json!("r");
    ws.send(Message::text(cmd.to_string())).unwrap();
    loop {
        let e = next_json(ws);
        if e["ref"] == "r" {
            assert_eq!(e["op"], "ok", "{e}");
            return e;
        }
    }
}

/// The next `msg` event, skipping others; `None` if none within `within`.
fn next_msg(ws: &mut Client, within: Duration) -> Option<Value> {
    ws.get_mut().set_read_timeout(Some(within)).unwrap();
    let deadline = Instant::now() + within;
    let found = loop {
        if Instant::now() >= deadline {
            break None;
        }
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["op"] == "msg" {
                    break Some(v);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None
            }
            Err(e) => panic!("{e}"),
        }
    };
    ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    found
}

fn ack(ws: &mut Client, id: &Value) {
    ws.send(Message::text(json!({"op":"ack","id":id}).to_string()))
        .unwrap();
}

fn dlq(server: &TestServer) -> Value {
    let (status, text) = http_get(server.port, "/admin/dlq");
    assert_eq!(status, 200, "{text}");
    body_json(&text)
}

fn post(port: u16, path: &str, body: &str, extra_headers: &str) -> (u16, Value) {
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = http_raw(port, raw.as_bytes());
    (status, body_json(&text))
}

/// Replays the whole DLQ; asserts it answered 200 with `replayed` N.
fn replay_all(server: &TestServer, replayed: u64) {
    let (status, body) = post(server.port, "/admin/dlq/replay", "{}", "");
    assert_eq!((status, body["replayed"].as_u64()), (200, Some(replayed)));
}

#[test]
fn unacked_messages_are_retried_with_backoff_then_dead_lettered() {
    let server = retrying_server(2, 200, 2);
    let mut bob = user(&server, "bob");
    let mut alice = user(&server, "alice");
    let sent_at = Instant::now();
    let answer = ok(
        &mut alice,
        json!({"op":"send","to":"bob","data":"x","ack":true}),
    );
    let id = answer["id"].clone();
    let mut arrivals = Vec::new();
    for expected in 1..=3u64 {
        let m = next_msg(&mut bob, Duration::from_secs(3)).expect("a delivery");
        assert_eq!(m["id"], id);
        assert_eq!(m["ack"], true);
        assert_eq!(m["attempt"].as_u64().unwrap_or(1), expected);
        arrivals.push(sent_at.elapsed());
    }
    // Attempt 2 after ~200 ms, attempt 3 ~400 ms later (backoff doubles).
    let gap1 = arrivals[1] - arrivals[0];
    let gap2 = arrivals[2] - arrivals[1];
    assert!(
        gap1 >= Duration::from_millis(180) && gap1 < Duration::from_millis(500),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(380) && gap2 < Duration::from_millis(800),
        "{gap2:?}"
    );
    // After the third attempt's 800 ms, the DLQ, and no fourth delivery.
    assert!(next_msg(&mut bob, Duration::from_millis(1100)).is_none());
    let d = dlq(&server);
    assert_eq!(d["total"], 1, "{d}");
    let entry = &d["entries"][0];
    assert_eq!(entry["id"], id);
    assert_eq!(entry["reason"], "ack_timeout");
    assert_eq!(entry["attempts"], 3);
    assert_eq!(entry["data"], "x");
    assert_eq!(entry["target"], json!({"user":"bob"}));

    // Replay delivers it again, as a new first attempt; acked, it stays.
    replay_all(&server, 1);
    let m = next_msg(&mut bob, Duration::from_secs(3)).expect("replayed");
    assert_eq!(m["id"], id);
    assert_eq!(m.get("attempt"), None);
    ack(&mut bob, &m["id"]);
    assert!(next_msg(&mut bob, Duration::from_millis(500)).is_none());
    assert_eq!(dlq(&server)["total"], 0);
}

/// A delivery whose ack never came counts, whatever cut it short: its
/// user going offline (the retry finds the mailbox) or a `kill -9`. The
/// next delivery shows the attempt after it, and the retry limit counts
/// them all.
#[test]
fn redeliveries_after_going_offline_or_a_restart_carry_their_attempt() {
    let dir = fresh_data_dir();
    let dir_arg = dir.to_str().unwrap().to_string();
    let args = [
        "--ack-timeout-ms",
        "300",
        "--max-retries",
        "3",
        "--fsync",
        "always",
        "--data-dir",
        &dir_arg,
    ];
    let server = TestServer::start(&args);
    let mut alice = user(&server, "alice");
    let mut bob = user(&server, "bob");
    let sent = ok(
        &mut alice,
        json!({"op":"send","to":"bob","data":"x","ack":true}),
    );
    let id = sent["id"].clone();
    let first = next_msg(&mut bob, Duration::from_secs(3)).expect("attempt 1");
    assert_eq!((&first["id"], first.get("attempt")), (&id, None));
    // Bob leaves without acking; the retry at 300 ms finds him offline.
    drop(bob);
    std::thread::sleep(Duration::from_millis(800));
    let mut bob = user(&server, "bob");
    let second = next_msg(&mut bob, Duration::from_secs(3)).expect("from the mailbox");
    assert_eq!((&second["id"], &second["attempt"]), (&id, &json!(2)));
    // Not acked either: the server dies while it waits for the ack, once
    // the log holds the delivery (a delivery is written to the socket
    // without waiting for its record, so a crash in between counts one
    // attempt fewer).
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGKILL);
    drop((alice, bob, server));

    let server = TestServer::start(&args);
    let mut bob = user(&server, "bob");
    let third = next_msg(&mut bob, Duration::from_secs(3)).expect("after the restart");
    assert_eq!((&third["id"], &third["attempt"]), (&id, &json!(3)));
    // The last retry (1 + max_retries), 1200 ms later; then the DLQ.
    let fourth = next_msg(&mut bob, Duration::from_secs(3)).expect("the last retry");
    assert_eq!((&fourth["id"], &fourth["attempt"]), (&id, &json!(4)));
    assert!(next_msg(&mut bob, Duration::from_millis(3000)).is_none());
    let d = dlq(&server);
    assert_eq!(d["total"], 1, "{d}");
    let entry = &d["entries"][0];
    assert_eq!(
        (&entry["id"], &entry["reason"], &entry["attempts"]),
        (&id, &json!("ack_timeout"), &json!(4))
    );
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A member's unacked delivery of a publish is tracked on the group's
/// home shard; after a `kill -9` it goes to the member's mailbox on its
/// own home shard (a hand-off between shards), still counted.
#[test]
fn a_members_unacked_publish_is_redelivered_after_a_restart_as_attempt_2() {
    use ws_uring::routing::home_shard;
    let (member, group) = ("carol", "board");
    assert_ne!(home_shard(member, 2), home_shard(group, 2), "a hand-off");
    let dir = fresh_data_dir();
    let dir_arg = dir.to_str().unwrap().to_string();
    let args = ["--shards", "2", "--fsync", "always", "--data-dir", &dir_arg];
    let server = TestServer::start(&args);
    let mut carol = user(&server, member);
    ok(&mut carol, json!({"op":"join","group":group}));
    let mut alice = user(&server, "alice");
    let sent = ok(
        &mut alice,
        json!({"op":"publish","group":group,"data":"x","ack":true}),
    );
    let first = next_msg(&mut carol, Duration::from_secs(3)).expect("attempt 1");
    assert_eq!((&first["id"], first.get("attempt")), (&sent["id"], None));
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGKILL);
    drop((alice, carol, server));

    let server = TestServer::start(&args);
    let mut carol = user(&server, member);
    let again = next_msg(&mut carol, Duration::from_secs(5)).expect("after the restart");
    assert_eq!((&again["id"], &again["attempt"]), (&sent["id"], &json!(2)));
    ack(&mut carol, &again["id"]);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_ack_from_any_connection_of_the_user_settles_it() {
    let server = retrying_server(3, 150, 3);
    let mut phone = user(&server, "carol");
    let mut laptop = user(&server, "carol");
    let mut alice = user(&server, "alice");
    ok(
        &mut alice,
        json!({"op":"send","to":"carol","data":1,"ack":true}),
    );
    let on_phone = next_msg(&mut phone, Duration::from_secs(3)).unwrap();
    let on_laptop = next_msg(&mut laptop, Duration::from_secs(3)).unwrap();
    assert_eq!(on_phone["id"], on_laptop["id"]);
    ack(&mut laptop, &on_laptop["id"]);
    assert!(
        next_msg(&mut phone, Duration::from_millis(600)).is_none(),
        "no redelivery"
    );
    assert!(next_msg(&mut laptop, Duration::from_millis(100)).is_none());
    // Acking an id that is not awaited is a bad_request, not a crash.
    let mut other = Vec::new();
    laptop
        .send(Message::text(r#"{"op":"ack","id":"nope","ref":5}"#))
        .unwrap();
    let e = loop {
        let e = next_json(&mut laptop);
        if e["ref"] == 5 {
            break e;
        }
        other.push(e);
    };
    assert_eq!(e["code"], "bad_request");
}

#[test]
fn offline_mailbox_is_delivered_after_welcome_by_priority_then_age() {
    let server = TestServer::start(&["--shards", "2"]);
    let mut alice = user(&server, "alice");
    for (data, priority) in [
        ("l1", "low"),
        ("n1", "normal"),
        ("c1", "critical"),
        ("h1", "high"),
        ("n2", "normal"),
        ("c2", "critical"),
    ] {
        let answer = ok(
            &mut alice,
            json!({"op":"send","to":"dave","data":data,"priority":priority}),
        );
        assert_eq!(
            (answer["delivered"].as_u64(), answer["held"].as_str()),
            (Some(0), Some("mailbox"))
        );
    }
    let (mut dave, welcome) = connect_welcomed(&server.url("?user=dave"));
    assert_eq!(welcome["user"], "dave");
    let order: Vec<String> = (0..6)
        .map(|_| {
            next_msg(&mut dave, Duration::from_secs(3)).unwrap()["data"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(order, ["c1", "c2", "h1", "n1", "n2", "l1"]);
    // Delivered once: a second connection gets nothing.
    let mut again = user(&server, "dave");
    assert!(next_msg(&mut again, Duration::from_millis(300)).is_none());
}

#[test]
fn full_mailboxes_and_expired_messages_go_to_the_dlq() {
    let server = TestServer::start(&["--shards", "2", "--mailbox-max-msgs", "2"]);
    let mut alice = user(&server, "alice");
    for i in 0..3 {
        ok(&mut alice, json!({"op":"send","to":"erin","data":i}));
    }
    ok(
        &mut alice,
        json!({"op":"send","to":"frank","data":"short-lived","ttl_ms":150}),
    );
    std::thread::sleep(Duration::from_millis(400));
    let d = dlq(&server);
    let reasons: Vec<(&str, &Value)> = d["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["reason"].as_str().unwrap(), &e["data"]))
        .collect();
    assert!(reasons.contains(&("mailbox_full", &json!(0))), "{d}");
    assert!(reasons.contains(&("expired", &json!("short-lived"))), "{d}");
    let mut erin = user(&server, "erin");
    let got: Vec<Value> = (0..2)
        .map(|_| next_msg(&mut erin, Duration::from_secs(3)).unwrap()["data"].clone())
        .collect();
    assert_eq!(got, vec![json!(1), json!(2)]);
    let mut frank = user(&server, "frank");
    assert!(next_msg(&mut frank, Duration::from_millis(300)).is_none());
    // Paging.
    let (_, text) = http_get(server.port, "/admin/dlq?offset=1&limit=1");
    let page = body_json(&text);
    assert_eq!(
        (
            page["total"].as_u64(),
            page["entries"].as_array().unwrap().len()
        ),
        (Some(2), 1)
    );
    assert_eq!(http_get(server.port, "/admin/dlq?limit=x").0, 400);
}

#[test]
fn a_scheduled_message_expires_at_its_ttl_and_a_replay_gives_it_the_ttl_again() {
    let server = TestServer::start(&["--shards", "2"]);
    let mut alice = user(&server, "alice");
    let mut hana = user(&server, "hana");
    // Due in 2 s, but only 150 ms to live: dead at 150 ms, never delivered.
    let answer = ok(
        &mut alice,
        json!({"op":"send","to":"hana","data":"too late","delay_ms":2000,"ttl_ms":150}),
    );
    assert_eq!(answer["held"], "scheduled");
    std::thread::sleep(Duration::from_millis(500));
    let d = dlq(&server);
    assert_eq!(d["total"], 1, "{d}");
    let entry = &d["entries"][0];
    assert_eq!(entry["id"], answer["id"]);
    assert_eq!(entry["reason"], "expired");
    let lived_ms = entry["dead_at"].as_u64().unwrap() - entry["ts"].as_u64().unwrap();
    assert!(
        (150..400).contains(&lived_ms),
        "dead {lived_ms} ms after it was sent"
    );
    assert!(next_msg(&mut hana, Duration::from_millis(300)).is_none());

    // A replay is a new first attempt with its 150 ms counted again from
    // the replay: it reaches hana, online, instead of expiring on arrival.
    replay_all(&server, 1);
    let m = next_msg(&mut hana, Duration::from_secs(3)).expect("the replayed message");
    assert_eq!((&m["id"], &m["data"]), (&answer["id"], &json!("too late")));
    assert_eq!(dlq(&server)["total"], 0);
}

#[test]
fn an_acked_anycast_that_finds_no_member_is_kept_not_lost() {
    let server = retrying_server(2, 300, 0);
    let mut sender = user(&server, "boss");
    let mut worker = user(&server, "worker");
    // A replay into an empty group: the message goes back to the DLQ
    // (after its ack timeout), it does not vanish.
    ok(&mut worker, json!({"op":"join","group":"jobs"}));
    let sent = ok(
        &mut sender,
        json!({"op":"anycast","group":"jobs","data":"job","ack":true}),
    );
    assert_eq!(
        next_msg(&mut worker, Duration::from_secs(3)).unwrap()["id"],
        sent["id"]
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(dlq(&server)["entries"][0]["reason"], "ack_timeout");
    ok(&mut worker, json!({"op":"leave","group":"jobs"}));
    replay_all(&server, 1);
    std::thread::sleep(Duration::from_millis(800));
    let d = dlq(&server);
    assert_eq!(d["total"], 1, "{d}");
    assert_eq!(d["entries"][0]["id"], sent["id"]);
    // With a member again, the replay reaches it.
    ok(&mut worker, json!({"op":"join","group":"jobs"}));
    replay_all(&server, 1);
    let m = next_msg(&mut worker, Duration::from_secs(3)).expect("replayed to the member");
    assert_eq!(m["id"], sent["id"]);
    ack(&mut worker, &m["id"]);

    // A scheduled one whose group empties before it is due waits for a
    // member like a retry does, and reaches the member that comes back.
    let server = retrying_server(2, 300, 3);
    let mut sender = user(&server, "boss");
    let mut worker = user(&server, "worker");
    ok(&mut worker, json!({"op":"join","group":"later"}));
    let sent = ok(
        &mut sender,
        json!({"op":"anycast","group":"later","data":"due","ack":true,"delay_ms":200}),
    );
    assert_eq!(sent["held"], "scheduled");
    ok(&mut worker, json!({"op":"leave","group":"later"}));
    std::thread::sleep(Duration::from_millis(400));
    ok(&mut worker, json!({"op":"join","group":"later"}));
    let m = next_msg(&mut worker, Duration::from_secs(3)).expect("delivered on a retry");
    assert_eq!((&m["id"], &m["data"]), (&sent["id"], &json!("due")));
    ack(&mut worker, &m["id"]);
    assert_eq!(dlq(&server)["total"], 0);
}

#[test]
fn scheduled_messages_fire_on_time() {
    let server = TestServer::start(&["--shards", "2"]);
    let mut alice = user(&server, "alice");
    let mut gina = user(&server, "gina");
    let sent = Instant::now();
    let answer = ok(
        &mut alice,
        json!({"op":"send","to":"gina","data":"later","delay_ms":300}),
    );
    assert_eq!(answer["held"], "scheduled");
    let m = next_msg(&mut gina, Duration::from_secs(3)).unwrap();
    let waited = sent.elapsed();
    assert_eq!(m["data"], "later");
    assert!(
        waited >= Duration::from_millis(295) && waited <= Duration::from_millis(350),
        "fired after {waited:?}"
    );
    // `at`, and scheduled publishes.
    ok(&mut gina, json!({"op":"join","group":"cron"}));
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 200;
    let sent = Instant::now();
    ok(
        &mut alice,
        json!({"op":"publish","group":"cron","data":"tick","at":at}),
    );
    let m = next_msg(&mut gina, Duration::from_secs(3)).unwrap();
    assert_eq!(m["data"], "tick");
    assert!(
        sent.elapsed() <= Duration::from_millis(260),
        "{:?}",
        sent.elapsed()
    );
}

#[test]
fn scheduled_messages_fire_on_time_while_the_shard_naps() {
    // Naps of up to 100 ms: a due time kept by glommio's reactor would wait
    // for the driver's next visit, up to 100 ms after the last one, and
    // each message here is scheduled right after the last one fired.
    let server = TestServer::start(&["--shards", "1", "--no-persist", "--nap-max-us", "100000"]);
    let mut alice = user(&server, "alice");
    let mut ivan = user(&server, "ivan");
    let mut waited = Vec::new();
    for i in 0..7 {
        let sent = Instant::now();
        ok(
            &mut alice,
            json!({"op":"send","to":"ivan","data":i,"delay_ms":20}),
        );
        let m = next_msg(&mut ivan, Duration::from_secs(3)).unwrap();
        assert_eq!(m["data"], i);
        waited.push(sent.elapsed());
    }
    waited.sort();
    let median = waited[waited.len() / 2];
    assert!(
        median >= Duration::from_millis(19) && median <= Duration::from_millis(60),
        "20 ms scheduled messages fired after {median:?} (median of 7; all: {waited:?})"
    );
}

#[test]
fn api_send_and_publish_reach_websocket_users() {
    let server = TestServer::start(&["--shards", "2"]);
    let mut hank = user(&server, "hank");
    ok(&mut hank, json!({"op":"join","group":"news"}));
    let (status, body) = post(
        server.port,
        "/api/send",
        r#"{"to":"hank","data":{"k":1}}"#,
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 1);
    let m = next_msg(&mut hank, Duration::from_secs(3)).unwrap();
    assert_eq!(
        (m["from"].as_str(), m["data"]["k"].as_u64()),
        (Some("api"), Some(1))
    );
    let (status, body) = post(
        server.port,
        "/api/publish",
        r#"{"op":"publish","group":"news","data":"extra","priority":"high"}"#,
        "",
    );
    assert_eq!((status, body["delivered"].as_u64()), (200, Some(1)));
    assert_eq!(
        next_msg(&mut hank, Duration::from_secs(3)).unwrap()["priority"],
        "high"
    );
    // Bad bodies are clear 400s.
    let (status, body) = post(server.port, "/api/send", r#"{"data":1}"#, "");
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")));
    let (status, body) = post(server.port, "/api/send", "{oops", "");
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_json")));
    let (status, _) = post(
        server.port,
        "/api/send",
        r#"{"op":"publish","group":"g","data":1}"#,
        "",
    );
    assert_eq!(status, 400);
}

#[test]
fn admin_token_guards_api_and_admin() {
    let server = TestServer::start(&["--shards", "1", "--admin-token", "s3cret"]);
    let (status, _) = post(server.port, "/api/send", r#"{"to":"x","data":1}"#, "");
    assert_eq!(status, 401);
    let (status, _) = post(
        server.port,
        "/api/send",
        r#"{"to":"x","data":1}"#,
        "Authorization: Bearer wrong\r\n",
    );
    assert_eq!(status, 401);
    let (status, body) = post(
        server.port,
        "/api/send",
        r#"{"to":"x","data":1}"#,
        "Authorization: Bearer s3cret\r\n",
    );
    assert_eq!((status, body["held"].as_str()), (200, Some("mailbox")));
    assert_eq!(http_get(server.port, "/admin/dlq").0, 401);
}

#[test]
fn chunked_or_oversized_bodies_are_refused() {
    let server = TestServer::start(&["--shards", "1", "--max-message-bytes", "1024"]);
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"POST /api/send HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 411"), "{out}");
    let (status, _) = http_raw(
        server.port,
        b"POST /api/send HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n",
    );
    assert_eq!(status, 413);
}

#[test]
fn publish_with_ack_is_acked_per_member_and_anycast_retries_elsewhere() {
    let server = retrying_server(2, 150, 5);
    let mut m1 = user(&server, "m1");
    let mut m2 = user(&server, "m2");
    for ws in [&mut m1, &mut m2] {
        ok(ws, json!({"op":"join","group":"team"}));
    }
    let mut boss = user(&server, "boss");
    ok(
        &mut boss,
        json!({"op":"publish","group":"team","data":"p","ack":true}),
    );
    let a = next_msg(&mut m1, Duration::from_secs(3)).unwrap();
    let b = next_msg(&mut m2, Duration::from_secs(3)).unwrap();
    ack(&mut m1, &a["id"]);
    // m2 did not ack: only m2 gets the redelivery.
    let again = next_msg(&mut m2, Duration::from_secs(2)).expect("m2 redelivery");
    assert_eq!(
        (again["id"].clone(), again["attempt"].as_u64()),
        (b["id"].clone(), Some(2))
    );
    ack(&mut m2, &again["id"]);
    assert!(next_msg(&mut m1, Duration::from_millis(400)).is_none());

    // Anycast: the member that does not ack loses the message to the other.
    ok(
        &mut boss,
        json!({"op":"anycast","group":"team","data":"job","ack":true}),
    );
    let (first, mut other) = match next_msg(&mut m1, Duration::from_millis(500)) {
        Some(m) => (m, m2),
        None => (next_msg(&mut m2, Duration::from_secs(2)).unwrap(), m1),
    };
    let retry = next_msg(&mut other, Duration::from_secs(2)).expect("picked another member");
    assert_eq!(
        (retry["id"].clone(), retry["attempt"].as_u64()),
        (first["id"].clone(), Some(2))
    );
    ack(&mut other, &retry["id"]);
}
