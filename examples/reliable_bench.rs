//! Benchmark of reliable delivery against a running ws-uring:
//! acknowledged `send`s to offline users (stored in mailboxes, logged per
//! `fsync`), then the mailbox drain when the users connect.
//!
//! `cargo run --release --example reliable_bench -- ws://127.0.0.1:8765/ws [messages] [senders] [window] [nodrain]`
//!
//! Prints throughput and ok-latency percentiles of the sends, and the drain
//! rate. Loopback only.

use std::collections::HashMap;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

/// Users the messages are spread over.
const USERS: usize = 100;

fn connect(url: &str) -> WebSocket<TcpStream> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        addr.starts_with("127.") || addr.starts_with("localhost"),
        "loopback only"
    );
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (mut ws, _) = tungstenite::client(url, stream).expect("upgrade");
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["op"] == "welcome" {
                return ws;
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let base = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:8765/ws".into());
    let messages: usize = args.get(2).map_or(20_000, |a| a.parse().unwrap());
    let senders: usize = args.get(3).map_or(4, |a| a.parse().unwrap());
    let window: usize = args.get(4).map_or(32, |a| a.parse().unwrap());
    let run = std::process::id();

    // Phase 1: acked sends to offline users, `window` in flight per sender.
    let started = Instant::now();
    let threads: Vec<_> = (0..senders)
        .map(|s| {
            let url = format!("{base}?user=bench-sender-{run}-{s}");
            let per_sender = messages / senders;
            std::thread::spawn(move || {
                let mut ws = connect(&url);
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut sent_at: HashMap<u64, Instant> = HashMap::new();
                let (mut next, mut done) = (0u64, 0usize);
                while done < per_sender {
                    while sent_at.len() < window && (next as usize) < per_sender {
                        let user = format!("bench-{run}-{}", (next as usize * senders + s) % USERS);
                        let cmd =
                            json!({"op":"send","to":user,"data":{"n":next},"ack":true,"ref":next});
                        ws.write(Message::text(cmd.to_string())).unwrap();
                        sent_at.insert(next, Instant::now());
                        next += 1;
                    }
                    ws.flush().unwrap();
                    if let Message::Text(t) = ws.read().unwrap() {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        assert_eq!(v["op"], "ok", "{v}");
                        let r = v["ref"].as_u64().unwrap();
                        let t0 = sent_at.remove(&r).unwrap();
                        hist.record(t0.elapsed().as_micros().max(1) as u64).unwrap();
                        done += 1;
                    }
                }
                hist
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in threads {
        hist.add(t.join().unwrap()).unwrap();
    }
    let elapsed = started.elapsed();
    let total = hist.len();
    println!(
        "acked sends: {total} in {:.2} s = {:.0} msg/s; ok latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({senders} senders x {window} in flight)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
    );

    if args.get(5).is_some_and(|a| a == "nodrain") {
        return;
    }
    // Phase 2: the users connect; their mailboxes drain.
    let started = Instant::now();
    let mut drained = 0usize;
    for u in 0..USERS {
        let mut ws = connect(&format!("{base}?user=bench-{run}-{u}"));
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let expected = (0..total as usize).filter(|i| i % USERS == u).count();
        let mut got = 0;
        while got < expected {
            match ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["op"] == "msg" {
                        got += 1;
                        ws.send(Message::text(json!({"op":"ack","id":v["id"]}).to_string()))
                            .unwrap();
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("user {u}: got {got} of {expected}: {e}"),
            }
        }
        drained += got;
    }
    let elapsed = started.elapsed();
    println!(
        "mailbox drain: {drained} messages to {USERS} users in {:.2} s = {:.0} msg/s (each acked)",
        elapsed.as_secs_f64(),
        drained as f64 / elapsed.as_secs_f64()
    );
}
