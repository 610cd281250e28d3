//! [`RemotingError`]: why one conversation over a connection did not get its response.

use std::net::SocketAddr;
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
    /// The TLS handshake failed (an untrusted certificate, a name mismatch, a plaintext peer).
    #[error("TLS with {addr}: {reason}")]
    Tls {
        /// The peer.
        addr: SocketAddr,
        /// What the handshake said.
        reason: String,
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
