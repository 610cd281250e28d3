//! The fuzz targets' bodies and oracles, one module per target, each with `run(data)`.
//!
//! They live in the library, not in `fuzz_targets/`, so that the normal test suite can replay
//! the seed corpora and a bounded number of mutations through exactly these oracles without
//! libFuzzer (`server/tests/it/fuzz_replay.rs`). Shared helpers are reached as
//! `super::super::…`, which resolves both here and where the test includes this folder.
//! (`server_config` compiles the server's config module from source and stays in its target.)

pub mod batch_body;
pub mod http_bodies;
pub mod properties;
pub mod remoting_frame;
pub mod segment_scan;
pub mod store_recovery;
pub mod stored_record;
