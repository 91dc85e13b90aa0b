//! The signed identity header: when a user's credential (an OIDC session, a bearer JWT, an API
//! key) opened a sandbox, the request reaches the app with `X-Sandgate-Identity: <JWT>` signed
//! by the proxy's own key (EdDSA or ES256), claims `sub`, `org`, `kind`, `aud` =
//! `<sandboxId>:<port>`, `iat`, `exp` (at most 60 s later) and `iss`. The public keys are served
//! as a JWKS on the proxy's own host ([`JWKS_PATH`]).
//!
//! Preview tokens, signed links and public access carry no identity (they name no user), and
//! neither does toolbox traffic (it goes to the platform's daemon, not to an app). A client's
//! own header of that name is removed on every route (`http::gate`), enabled or not.
//!
//! Signing costs tens of µs, so a token is reused for the same (subject, org, kind, audience)
//! while more than half its life is left: a small bounded map, locked (per shard) only around
//! the lookup and the insert. Each serving thread keeps the parsed key ([`PARSED`]).

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::crypto::{rust_crypto::DEFAULT_PROVIDER, JwtSigner};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use crate::config::identity::{IdentityAlgorithm, IdentityConfig};

pub const IDENTITY_HEADER: HeaderName = HeaderName::from_static("x-sandgate-identity");
pub const JWKS_PATH: &str = "/.well-known/sandgate-jwks.json";
/// Tokens remembered for reuse; past this the stale ones go, or all of them.
const MAX_CACHED: usize = 4096;

/// Which kind of user credential opened the sandbox (the `kind` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubjectKind {
    Oidc,
    Jwt,
    ApiKey,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Oidc => "oidc",
            SubjectKind::Jwt => "jwt",
            SubjectKind::ApiKey => "api_key",
        }
    }
}

/// The user a credential speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub kind: SubjectKind,
    pub sub: Arc<str>,
    /// The organisation (`None`: the sandbox's).
    pub org: Option<Arc<str>>,
}

impl Subject {
    /// An API key's stable, non-secret id: `api-key:` and the first 16 hex digits of its SHA-256.
    pub fn api_key(sha256: &[u8; 32], org: Option<&str>) -> Subject {
        Subject {
            kind: SubjectKind::ApiKey,
            sub: format!("api-key:{}", hex::encode(&sha256[..8])).into(),
            org: org.map(Into::into),
        }
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    org: Option<&'a str>,
    kind: &'static str,
    aud: String,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

struct Cached {
    subject: Subject,
    sandbox: Box<str>,
    port: u16,
    value: HeaderValue,
    /// Unix seconds after which a new token is signed (half its life).
    reuse_until: u64,
}

/// Which [`IdentitySigner`] a thread's [`PARSED`] key belongs to (a reload makes a new one).
static GENERATION: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's parsed signing key: `jsonwebtoken::encode` parses the PKCS#8 key again on
    /// every call (about half of a signature's cost), and the parsed signer is not `Send`.
    static PARSED: RefCell<Option<(u64, Box<dyn JwtSigner>)>> = const { RefCell::new(None) };
}

/// The signing key, the published JWKS and the reuse cache.
pub struct IdentitySigner {
    key: EncodingKey,
    header: Header,
    /// `base64url(header).`: the start of every token.
    head: String,
    generation: u64,
    ttl: u64,
    issuer: Option<Box<str>>,
    all_sandboxes: bool,
    jwks: Bytes,
    hasher: foldhash::fast::RandomState,
    /// Sharded: requests on every serving thread look it up; no guard is held across an await.
    cache: dashmap::DashMap<u64, Cached>,
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentitySigner({:?})", self.header.kid)
    }
}

