//! The store's recovery scanner, end to end: arbitrary bytes as commit-log segments, then
//!
//! The oracles live in `sluice_fuzz::targets::store_recovery`, shared with the replay of the seed
//! corpus that runs in the normal test suite (`server/tests/it/fuzz_replay.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::targets::store_recovery::run(data));
