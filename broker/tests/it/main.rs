//! Every integration test of sluice-broker, in one binary: one link and one executable on
//! disk instead of one per file, which keeps a clean build of the workspace small.
//! Shared helpers come first; each other module is one area of behaviour.

mod common;

mod acl;
mod admin_tools;
mod consumers;
mod dlq_replay;
mod extensions;
mod hostile_input;
mod lease;
mod limits;
mod long_polling;
mod namesrv;
mod restart;
mod retry_send_back;
mod send_pull;