impl IdentitySigner {
    /// `None` when `[identity]` is off. Reads every key file; errors name the key.
    pub fn from_config(c: &IdentityConfig) -> Result<Option<IdentitySigner>, String> {
        if !c.enabled {
            return Ok(None);
        }
        let mut signing = None;
        let mut jwks = JwkSet { keys: Vec::new() };
        for (i, k) in c.keys.iter().enumerate() {
            let name = format!("identity.keys[{i}] (kid {:?})", k.kid);
            let pem = std::fs::read(&k.private_key_file).map_err(|e| {
                format!("{name}: cannot read {}: {e}", k.private_key_file.display())
            })?;
            let (key, alg) = match k.algorithm {
                IdentityAlgorithm::EdDSA => (
                    EncodingKey::from_ed_pem(&pem).map(pkcs8_v1_ed25519),
                    Algorithm::EdDSA,
                ),
                IdentityAlgorithm::ES256 => (EncodingKey::from_ec_pem(&pem), Algorithm::ES256),
            };
            let key =
                key.map_err(|e| format!("{name}: not a PKCS#8 PEM private key for {alg:?}: {e}"))?;
            let mut header = Header::new(alg);
            header.kid = Some(k.kid.clone());
            jsonwebtoken::encode(&header, &serde_json::json!({}), &key)
                .map_err(|e| format!("{name}: cannot sign with this key: {e}"))?;
            let mut jwk = Jwk::from_encoding_key(&key, alg)
                .map_err(|e| format!("{name}: no public key: {e}"))?;
            jwk.common.key_id = Some(k.kid.clone());
            jwk.common.public_key_use = Some(PublicKeyUse::Signature);
            jwks.keys.push(jwk);
            signing.get_or_insert((key, header));
        }
        let Some((key, header)) = signing else {
            return Err("identity.enabled needs at least one [[identity.keys]] entry".into());
        };
        let jwks = serde_json::to_vec(&jwks).map_err(|e| format!("identity: JWKS: {e}"))?;
        let header_json = serde_json::to_vec(&header).map_err(|e| format!("identity: {e}"))?;
        let mut head = URL_SAFE_NO_PAD.encode(header_json);
        head.push('.');
        Ok(Some(IdentitySigner {
            key,
            header,
            head,
            generation: GENERATION.fetch_add(1, Ordering::Relaxed),
            ttl: c.ttl.as_secs(),
            issuer: (!c.issuer.is_empty()).then(|| c.issuer.as_str().into()),
            all_sandboxes: c.all_sandboxes,
            jwks: Bytes::from(jwks),
            hasher: foldhash::fast::RandomState::default(),
            cache: dashmap::DashMap::new(),
        }))
    }

    /// The JWKS document (public keys only).
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }

    /// Does this sandbox get identity headers?
    pub fn applies(&self, sandbox_opted_in: bool) -> bool {
        self.all_sandboxes || sandbox_opted_in
    }

    /// The header value for `subject` entering `sandbox` on `port`: a cached token while more
    /// than half its life is left, else a fresh one. `None` if signing failed (logged).
    pub fn header(
        &self,
        subject: &Subject,
        sandbox: &str,
        sandbox_org: Option<&str>,
        port: u16,
    ) -> Option<HeaderValue> {
        let now = crate::base::clock::now_unix();
        let key = (
            subject.kind,
            &*subject.sub,
            subject.org.as_deref(),
            sandbox,
            port,
        );
        let hash = self.hasher.hash_one(key);
        // The map's guard ends with this statement: the insert below cannot wait for it.
        let reused = self
            .cache
            .get(&hash)
            .filter(|c| {
                c.reuse_until > now
                    && c.port == port
                    && *c.sandbox == *sandbox
                    && c.subject == *subject
            })
            .map(|c| c.value.clone());
        if reused.is_some() {
            return reused;
        }
        let value = self.sign(subject, sandbox, sandbox_org, port, now)?;
        if self.cache.len() >= MAX_CACHED {
            self.cache.retain(|_, c| c.reuse_until > now);
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
        }
        let cached = Cached {
            subject: subject.clone(),
            sandbox: sandbox.into(),
            port,
            value: value.clone(),
            reuse_until: now + self.ttl / 2,
        };
        self.cache.insert(hash, cached);
        Some(value)
    }

    fn sign(
        &self,
        subject: &Subject,
        sandbox: &str,
        sandbox_org: Option<&str>,
        port: u16,
        now: u64,
    ) -> Option<HeaderValue> {
        let claims = Claims {
            sub: &subject.sub,
            org: subject.org.as_deref().or(sandbox_org),
            kind: subject.kind.as_str(),
            aud: format!("{sandbox}:{port}"),
            iat: now,
            exp: now + self.ttl,
            iss: self.issuer.as_deref(),
        };
        let payload = serde_json::to_vec(&claims).ok()?;
        let mut token = String::with_capacity(self.head.len() + payload.len() * 4 / 3 + 100);
        token.push_str(&self.head);
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        match self.signature(token.as_bytes()) {
            Ok(signature) => {
                token.push('.');
                URL_SAFE_NO_PAD.encode_string(signature, &mut token);
                HeaderValue::try_from(token).ok()
            }
            Err(e) => {
                tracing::warn!(error = %e, "signing an identity token failed");
                None
            }
        }
    }

    /// The JWS signature of `message` with this thread's parsed copy of the key.
    fn signature(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        PARSED.with_borrow_mut(|parsed| {
            let current = parsed.as_ref().filter(|(g, _)| *g == self.generation);
            if current.is_none() {
                let signer = (DEFAULT_PROVIDER.signer_factory)(&self.header.alg, &self.key)
                    .map_err(|e| e.to_string())?;
                *parsed = Some((self.generation, signer));
            }
            let (_, signer) = parsed.as_ref().ok_or("no signer")?;
            signer.try_sign(message).map_err(|e| e.to_string())
        })
    }
}

