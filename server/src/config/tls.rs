//! `[tls]`: TLS (rustls) for the name server and broker ports and for the HTTP facade.
//!
//! ```toml
//! [tls]
//! mode = "permissive"          # "disabled" (default), "permissive" (TLS and plaintext on
//!                              # one port, told apart by the first byte) or "enforcing"
//! cert_file = "/etc/sluice/server.pem"   # PEM certificate chain
//! key_file = "/etc/sluice/server.key"    # PEM private key (PKCS#8, PKCS#1 or SEC1)
//! http = true                  # HTTPS on the HTTP port (independent of `mode`)
//! ca_file = "/etc/sluice/ca.pem"         # trust for the broker's own outgoing connections
//!                                        # (registration with name servers); default cert_file
//! server_name = "sluice.internal"        # name verified on those; default the address's IP
//! ```
//! From the environment: `SLUICE_TLS_MODE=enforcing`, `SLUICE_TLS_CERT_FILE=...`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sluice_remoting::{ClientTls, ServerTls, TlsMode};

/// `[tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// `disabled`, `permissive` or `enforcing`, for the name server and broker ports.
    pub mode: String,
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    pub key_file: Option<PathBuf>,
    /// HTTPS on the HTTP facade's port. Default false.
    pub http: bool,
    /// CA certificates the broker trusts when it connects to name servers over TLS (only
    /// with `mode = "enforcing"`). Default: `cert_file` (a self-signed certificate).
    pub ca_file: Option<PathBuf>,
    /// The name those name servers' certificates must carry. Default: their IP address.
    pub server_name: Option<String>,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            mode: "disabled".into(),
            cert_file: None,
            key_file: None,
            http: false,
            ca_file: None,
            server_name: None,
        }
    }
}

/// The loaded settings, ready for each server.
#[derive(Debug, Clone, Default)]
pub struct LoadedTls {
    /// For the name server and broker ports.
    pub remoting: Option<ServerTls>,
    /// For the HTTP port.
    pub http: Option<ServerTls>,
    /// For the broker's registration with name servers.
    pub registration: Option<ClientTls>,
}

impl TlsSection {
    fn mode(&self) -> Result<Option<TlsMode>> {
        Ok(match self.mode.as_str() {
            "disabled" => None,
            "permissive" => Some(TlsMode::Permissive),
            "enforcing" => Some(TlsMode::Enforcing),
            other => bail!(
                "[tls] mode must be \"disabled\", \"permissive\" or \"enforcing\", not {other:?}"
            ),
        })
    }

    /// Reads the certificate and key (so a bad file stops the start with its name).
    pub fn load(&self) -> Result<LoadedTls> {
        let mode = self.mode()?;
        if mode.is_none() && !self.http {
            return Ok(LoadedTls::default());
        }
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
            bail!(
                "[tls] needs cert_file and key_file when mode is not \"disabled\" or http = true"
            );
        };
        let server = |mode| ServerTls::from_files(cert, key, mode).context("[tls]");
        let registration = match mode {
            Some(TlsMode::Enforcing) => {
                let ca = self.ca_file.as_ref().unwrap_or(cert);
                // Without ca_file the certificate is its own trust: a missing cert_file was
                // blamed on ca_file, which the operator never set.
                let which = if self.ca_file.is_some() {
                    "[tls] ca_file"
                } else {
                    "[tls] cert_file (also the trust for the broker's registration: ca_file is not set)"
                };
                Some(ClientTls::from_ca_file(ca, self.server_name.clone()).context(which)?)
            }
            _ => None,
        };
        Ok(LoadedTls {
            remoting: mode.map(server).transpose()?,
            http: self.http.then(|| server(TlsMode::Enforcing)).transpose()?,
            registration,
        })
    }
}
