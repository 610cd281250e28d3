//! # sluice-remoting
//!
//! RocketMQ remoting over TCP for async code: one duplex connection per peer, requests matched
//! to responses by opaque, and requests the peer sends on its own (a broker's
//! CHECK_TRANSACTION_STATE, NOTIFY_CONSUMER_IDS_CHANGED) delivered on a channel. It sits between
//! the sans-I/O `sluice-protocol` and both sides that talk: the broker's servers and the Rust
//! client. It keeps policy out: no retries, no reconnects, no routing.
//!
//! ## Layout
//! - [`connection`]: [`ConnectionHandle`], one duplex connection (send, invoke, close).
//! - [`io`]: the frame reader and the writer task, shared by servers and clients.
//! - [`client`]: [`RemotingClient`], an outgoing connection.
//! - [`tls`]: TLS settings (rustls) for servers and clients, from PEM files.
//! - [`error`]: [`RemotingError`], why a request got no response.

pub mod client;
pub mod connection;
pub mod error;
pub mod io;
pub mod tls;

pub use client::{ClientOptions, RemotingClient};
pub use connection::ConnectionHandle;
pub use error::RemotingError;
pub use tls::{ClientTls, ServerTls, TlsMode};
