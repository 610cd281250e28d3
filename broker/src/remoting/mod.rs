//! The server side of remoting over TCP (connections, framing and the client live in
//! `sluice-remoting`, shared with the Rust client).
//!
//! - `server`: accept loop, per-request tasks, panic containment.
//! - `budget`: what running requests may hold: slots per connection, bytes per connection
//!   and per server.
//! - `registry`: [`ConnectionRegistry`], open connections by id.
//! - `tracker`: live-task counting for bounded graceful shutdown.

mod budget;
#[cfg(test)]
mod budget_tests;
mod registry;
pub(crate) mod server;
pub(crate) mod tracker;

pub use registry::ConnectionRegistry;
pub use sluice_remoting::{ClientOptions, ConnectionHandle, RemotingClient};
