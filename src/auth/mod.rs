//! Authenticate phase: may this request enter this sandbox? And which credentials must be removed
//! before the request reaches the sandbox (they never do).
//!
//! Credentials, in order (the first that succeeds wins; a failing one does not stop the next):
//! `Authorization: Bearer` (JWT or API key), `X-Daytona-Preview-Token`, the
//! `DAYTONA_SANDBOX_AUTH_KEY` query parameter, the sandbox cookie, a signed preview token in the
//! host. [`gate`] wires this module into the request pipeline.

pub mod config;
pub mod cookie;
pub mod cors;
mod credential_cache;
pub mod http_client;
pub mod jwt;
pub mod oidc;
pub mod ratelimit;
pub mod return_to;
pub mod sign;
pub mod warning;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};

pub use config::AuthConfig;

use crate::http::route::is_reserved_port;
use crate::registry::{RegistryError, Resolver, SandboxRecord};
use cookie::{CookieCheck, CookieFlags};
use credential_cache::{CredentialCache, Kind};
use http_client::HttpClient;
use jwt::{JwtError, JwtVerifier};

use crate::registry::BearerVerdict;
use sign::Signer;

pub const PREVIEW_TOKEN_HEADER: &str = "x-daytona-preview-token";
pub const PREVIEW_TOKEN_QUERY: &str = "DAYTONA_SANDBOX_AUTH_KEY";
/// Also with a `__Host-`/`__Secure-` prefix, in any case: [`cookie::is_reserved_name`].
pub(crate) const PROXY_COOKIE_PREFIXES: [&str; 3] = [
    "daytona-sandbox-auth-",
    "daytona-preview-page-accepted",
    "sandgate-",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "authentication required: send a preview token (X-Daytona-Preview-Token) or a bearer token"
    )]
    Required,
    #[error("the credential is not valid for this sandbox")]
    TokenInvalid,
    /// Answered like `TokenInvalid`, but the credential is (or may be) the platform's: a JWT
    /// signed with our keys whose claims are wrong here, or one checked while the keys were
    /// unavailable. It never reaches a sandbox.
    #[error("the credential is not valid for this sandbox")]
    PlatformTokenInvalid,
    #[error("the credential has expired")]
    TokenExpired,
    #[error("authenticated, but this principal may not access this sandbox")]
    Forbidden,
    #[error("too many failed authentication attempts; retry in {0} s")]
    RateLimited(u32),
    #[error("sign-in required")]
    Login(String),
    #[error("login failed: {0}")]
    BadLogin(&'static str),
    #[error("the identity provider is unavailable")]
    IdpUnavailable,
    #[error("the form is missing a valid CSRF token; reload the page")]
    Csrf,
}

impl AuthError {
    /// A presented credential was wrong (counts against the brute-force guard).
    fn is_failure(&self) -> bool {
        matches!(
            self,
            AuthError::TokenInvalid
                | AuthError::PlatformTokenInvalid
                | AuthError::TokenExpired
                | AuthError::Forbidden
        )
    }
}

/// Why authentication did not let a request in: the credential's fault ([`AuthError`]), or the
/// registry could not be asked. `http::respond` turns either into the response.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Who is entering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// An API key or JWT whose organisation owns the sandbox.
    Bearer,
    PreviewToken,
    Cookie,
    SignedPreview,
}

/// The outcome of a successful authentication and what the proxy must do about it.
#[derive(Debug, Default)]
pub struct Granted {
    pub access: Option<Access>,
    /// The first `Authorization` header was the proxy's credential (it granted access).
    pub consumed_authorization: bool,
    /// `Set-Cookie` for the sandbox cookie.
    pub set_cookie: Option<HeaderValue>,
    /// A browser logged in by query token: redirect here (same URL without the token).
    pub redirect: Option<String>,
}

/// The preview token one client connection last entered a sandbox with, and the sandbox
/// record it was checked against: the connection's next requests with the same token skip the
/// SHA-256 (a constant-time comparison of the bytes instead). A new record (refresh, token
/// rotation, revocation) is another `Arc` and misses, so nothing outlives what it was checked
/// against. Only tokens checked locally against the record's hash are remembered.
#[derive(Default)]
pub struct TokenMemo(std::sync::Mutex<Option<RememberedToken>>);

