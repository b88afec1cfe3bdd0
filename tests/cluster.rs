//! Cluster mode against the real thing: a real `redis-server` on a free
//! loopback port and three real ws-uring nodes, over real WebSocket.
//! `redis-server` must be on PATH (`scripts/test.sh` installs it): without
//! it these tests fail, they do not skip.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

/// A `redis-server` of this test, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let mut redis = Redis { child: None, port };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-server ({e}): the cluster tests need it on PATH; \
                     install it with `apt-get install -y redis-server` (scripts/test.sh does)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        while !self.answers_ping() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// One inline command; its reply's first line (`:8`, `+OK`, …).
    fn command(&self, inline: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(format!("{inline}\r\n").as_bytes()).unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            s.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        String::from_utf8_lossy(&line).trim_end().to_string()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A node of the test cluster (fast heartbeats so failures show quickly).
fn node(redis: &Redis) -> TestServer {
    let url = redis.url();
    TestServer::start(&[
        "--shards",
        "2",
        "--cluster-redis",
        &url,
        "--cluster-heartbeat-ms",
        "200",
        "--cluster-presence-ttl-ms",
        "3000",
        "--ack-timeout-ms",
        "60000",
    ])
}

fn health(node: &TestServer) -> Value {
    body_json(&http_get(node.port, "/health").1)
}

/// Waits (bounded) until every node says Redis is up.
fn wait_redis_up(nodes: &[&TestServer]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in nodes {
        loop {
            let h = health(n);
            if h["redis"] == "up" {
                break;
            }
            assert!(Instant::now() < deadline, "node never reached Redis: {h}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn cluster(redis: &Redis) -> [TestServer; 3] {
    let nodes = [node(redis), node(redis), node(redis)];
    wait_redis_up(&[&nodes[0], &nodes[1], &nodes[2]]);
    let ids: Vec<Value> = nodes.iter().map(|n| health(n)["node"].clone()).collect();
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    nodes
}

fn user(node: &TestServer, name: &str) -> Client {
    connect_welcomed(&node.url(&format!("?user={name}"))).0
}

/// Sends `cmd` with `ref` and returns the answer to it; other frames that
/// arrive meanwhile go to `other`.
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

/// Reads `n` `msg` events (bounded by the read timeout).
fn read_msgs(ws: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = next_json(ws);
        if e["op"] == "msg" {
            out.push(e);
        }
    }
    out
}

#[test]
fn send_publish_and_anycast_cross_nodes() {
    let redis = Redis::start();
    let [a, b, c] = cluster(&redis);

    // Cross-node send: bob has a connection on b and one on c.
    let mut alice = user(&a, "alice");
    let mut bob_b = user(&b, "bob");
    let mut bob_c = user(&c, "bob");
    let answer = ok(&mut alice, json!({"op":"send","to":"bob","data":{"n":1}}));
    assert_eq!(answer["delivered"], 2, "{answer}");
    for ws in [&mut bob_b, &mut bob_c] {
        let m = next_json(ws);
        assert_eq!(m["op"], "msg");
        assert_eq!(m["from"], "alice");
        assert_eq!(m["data"]["n"], 1);
        assert_eq!(m["id"], answer["id"]);
    }

    // Publish: exactly once per member connection, across nodes.
    let mut members: Vec<(String, Client)> = vec![
        ("a1".into(), user(&a, "m1")),
        ("a2".into(), user(&a, "m2")),
        ("b1".into(), user(&b, "m3")),
        ("b2".into(), user(&b, "m3")),
        ("c1".into(), user(&c, "m4")),
    ];
    for (_, ws) in members.iter_mut() {
        ok(ws, json!({"op":"join","group":"room"}));
    }
    ok(&mut alice, json!({"op":"join","group":"room"}));
    let mut outsider = user(&b, "outsider");
    const PUBLISHES: usize = 20;
    let mut ids = Vec::new();
    for i in 0..PUBLISHES {
        let answer = ok(&mut alice, json!({"op":"publish","group":"room","data":i}));
        assert_eq!(
            answer["delivered"], 5,
            "5 members besides the sender: {answer}"
        );
        ids.push(answer["id"].as_str().unwrap().to_string());
    }
    for (name, ws) in members.iter_mut() {
        let got = read_msgs(ws, PUBLISHES);
        let mut seen: HashMap<String, usize> = HashMap::new();
        for m in &got {
            *seen
                .entry(m["id"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let late = msgs(&drain(ws, Duration::from_millis(300))).len();
        assert_eq!(late, 0, "{name} got duplicates");
        for id in &ids {
            assert_eq!(seen.get(id), Some(&1), "{name} and {id}: {seen:?}");
        }
    }
    assert!(
        msgs(&drain(&mut alice, Duration::from_millis(200))).is_empty(),
        "no echo"
    );
    assert!(msgs(&drain(&mut outsider, Duration::from_millis(200))).is_empty());

    // Anycast: round robin over every member cluster-wide.
    let mut workers = [user(&a, "w-a"), user(&b, "w-b"), user(&c, "w-c")];
    for w in workers.iter_mut() {
        ok(w, json!({"op":"join","group":"workers"}));
    }
    const JOBS: usize = 30;
    for i in 0..JOBS {
        let answer = ok(
            &mut alice,
            json!({"op":"anycast","group":"workers","data":i}),
        );
        assert_eq!(answer["delivered"], 1, "{answer}");
    }
    let counts: Vec<usize> = workers
        .iter_mut()
        .map(|w| msgs(&drain(w, Duration::from_millis(500))).len())
        .collect();
    assert_eq!(counts.iter().sum::<usize>(), JOBS, "{counts:?}");
    assert_eq!(
        counts,
        vec![10, 10, 10],
        "an equal share for each node's member"
    );

    // Weighted: shares follow the weights across nodes.
    let mut heavy = user(&b, "heavy");
    let mut light = user(&c, "light");
    ok(&mut heavy, json!({"op":"join","group":"wg","weight":3}));
    ok(&mut light, json!({"op":"join","group":"wg","weight":1}));
    ok(
        &mut alice,
        json!({"op":"strategy","group":"wg","strategy":"weighted"}),
    );
    for i in 0..40 {
        ok(&mut alice, json!({"op":"anycast","group":"wg","data":i}));
    }
    let heavy_n = msgs(&drain(&mut heavy, Duration::from_millis(500))).len();
    let light_n = msgs(&drain(&mut light, Duration::from_millis(300))).len();
    assert_eq!((heavy_n, light_n), (30, 10));

    // No members anywhere: the usual error.
    let mut other = Vec::new();
    let e = command(
        &mut alice,
        json!({"op":"anycast","group":"empty","data":1}),
        "x",
        &mut other,
    );
    assert_eq!(e["code"], "no_members", "{e}");
}

#[test]
fn mailbox_follows_the_user_and_a_dead_node_loses_no_acked_message() {
    let redis = Redis::start();
    let [a, mut b, c] = cluster(&redis);
    let mut alice = user(&a, "alice");

    // Offline on every node: the mailbox is in Redis.
    for i in 0..3 {
        let answer = ok(&mut alice, json!({"op":"send","to":"dave","data":i}));
        assert_eq!(answer["held"], "mailbox", "{answer}");
    }
    ok(
        &mut alice,
        json!({"op":"send","to":"dave","data":"urgent","priority":"critical"}),
    );
    // ... and reconnecting to another node than any sender delivers it.
    let mut dave = user(&c, "dave");
    let got = read_msgs(&mut dave, 4);
    assert_eq!(got[0]["data"], "urgent", "by priority first");
    assert_eq!(
        got[1..]
            .iter()
            .map(|m| m["data"].clone())
            .collect::<Vec<_>>(),
        vec![json!(0), json!(1), json!(2)],
        "then oldest first"
    );
    drop(dave);
    // Delivered without ack: gone from the mailbox.
    let mut dave = user(&b, "dave");
    assert!(msgs(&drain(&mut dave, Duration::from_millis(500))).is_empty());
    drop(dave);

    // bob is on b and gets ack:true messages; b dies before he acks.
    let mut bob = user(&b, "bob");
    let mut ids = Vec::new();
    for i in 0..5 {
        let answer = ok(
            &mut alice,
            json!({"op":"send","to":"bob","data":i,"ack":true}),
        );
        assert_eq!(answer["delivered"], 1, "{answer}");
        ids.push(answer["id"].as_str().unwrap().to_string());
    }
    assert_eq!(read_msgs(&mut bob, 5).len(), 5);
    b.signal(libc::SIGKILL);
    b.wait_exit(WAIT);
    drop(bob);
    // Sent while b is dead (its registry key has not expired yet; the
    // first send may still find its subscription, not yet noticed gone by
    // Redis: then its `ok` waits for the remote-reply timeout).
    for i in 5..8 {
        let answer = ok(
            &mut alice,
            json!({"op":"send","to":"bob","data":i,"ack":true}),
        );
        assert_eq!(answer["delivered"], 0, "{answer}");
        ids.push(answer["id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        redis.command("XLEN wsu:mbox:bob"),
        ":8",
        "all kept in Redis"
    );
    // bob comes back on c: every acknowledged-by-the-server message is there.
    let mut bob = user(&c, "bob");
    let got = read_msgs(&mut bob, 8);
    let got_ids: Vec<String> = got
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let mut expected = ids.clone();
    expected.sort();
    let mut sorted = got_ids.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    for m in &got {
        assert_eq!(m["ack"], true);
        ok(&mut bob, json!({"op":"ack","id":m["id"]}));
    }
    drop(bob);
    // Acked: the entries leave the Stream (acks reach Redis asynchronously)
    // and nothing comes back on the next connection.
    let deadline = Instant::now() + WAIT;
    while redis.command("XLEN wsu:mbox:bob") != ":0" {
        assert!(
            Instant::now() < deadline,
            "acked entries stayed in the mailbox"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut bob = user(&a, "bob");
    let again = drain(&mut bob, Duration::from_millis(700));
    assert!(msgs(&again).is_empty(), "{again:?}");
}

#[test]
fn nodes_recover_when_redis_restarts() {
    let mut redis = Redis::start();
    let [a, b, _c] = cluster(&redis);
    let mut alice = user(&a, "alice");
    let mut carol = user(&a, "carol");
    let mut bob = user(&b, "bob");
    let answer = ok(&mut alice, json!({"op":"send","to":"bob","data":"before"}));
    assert_eq!(answer["delivered"], 1);
    assert_eq!(next_json(&mut bob)["data"], "before");

    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&a)["redis"] == "up" {
        assert!(
            Instant::now() < deadline,
            "the node did not notice Redis is gone"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Cross-node: a clear error.
    let mut other = Vec::new();
    let e = command(
        &mut alice,
        json!({"op":"send","to":"bob","data":"during"}),
        "x",
        &mut other,
    );
    assert_eq!(e["code"], "cluster_unavailable", "{e}");
    // Local delivery continues (the answer still says other nodes were not reached).
    let e = command(
        &mut alice,
        json!({"op":"send","to":"carol","data":"local"}),
        "y",
        &mut other,
    );
    assert_eq!(e["code"], "cluster_unavailable", "{e}");
    assert!(
        e["reason"].as_str().unwrap().contains("this node only"),
        "{e}"
    );
    assert_eq!(next_json(&mut carol)["data"], "local");
    // Anycast to local members is served locally.
    ok(&mut carol, json!({"op":"join","group":"local-workers"}));
    ok(
        &mut alice,
        json!({"op":"anycast","group":"local-workers","data":"job"}),
    );
    assert_eq!(next_json(&mut carol)["data"], "job");

    // Redis is back (empty: it kept nothing): the nodes reconnect and tell
    // it again who is where.
    redis.spawn();
    wait_redis_up(&[&a, &b]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut other = Vec::new();
        let answer = command(
            &mut alice,
            json!({"op":"send","to":"bob","data":"after"}),
            "z",
            &mut other,
        );
        if answer["op"] == "ok" && answer["delivered"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sends did not resume after Redis came back: {answer}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = msgs(&drain(&mut bob, Duration::from_millis(500)))
        .into_iter()
        .filter(|m| m["data"] == "after")
        .count();
    assert!(got >= 1, "bob got the message sent after the restart");
}

#[test]
fn a_single_nodes_mailboxes_move_to_redis_when_it_joins_a_cluster() {
    let redis = Redis::start();
    let dir = fresh_data_dir();
    let dir_arg = dir.to_str().unwrap().to_string();
    // A single node keeps an offline message in its own log...
    let mut single = TestServer::start(&["--shards", "2", "--data-dir", &dir_arg]);
    let mut alice = user(&single, "alice");
    let answer = ok(
        &mut alice,
        json!({"op":"send","to":"erin","data":"kept","ack":true}),
    );
    assert_eq!(answer["held"], "mailbox", "{answer}");
    drop(alice);
    single.signal(libc::SIGTERM);
    assert!(single.wait_exit(WAIT).success());
    drop(single);
    // ... restarted as a cluster node, it moves it to Redis, so erin gets
    // it on another node.
    let url = redis.url();
    let joined = TestServer::start(&[
        "--shards",
        "2",
        "--data-dir",
        &dir_arg,
        "--cluster-redis",
        &url,
    ]);
    let other = node(&redis);
    wait_redis_up(&[&joined, &other]);
    let deadline = Instant::now() + WAIT;
    while redis.command("XLEN wsu:mbox:erin") != ":1" {
        assert!(
            Instant::now() < deadline,
            "the mailbox did not move to Redis"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut erin = user(&other, "erin");
    let m = next_json(&mut erin);
    assert_eq!(
        (m["op"].as_str(), m["data"].as_str()),
        (Some("msg"), Some("kept"))
    );
    assert_eq!(m["ack"], true);
    drop(joined);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_cluster_redis_urls_stop_the_server_with_a_clear_error() {
    for (url, says) in [
        ("http://127.0.0.1:6379", "redis://"),
        ("redis://127.0.0.1", "missing port"),
        ("redis://127.0.0.1:0", "1-65535"),
    ] {
        let out = Command::new(BIN)
            .args(["--port", "0", "--no-persist", "--cluster-redis", url])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cluster_redis") && err.contains(says),
            "{url}: {err}"
        );
    }
}
