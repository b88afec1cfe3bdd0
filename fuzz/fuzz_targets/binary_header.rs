//! A binary frame: the header split at the first `\n`, the header decoded,
//! an lz4 payload decompressed within its bound.
//! The properties are in `src/lib.rs` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ws_uring_fuzz::binary_header(data));
