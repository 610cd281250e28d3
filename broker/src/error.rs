//! Typed errors of the broker crate.
//!
//! [`BrokerError`] for starting and running a server; [`RemotingError`] (from
//! `sluice-remoting`) for one conversation over a connection. Errors a *client* causes never become either of these:
//! they are answered on the wire with a response code and a remark (see `processor::reply`).

use std::net::SocketAddr;
use std::path::PathBuf;

pub use sluice_remoting::RemotingError;

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
