//! What waking a hibernating connection costs: the round trip of the first
//! message after hibernation against the next one (the connection awake),
//! and the server's CPU per wake.
//!
//! `CONNECTIONS` clients connect (protocol mode) and go quiet; once the
//! server reports them all hibernating (`connections_hibernated` in
//! `/metrics.json`), each in turn sends an `echo` and reads the answer (the
//! wake), then a second one (awake). That is one round; the connections
//! fall asleep again before the next.
//!
//! ```sh
//! taskset -c 0 ./target/release/ws-uring --port 8765 --host 127.0.0.1 --no-persist \
//!     --shards 1 --hibernate-after-ms 100 &
//! taskset -c 1 ./target/release/examples/hibernate_bench ws://127.0.0.1:8765/ws 5000 4 $!
//! ```
//! (arguments: URL, connections, rounds, and optionally the server's
//! process id: then the server's CPU over each round, from the first wake
//! until every connection is asleep again, all its threads, is divided by
//! the connections: one wake, two echoes and one return to sleep each.
//! The connections fall asleep at the first liveness sweep after
//! `hibernate_after_ms` of quiet, up to a second later, so some sleep
//! while others are still being woken: the latencies include that work.)

// Only its frame reading is used here.
#[allow(dead_code)]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{next_text, Ws};
use tungstenite::Message;

/// Longest wait for all connections to hibernate, per round.
const HIBERNATE_WAIT_MAX: Duration = Duration::from_secs(20);
/// Longest wait for any one answer.
const ANSWER_WAIT_MAX: Duration = Duration::from_secs(10);

fn http_get_json(addr: &str, path: &str) -> serde_json::Value {
    let mut stream = TcpStream::connect(addr).expect("connect for metrics");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("no HTTP body in {response:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

fn hibernated(addr: &str) -> u64 {
    http_get_json(addr, "/metrics.json")["gauges"]["connections_hibernated"]
        .as_u64()
        .expect("connections_hibernated gauge")
}

/// Round trip of one `echo` (µs).
fn echo_rtt_us(ws: &mut Ws, n: u64) -> f64 {
    let started = Instant::now();
    ws.send(Message::text(format!(
        "{{\"op\":\"echo\",\"data\":{n},\"ref\":\"e{n}\"}}"
    )))
    .expect("send");
    loop {
        let text = next_text(ws);
        if text.contains(&format!("\"ref\":\"e{n}\"")) {
            return started.elapsed().as_secs_f64() * 1e6;
        }
    }
}

/// CPU seconds the process's threads alive now have used, from their
/// `schedstat` (nanoseconds: `/proc/PID/stat` counts 10 ms ticks, too
/// coarse for a round).
fn process_cpu_s(pid: u32) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("server threads");
    let mut ns = 0u64;
    for task in tasks.flatten() {
        let Ok(schedstat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue; // the thread ended meanwhile
        };
        ns += schedstat
            .split_whitespace()
            .next()
            .and_then(|on_cpu| on_cpu.parse::<u64>().ok())
            .expect("schedstat: time on the CPU in ns");
    }
    ns as f64 / 1e9
}

/// Waits (bounded) until all `connections` hibernate.
fn wait_all_asleep(addr: &str, connections: usize, round: usize) {
    let deadline = Instant::now() + HIBERNATE_WAIT_MAX;
    while hibernated(addr) < connections as u64 {
        assert!(
            Instant::now() < deadline,
            "round {round}: {} of {connections} hibernating after {HIBERNATE_WAIT_MAX:?} \
             (is hibernate_after_ms short, and the server in protocol mode?)",
            hibernated(addr)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "ws://127.0.0.1:8765/ws".into());
    let connections: usize = args.get(2).map_or(1000, |n| {
        n.parse()
            .ok()
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| panic!("connections: a number of at least 1, not {n:?}"))
    });
    let rounds: usize = args.get(3).map_or(5, |r| {
        r.parse()
            .ok()
            .filter(|&r| r >= 1)
            .unwrap_or_else(|| panic!("rounds: a number of at least 1, not {r:?}"))
    });
    let pid: Option<u32> = args.get(4).map(|p| {
        p.parse()
            .unwrap_or_else(|_| panic!("server process id: not a number: {p:?}"))
    });
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port")
        .to_string();

    let mut clients: Vec<Ws> = (0..connections)
        .map(|i| {
            let stream = TcpStream::connect(&addr).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut ws, _) =
                tungstenite::client(format!("{url}?user=hb-{i}"), stream).expect("upgrade");
            ws.get_ref()
                .set_read_timeout(Some(ANSWER_WAIT_MAX))
                .expect("timeout");
            assert!(next_text(&mut ws).contains("\"welcome\""));
            ws
        })
        .collect();

    let (mut woken, mut awake, mut cpu_per_wake) = (Vec::new(), Vec::new(), Vec::new());
    wait_all_asleep(&addr, connections, 0);
    for round in 1..=rounds {
        let cpu_before = pid.map(process_cpu_s);
        let (mut round_woken, mut round_awake) = (Vec::new(), Vec::new());
        for (i, ws) in clients.iter_mut().enumerate() {
            let n = (round * connections + i) as u64 * 2;
            round_woken.push(echo_rtt_us(ws, n));
            round_awake.push(echo_rtt_us(ws, n + 1));
        }
        // The round ends when all are asleep again (the next one starts so).
        wait_all_asleep(&addr, connections, round);
        if let (Some(pid), Some(before)) = (pid, cpu_before) {
            cpu_per_wake.push((process_cpu_s(pid) - before) * 1e6 / connections as f64);
        }
        round_woken.sort_by(f64::total_cmp);
        round_awake.sort_by(f64::total_cmp);
        println!(
            "round {round}: first message after hibernation p50 {:.0} us, p99 {:.0} us; \
             awake p50 {:.0} us, p99 {:.0} us{}",
            quantile(&round_woken, 0.5),
            quantile(&round_woken, 0.99),
            quantile(&round_awake, 0.5),
            quantile(&round_awake, 0.99),
            cpu_per_wake
                .last()
                .map(|us| format!("; server CPU {us:.1} us per wake, two echoes and sleep"))
                .unwrap_or_default()
        );
        woken.extend(round_woken);
        awake.extend(round_awake);
    }
    woken.sort_by(f64::total_cmp);
    awake.sort_by(f64::total_cmp);
    cpu_per_wake.sort_by(f64::total_cmp);
    println!(
        "all rounds ({} wakes): first message after hibernation p50 {:.0} us, p99 {:.0} us; \
         awake p50 {:.0} us, p99 {:.0} us{}",
        woken.len(),
        quantile(&woken, 0.5),
        quantile(&woken, 0.99),
        quantile(&awake, 0.5),
        quantile(&awake, 0.99),
        if cpu_per_wake.is_empty() {
            String::new()
        } else {
            format!(
                "; server CPU per wake, two echoes and sleep, median of {} rounds: {:.1} us",
                cpu_per_wake.len(),
                quantile(&cpu_per_wake, 0.5)
            )
        }
    );
}
