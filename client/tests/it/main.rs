//! Every integration test of sluice-client, in one binary: one link and one executable on
//! disk instead of one per file, which keeps a clean build of the workspace small.
//! Shared helpers come first; each other module is one area of behaviour.

mod common;

mod acl;
mod idempotent;
mod producer;
mod pull_consumer;
mod push_consumer;
mod transaction_broker;
mod transaction_fake_broker;
