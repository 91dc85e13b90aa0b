//! `[identity]`: the signed `X-Sandgate-Identity` header the app receives when a user's
//! credential (OIDC session, JWT, API key) opened its sandbox.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The longest a token may live (`exp - iat`): short, so a leaked one is soon worthless.
pub const MAX_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Sign identity headers and serve the JWKS (`/.well-known/sandgate-jwks.json`).
    pub enabled: bool,
    /// Every sandbox gets the header; otherwise only those whose record says `identity = true`.
    pub all_sandboxes: bool,
    /// `exp - iat` of each token (1s..=60s).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// The `iss` claim (empty: none).
    pub issuer: String,
    /// Signing keys: the first signs, all are published (rotation: add the new key second,
    /// wait for verifiers to refetch the JWKS, then move it first).
    pub keys: Vec<IdentityKey>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            enabled: false,
            all_sandboxes: false,
            ttl: MAX_TTL,
            issuer: "sandgate".into(),
            keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityKey {
    /// The JWT header's `kid` and the JWK's.
    pub kid: String,
    pub algorithm: IdentityAlgorithm,
    /// A PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`, or
    /// `-algorithm EC -pkeyopt ec_paramgen_curve:P-256` for ES256).
    pub private_key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityAlgorithm {
    EdDSA,
    ES256,
}

impl IdentityConfig {
    /// The shape of the section; the key files are read (and their errors named) when the
    /// signer is built at startup.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.ttl < Duration::from_secs(1) || self.ttl > MAX_TTL {
            return Err("identity.ttl must be between 1s and 60s".into());
        }
        if self.keys.is_empty() {
            return Err("identity.enabled needs at least one [[identity.keys]] entry".into());
        }
        for (i, key) in self.keys.iter().enumerate() {
            let valid_kid = !key.kid.is_empty()
                && key.kid.len() <= 64
                && key
                    .kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !valid_kid {
                return Err(format!(
                    "identity.keys[{i}].kid {:?} must be 1-64 characters [A-Za-z0-9._-]",
                    key.kid
                ));
            }
            if self.keys[..i].iter().any(|k| k.kid == key.kid) {
                return Err(format!(
                    "identity.keys[{i}].kid {:?} is used twice",
                    key.kid
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn the_section_is_checked_at_load_and_errors_name_the_key() {
        let key = |kid: &str| {
            format!("[[identity.keys]]\nkid = \"{kid}\"\nalgorithm = \"EdDSA\"\nprivate_key_file = \"k.pem\"\n")
        };
        let on = "[identity]\nenabled = true\n";
        for (toml, expected) in [
            (on.to_string(), "identity.enabled needs at least one"),
            (format!("{on}ttl = \"61s\"\n{}", key("a")), "identity.ttl"),
            (format!("{on}{}{}", key("a"), key("a")), "identity.keys[1].kid \"a\" is used twice"),
            (format!("{on}{}", key("a b")), "identity.keys[0].kid"),
            (
                format!("{on}[[identity.keys]]\nkid = \"a\"\nalgorithm = \"RS256\"\nprivate_key_file = \"k\"\n"),
                "algorithm",
            ),
        ] {
            let error = Config::from_toml_str(&toml).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(expected), "{toml}: {error}");
        }
        let off = format!("[identity]\nenabled = false\n{}", key("a b"));
        assert!(
            Config::from_toml_str(&off).is_ok(),
            "checked only when enabled"
        );
        assert!(Config::from_toml_str(&format!("{on}{}", key("k-1"))).is_ok());
    }
}
