//! Start-up failures: clear one-line errors, never a panic.

mod common;

use std::process::{Command, Stdio};

use common::BIN;

#[test]
fn too_little_locked_memory_is_a_one_line_error() {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -l 64 && exec {BIN} --host 127.0.0.1 --port 0 --shards 2 --no-persist"
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ulimit -l"), "{stderr}");
    assert!(stderr.contains("scripts/tune.sh"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("ws-uring:"))
            .count(),
        1,
        "{stderr}"
    );
}

#[test]
fn invalid_settings_name_the_key() {
    let out = Command::new(BIN)
        .args(["--port", "eighty"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`port`"), "{stderr}");

    let out = Command::new(BIN)
        .env("WS_URING_IDLE_TIMEOUT_MS", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("`idle_timeout_ms`") && stderr.contains("environment"),
        "{stderr}"
    );
}

#[test]
fn a_bad_flag_exits_2_and_help_exits_0() {
    ws_uring_flags::assert_exit_statuses(BIN, "ws-uring", &[&["--bogus"], &["--port"]]);
}

#[test]
fn config_file_is_read() {
    let dir = std::env::temp_dir().join(format!("ws-uring-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "max_conections = 5\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("max_conections"), "{stderr}");
}

#[test]
fn port_in_use_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let out = Command::new(BIN)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--shards",
            "1",
            "--no-persist",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}
