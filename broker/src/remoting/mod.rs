//! Remoting over TCP: what both servers and the client share.
//!
//! - `connection`: [`ConnectionHandle`], one duplex connection (send, invoke, close).
//! - `io`: the frame reader and the writer task.
//! - `server`: accept loop, per-request tasks, in-flight limits, panic containment.
//! - `registry`: [`ConnectionRegistry`], open connections by id.
//! - `client`: [`RemotingClient`].
//! - `tracker`: live-task counting for bounded graceful shutdown.

mod client;
mod connection;
mod io;
mod registry;
pub(crate) mod server;
pub(crate) mod tracker;

pub use client::{ClientOptions, RemotingClient};
pub use connection::ConnectionHandle;
pub use registry::ConnectionRegistry;
