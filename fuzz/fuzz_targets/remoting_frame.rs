//! The remoting frame decoder, as a connection feeds it: arbitrary bytes from a peer.
//!
//! The oracles live in `sluice_fuzz::targets::remoting_frame`, shared with the replay of the seed
//! corpus that runs in the normal test suite (`server/tests/it/fuzz_replay.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::targets::remoting_frame::run(data));