/// An Ed25519 key in the PKCS#8 v1 form (`openssl genpkey` writes it; v2, which some tools
/// write, adds the public key), the one `jsonwebtoken` derives the JWK from.
fn pkcs8_v1_ed25519(key: EncodingKey) -> EncodingKey {
    const V1_PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let der = key.as_bytes();
    if der.len() == 48 {
        return key;
    }
    // The seed follows `OCTET STRING (34) { OCTET STRING (32) }` after the algorithm.
    let seed = der
        .windows(4)
        .position(|w| w == [0x04, 0x22, 0x04, 0x20])
        .and_then(|at| der.get(at + 4..at + 36));
    match seed {
        Some(seed) => EncodingKey::from_ed_der(&[&V1_PREFIX[..], seed].concat()),
        None => key,
    }
}

/// Writes a new private key for `algorithm` to `out` as PKCS#8 PEM, readable by its owner only;
/// never overwrites a file.
pub fn keygen(out: &std::path::Path, algorithm: IdentityAlgorithm) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let alg = match algorithm {
        IdentityAlgorithm::EdDSA => &rcgen::PKCS_ED25519,
        IdentityAlgorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let pem = rcgen::KeyPair::generate_for(alg)
        .map_err(|e| format!("generating a key: {e}"))?
        .serialize_pem();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    file.write_all(pem.as_bytes())
        .map_err(|e| format!("{}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::identity::IdentityKey;
    use jsonwebtoken::{decode, DecodingKey, Validation};

    const ED_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIOmSCqM93i9aL3TGxWi+rzMxieO5iUvG63i4SGYpwXFg\n-----END PRIVATE KEY-----\n";

    fn signer(dir: &tempfile::TempDir) -> IdentitySigner {
        let path = dir.path().join("ed.pem");
        std::fs::write(&path, ED_PEM).unwrap();
        let config = IdentityConfig {
            enabled: true,
            keys: vec![IdentityKey {
                kid: "k1".into(),
                algorithm: IdentityAlgorithm::EdDSA,
                private_key_file: path,
            }],
            ..IdentityConfig::default()
        };
        IdentitySigner::from_config(&config).unwrap().unwrap()
    }

    fn user(sub: &str) -> Subject {
        Subject {
            kind: SubjectKind::Jwt,
            sub: sub.into(),
            org: Some("org-1".into()),
        }
    }

    #[test]
    fn tokens_are_reused_per_subject_and_audience_and_verify_with_the_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let s = signer(&dir);
        let a = s.header(&user("alice"), "sbx-a", None, 3000).unwrap();
        assert_eq!(s.header(&user("alice"), "sbx-a", None, 3000).unwrap(), a);
        assert_ne!(s.header(&user("alice"), "sbx-a", None, 3001).unwrap(), a);
        assert_ne!(s.header(&user("alice"), "sbx-b", None, 3000).unwrap(), a);
        assert_ne!(s.header(&user("bob"), "sbx-a", None, 3000).unwrap(), a);

        let set: JwkSet = serde_json::from_slice(&s.jwks()).unwrap();
        let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["sbx-a:3000"]);
        let claims = decode::<serde_json::Value>(a.to_str().unwrap(), &key, &v)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["org"], "org-1");
        assert_eq!(claims["kind"], "jwt");
        assert_eq!(claims["iss"], "sandgate");
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            60
        );
        v.set_audience(&["sbx-b:3000"]);
        assert!(decode::<serde_json::Value>(a.to_str().unwrap(), &key, &v).is_err());
    }

    #[test]
    fn generated_keys_load_and_sign_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<IdentityKey> = [IdentityAlgorithm::EdDSA, IdentityAlgorithm::ES256]
            .into_iter()
            .enumerate()
            .map(|(i, algorithm)| {
                let path = dir.path().join(format!("k{i}.pem"));
                keygen(&path, algorithm).unwrap();
                assert!(keygen(&path, algorithm).is_err(), "never overwrites");
                IdentityKey {
                    kid: format!("k{i}"),
                    algorithm,
                    private_key_file: path,
                }
            })
            .collect();
        let config = IdentityConfig {
            enabled: true,
            keys,
            ..IdentityConfig::default()
        };
        let signer = IdentitySigner::from_config(&config).unwrap().unwrap();
        let jwks: serde_json::Value = serde_json::from_slice(&signer.jwks()).unwrap();
        assert_eq!(jwks["keys"][0]["kty"], "OKP");
        assert_eq!(jwks["keys"][1]["kty"], "EC");
        let token = signer.header(&user("a"), "s", None, 1).unwrap();
        let set: JwkSet = serde_json::from_slice(&signer.jwks()).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["s:1"]);
        let key = DecodingKey::from_jwk(&set.keys[0]).unwrap();
        assert!(decode::<serde_json::Value>(token.to_str().unwrap(), &key, &v).is_ok());
    }

    #[test]
    fn the_jwks_has_public_parts_only() {
        let dir = tempfile::tempdir().unwrap();
        let jwks: serde_json::Value = serde_json::from_slice(&signer(&dir).jwks()).unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(key["kty"], "OKP");
        assert_eq!(key["kid"], "k1");
        assert!(key.get("d").is_none(), "{key}");
    }

    #[test]
    fn key_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ed.pem");
        std::fs::write(&path, ED_PEM).unwrap();
        let config = |alg, file: std::path::PathBuf| IdentityConfig {
            enabled: true,
            keys: vec![IdentityKey {
                kid: "rot-2".into(),
                algorithm: alg,
                private_key_file: file,
            }],
            ..IdentityConfig::default()
        };
        for c in [
            config(IdentityAlgorithm::ES256, path.clone()),
            config(IdentityAlgorithm::EdDSA, dir.path().join("missing.pem")),
        ] {
            let e = IdentitySigner::from_config(&c).unwrap_err();
            assert!(e.contains("identity.keys[0] (kid \"rot-2\")"), "{e}");
        }
        assert!(IdentitySigner::from_config(&IdentityConfig::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn api_key_subjects_are_stable_and_not_the_key() {
        let hash = crate::registry::sha256("secret-key");
        let s = Subject::api_key(&hash, None);
        assert_eq!(s.sub.len(), "api-key:".len() + 16);
        assert_eq!(s, Subject::api_key(&hash, None));
        assert!(!s.sub.contains("secret"));
    }
}
