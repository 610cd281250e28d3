//! Typed errors of the broker crate.
//!
//! Two enums: [`RemotingError`] for one conversation over a connection (what a caller of
//! [`crate::RemotingClient`] or [`crate::ConnectionHandle`] can get back), and [`BrokerError`]
//! for starting and running a server. Errors a *client* causes never become either of these:
//! they are answered on the wire with a response code and a remark (see `processor::reply`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why a request over a connection did not get its response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemotingError {
    /// The TCP connection could not be made.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting took longer than allowed.
    #[error("connect to {addr} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The peer.
        addr: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// No response arrived in time. The request may still have been executed.
    #[error("request code {code} (opaque {opaque}) to {remote} timed out after {timeout:?}")]
    Timeout {
        /// The request code.
        code: i32,
        /// The opaque the request went out with.
        opaque: i32,
        /// The peer.
        remote: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The connection is closed (or closed while waiting).
    #[error("connection to {0} is closed")]
    Closed(SocketAddr),
    /// The command could not be encoded as a frame.
    #[error("cannot encode command: {0}")]
    Encode(#[from] sluice_protocol::remoting::EncodeError),
}

/// Why a server could not start or stopped working.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The listening socket could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The storage engine failed to open or shut down.
    #[error("store: {0}")]
    Store(#[from] sluice_store::StoreError),
    /// A configuration or state file could not be read or written.
    #[error("{op} {path}: {reason}")]
    StateFile {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The configuration is inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// A remoting conversation failed (name-server registration, for instance).
    #[error(transparent)]
    Remoting(#[from] RemotingError),
    /// A background task ended abnormally.
    #[error("task {0} failed: {1}")]
    Task(&'static str, String),
}
