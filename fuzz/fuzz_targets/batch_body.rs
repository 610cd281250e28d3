//! The SEND_BATCH_MESSAGE body decoder: bytes straight from a client.
//!
//! The oracles live in `sluice_fuzz::targets::batch_body`, shared with the replay of the seed
//! corpus that runs in the normal test suite (`server/tests/it/fuzz_replay.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::targets::batch_body::run(data));
