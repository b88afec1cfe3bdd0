//! Bytes on the port before a request head is complete: `parse_request_head`,
//! the router, body length, upgrade checks (plain, JWT, origins), `?user=`.
//! The properties are in `src/lib.rs` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ws_uring_fuzz::http_request(data));
