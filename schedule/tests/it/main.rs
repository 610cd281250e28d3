//! Every integration test of sluice-schedule, in one binary: one link and one executable on
//! disk instead of one per file, which keeps a clean build of the workspace small.
//! Shared helpers come first; each other module is one area of behaviour.

mod common;

mod cancel;
mod crash;
mod many_timers;
mod resent;
mod send_path;
