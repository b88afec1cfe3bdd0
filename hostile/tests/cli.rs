//! The command line's exit statuses, as docs/HOSTILE.md states them.

#[test]
fn a_bad_flag_exits_2_and_help_exits_0() {
    ws_uring_flags::assert_exit_statuses(
        env!("CARGO_BIN_EXE_hostile"),
        "hostile",
        &[&["--bogus"][..], &["--rounds", "many"], &["--url"]],
    );
}
