//! The command line's exit statuses, as docs/LOADGEN.md states them.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

#[test]
fn a_bad_flag_exits_2_and_help_exits_0() {
    for args in [&["--bogus"][..], &["--threads", "many"], &["--url"]] {
        let out = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--help"), "{stderr}");
    }
    let out = Command::new(BIN)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Usage: loadgen"));
}
