//! The loadgen against the real ws-uring binary: a tiny scenario (50
//! connections, ~2 s) per workload, asserting zero errors and a non-zero rate.
//!
//! The binary is found at `$WS_URING_BIN`, else the newest of
//! `target/{release,debug}/ws-uring` in the workspace (`cargo test
//! --workspace` builds it). Without one the tests fail: they would prove
//! nothing.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loadgen::engine::{self, RunPlan};
use loadgen::scenario::{RunSettings, ScenarioKind, ScenarioSpec};
use loadgen::url::WsUrl;
use loadgen::workload::Workload;

fn server_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("WS_URING_BIN") {
        return Some(PathBuf::from(path));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    ["release", "debug"]
        .iter()
        .map(|profile| root.join("target").join(profile).join("ws-uring"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

struct Server {
    child: Child,
    addr: String,
    /// The server's working directory, removed after the server is gone.
    _scratch: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &PathBuf, echo: bool) -> Server {
    let mut cmd = Command::new(binary);
    cmd.args(["--port", "0", "--host", "127.0.0.1", "--shards", "1"]);
    if echo {
        cmd.arg("--echo");
    }
    // Run from a scratch directory: the server may create its data directory
    // in its working directory, which must not be this crate's.
    let scratch = tempfile::Builder::new()
        .prefix("loadgen-ws-uring-")
        .tempdir()
        .expect("a scratch directory");
    let mut child = cmd
        .current_dir(scratch.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ws-uring");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("listening on ") {
                let addr = line[i + "listening on ".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("ws-uring logs `listening on HOST:PORT` within 10 s");
    Server {
        child,
        addr,
        _scratch: scratch,
    }
}

fn plan(addr: &str, workload: Workload) -> RunPlan {
    let spec = ScenarioSpec {
        kind: ScenarioKind::Baseline,
        connections: 50,
        ramp_up: Duration::from_millis(500),
        steady: Duration::from_millis(1500),
        churn_per_s: 0.0,
    };
    spec.plan(&RunSettings {
        url: WsUrl::parse(&format!("ws://{addr}/ws")).unwrap(),
        workload,
        rate: None,
        send_tick: Duration::from_micros(250),
        nap_max: loadgen::engine::NAP_MAX_DEFAULT,
        in_flight: 1,
        size: 64,
        group_size: loadgen::workload::GROUP_SIZE,
        threads: 1,
        run_id: (Instant::now().elapsed().as_nanos() % 1000) as u32 + 7,
        verbose: false,
    })
}

/// One server and run at a time (two cores: parallel runs measure each other).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check(workload: Workload, echo_mode: bool) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let binary = server_binary()
        .expect("no ws-uring binary: run `cargo test --workspace` or `cargo build -p ws-uring`, or set WS_URING_BIN");
    let server = start(&binary, echo_mode);
    let stats = engine::run(&plan(&server.addr, workload), |_| {})
        .expect("run")
        .stats;
    assert_eq!(
        stats.connects_succeeded, 50,
        "{workload}: {:?}",
        stats.errors
    );
    assert!(
        stats.errors.is_empty(),
        "{workload}: errors {:?}",
        stats.errors
    );
    let summary = stats.summary(1.5);
    assert!(summary.msg_per_s > 0.0, "{workload}: no messages");
    assert!(summary.latency_us.count > 0);
}

#[test]
fn echo_against_ws_uring_echo_mode() {
    check(Workload::Echo, true);
}

#[test]
fn ping_against_ws_uring() {
    check(Workload::Ping, false);
}

#[test]
fn direct_against_ws_uring() {
    check(Workload::Direct, false);
}

#[test]
fn publish_against_ws_uring() {
    check(Workload::Publish, false);
}

#[test]
fn anycast_against_ws_uring() {
    check(Workload::Anycast, false);
}
