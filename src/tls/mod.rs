//! TLS: certificates chosen by SNI (exact names, then `*.` wildcards, then a default), swapped
//! atomically on reload. (`sandgate certs dev`, the local CA for development, is in `cli::certs`.)

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub mod acme;

pub use crate::config::tls::{CertPair, TlsConfig};
use acme::Acme;

/// Certificates by name, built whole from files, then swapped in at once.
#[derive(Debug)]
struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    fn load(config: &TlsConfig) -> Result<CertStore, String> {
        if config.certs.is_empty() {
            return Err("tls.certs lists no certificate".into());
        }
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let mut store = CertStore {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
        };
        for pair in &config.certs {
            let (key, names) = load_pair(pair, &provider)?;
            for name in names {
                match name.strip_prefix("*.") {
                    Some(parent) => store.wildcard.insert(parent.to_string(), key.clone()),
                    None => store.exact.insert(name, key.clone()),
                };
            }
            if store.default.is_none() && config.unknown_sni == "default" {
                store.default = Some(key);
            }
        }
        Ok(store)
    }

    #[cfg(test)]
    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        sni.and_then(|sni| self.named(&normalized(sni)))
            .or_else(|| self.default.clone())
    }

    /// A certificate naming `sni` (lower-case, no trailing dot), exactly or by wildcard.
    fn named(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(key) = self.exact.get(sni) {
            return Some(key.clone());
        }
        let (_, parent) = sni.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

fn load_pair(
    pair: &CertPair,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pair.cert)
        .map_err(|e| format!("{}: {e}", pair.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", pair.cert.display()))?;
    let Some(leaf) = chain.first() else {
        return Err(format!(
            "{}: no certificate in the file",
            pair.cert.display()
        ));
    };
    let names = dns_names(leaf).map_err(|e| format!("{}: {e}", pair.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&pair.key)
        .map_err(|e| format!("{}: {e}", pair.key.display()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        format!(
            "{} does not match {}: {e}",
            pair.key.display(),
            pair.cert.display()
        )
    })?;
    Ok((Arc::new(certified), names))
}

/// The DNS names in a certificate's subjectAltName, lower-cased.
fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("bad certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
        .ok_or("the certificate has no subjectAltName")?;
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
            _ => None,
        })
        .collect())
}

fn normalized(sni: &str) -> String {
    sni.trim_end_matches('.').to_ascii_lowercase()
}

/// The rustls certificate resolver: the configured files first, then the certificates obtained
/// by ACME, then the default. `reload` swaps every file's certificate at once or none.
pub struct CertResolver {
    store: ArcSwap<CertStore>,
    acme: Option<Arc<Acme>>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("acme", &self.acme.is_some())
            .finish_non_exhaustive()
    }
}

impl CertResolver {
    pub fn new(config: &TlsConfig, acme: Option<Arc<Acme>>) -> Result<CertResolver, String> {
        Ok(CertResolver {
            store: ArcSwap::from_pointee(CertStore::load(config)?),
            acme,
        })
    }

    pub fn reload(&self, config: &TlsConfig) -> Result<(), String> {
        self.store.store(Arc::new(CertStore::load(config)?));
        Ok(())
    }

    /// Does a handshake for `sni` need a certificate obtained on demand first? (Only when ACME
    /// is on and neither a file nor an obtained certificate names it.)
    pub fn needs_order(&self, sni: &str) -> Option<(&Arc<Acme>, String)> {
        let acme = self.acme.as_ref()?;
        let name = normalized(sni);
        if self.store.load().named(&name).is_some() || acme.held(&name).is_some() {
            return None;
        }
        Some((acme, name))
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let store = self.store.load();
        let Some(sni) = client_hello.server_name() else {
            return store.default.clone();
        };
        let name = normalized(sni);
        store
            .named(&name)
            .or_else(|| self.acme.as_ref().and_then(|acme| acme.held(&name)))
            .or_else(|| store.default.clone())
    }
}

/// TLS-ALPN-01: a handshake offering `acme-tls/1` gets the challenge certificate for its name.
struct AlpnChallenge(Arc<Acme>);

impl std::fmt::Debug for AlpnChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlpnChallenge")
    }
}

impl ResolvesServerCert for AlpnChallenge {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0
            .alpn_challenge(&normalized(client_hello.server_name()?))
    }
}

pub use acme::ACME_TLS_ALPN;

/// The server config that answers TLS-ALPN-01 challenges, and nothing else.
pub fn challenge_config(acme: Arc<Acme>) -> Result<Arc<rustls::ServerConfig>, String> {
    challenge_config_with(Arc::new(AlpnChallenge(acme)))
}

/// A TLS-ALPN-01 server config: `acme-tls/1` as the only protocol, certificates by `resolver`.
fn challenge_config_with(
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A rustls server config: TLS 1.2 and 1.3 only, ALPN h2 then http/1.1.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::cli::certs::generate_dev_certs;

    fn pair(dir: &Path, domain: &str) -> CertPair {
        let [_, cert, key] = generate_dev_certs(dir, domain).unwrap();
        CertPair { cert, key }
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = pair(dir.path(), "a.test");
        let b = pair(dir.path(), "b.test");
        let config = TlsConfig {
            certs: vec![a, b],
            ..TlsConfig::default()
        };
        let store = CertStore::load(&config).unwrap();
        let first = store.find(Some("a.test")).unwrap();
        let second = store.find(Some("3000-x.B.test")).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(Arc::ptr_eq(&store.find(Some("x.a.test")).unwrap(), &first));
        assert!(
            Arc::ptr_eq(&store.find(Some("y.x.b.test")).unwrap(), &first),
            "wildcards cover one label; else default"
        );
        assert!(Arc::ptr_eq(&store.find(None).unwrap(), &first));

        let refuse = TlsConfig {
            unknown_sni: "refuse".into(),
            ..config
        };
        let store = CertStore::load(&refuse).unwrap();
        assert!(store.find(Some("other.test")).is_none());
        assert!(store.find(Some("x.b.test")).is_some());
    }

    #[test]
    fn a_corrupt_certificate_is_rejected_and_the_old_one_stays() {
        let dir = tempfile::tempdir().unwrap();
        let good = pair(dir.path(), "a.test");
        let config = TlsConfig {
            certs: vec![good.clone()],
            ..TlsConfig::default()
        };
        let resolver = CertResolver::new(&config, None).unwrap();
        std::fs::write(&good.cert, "not a certificate").unwrap();
        assert!(resolver.reload(&config).is_err());
        assert!(resolver.store.load().find(Some("a.test")).is_some());
    }
}