type RememberedToken = (Arc<SandboxRecord>, Box<[u8]>);

impl TokenMemo {
    fn matches(&self, sandbox: &Arc<SandboxRecord>, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        let Ok(memo) = self.0.lock() else {
            return false;
        };
        memo.as_ref().is_some_and(|(record, known)| {
            Arc::ptr_eq(record, sandbox)
                && known.len() == token.len()
                && bool::from(known.as_ref().ct_eq(token.as_bytes()))
        })
    }

    fn remember(&self, sandbox: &Arc<SandboxRecord>, token: &str) {
        if let Ok(mut memo) = self.0.lock() {
            *memo = Some((sandbox.clone(), token.as_bytes().into()));
        }
    }
}

/// The request facts authentication looks at.
pub struct AuthRequest<'a> {
    pub sandbox: &'a Arc<SandboxRecord>,
    /// `None` for toolbox traffic (always authenticated).
    pub port: Option<u16>,
    /// The host label (sandbox id or signed token) or the toolbox sandbox id: names the cookie.
    pub id_or_token: &'a str,
    /// The host's signed preview token opened this sandbox on this port.
    pub signed: bool,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub path: &'a str,
    pub host: &'a str,
    /// The client's address (behind trusted proxies: the one they vouch for); keys the limiter.
    pub peer: IpAddr,
    /// A browser navigation, any method ([`warning::is_navigation`]).
    pub navigation: bool,
    /// `GET` or `HEAD`: a redirect replays it (a `POST` body would be lost).
    pub safe_method: bool,
    /// The client connection's last accepted preview token.
    pub memo: Option<&'a TokenMemo>,
}

/// Authentication state shared by every request.
pub struct Auth {
    pub(crate) signer: Signer,
    pub(crate) flags: CookieFlags,
    cookie_max_age: u64,
    jwt: Option<JwtVerifier>,
    pub(crate) oidc: Option<oidc::Oidc>,
    pub(crate) cors: cors::Cors,
    pub(crate) preview_warning: bool,
    pub(crate) limiter: ratelimit::FailureLimiter,
    cache: CredentialCache,
    pub(crate) http: HttpClient,
    /// Login tickets already used (SHA-256 → expiry): each works once per replica.
    spent_tickets: dashmap::DashMap<[u8; 32], u64>,
}

impl Auth {
    pub fn from_config(config: &crate::config::Config) -> Result<Auth, String> {
        let a = &config.auth;
        let signer = if a.cookie_keys.is_empty() {
            tracing::warn!(
                "auth.cookie_keys is empty: using a random key; cookies will not survive a \
                 restart and replicas will not share them"
            );
            Signer::random()?
        } else {
            Signer::new(
                a.cookie_keys
                    .iter()
                    .map(|k| k.as_bytes().to_vec())
                    .collect(),
            )
        };
        let scheme = config.proxy.public_scheme.as_str();
        Ok(Auth {
            signer,
            flags: CookieFlags {
                secure: scheme == "https",
            },
            cookie_max_age: a.cookie_max_age.as_secs(),
            jwt: a.jwt.enabled().then(|| JwtVerifier::from_config(&a.jwt)),
            oidc: a.oidc.enabled().then(|| oidc::Oidc::new(a, scheme)),
            cors: cors::Cors::new(
                &a.cors_allowed_origins,
                &config.proxy.domains,
                a.cors_max_age,
            ),
            preview_warning: a.preview_warning,
            limiter: ratelimit::FailureLimiter::new(a.max_failures_per_minute),
            cache: CredentialCache::new(Duration::from_secs(120), Duration::from_secs(5)),
            http: HttpClient::with_extra_ca(Duration::from_secs(5), &a.extra_ca()?),
            spent_tickets: dashmap::DashMap::new(),
        })
    }

