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

/// Sets the server's file-size limit (`RLIMIT_FSIZE`, soft; hard
/// unlimited): log writes past it fail with EFBIG, as on a full disk.
fn limit_file_size(server: &TestServer, bytes: libc::rlim_t) {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit(2) on our own child, with a valid struct and no old
    // value asked for.
    let rc = unsafe {
        libc::prlimit(
            server.child.id() as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The answer to command `reference`, or `None` if none comes within
/// `within`.
fn answer_within(ws: &mut Client, within: Duration) -> Option<Value> {
    ws.get_mut().set_read_timeout(Some(within)).unwrap();
    let answer = loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["op"] == "ok" || v["op"] == "error" {
                    break Some(v);
                }
            }
            Ok(_) => {}
            Err(_) => break None,
        }
    };
    ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
    answer
}

/// A log that cannot be written (here: past the file-size limit; a full
/// disk fails the same way): the command caught in the failing write waits
/// for it, later commands that must be stored are refused with a clear
/// error, `/health` says degraded; once the log can be written again the
/// waiting one is answered `ok`, and after a `kill -9` exactly the
/// messages answered `ok` are there.
#[test]
fn a_log_that_cannot_be_written_refuses_stored_commands_and_loses_nothing() {
    let dir = fresh_data_dir();
    let dir_arg = dir.to_str().unwrap().to_string();
    let args = ["--shards", "1", "--fsync", "always", "--data-dir", &dir_arg];
    let server = TestServer::start(&args);
    let (mut alice, _) = connect_welcomed(&server.url("?user=alice"));
    let (mut carol, _) = connect_welcomed(&server.url("?user=carol"));
    limit_file_size(&server, 64 * 1024);
    let padding = "x".repeat(1000);
    let mut stored = Vec::new();
    let mut waiting = None;
    let mut refused = None;
    for n in 0..200u64 {
        let cmd = json!({"op":"send","to":"bob","data":{"n":n,"pad":padding},"ref":n});
        alice.send(Message::text(cmd.to_string())).unwrap();
        match answer_within(&mut alice, Duration::from_millis(1000)) {
            Some(ok) if ok["op"] == "ok" => {
                assert_eq!((&ok["ref"], &ok["held"]), (&json!(n), &json!("mailbox")));
                stored.push(n);
            }
            Some(error) => {
                assert_eq!(
                    (&error["ref"], &error["code"]),
                    (&json!(n), &json!("overloaded"))
                );
                let reason = error["reason"].as_str().unwrap();
                assert!(
                    reason.contains("must be stored") && reason.contains("File too large"),
                    "{reason}"
                );
                assert!(
                    !reason.contains(".wal"),
                    "no server paths to clients: {reason}"
                );
                refused = Some(n);
                break;
            }
            None => {
                assert!(
                    waiting.is_none(),
                    "only the command caught in the write waits"
                );
                waiting = Some(n);
            }
        }
    }
    let (waiting, refused) = (waiting.expect("a write failed"), refused.expect("refused"));
    assert!(stored.len() > 10, "the log took messages before the limit");
    let (status, text) = http_get(server.port, "/health");
    assert_eq!(status, 503, "{text}");
    let health = body_json(&text);
    assert_eq!(
        (&health["status"], &health["logs_failing"]),
        (&json!("degraded"), &json!(1))
    );
    // What needs no storage still flows; what would be stored is refused.
    let answer = |ws: &mut Client, cmd: Value| {
        ws.send(Message::text(cmd.to_string())).unwrap();
        answer_within(ws, Duration::from_secs(2)).expect("answered")
    };
    let plain = answer(
        &mut alice,
        json!({"op":"send","to":"carol","data":"live","ref":"plain"}),
    );
    assert_eq!(
        (&plain["op"], &plain["delivered"]),
        (&json!("ok"), &json!(1)),
        "{plain}"
    );
    assert_eq!(
        collect_msgs(&mut carol, Duration::from_millis(300)).len(),
        1
    );
    for cmd in [
        json!({"op":"send","to":"carol","data":"acked","ack":true,"ref":"acked"}),
        json!({"op":"send","to":"carol","data":"later","delay_ms":1000,"ref":"later"}),
    ] {
        let refused = answer(&mut alice, cmd);
        assert_eq!(refused["code"], "overloaded", "{refused}");
    }

    // Room again: the waiting command is written and answered.
    limit_file_size(&server, libc::RLIM_INFINITY);
    let ok = answer_within(&mut alice, Duration::from_secs(3)).expect("answered once written");
    assert_eq!((&ok["op"], &ok["ref"]), (&json!("ok"), &json!(waiting)));
    stored.push(waiting);
    let (status, text) = http_get(server.port, "/health");
    assert_eq!(status, 200, "{text}");
    let last = json!({"op":"send","to":"bob","data":{"n":1000,"pad":padding},"ref":1000});
    alice.send(Message::text(last.to_string())).unwrap();
    let ok = answer_within(&mut alice, Duration::from_secs(3)).unwrap();
    assert_eq!((&ok["op"], &ok["ref"]), (&json!("ok"), &json!(1000)));
    stored.push(1000);
    server.signal(libc::SIGKILL);
    drop((alice, server));

    // After a kill -9: the log reads back whole (the failed writes left
    // nothing behind), with every message answered `ok`, and only those.
    let server = TestServer::start(&args);
    let (mut bob, _) = connect_welcomed(&server.url("?user=bob"));
    let got: Vec<u64> = collect_msgs(&mut bob, Duration::from_millis(500))
        .iter()
        .map(|m| m["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(got, stored, "refused: {refused}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A log that grew into the file-size limit with messages since removed:
/// while appends fail, a snapshot of the live state (small again once bob
/// took his mailbox from memory) is written in its place, and the shard
/// goes on without anyone raising the limit.
#[test]
fn a_log_at_the_file_size_limit_compacts_itself_to_make_room() {
    let dir = fresh_data_dir();
    let dir_arg = dir.to_str().unwrap().to_string();
    let args = ["--shards", "1", "--fsync", "always", "--data-dir", &dir_arg];
    let server = TestServer::start(&args);
    let (mut alice, _) = connect_welcomed(&server.url("?user=alice"));
    limit_file_size(&server, 64 * 1024);
    let padding = "x".repeat(1000);
    let mut waiting = None;
    for n in 0..200u64 {
        let cmd = json!({"op":"send","to":"bob","data":{"n":n,"pad":padding},"ref":n});
        alice.send(Message::text(cmd.to_string())).unwrap();
        match answer_within(&mut alice, Duration::from_millis(1000)) {
            Some(ok) => assert_eq!((&ok["op"], &ok["ref"]), (&json!("ok"), &json!(n))),
            None => {
                waiting = Some(n);
                break;
            }
        }
    }
    let waiting = waiting.expect("a write failed");
    // Bob takes his mailbox from memory, the waiting message included.
    let (mut bob, _) = connect_welcomed(&server.url("?user=bob"));
    let got = collect_msgs(&mut bob, Duration::from_millis(500));
    assert_eq!(got.len() as u64, waiting + 1);
    // Within the snapshot interval (5 s), with the limit unchanged.
    let ok = answer_within(&mut alice, Duration::from_secs(8)).expect("answered once compacted");
    assert_eq!((&ok["op"], &ok["ref"]), (&json!("ok"), &json!(waiting)));
    let (status, text) = http_get(server.port, "/health");
    assert_eq!(status, 200, "{text}");
    let log_bytes = std::fs::metadata(dir.join("shard-0.wal")).unwrap().len();
    assert!(log_bytes < 16 * 1024, "compacted: {log_bytes} bytes");
    let cmd = json!({"op":"send","to":"dave","data":"after","ref":"after"});
    alice.send(Message::text(cmd.to_string())).unwrap();
    let ok = answer_within(&mut alice, Duration::from_secs(3)).unwrap();
    assert_eq!((&ok["op"], &ok["held"]), (&json!("ok"), &json!("mailbox")));
    server.signal(libc::SIGKILL);
    drop((alice, bob, server));

    let server = TestServer::start(&args);
    let (mut bob, _) = connect_welcomed(&server.url("?user=bob"));
    assert!(collect_msgs(&mut bob, Duration::from_millis(300)).is_empty());
    let (mut dave, _) = connect_welcomed(&server.url("?user=dave"));
    let got = collect_msgs(&mut dave, Duration::from_millis(300));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["data"], "after");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the server moves by itself is not refused while the log fails: a
/// DLQ replay to an offline user goes to the mailbox (in memory until the
/// log takes it), while a client's send to that user is refused.
#[test]
fn a_dlq_replay_is_not_refused_while_the_log_fails() {
    let server = TestServer::start(&["--shards", "1", "--fsync", "always"]);
    let (mut alice, _) = connect_welcomed(&server.url("?user=alice"));
    let send = |ws: &mut Client, data: &str, extra: Value| {
        let mut cmd = json!({"op":"send","to":"ghost","data":data,"ref":data});
        for (k, v) in extra.as_object().unwrap() {
            cmd[k] = v.clone();
        }
        ws.send(Message::text(cmd.to_string())).unwrap();
        answer_within(ws, Duration::from_millis(1000))
    };
    let ok = send(&mut alice, "late", json!({"ttl_ms": 1500})).unwrap();
    assert_eq!(ok["op"], "ok");
    std::thread::sleep(Duration::from_millis(1700));
    let (_, text) = http_get(server.port, "/admin/dlq");
    assert_eq!(body_json(&text)["total"], 1, "expired into the DLQ");

    // Nothing fits, not even a snapshot of the live state.
    limit_file_size(&server, 1);
    assert!(
        send(&mut alice, "caught", json!({})).is_none(),
        "its write fails"
    );
    let refused = send(&mut alice, "refused", json!({})).unwrap();
    assert_eq!(refused["code"], "overloaded", "{refused}");
    let raw = "POST /admin/dlq/replay HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    let (status, text) = http_raw(server.port, raw.as_bytes());
    assert_eq!(
        (status, body_json(&text)["replayed"].clone()),
        (200, json!(1))
    );

    let (mut ghost, _) = connect_welcomed(&server.url("?user=ghost"));
    let mut got: Vec<String> = collect_msgs(&mut ghost, Duration::from_millis(500))
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, ["caught", "late"]);
}
