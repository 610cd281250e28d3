//! The properties string (`key\x01value\x02…`): it arrives in every send header and is stored
//!
//! The oracles live in `sluice_fuzz::targets::properties`, shared with the replay of the seed
//! corpus that runs in the normal test suite (`server/tests/it/fuzz_replay.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::targets::properties::run(data));
