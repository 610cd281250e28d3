//! The two pure functions recovery judges a segment with (`framing::probe` and
//!
//! The oracles live in `sluice_fuzz::targets::segment_scan`, shared with the replay of the seed
//! corpus that runs in the normal test suite (`server/tests/it/fuzz_replay.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::targets::segment_scan::run(data));
