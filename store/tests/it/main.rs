//! Every integration test of sluice-store, in one binary: one link and one executable on
//! disk instead of one per file, which keeps a clean build of the workspace small.
//! Shared helpers come first; each other module is one area of behaviour.

mod common;

mod append_read;
mod crash;
mod faults;
mod floors;
mod power_cut;
mod recovery;
mod retention;
mod warm;
