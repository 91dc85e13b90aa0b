//! Bearer JWTs, verified locally with `jsonwebtoken`: HS256 with a shared secret, RS256/ES256
//! with keys from a JWKS URL (cached; refetched on an unknown `kid`, rate-limited).
//!
//! The algorithm is pinned by key type: HS256 only when a secret is configured, RS256 only
//! with an RSA JWK, ES256 only with a P-256 JWK; `none` and everything else are refused, so a
//! token cannot choose how it is checked (no algorithm confusion).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

use super::config::JwtConfig;
use super::http_client::HttpClient;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token expired")]
    Expired,
    #[error("token invalid: {0}")]
    Invalid(&'static str),
    /// Signed with one of our keys, but its claims do not admit it here (issuer, audience,
    /// validity period): still the platform's credential.
    #[error("token rejected: {0}")]
    Rejected(&'static str),
    #[error("signing keys unavailable")]
    KeysUnavailable,
    /// No key with this `kid`/algorithm (yet): perhaps a rotation the JWKS refetch has not
    /// caught up with, so the verdict must not be cached.
    #[error("no matching signing key")]
    UnknownKey,
}

/// What a verified token says.
#[derive(Debug, Clone)]
pub struct Verified {
    pub organization: Option<String>,
    /// The `sub` claim, when it is a string.
    pub subject: Option<String>,
    /// `exp` (unix seconds), when present.
    pub exp: Option<u64>,
    /// The OIDC `nonce` claim, when present.
    pub nonce: Option<String>,
}

/// Three non-empty base64url segments (the third may be empty only for `alg: none`, which is
/// still routed here so it is refused as a JWT rather than tried as an API key).
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && !parts[0].is_empty()
        && !parts[1].is_empty()
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    organization_claim: String,
}

impl JwtVerifier {
    pub fn from_config(c: &JwtConfig) -> Self {
        JwtVerifier {
            hs256: (!c.hs256_secret.is_empty())
                .then(|| DecodingKey::from_secret(c.hs256_secret.as_bytes())),
            jwks: (!c.jwks_url.is_empty())
                .then(|| Jwks::new(c.jwks_url.clone(), c.jwks_ttl, c.jwks_min_refetch)),
            issuer: non_empty(&c.issuer),
            audience: non_empty(&c.audience),
            leeway: c.leeway.as_secs(),
            organization_claim: c.organization_claim.clone(),
        }
    }

    /// Asymmetric keys only (OIDC ID tokens).
    pub fn for_oidc(jwks: Jwks, issuer: &str, audience: &str, org_claim: &str) -> Self {
        JwtVerifier {
            hs256: None,
            jwks: Some(jwks),
            issuer: non_empty(issuer),
            audience: non_empty(audience),
            leeway: 30,
            organization_claim: org_claim.into(),
        }
    }

    pub async fn verify(&self, token: &str, http: &HttpClient) -> Result<Verified, JwtError> {
        let header = decode_header(token).map_err(|_| JwtError::Invalid("malformed"))?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs256
                .clone()
                .ok_or(JwtError::Invalid("HS256 tokens are not accepted"))?,
            Algorithm::RS256 | Algorithm::ES256 => {
                let jwks = self
                    .jwks
                    .as_ref()
                    .ok_or(JwtError::Invalid("asymmetric tokens are not accepted"))?;
                jwks.key(header.kid.as_deref(), header.alg, http).await?
            }
            _ => return Err(JwtError::Invalid("algorithm not accepted")),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &self.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let data = decode::<serde_json::Value>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                // jsonwebtoken checks the signature before any claim.
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::InvalidIssuer => JwtError::Rejected("wrong issuer"),
                ErrorKind::InvalidAudience => JwtError::Rejected("wrong audience"),
                ErrorKind::ImmatureSignature => JwtError::Rejected("not yet valid"),
                ErrorKind::MissingRequiredClaim(_) => JwtError::Rejected("missing claim"),
                ErrorKind::InvalidSignature => JwtError::Invalid("bad signature"),
                _ => JwtError::Invalid("rejected"),
            }
        })?;
        let organization = match data.claims.get(&self.organization_claim) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        Ok(Verified {
            organization,
            subject: data
                .claims
                .get("sub")
                .and_then(|s| s.as_str())
                .map(str::to_string),
            exp: data.claims.get("exp").and_then(serde_json::Value::as_u64),
            nonce: data
                .claims
                .get("nonce")
                .and_then(|n| n.as_str())
                .map(str::to_string),
        })
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

