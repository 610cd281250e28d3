//! The stored-message record decoder: what recovery, reads and every pull element go through.
//!
//! The oracles live in `sluice_fuzz::targets::stored_record`, shared with the replay of the seed
//! corpus that runs in the normal test suite (`server/tests/it/fuzz_replay.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::targets::stored_record::run(data));
