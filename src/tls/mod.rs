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

    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = sni else {
            return self.default.clone();
        };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(key) = self.exact.get(&sni) {
            return Some(key.clone());
        }
        if let Some((_, parent)) = sni.split_once('.') {
            if let Some(key) = self.wildcard.get(parent) {
                return Some(key.clone());
            }
        }
        self.default.clone()
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

/// The rustls certificate resolver; `reload` swaps every certificate at once or none.
#[derive(Debug)]
pub struct CertResolver {
    store: ArcSwap<CertStore>,
}

impl CertResolver {
    pub fn new(config: &TlsConfig) -> Result<CertResolver, String> {
        Ok(CertResolver {
            store: ArcSwap::from_pointee(CertStore::load(config)?),
        })
    }

    pub fn reload(&self, config: &TlsConfig) -> Result<(), String> {
        self.store.store(Arc::new(CertStore::load(config)?));
        Ok(())
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().find(client_hello.server_name())
    }
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
        let resolver = CertResolver::new(&config).unwrap();
        std::fs::write(&good.cert, "not a certificate").unwrap();
        assert!(resolver.reload(&config).is_err());
        assert!(resolver.store.load().find(Some("a.test")).is_some());
    }
}
