//! Every integration test of sluice-http, in one binary: one link and one executable on
//! disk instead of one per file, which keeps a clean build of the workspace small.
//! Shared helpers come first; each other module is one area of behaviour.

mod common;

mod admin;
mod console;
mod consume;
mod dlq;
mod health;
mod limits;
mod lookup;
mod produce;
mod schedule;
mod schemathesis;
mod skeleton;
mod txn;
