//! Cross-node messaging cost: `send` from a client on one node to a user
//! on another node, against the same `send` within one node.
//!
//! - latency: one message at a time, sender → receiver, p50/p99 of the
//!   time from writing the command to reading the `msg` (one process, one
//!   clock);
//! - throughput: `SENDERS` connections send without `ref` (a window of
//!   `WINDOW` messages in flight each) to one receiver; msg/s received.
//!
//! ```sh
//! cargo run --release --example cluster_bench -- ws://127.0.0.1:8001/ws ws://127.0.0.1:8002/ws 20000
//! ```
//! (first URL: the senders' node; second: the receiver's node for the
//! cross-node run; the same-node run puts the receiver on the first.)

mod common;

use std::net::TcpStream;
use std::time::Instant;

use common::{next_text, windowed_throughput, Ws, WINDOW};
use tungstenite::Message;

const SAMPLES: usize = 2_000;
const SENDERS: usize = 4;

fn connect(url: &str, user: &str) -> Ws {
    let addr = url.trim_start_matches("ws://").split('/').next().unwrap();
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = tungstenite::client(format!("{url}?user={user}"), stream).expect("upgrade");
    let welcome = next_text(&mut ws);
    assert!(welcome.contains("\"welcome\""), "{welcome}");
    ws
}

fn latency(sender_url: &str, receiver_url: &str, tag: &str) -> (f64, f64) {
    let receiver_name = format!("bench-lat-{tag}");
    let mut receiver = connect(receiver_url, &receiver_name);
    let mut sender = connect(sender_url, &format!("bench-lat-sender-{tag}"));
    // Warm the path (presence, scripts, connections).
    for _ in 0..100 {
        sender
            .send(Message::text(format!(
                "{{\"op\":\"send\",\"to\":\"{receiver_name}\",\"data\":0}}"
            )))
            .unwrap();
        next_text(&mut receiver);
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for i in 0..SAMPLES {
        let t = Instant::now();
        sender
            .send(Message::text(format!(
                "{{\"op\":\"send\",\"to\":\"{receiver_name}\",\"data\":{i}}}"
            )))
            .unwrap();
        let m = next_text(&mut receiver);
        samples.push(t.elapsed());
        debug_assert!(m.contains("\"msg\""));
    }
    samples.sort();
    let q = |p: f64| samples[(samples.len() as f64 * p) as usize].as_secs_f64() * 1e6;
    (q(0.50), q(0.99))
}

fn throughput(sender_url: &str, receiver_url: &str, tag: &str, total: u64) -> f64 {
    let receiver_name = format!("bench-tp-{tag}");
    let mut receiver = connect(receiver_url, &receiver_name);
    let senders = (0..SENDERS)
        .map(|s| connect(sender_url, &format!("bench-tp-sender-{receiver_name}-{s}")))
        .collect();
    let message = Message::text(format!(
        "{{\"op\":\"send\",\"to\":\"{receiver_name}\",\"data\":\"0123456789abcdef0123456789abcdef\"}}"
    ));
    windowed_throughput(&mut receiver, senders, message, total / SENDERS as u64)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let a = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:8001/ws".into());
    let b = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:8002/ws".into());
    let total: u64 = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(20_000);
    let (same50, same99) = latency(&a, &a, "same");
    let (cross50, cross99) = latency(&a, &b, "cross");
    println!("latency same-node:  p50 {same50:.0} us, p99 {same99:.0} us ({SAMPLES} messages)");
    println!("latency cross-node: p50 {cross50:.0} us, p99 {cross99:.0} us ({SAMPLES} messages)");
    println!(
        "added by the hop:   p50 {:.0} us, p99 {:.0} us",
        cross50 - same50,
        cross99 - same99
    );
    let same = throughput(&a, &a, "same", total);
    let cross = throughput(&a, &b, "cross", total);
    println!("throughput same-node:  {same:.0} msg/s ({total} messages, {SENDERS} senders, window {WINDOW})");
    println!("throughput cross-node: {cross:.0} msg/s ({total} messages, {SENDERS} senders)");
}