struct KeyEntry {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Keys from a JWKS URL: fetched lazily, refreshed after `ttl`, refetched on an unknown `kid`
/// at most once per `min_refetch`. No lock is held across the fetch.
pub struct Jwks {
    url: String,
    ttl: Duration,
    min_refetch: Duration,
    keys: ArcSwap<Vec<KeyEntry>>,
    fetched: Mutex<Option<Instant>>,
    attempted: Mutex<Option<Instant>>,
}

impl Jwks {
    pub fn new(url: String, ttl: Duration, min_refetch: Duration) -> Self {
        Jwks {
            url,
            ttl,
            min_refetch,
            keys: ArcSwap::from_pointee(Vec::new()),
            fetched: Mutex::new(None),
            attempted: Mutex::new(None),
        }
    }

    async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        http: &HttpClient,
    ) -> Result<DecodingKey, JwtError> {
        let fresh = self
            .fetched
            .lock()
            .map(|f| f.is_some_and(|t| t.elapsed() < self.ttl))
            .unwrap_or(false);
        if fresh {
            if let Some(key) = self.find(kid, alg) {
                return Ok(key);
            }
        }
        // Stale, never fetched, or an unknown kid: refetch, unless we did so very recently.
        if self.may_fetch() {
            match http.get_json(&self.url).await {
                Ok(doc) => {
                    let keys = parse_jwks(&doc);
                    tracing::debug!(keys = keys.len(), url = %self.url, "JWKS fetched");
                    self.keys.store(Arc::new(keys));
                    if let Ok(mut f) = self.fetched.lock() {
                        *f = Some(Instant::now());
                    }
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed");
                    if self.keys.load().is_empty() {
                        return Err(JwtError::KeysUnavailable);
                    }
                }
            }
        }
        self.find(kid, alg).ok_or(JwtError::UnknownKey)
    }

    fn may_fetch(&self) -> bool {
        let Ok(mut attempted) = self.attempted.lock() else {
            return false;
        };
        let due = attempted.is_none_or(|t| t.elapsed() >= self.min_refetch);
        if due {
            *attempted = Some(Instant::now());
        }
        due
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let keys = self.keys.load();
        let mut candidates = keys.iter().filter(|k| k.alg == alg);
        match kid {
            Some(kid) => candidates
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| k.key.clone()),
            None => {
                let first = candidates.next()?;
                // Without a kid, only an unambiguous key set is acceptable.
                candidates.next().is_none().then(|| first.key.clone())
            }
        }
    }
}

