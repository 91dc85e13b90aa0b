//! The answers to open challenges: TLS-ALPN-01 certificates by name (RFC 8737) and HTTP-01 key
//! authorizations by token. An order opens them through a [`ChallengeGuard`], which closes
//! them when the order ends however it ends (done, failed, timed out).

use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::base::FastMap;

#[derive(Default)]
pub struct Challenges {
    alpn: FastMap<String, Arc<CertifiedKey>>,
    http: FastMap<String, Arc<str>>,
}

impl Challenges {
    pub fn alpn(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.get(name).map(|entry| entry.value().clone())
    }

    pub fn http(&self, token: &str) -> Option<Arc<str>> {
        self.http.get(token).map(|entry| entry.value().clone())
    }

    /// Open challenges (both kinds), for tests and the leak check.
    pub fn open_count(&self) -> usize {
        self.alpn.len() + self.http.len()
    }
}

/// The challenges one order opened; closed on drop.
pub struct ChallengeGuard {
    challenges: Arc<Challenges>,
    alpn_names: Vec<String>,
    http_tokens: Vec<String>,
}

impl ChallengeGuard {
    pub fn new(challenges: Arc<Challenges>) -> ChallengeGuard {
        ChallengeGuard {
            challenges,
            alpn_names: Vec::new(),
            http_tokens: Vec::new(),
        }
    }

    /// Answers TLS-ALPN-01 for `name` with a self-signed certificate carrying `digest` (the
    /// SHA-256 of the key authorization) in the acmeIdentifier extension.
    pub fn open_alpn(&mut self, name: &str, digest: &[u8]) -> Result<(), String> {
        let key = alpn_certificate(name, digest)?;
        self.challenges.alpn.insert(name.to_owned(), key);
        self.alpn_names.push(name.to_owned());
        Ok(())
    }

    pub fn open_http(&mut self, token: &str, key_authorization: &str) {
        self.challenges
            .http
            .insert(token.to_owned(), Arc::from(key_authorization));
        self.http_tokens.push(token.to_owned());
    }
}

impl Drop for ChallengeGuard {
    fn drop(&mut self) {
        for name in &self.alpn_names {
            self.challenges.alpn.remove(name);
        }
        for token in &self.http_tokens {
            self.challenges.http.remove(token);
        }
    }
}

fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let failed = |e: rcgen::Error| format!("TLS-ALPN-01 certificate for {name}: {e}");
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(failed)?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension the challenge requires.
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
        .map_err(|e| format!("TLS-ALPN-01 certificate for {name}: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_closes_what_it_opened() {
        let challenges = Arc::new(Challenges::default());
        {
            let mut guard = ChallengeGuard::new(challenges.clone());
            guard.open_alpn("a.example.com", &[7; 32]).unwrap();
            guard.open_http("tok", "tok.thumb");
            assert!(challenges.alpn("a.example.com").is_some());
            assert_eq!(challenges.http("tok").as_deref(), Some("tok.thumb"));
            assert!(challenges.alpn("b.example.com").is_none());
        }
        assert_eq!(challenges.open_count(), 0);
    }

    #[test]
    fn alpn_certificate_names_the_host_and_carries_the_digest() {
        let key = alpn_certificate("a.example.com", &[9; 32]).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        // id-pe-acmeIdentifier, RFC 8737
        let oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31]).unwrap();
        let extension = cert
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .expect("acmeIdentifier extension");
        assert!(extension.critical);
        assert!(extension.value.ends_with(&[9; 32]));
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[DNSName(\"a.example.com\")]"
        );
    }
}