    /// Forgets cached credential checks (after a registry reload: revoked keys stop working).
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    /// Marks a login ticket used; `false` when it already was. Bounded: expired entries are
    /// dropped when the set grows.
    pub(crate) fn spend_ticket(&self, ticket: &str, expires: u64) -> bool {
        const MAX_SPENT: usize = 100_000;
        if self.spent_tickets.len() >= MAX_SPENT {
            let now = sign::now_unix();
            self.spent_tickets.retain(|_, e| *e > now);
            if self.spent_tickets.len() >= MAX_SPENT {
                return false;
            }
        }
        self.spent_tickets
            .insert(crate::registry::sha256(ticket), expires)
            .is_none()
    }

    /// `Set-Cookie` for the sandbox cookie of `id_or_token`.
    pub fn sandbox_cookie(&self, sandbox_id: &str, id_or_token: &str) -> Option<HeaderValue> {
        let value = cookie::issue(&self.signer, sandbox_id, id_or_token, self.cookie_max_age)?;
        self.flags.set_cookie(
            &cookie::sandbox_cookie_name(id_or_token),
            &value,
            self.cookie_max_age,
        )
    }

    /// Decides access (see the module docs for the order of credentials).
    pub async fn authenticate(
        &self,
        resolver: &Resolver,
        req: &AuthRequest<'_>,
    ) -> Result<Granted, Denied> {
        let sandbox = req.sandbox;
        let needs_auth = !sandbox.public || req.port.is_none_or(is_reserved_port);
        if !needs_auth {
            return Ok(granted(Access::Public));
        }
        let mut failure: Option<AuthError> = None;
        let mut note = |e: AuthError| {
            failure.get_or_insert(e);
        };

        if let Some(token) = bearer(req.headers) {
            match self
                .check_bearer(resolver, sandbox, token, req.peer)
                .await?
            {
                Ok(()) => {
                    return Ok(Granted {
                        consumed_authorization: true,
                        ..granted(Access::Bearer)
                    })
                }
                Err(e) => note(e),
            }
        }
        if let Some(value) = req.headers.get(PREVIEW_TOKEN_HEADER) {
            match value.to_str() {
                Ok(token) if req.memo.is_some_and(|m| m.matches(req.sandbox, token)) => {
                    return Ok(granted(Access::PreviewToken));
                }
                Ok(token) if resolver.preview_token_valid(sandbox, token).await? => {
                    if let Some(memo) = req.memo.filter(|_| sandbox.auth_token_sha256.is_some()) {
                        memo.remember(req.sandbox, token);
                    }
                    return Ok(granted(Access::PreviewToken));
                }
                _ => note(AuthError::TokenInvalid),
            }
        }
        if let Some(token) = req.query.and_then(|q| query_param(q, PREVIEW_TOKEN_QUERY)) {
            if resolver.preview_token_valid(sandbox, token).await? {
                let mut g = granted(Access::PreviewToken);
                if req.navigation && req.safe_method {
                    let rest = req
                        .query
                        .and_then(|q| remove_query_param(q, PREVIEW_TOKEN_QUERY))
                        .unwrap_or_default();
                    let target = if rest.is_empty() {
                        req.path.to_string()
                    } else {
                        format!("{}?{rest}", req.path)
                    };
                    // `//evil.com?TOKEN` must not become `Location: //evil.com`.
                    g.redirect = Some(return_to::same_host_path(&target, req.host));
                    g.set_cookie = self.sandbox_cookie(&sandbox.id, req.id_or_token);
                }
                return Ok(g);
            }
            note(AuthError::TokenInvalid);
        }
        // Every cookie of the name: a sibling sandbox may have planted one sorted first.
        let mut cookie_failure = None;
        for value in cookie::sandbox_cookie_values(req.headers, req.id_or_token) {
            match cookie::check(&self.signer, &sandbox.id, req.id_or_token, value) {
                CookieCheck::Valid => return Ok(granted(Access::Cookie)),
                CookieCheck::Expired => cookie_failure = Some(AuthError::TokenExpired),
                CookieCheck::Invalid => {
                    cookie_failure.get_or_insert(AuthError::TokenInvalid);
                }
            }
        }
        if let Some(e) = cookie_failure {
            note(e);
        }
        if req.signed {
            let mut g = granted(Access::SignedPreview);
            g.set_cookie = self.sandbox_cookie(&sandbox.id, req.id_or_token);
            return Ok(g);
        }

        // Only now, when every credential presented has failed, may the limiter refuse: a valid
        // credential is never refused, whatever else came from the same address.
        if failure.as_ref().is_some_and(AuthError::is_failure) {
            self.limiter
                .fail(req.peer)
                .map_err(AuthError::RateLimited)?;
        }
        if req.navigation {
            if let Some(oidc) = &self.oidc {
                let path_and_query = match req.query {
                    Some(q) => format!("{}?{q}", req.path),
                    None => req.path.to_string(),
                };
                return Err(AuthError::Login(oidc.login_url(req.host, &path_and_query)).into());
            }
        }
        Err(failure.unwrap_or(AuthError::Required).into())
    }

