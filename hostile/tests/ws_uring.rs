//! The hostile tool against the real ws-uring binary, at a small scale and
//! with small limits so every defence fires within seconds: once with the
//! tool told the server's true limits (every verdict must pass), once told
//! wrong ones (the verdicts that depend on them must fail: the checks can).
//!
//! The ping flood runs with readers only here: telling kernel buffering
//! from server memory needs a non-reader to send more than 16 MiB, longer
//! than this test should take; `scripts/hostile.sh` runs that attack.
//!
//! The server binary is `$WS_URING_BIN`, else the newest of
//! `target/{release,debug}/ws-uring` (`cargo test --workspace` builds it).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The server's limits in these tests, small so the defences fire fast.
const SERVER_FLAGS: &[&str] = &[
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--shards",
    "1",
    "--no-persist",
    "--max-connections",
    "150",
    "--max-message-bytes",
    "65536",
    "--handshake-timeout-ms",
    "1000",
    "--outbox-max-bytes",
    "65536",
    "--slow-consumer-grace-ms",
    "500",
    "--shutdown-timeout-ms",
    "500",
];

fn server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("WS_URING_BIN") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    ["release", "debug"]
        .iter()
        .map(|profile| root.join("target").join(profile).join("ws-uring"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .expect("no ws-uring binary: build the workspace (cargo test --workspace builds it)")
}

struct Server {
    child: Child,
    url: String,
    /// The server's working directory, removed after the server is gone.
    _scratch: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(tag: &str) -> Server {
    let scratch = tempfile::Builder::new()
        .prefix(&format!("hostile-test-{tag}-"))
        .tempdir()
        .expect("a scratch directory");
    let mut child = Command::new(server_binary())
        .args(SERVER_FLAGS)
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
        url: format!("ws://{addr}/ws"),
        _scratch: scratch,
    }
}

/// Runs the hostile binary; returns its exit code and JSON report.
fn hostile(server: &Server, tag: &str, extra: &[&str]) -> (i32, Value) {
    let output =
        std::env::temp_dir().join(format!("hostile-test-{tag}-{}.json", std::process::id()));
    let pid = server.child.id().to_string();
    let out = output.to_str().unwrap().to_string();
    let mut args = vec![
        "--url",
        server.url.as_str(),
        "--quick",
        "--server-pid",
        pid.as_str(),
        "--output",
        out.as_str(),
        "--time-limit-s",
        "90",
        "--slowloris",
        "60",
        "--slowloris-interval-ms",
        "200",
        "--random",
        "40",
        "--oversize",
        "10",
        "--fragment",
        "4",
        "--fragment-rate",
        "131072",
        "--ping-flood",
        "2",
        "--ping-rate",
        "2000",
        "--ping-no-read",
        "0",
        "--ping-seconds",
        "2",
        "--never-read",
        "4",
        "--never-read-bytes",
        "16384",
        "--never-read-rate",
        "500",
        "--flood-extra",
        "20",
        "--max-connections",
        "150",
        "--outbox-max-bytes",
        "65536",
        "--slow-consumer-grace-ms",
        "500",
        "--shutdown-timeout-ms",
        "500",
    ];
    args.extend_from_slice(extra);
    let status = Command::new(env!("CARGO_BIN_EXE_hostile"))
        .args(&args)
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .expect("run hostile");
    let report: Value = serde_json::from_slice(&std::fs::read(&output).expect("the JSON report"))
        .expect("valid JSON");
    let _ = std::fs::remove_file(&output);
    (status.code().unwrap_or(-1), report)
}

fn verdicts(report: &Value) -> Vec<(String, bool)> {
    report["attacks"]
        .as_array()
        .expect("attacks")
        .iter()
        .map(|t| {
            (
                t["mode"].as_str().unwrap().to_string(),
                t["pass"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_defence_holds_at_the_documented_limits() {
    let server = start_server("true");
    let (code, report) = hostile(
        &server,
        "true",
        &[
            "--modes",
            "all",
            "--max-message-bytes",
            "65536",
            "--handshake-timeout-ms",
            "1000",
        ],
    );
    let verdicts = verdicts(&report);
    let modes: Vec<&str> = verdicts.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(
        modes,
        [
            "slowloris",
            "random-pre-upgrade",
            "random-post-upgrade",
            "oversize",
            "fragment",
            "ping-flood",
            "never-read",
            "flood"
        ],
        "{report:#}"
    );
    assert!(
        verdicts.iter().all(|(_, pass)| *pass),
        "{verdicts:?}\n{report:#}"
    );
    assert_eq!(report["aftermath"]["pass"], true, "{report:#}");
    assert_eq!(report["pass"], true);
    assert_eq!(code, 0);
    // The figures behind the verdicts are the server's own counters.
    let by_mode = |m: &str| {
        report["attacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["mode"] == m)
            .unwrap()
            .clone()
    };
    let slowloris = by_mode("slowloris");
    assert!(slowloris["figures"]["server_handshake_failures_delta"].as_u64() >= Some(60));
    let never_read = by_mode("never-read");
    assert_eq!(
        never_read["figures"]["server_slow_consumers_closed_delta"],
        4
    );
    // 20 attempts past the free slots are refused, less any slot another
    // attack's connection gave back meanwhile (quick mode runs attacks side
    // by side: the ping flood's last connection can end as the flood starts).
    let flood = by_mode("flood");
    let refused = flood["outcomes"]["http_503"].as_u64().unwrap_or(0);
    let freed_meanwhile = flood["figures"]["closed_by_others_during"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused + freed_meanwhile >= 20, "{flood:#}");
    assert!(freed_meanwhile <= 2, "{flood:#}");
}

#[test]
fn verdicts_fail_when_the_server_does_not_match_them() {
    let server = start_server("wrong");
    // Told a handshake timeout three times the real one and a message limit
    // four times it: slowloris sockets close "too early", fragments get 1009
    // "before" the limit.
    let (code, report) = hostile(
        &server,
        "wrong",
        &[
            "--modes",
            "slowloris,fragment,oversize",
            "--max-message-bytes",
            "262144",
            "--handshake-timeout-ms",
            "3000",
        ],
    );
    let verdicts = verdicts(&report);
    assert_eq!(
        verdicts,
        vec![
            ("slowloris".to_string(), false),
            ("oversize".to_string(), true),
            ("fragment".to_string(), false),
        ],
        "{report:#}"
    );
    assert_eq!(report["pass"], false);
    assert_eq!(code, 1);
}
