//! Every integration test of sluice-server, in one binary: one link and one executable on
//! disk instead of one per file, which keeps a clean build of the workspace small.
//! Shared helpers come first; each other module is one area of behaviour.

mod common;
mod cpp_driver;
mod txn_common;

mod acl_cpp;
mod binary;
mod body_limit_lowered;
mod compat_cpp;
mod crash_loop;
mod crash_points;
mod crash_produce;
mod disk_full;
mod fuzz_replay;
mod replay_crash;
mod retry_cpp;
mod state_lost;
mod timers_crash;
mod tls;
mod txn_cpp;
mod txn_crash;
mod txn_delayed;
