//! TLS for remoting connections (rustls, ring): server and client settings from PEM files,
//! and the stream halves both sides read and write through.
//!
//! RocketMQ frames start with a 4-byte big-endian length; a TLS connection starts with a
//! handshake record, first byte 0x16. No frame under 352 MiB starts with 0x16, and frames are
//! capped far below that, so a server can tell the two apart from the first byte and serve
//! both on one port ([`TlsMode::Permissive`], as RocketMQ's `tls.server.mode=permissive`).

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The first byte of a TLS handshake record.
pub const HANDSHAKE_BYTE: u8 = 0x16;

/// A boxed read half: plain TCP or TLS.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed write half: plain TCP or TLS.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Why TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    Pem {
        /// "certificate", "private key" or "CA certificate".
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, say).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Whether a server also accepts plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS and plaintext on the same port, told apart by the first byte.
    Permissive,
    /// TLS only: a plaintext connection is closed unanswered.
    Enforcing,
}

/// A server's TLS side: its certificate and whether plaintext is still served.
#[derive(Clone)]
pub struct ServerTls {
    /// Accepts handshakes with the server's certificate.
    pub acceptor: TlsAcceptor,
    /// Plaintext too, or TLS only.
    pub mode: TlsMode,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish()
    }
}

/// A client's TLS side: the trust anchors and the name to verify.
#[derive(Clone)]
pub struct ClientTls {
    /// Handshakes trusting the configured CA certificates.
    pub connector: TlsConnector,
    /// The name the server's certificate must carry; `None`: the address's IP.
    pub server_name: Option<String>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in `ca_pem` (a self-signed server certificate is its own CA).
    pub fn from_ca_file(ca_pem: &Path, server_name: Option<String>) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca_pem, "CA certificate")? {
            roots.add(cert).map_err(TlsError::Config)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The name verified when connecting to `addr`.
    pub fn name_for(&self, addr: SocketAddr) -> Result<ServerName<'static>, String> {
        match &self.server_name {
            Some(n) => {
                ServerName::try_from(n.clone()).map_err(|e| format!("server name {n:?}: {e}"))
            }
            None => Ok(ServerName::IpAddress(addr.ip().into())),
        }
    }
}

impl ServerTls {
    /// The certificate chain in `cert_pem` with the private key in `key_pem`.
    pub fn from_files(cert_pem: &Path, key_pem: &Path, mode: TlsMode) -> Result<Self, TlsError> {
        let certs = read_certs(cert_pem, "certificate")?;
        let key = PrivateKeyDer::from_pem_file(key_pem).map_err(|e| TlsError::Pem {
            what: "private key",
            path: key_pem.display().to_string(),
            reason: e.to_string(),
        })?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            mode,
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |reason: String| TlsError::Pem {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no certificate in the file".into()));
    }
    Ok(certs)
}

/// Splits any duplex stream into boxed halves.
pub fn split<S>(stream: S) -> (ReadHalf, WriteHalf)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    (Box::new(rd), Box::new(wr))
}
