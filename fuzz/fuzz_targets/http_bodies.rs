//! The HTTP facade's JSON request bodies (produce, batch, transactional send, check answers,
//!
//! The oracles live in `sluice_fuzz::targets::http_bodies`, shared with the replay of the seed
//! corpus that runs in the normal test suite (`server/tests/it/fuzz_replay.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::targets::http_bodies::run(data));