/// The usable signing keys of a JWKS document (others are skipped, not fatal).
fn parse_jwks(doc: &serde_json::Value) -> Vec<KeyEntry> {
    let Some(keys) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Vec::new();
    };
    keys.iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter(|jwk| {
            jwk.common
                .public_key_use
                .as_ref()
                .is_none_or(|u| matches!(u, jsonwebtoken::jwk::PublicKeyUse::Signature))
        })
        .filter_map(|jwk| {
            let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
                    if ec.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => return None,
            };
            let key = DecodingKey::from_jwk(&jwk).ok()?;
            Some(KeyEntry {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier() -> JwtVerifier {
        JwtVerifier::from_config(&JwtConfig {
            hs256_secret: SECRET.into(),
            issuer: "iss".into(),
            audience: "aud".into(),
            ..JwtConfig::default()
        })
    }

    fn token(alg: Algorithm, claims: serde_json::Value, key: &[u8]) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(key)).unwrap()
    }

    fn now() -> u64 {
        crate::auth::sign::now_unix()
    }

    #[tokio::test]
    async fn hs256_claims_are_checked() {
        let v = verifier();
        let http = HttpClient::new(Duration::from_secs(1));
        let good =
            serde_json::json!({"iss":"iss","aud":"aud","exp":now()+60,"organization_id":"org"});
        let t = token(Algorithm::HS256, good.clone(), SECRET.as_bytes());
        assert_eq!(
            v.verify(&t, &http).await.unwrap().organization.as_deref(),
            Some("org")
        );
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = "x".into();
        let t = token(Algorithm::HS256, wrong_aud, SECRET.as_bytes());
        assert_eq!(
            v.verify(&t, &http).await.unwrap_err(),
            JwtError::Rejected("wrong audience")
        );
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = "x".into();
        let t = token(Algorithm::HS256, wrong_iss, SECRET.as_bytes());
        assert!(v.verify(&t, &http).await.is_err());
        let mut expired = good.clone();
        expired["exp"] = (now() - 120).into();
        let t = token(Algorithm::HS256, expired, SECRET.as_bytes());
        assert_eq!(v.verify(&t, &http).await.unwrap_err(), JwtError::Expired);
        let mut in_leeway = good.clone();
        in_leeway["exp"] = (now() - 5).into();
        let t = token(Algorithm::HS256, in_leeway, SECRET.as_bytes());
        assert!(v.verify(&t, &http).await.is_ok(), "30 s leeway");
        let mut future = good.clone();
        future["nbf"] = (now() + 600).into();
        let t = token(Algorithm::HS256, future, SECRET.as_bytes());
        assert!(v.verify(&t, &http).await.is_err());
        let t = token(
            Algorithm::HS256,
            good.clone(),
            b"another secret of enough length..",
        );
        assert!(v.verify(&t, &http).await.is_err());
        let t = token(Algorithm::HS384, good, SECRET.as_bytes());
        assert_eq!(
            v.verify(&t, &http).await.unwrap_err(),
            JwtError::Invalid("algorithm not accepted")
        );
    }

    #[tokio::test]
    async fn alg_none_and_asymmetric_without_jwks_are_refused() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let v = verifier();
        let http = HttpClient::new(Duration::from_secs(1));
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let c = URL_SAFE_NO_PAD.encode(
            format!(
                r#"{{"iss":"iss","aud":"aud","exp":{},"organization_id":"org"}}"#,
                now() + 60
            )
            .as_bytes(),
        );
        assert!(v.verify(&format!("{h}.{c}."), &http).await.is_err());
        assert!(looks_like_jwt(&format!("{h}.{c}.")));
        let rs_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        assert_eq!(
            v.verify(&format!("{rs_header}.{c}.AAAA"), &http)
                .await
                .unwrap_err(),
            JwtError::Invalid("asymmetric tokens are not accepted")
        );
        assert!(!looks_like_jwt("plain-api-key"));
        assert!(!looks_like_jwt("a.b.c.d"));
    }

    #[test]
    fn jwks_parsing_pins_algorithms_by_key_type() {
        let doc = serde_json::json!({"keys":[
            {"kty":"RSA","kid":"r","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"EC","crv":"P-256","kid":"e","x":"nszDzu5ygV9fCqh6jrSzVB7sr9hJexwRhKggB9LooZM","y":"uyuEmNAYEjTdeQMjk4Z_DI7jupoLwA15G1CA8UO5ESU"},
            {"kty":"oct","kid":"h","k":"c2VjcmV0"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"sXch","e":"AQAB"}
        ]});
        let keys = parse_jwks(&doc);
        let summary: Vec<_> = keys
            .iter()
            .map(|k| (k.kid.clone().unwrap(), k.alg))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("r".to_string(), Algorithm::RS256),
                ("e".to_string(), Algorithm::ES256)
            ]
        );
    }
}