    /// Removes every `Authorization` header carrying a platform credential (an API key the
    /// registry knows or a JWT signed with our keys, of any organisation, valid or not), whether
    /// it granted access, was refused or was not needed; the app's own ones (any other scheme,
    /// or a bearer the platform does not know) pass byte for byte, in order. Verdicts come from
    /// the credential cache; a backend error strips (fail closed).
    pub async fn remove_platform_authorization(
        &self,
        resolver: &Resolver,
        sandbox: &SandboxRecord,
        headers: &mut HeaderMap,
        first_is_platform: bool,
        peer: IpAddr,
    ) {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        if values.next().is_none() {
            return;
        }
        if first_is_platform && values.next().is_none() {
            headers.remove(AUTHORIZATION);
            return;
        }
        let mut kept = Vec::new();
        let mut removed = false;
        for (i, value) in headers.get_all(AUTHORIZATION).iter().enumerate() {
            let platform = (i == 0 && first_is_platform)
                || match bearer_of(value) {
                    Some(token) => {
                        self.is_platform_bearer(resolver, sandbox, token, peer)
                            .await
                    }
                    None => false,
                };
            if platform {
                removed = true;
            } else {
                kept.push(value.clone());
            }
        }
        if removed {
            headers.remove(AUTHORIZATION);
            for value in kept {
                headers.append(AUTHORIZATION, value);
            }
        }
    }

    /// Is `token` one of the platform's credentials? Only a bearer nobody on the platform
    /// knows (`TokenInvalid`) is the app's own.
    async fn is_platform_bearer(
        &self,
        resolver: &Resolver,
        sandbox: &SandboxRecord,
        token: &str,
        peer: IpAddr,
    ) -> bool {
        match self.check_bearer(resolver, sandbox, token, peer).await {
            Ok(verdict) => !matches!(verdict, Err(AuthError::TokenInvalid)),
            Err(_) => true,
        }
    }

    /// A Bearer token: a JWT verified locally, else an API key looked up by its SHA-256.
    /// Cached per (sandbox, kind, hash of the token). The outer error is a backend failure.
    async fn check_bearer(
        &self,
        resolver: &Resolver,
        sandbox: &SandboxRecord,
        token: &str,
        peer: std::net::IpAddr,
    ) -> Result<Result<(), AuthError>, RegistryError> {
        let hash = crate::registry::sha256(token);
        if let Some(verdict) = self.cache.get(&sandbox.id, Kind::Bearer, &hash) {
            return Ok(verdict);
        }
        let (verdict, expires_at) = if jwt::looks_like_jwt(token) {
            match &self.jwt {
                None => (Err(AuthError::TokenInvalid), None),
                Some(verifier) => match verifier.verify(token, &self.http).await {
                    Ok(v) => (org_access(v.organization.as_deref(), sandbox), v.exp),
                    Err(JwtError::Expired) => (Err(AuthError::TokenExpired), None),
                    Err(JwtError::Invalid(why)) => {
                        tracing::debug!(why, "bearer JWT rejected");
                        (Err(AuthError::TokenInvalid), None)
                    }
                    Err(JwtError::Rejected(why)) => {
                        tracing::debug!(why, "bearer JWT rejected");
                        (Err(AuthError::PlatformTokenInvalid), None)
                    }
                    // Possibly not the token's fault (keys unreachable, or a rotation not
                    // fetched yet): refuse now, but don't cache the verdict. Without keys it
                    // may be ours (fail closed); a kid still unknown after the refetch is not.
                    Err(JwtError::KeysUnavailable) => {
                        return Ok(Err(AuthError::PlatformTokenInvalid))
                    }
                    Err(JwtError::UnknownKey) => return Ok(Err(AuthError::TokenInvalid)),
                },
            }
        } else {
            let principal = resolver.backend().api_key(&hash).await?;
            let verdict = match principal {
                Some(p) => org_access(Some(&p.organization), sandbox),
                None => Err(AuthError::TokenInvalid),
            };
            (verdict, None)
        };
        // What local checks did not grant, a backend that knows users may (Daytona's
        // `GET /preview/{id}/access` with the user's bearer).
        let verdict = match verdict {
            Err(AuthError::TokenInvalid | AuthError::Forbidden) => {
                match resolver
                    .backend()
                    .bearer_access(&sandbox.id, token, peer)
                    .await?
                {
                    Some(BearerVerdict::Allowed) => Ok(()),
                    Some(BearerVerdict::Denied) => Err(AuthError::Forbidden),
                    Some(BearerVerdict::Invalid) => Err(AuthError::TokenInvalid),
                    None => verdict,
                }
            }
            other => other,
        };
        self.cache
            .put(&sandbox.id, Kind::Bearer, hash, verdict.clone(), expires_at);
        Ok(verdict)
    }
}

