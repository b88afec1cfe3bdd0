//! A WebSocket data message from a client: decoded as a text command and as a
//! binary frame, directly and through `conn::commands::handle_message`.
//! The properties are in `src/lib.rs` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ws_uring_fuzz::command(data));
