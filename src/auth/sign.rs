//! HMAC-SHA256 signed, purpose-bound tokens: `<base64url(json payload)>.<base64url(mac)>`,
//! mac = HMAC(key, purpose || 0x00 || base64url(json payload)). The first key signs; every key
//! verifies (rotation). Used for the sandbox cookie, OIDC state and PKCE cookie, login tickets
//! and the preview-warning CSRF token; the purpose keeps one kind from passing as another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longest signed token accepted (cookies and query parameters stay small).
const MAX_TOKEN_BYTES: usize = 4096;

pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} keys)", self.keys.len())
    }
}

impl Signer {
    /// `keys` must be non-empty (the caller guarantees it; an empty list verifies nothing).
    pub fn new(keys: Vec<Vec<u8>>) -> Signer {
        Signer { keys }
    }

    /// One random 32-byte key.
    pub fn random() -> Result<Signer, String> {
        Ok(Signer::new(vec![random_bytes::<32>()?.to_vec()]))
    }

    /// `None` when the token would be longer than [`Signer::verify`] accepts: the proxy never
    /// hands out a token it would then refuse (found by the `sandbox_cookie` fuzz target).
    pub fn sign<T: Serialize>(&self, purpose: &str, payload: &T) -> Option<String> {
        let key = self.keys.first()?;
        let json = serde_json::to_vec(payload).ok()?;
        let body = URL_SAFE_NO_PAD.encode(json);
        let mac = mac(key, purpose, &body)?.finalize().into_bytes();
        let token = format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac));
        (token.len() <= MAX_TOKEN_BYTES).then_some(token)
    }

    /// The payload when `token` was signed by one of the keys for `purpose` (constant-time).
    pub fn verify<T: DeserializeOwned>(&self, purpose: &str, token: &str) -> Option<T> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let (body, sig) = token.split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let valid = self
            .keys
            .iter()
            .any(|key| mac(key, purpose, body).is_some_and(|m| m.verify_slice(&sig).is_ok()));
        if !valid {
            return None;
        }
        let json = URL_SAFE_NO_PAD.decode(body).ok()?;
        serde_json::from_slice(&json).ok()
    }
}

fn mac(key: &[u8], purpose: &str, body: &str) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(purpose.as_bytes());
    mac.update(&[0]);
    mac.update(body.as_bytes());
    Some(mac)
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| format!("no randomness: {e}"))?;
    Ok(buf)
}

/// 32 random bytes, base64url (43 chars): nonces, PKCE verifiers.
pub fn random_token() -> Result<String, String> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<32>()?))
}

pub use crate::base::clock::now_unix;

/// Constant-time string equality.
pub fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct P {
        a: String,
        e: u64,
    }

    #[test]
    fn round_trip_rotation_tamper_and_purpose() {
        let old = Signer::new(vec![b"k".repeat(32)]);
        let new = Signer::new(vec![b"n".repeat(32), b"k".repeat(32)]);
        let p = P {
            a: "x".into(),
            e: 5,
        };
        let t = old.sign("cookie", &p).unwrap();
        assert_eq!(new.verify::<P>("cookie", &t), Some(p));
        assert!(new.verify::<P>("ticket", &t).is_none(), "purpose-bound");
        let (body, sig) = t.split_once('.').unwrap();
        let forged_body = URL_SAFE_NO_PAD.encode(br#"{"a":"y","e":5}"#);
        assert!(new
            .verify::<P>("cookie", &format!("{forged_body}.{sig}"))
            .is_none());
        assert!(new.verify::<P>("cookie", &format!("{body}.AAAA")).is_none());
        assert!(new.verify::<P>("cookie", body).is_none());
        let other = Signer::new(vec![b"z".repeat(32)]);
        assert!(other.verify::<P>("cookie", &t).is_none());
    }

    #[test]
    fn tokens_longer_than_verify_accepts_are_never_issued() {
        let s = Signer::new(vec![b"k".repeat(32)]);
        // 3,000 control characters are 18,000 bytes of JSON escapes.
        assert_eq!(s.sign("p", &"\u{15}".repeat(3000)), None);
        let fits = "a".repeat(2900);
        let token = s.sign("p", &fits).unwrap();
        assert_eq!(s.verify::<String>("p", &token), Some(fits));
    }

    #[test]
    fn randomness_and_ct_eq() {
        assert_ne!(random_token().unwrap(), random_token().unwrap());
        assert!(ct_eq("abc", "abc") && !ct_eq("abc", "abd") && !ct_eq("abc", "ab"));
    }
}
