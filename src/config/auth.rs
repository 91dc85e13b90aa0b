//! The `[auth]` section of the configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Smallest accepted cookie/HMAC key, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HMAC keys for the proxy's cookies, state and tickets (>= 32 bytes each). The first signs,
    /// any verifies (rotation). Empty: a random key per process (replicas won't share cookies).
    pub cookie_keys: Vec<String>,
    /// Lifetime of the sandbox cookie.
    #[serde(with = "humantime_serde")]
    pub cookie_max_age: Duration,
    /// Origins allowed to make credentialed CORS requests to every sandbox (e.g. the platform's
    /// dashboard, `https://app.example.com`), besides each sandbox's own preview origins.
    pub cors_allowed_origins: Vec<String>,
    /// `Access-Control-Max-Age` of answered preflights.
    #[serde(with = "humantime_serde")]
    pub cors_max_age: Duration,
    /// Show the preview warning interstitial to browsers.
    pub preview_warning: bool,
    /// Failed credential checks allowed per client IP per minute (0 disables the guard).
    pub max_failures_per_minute: u32,
    pub jwt: JwtConfig,
    pub oidc: OidcConfig,
    /// PEM file of CA certificates trusted (besides the public web roots) for HTTPS to the
    /// identity provider and the JWKS URL, e.g. a private IdP's internal CA. Empty: none.
    pub extra_ca_file: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            cookie_keys: Vec::new(),
            cookie_max_age: Duration::from_secs(3600),
            cors_allowed_origins: Vec::new(),
            cors_max_age: Duration::from_secs(600),
            preview_warning: false,
            max_failures_per_minute: 20,
            jwt: JwtConfig::default(),
            oidc: OidcConfig::default(),
            extra_ca_file: String::new(),
        }
    }
}

/// Bearer JWTs verified locally.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// Shared secret for HS256 tokens; empty: HS256 tokens are rejected.
    pub hs256_secret: String,
    /// JWKS URL for RS256/ES256 tokens; empty: asymmetric tokens are rejected.
    pub jwks_url: String,
    /// Required `iss`; empty: not checked.
    pub issuer: String,
    /// Required `aud`; empty: not checked.
    pub audience: String,
    /// Clock skew allowed on `exp`/`nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim holding the organisation id.
    pub organization_claim: String,
    /// JWKS keys are refetched after this long.
    #[serde(with = "humantime_serde")]
    pub jwks_ttl: Duration,
    /// An unknown `kid` triggers a refetch at most this often.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refetch: Duration,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret: String::new(),
            jwks_url: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway: Duration::from_secs(30),
            organization_claim: "organization_id".into(),
            jwks_ttl: Duration::from_secs(600),
            jwks_min_refetch: Duration::from_secs(10),
        }
    }
}

impl JwtConfig {
    pub fn enabled(&self) -> bool {
        !self.hs256_secret.is_empty() || !self.jwks_url.is_empty()
    }
}

/// Browser login through an OpenID Connect provider (authorization code + PKCE).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// Issuer URL; empty disables browser login.
    pub issuer: String,
    pub client_id: String,
    /// Optional (public clients use PKCE alone).
    pub client_secret: String,
    /// Optional `audience` parameter sent to the authorize endpoint.
    pub audience: String,
    pub scopes: Vec<String>,
    /// The proxy's own host (`host[:port]`) serving `/login` and `/callback`.
    pub login_host: String,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            audience: String::new(),
            scopes: vec!["openid".into(), "profile".into(), "email".into()],
            login_host: String::new(),
        }
    }
}

impl OidcConfig {
    pub fn enabled(&self) -> bool {
        !self.issuer.is_empty()
    }
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

impl AuthConfig {
    /// The certificates of `extra_ca_file` (none when it is empty).
    pub fn extra_ca(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
        use rustls::pki_types::pem::PemObject;
        if self.extra_ca_file.is_empty() {
            return Ok(Vec::new());
        }
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(&self.extra_ca_file)
            .map_err(|e| format!("auth.extra_ca_file: {}: {e}", self.extra_ca_file))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("auth.extra_ca_file: {}: {e}", self.extra_ca_file))?;
        if certs.is_empty() {
            return Err(format!(
                "auth.extra_ca_file: {}: no certificate in the file",
                self.extra_ca_file
            ));
        }
        Ok(certs)
    }

    /// `domains`: `proxy.domains` (the login host must not be a preview host).
    pub fn validate(&self, domains: &[String]) -> Result<(), String> {
        for key in &self.cookie_keys {
            if key.len() < MIN_KEY_BYTES {
                return Err(format!(
                    "auth.cookie_keys: every key must be at least {MIN_KEY_BYTES} bytes"
                ));
            }
        }
        if self.cookie_max_age.as_secs() == 0 {
            return Err("auth.cookie_max_age must be at least 1s".into());
        }
        if !self.jwt.hs256_secret.is_empty() && self.jwt.hs256_secret.len() < MIN_KEY_BYTES {
            return Err(format!(
                "auth.jwt.hs256_secret must be at least {MIN_KEY_BYTES} bytes"
            ));
        }
        if !self.jwt.jwks_url.is_empty() && !is_http_url(&self.jwt.jwks_url) {
            return Err("auth.jwt.jwks_url must be an http(s):// URL".into());
        }
        self.extra_ca()?;
        if self.jwt.organization_claim.is_empty() {
            return Err("auth.jwt.organization_claim must not be empty".into());
        }
        for origin in &self.cors_allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.trim_end_matches('/').matches('/').count() != 2
            {
                return Err(format!(
                    "auth.cors_allowed_origins: {origin:?} is not an origin (scheme://host[:port])"
                ));
            }
        }
        let o = &self.oidc;
        if o.enabled() {
            if !is_http_url(&o.issuer) {
                return Err("auth.oidc.issuer must be an http(s):// URL".into());
            }
            if o.client_id.is_empty() || o.login_host.is_empty() {
                return Err("auth.oidc: client_id and login_host are required".into());
            }
            if o.login_host.contains(['/', ' ', '@']) {
                return Err("auth.oidc.login_host must be host[:port]".into());
            }
            let host = o
                .login_host
                .rsplit_once(':')
                .map_or(o.login_host.as_str(), |(h, _)| h)
                .to_ascii_lowercase();
            if domains
                .iter()
                .any(|d| host.ends_with(&format!(".{}", d.to_ascii_lowercase())))
            {
                return Err(
                    "auth.oidc.login_host must not be under proxy.domains (it is the proxy's own host)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_weak_keys_and_a_preview_login_host() {
        let domains = vec!["preview.example.com".to_string()];
        assert!(AuthConfig::default().validate(&domains).is_ok());
        let short = AuthConfig {
            cookie_keys: vec!["short".into()],
            ..AuthConfig::default()
        };
        assert!(short.validate(&domains).is_err());
        let mut oidc = AuthConfig::default();
        oidc.oidc.issuer = "http://idp.example.com".into();
        oidc.oidc.client_id = "c".into();
        oidc.oidc.login_host = "login.preview.example.com".into();
        assert!(oidc.validate(&domains).is_err());
        oidc.oidc.login_host = "login.example.com:8443".into();
        assert!(oidc.validate(&domains).is_ok());
        let bad_origin = AuthConfig {
            cors_allowed_origins: vec!["https://a.example.com/path".into()],
            ..AuthConfig::default()
        };
        assert!(bad_origin.validate(&domains).is_err());
    }
}
