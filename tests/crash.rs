//! Crash safety: with `fsync = always`, whatever the server answered `ok`
//! to survives `kill -9`: mailbox messages, scheduled messages, the DLQ.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

const USERS: usize = 50;
const MESSAGES: usize = 2000;
const BATCH: usize = 100;

/// Reads `msg` events until none arrives for `quiet`.
fn collect_msgs(ws: &mut Client, quiet: Duration) -> Vec<Value> {
    ws.get_mut().set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["op"] == "msg" {
                    out.push(v);
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    out
}

#[test]
fn acknowledged_messages_survive_kill_9() {
    let dir = fresh_data_dir();
    let dir_arg = dir.to_str().unwrap().to_string();
    let args = ["--shards", "2", "--fsync", "always", "--data-dir", &dir_arg];
    let server = TestServer::start(&args);
    let (mut sender, _) = connect_welcomed(&server.url("?user=sender"));

    // Dead letters: short-lived messages to an offline user expire.
    for i in 0..20 {
        let cmd =
            json!({"op":"send","to":"ghost","data":{"dead":i},"ttl_ms":1,"ref":format!("t{i}")});
        sender.send(Message::text(cmd.to_string())).unwrap();
        assert_eq!(next_json(&mut sender)["op"], "ok");
    }
    // Scheduled messages, due well after the restart.
    let due_in_ms = 4000;
    for i in 0..50 {
        let cmd = json!({"op":"send","to":"later","data":{"s":i},"delay_ms":due_in_ms,"ref":format!("s{i}")});
        sender.send(Message::text(cmd.to_string())).unwrap();
        let ok = next_json(&mut sender);
        assert_eq!(
            (ok["op"].as_str(), ok["held"].as_str()),
            (Some("ok"), Some("scheduled"))
        );
    }
    let scheduled_at = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let (_, text) = http_get(server.port, "/admin/dlq?limit=1000");
    assert_eq!(body_json(&text)["total"], 20, "expired before the crash");

    // Acked sends to offline users, in batches; kill -9 while a batch is
    // in flight.
    let mut acknowledged: HashMap<String, (String, u64)> = HashMap::new();
    let kill_after_batch = MESSAGES / BATCH / 2;
    for batch in 0..MESSAGES / BATCH {
        let mut refs = HashMap::new();
        for k in 0..BATCH {
            let n = (batch * BATCH + k) as u64;
            let user = format!("u{}", n as usize % USERS);
            let r = format!("m{n}");
            let cmd = json!({"op":"send","to":user,"data":{"u":user,"n":n},"ack":true,"ref":r});
            sender.send(Message::text(cmd.to_string())).unwrap();
            refs.insert(r, (user, n));
        }
        if batch == kill_after_batch {
            server.signal(libc::SIGKILL);
            break;
        }
        while !refs.is_empty() {
            let ok = next_json(&mut sender);
            assert_eq!(ok["op"], "ok", "{ok}");
            let (user, n) = refs.remove(ok["ref"].as_str().unwrap()).unwrap();
            acknowledged.insert(ok["id"].as_str().unwrap().to_string(), (user, n));
        }
    }
    assert_eq!(acknowledged.len(), kill_after_batch * BATCH);
    drop(sender);
    drop(server);

    // Restart on the same directory.
    let server = TestServer::start(&args);
    let mut received: HashMap<String, Value> = HashMap::new();
    let mut duplicates = 0;
    for u in 0..USERS {
        let (mut ws, _) = connect_welcomed(&server.url(&format!("?user=u{u}")));
        for m in collect_msgs(&mut ws, Duration::from_millis(300)) {
            assert_eq!(m["to"], format!("u{u}"));
            assert_eq!(m["data"]["u"], format!("u{u}"), "data intact");
            if received
                .insert(m["id"].as_str().unwrap().to_string(), m)
                .is_some()
            {
                duplicates += 1;
            }
        }
    }
    let missing: Vec<_> = acknowledged
        .keys()
        .filter(|id| !received.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged messages lost: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for (id, (user, n)) in &acknowledged {
        let m = &received[id];
        assert_eq!(
            (m["data"]["u"].as_str(), m["data"]["n"].as_u64()),
            (Some(user.as_str()), Some(*n))
        );
    }
    assert_eq!(duplicates, 0);
    let extra = received.len() - acknowledged.len();
    assert!(
        extra <= BATCH,
        "only the batch in flight may add unacknowledged messages: {extra}"
    );

    // The DLQ survived.
    let (_, text) = http_get(server.port, "/admin/dlq?limit=1000");
    let dlq = body_json(&text);
    assert_eq!(dlq["total"], 20, "{dlq}");
    let dead: HashSet<u64> = dlq["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["data"]["dead"].as_u64().unwrap())
        .collect();
    assert_eq!(dead, (0..20).collect());

    // The scheduled messages fire at their time, after the restart.
    let (mut later, _) = connect_welcomed(&server.url("?user=later"));
    let remaining = Duration::from_millis(due_in_ms).saturating_sub(scheduled_at.elapsed());
    let mut got = HashSet::new();
    let deadline = Instant::now() + remaining + Duration::from_secs(5);
    while got.len() < 50 && Instant::now() < deadline {
        for m in collect_msgs(&mut later, Duration::from_millis(500)) {
            got.insert(m["data"]["s"].as_u64().unwrap());
        }
    }
    assert_eq!(got.len(), 50, "scheduled messages lost: got {got:?}");
    assert!(
        scheduled_at.elapsed() >= Duration::from_millis(due_in_ms - 50),
        "fired early"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
