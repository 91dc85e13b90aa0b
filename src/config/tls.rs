//! `[tls]`: the HTTPS listener and its certificates.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Serve HTTPS on `listen`.
    pub enabled: bool,
    #[serde(with = "super::listen")]
    pub listen: std::net::SocketAddr,
    /// Certificate/key PEM pairs; each certificate serves the DNS names in its SAN list.
    pub certs: Vec<CertPair>,
    /// An SNI no certificate names (or no SNI): `default` serves the first pair, `refuse`
    /// fails the handshake.
    pub unknown_sni: String,
    /// A client must finish the handshake within this.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The plaintext listener (`server.listen`) redirects to HTTPS (except `/health`).
    pub redirect_plaintext: bool,
    /// `listen` expects a PROXY protocol header first, from a trusted proxy (see
    /// `server.proxy_protocol`).
    pub proxy_protocol: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: false,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8443)),
            certs: Vec::new(),
            unknown_sni: "default".into(),
            handshake_timeout: Duration::from_secs(10),
            redirect_plaintext: false,
            proxy_protocol: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}
