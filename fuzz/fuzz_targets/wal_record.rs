//! A log file: CRC-framed rkyv records read with the torn-tail rules, read
//! again with fixed checksums, every record round-tripped through the encoder.
//! The properties are in `src/lib.rs` (shared with tests/properties.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ws_uring_fuzz::wal_log(data));