fn granted(access: Access) -> Granted {
    Granted {
        access: Some(access),
        ..Granted::default()
    }
}

/// A principal of `organization` may enter sandboxes of that organisation only.
fn org_access(organization: Option<&str>, sandbox: &SandboxRecord) -> Result<(), AuthError> {
    match (organization, sandbox.organization.as_deref()) {
        (Some(a), Some(b)) if sign::ct_eq(a, b) => Ok(()),
        _ => Err(AuthError::Forbidden),
    }
}

/// The token of the first `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_of(headers.get(AUTHORIZATION)?)
}

fn bearer_of(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Removes every credential the proxy consumes from the headers, and returns the query without
/// the token parameter (`None` when the query needs no change).
pub fn strip_credentials(headers: &mut HeaderMap, query: Option<&str>) -> Option<String> {
    headers.remove(PREVIEW_TOKEN_HEADER);
    strip_proxy_cookies(headers);
    query.and_then(|q| remove_query_param(q, PREVIEW_TOKEN_QUERY))
}

/// The raw value of the first `name=value` pair in a query string (no decoding).
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// The query without any `name` parameter; other parameters keep their bytes and order.
pub fn remove_query_param(query: &str, name: &str) -> Option<String> {
    let is_target = |pair: &&str| pair.split_once('=').map_or(*pair, |(k, _)| k) == name;
    if !query.split('&').any(|p| is_target(&p)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_target(p)).collect();
    Some(kept.join("&"))
}

fn is_proxy_cookie(name: &str) -> bool {
    cookie::is_reserved_name(name.as_bytes())
}

pub(crate) fn strip_proxy_cookies(headers: &mut HeaderMap) {
    let has_ours = headers.get_all(COOKIE).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(';').any(|c| is_proxy_cookie(c.trim_start())))
            .unwrap_or(false)
    });
    if !has_ours {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !is_proxy_cookie(c))
        .map(str::to_owned)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::try_from(kept.join("; ")) {
            headers.insert(COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{CacheTtls, StaticRegistry, Upstream};
    use std::sync::Arc;

    fn setup() -> (Auth, Resolver) {
        let mut config = crate::config::Config::default();
        config.auth.cookie_keys = vec!["k".repeat(32)];
        config.registry.api_keys = vec![crate::config::ApiKeyEntry {
            key: Some("key-org-a".into()),
            key_sha256: None,
            organization: "org-a".into(),
        }];
        let backend = StaticRegistry::from_config(&config.registry).unwrap();
        (
            Auth::from_config(&config).unwrap(),
            Resolver::new(Arc::new(backend), CacheTtls::default()),
        )
    }

    async fn check(
        s: &Arc<SandboxRecord>,
        port: Option<u16>,
        h: &HeaderMap,
        q: Option<&str>,
    ) -> Result<Access, String> {
        let (auth, resolver) = setup();
        let req = AuthRequest {
            sandbox: s,
            port,
            id_or_token: "sbx",
            signed: false,
            headers: h,
            query: q,
            path: "/",
            host: "3000-sbx.preview.localhost",
            peer: "127.0.0.1".parse().unwrap(),
            navigation: false,
            safe_method: true,
            memo: None,
        };
        auth.authenticate(&resolver, &req)
            .await
            .map(|g| g.access.unwrap())
            .map_err(|e| match e {
                Denied::Auth(a) => crate::http::respond::auth_code(&a).to_string(),
                other => other.to_string(),
            })
    }

    fn sandbox(public: bool) -> Arc<SandboxRecord> {
        Arc::new(record(public))
    }

    fn record(public: bool) -> SandboxRecord {
        SandboxRecord::new(
            "sbx",
            Upstream::Direct {
                address: "127.0.0.1".into(),
            },
            public,
            "started",
            Some("tok-123"),
        )
        .with_organization(Some("org-a"))
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn public_sandboxes_are_open_except_reserved_ports_and_toolbox() {
        let s = sandbox(true);
        let none = headers(&[]);
        assert_eq!(check(&s, Some(3000), &none, None).await, Ok(Access::Public));
        assert_eq!(
            check(&s, Some(22222), &none, None).await,
            Err("AUTH_REQUIRED".into())
        );
        assert_eq!(
            check(&s, None, &none, None).await,
            Err("AUTH_REQUIRED".into())
        );
    }

    #[tokio::test]
    async fn preview_token_by_header_or_query() {
        let s = sandbox(false);
        let good = headers(&[(PREVIEW_TOKEN_HEADER, "tok-123")]);
        assert_eq!(
            check(&s, Some(3000), &good, None).await,
            Ok(Access::PreviewToken)
        );
        let bad = headers(&[(PREVIEW_TOKEN_HEADER, "tok-124")]);
        assert_eq!(
            check(&s, Some(3000), &bad, None).await,
            Err("TOKEN_INVALID".into())
        );
        let none = headers(&[]);
        let q = Some("a=1&DAYTONA_SANDBOX_AUTH_KEY=tok-123");
        assert_eq!(
            check(&s, Some(3000), &none, q).await,
            Ok(Access::PreviewToken)
        );
        let other = Some("x=tok-123");
        assert_eq!(
            check(&s, Some(3000), &none, other).await,
            Err("AUTH_REQUIRED".into())
        );
    }

    #[tokio::test]
    async fn api_keys_open_their_organisation_and_a_bad_bearer_falls_through() {
        let s = sandbox(false);
        let key = headers(&[("authorization", "Bearer key-org-a")]);
        assert_eq!(check(&s, None, &key, None).await, Ok(Access::Bearer));
        let other_org = SandboxRecord::new(
            "sbx",
            Upstream::Direct {
                address: "127.0.0.1".into(),
            },
            false,
            "started",
            None,
        )
        .with_organization(Some("org-b"));
        assert_eq!(
            check(&Arc::new(other_org), None, &key, None).await,
            Err("FORBIDDEN".into())
        );
        let app_auth = headers(&[
            ("authorization", "Bearer the-apps-own-token"),
            (PREVIEW_TOKEN_HEADER, "tok-123"),
        ]);
        assert_eq!(
            check(&s, Some(3000), &app_auth, None).await,
            Ok(Access::PreviewToken)
        );
        let basic = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
        assert_eq!(
            check(&s, Some(3000), &basic, None).await,
            Err("AUTH_REQUIRED".into())
        );
    }

    #[tokio::test]
    async fn navigations_by_query_token_get_a_cookie_and_a_clean_redirect() {
        let (auth, resolver) = setup();
        let s = sandbox(false);
        let h = headers(&[]);
        let req = AuthRequest {
            sandbox: &s,
            port: Some(3000),
            id_or_token: "sbx",
            signed: false,
            headers: &h,
            query: Some("b=%2F&DAYTONA_SANDBOX_AUTH_KEY=tok-123&a=1"),
            path: "/p",
            host: "3000-sbx.preview.localhost",
            peer: "127.0.0.1".parse().unwrap(),
            navigation: true,
            safe_method: true,
            memo: None,
        };
        let g = auth.authenticate(&resolver, &req).await.unwrap();
        assert_eq!(g.redirect.as_deref(), Some("/p?b=%2F&a=1"));
        let cookie = g.set_cookie.unwrap();
        let cookie = cookie.to_str().unwrap();
        assert!(cookie.starts_with("daytona-sandbox-auth-sbx="), "{cookie}");
        let value = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
        let with_cookie = headers(&[("cookie", &format!("daytona-sandbox-auth-sbx={value}"))]);
        let again = AuthRequest {
            headers: &with_cookie,
            query: None,
            ..req
        };
        let g = auth.authenticate(&resolver, &again).await.unwrap();
        assert_eq!(g.access, Some(Access::Cookie));
    }

    #[test]
    fn stripping_keeps_other_params_and_cookies_exactly() {
        assert_eq!(
            remove_query_param(
                "b=%2F&DAYTONA_SANDBOX_AUTH_KEY=t&a=1&a=2",
                PREVIEW_TOKEN_QUERY
            )
            .as_deref(),
            Some("b=%2F&a=1&a=2")
        );
        assert_eq!(
            remove_query_param("DAYTONA_SANDBOX_AUTH_KEY=t", PREVIEW_TOKEN_QUERY).as_deref(),
            Some("")
        );
        assert_eq!(remove_query_param("a=1", PREVIEW_TOKEN_QUERY), None);
        let mut h = headers(&[
            (PREVIEW_TOKEN_HEADER, "t"),
            (
                "cookie",
                "app=1; daytona-sandbox-auth-sbx=sig; daytona-preview-page-accepted=true; sandgate-oidc=x",
            ),
            (
                "cookie",
                "__Host-daytona-sandbox-auth-sbx=sig; other=2; __Host-Daytona-Preview-Page-Accepted=true",
            ),
        ]);
        strip_credentials(&mut h, None);
        assert!(h.get(PREVIEW_TOKEN_HEADER).is_none());
        assert_eq!(h.get(COOKIE).unwrap(), "app=1; other=2");
        let mut only_ours = headers(&[("cookie", "daytona-sandbox-auth-x=1")]);
        strip_credentials(&mut only_ours, None);
        assert!(only_ours.get(COOKIE).is_none());
    }

    #[tokio::test]
    async fn a_connection_remembers_its_preview_token_for_that_record_only() {
        let (auth, resolver) = setup();
        let s = sandbox(false);
        let memo = TokenMemo::default();
        let good = headers(&[(PREVIEW_TOKEN_HEADER, "tok-123")]);
        let bad = headers(&[(PREVIEW_TOKEN_HEADER, "tok-124")]);
        let ask = |sandbox, h| AuthRequest {
            sandbox,
            port: Some(3000),
            id_or_token: "sbx",
            signed: false,
            headers: h,
            query: None,
            path: "/",
            host: "3000-sbx.preview.localhost",
            peer: "127.0.0.1".parse().unwrap(),
            navigation: false,
            safe_method: true,
            memo: Some(&memo),
        };
        assert!(!memo.matches(&s, "tok-123"));
        let first = auth.authenticate(&resolver, &ask(&s, &good)).await.unwrap();
        assert_eq!(first.access, Some(Access::PreviewToken));
        assert!(
            memo.matches(&s, "tok-123"),
            "remembered after a local check"
        );
        assert!(!memo.matches(&s, "tok-12"), "a prefix is not the token");
        assert!(!memo.matches(&s, "tok-124"));
        // A wrong token is still checked (and refused), and does not replace the memo.
        let refused = auth.authenticate(&resolver, &ask(&s, &bad)).await;
        assert!(matches!(refused, Err(Denied::Auth(_))));
        assert!(memo.matches(&s, "tok-123"));
        // The same sandbox as a new record (a refresh, a rotated token) is checked afresh.
        let refreshed = sandbox(false);
        assert!(!memo.matches(&refreshed, "tok-123"));
        let rotated = Arc::new(SandboxRecord::new(
            "sbx",
            Upstream::Direct {
                address: "127.0.0.1".into(),
            },
            false,
            "started",
            Some("tok-new"),
        ));
        let old_token = auth.authenticate(&resolver, &ask(&rotated, &good)).await;
        assert!(matches!(old_token, Err(Denied::Auth(_))), "rotated out");
    }
}
