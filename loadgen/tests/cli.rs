//! The command line's exit statuses, as docs/LOADGEN.md states them.

#[test]
fn a_bad_flag_exits_2_and_help_exits_0() {
    ws_uring_flags::assert_exit_statuses(
        env!("CARGO_BIN_EXE_loadgen"),
        "loadgen",
        &[&["--bogus"][..], &["--threads", "many"], &["--url"]],
    );
}

/// An `--output` or `--report` file that cannot be written is refused
/// before the run (exit 2), not after it.
#[test]
fn an_output_in_a_missing_directory_is_refused_before_the_run() {
    for flag in ["--output", "--report"] {
        let started = std::time::Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--url", "ws://127.0.0.1:9/ws", "--scenario", "baseline"])
            .args(["--duration", "5", flag, "/nonexistent-wsu/dir/x"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("does not exist"), "{stderr}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "before the run"
        );
    }
}
