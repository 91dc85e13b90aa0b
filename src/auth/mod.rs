//! Authenticate phase: may this request enter this sandbox? And which credentials must be removed
//! before the request reaches the sandbox (they never do).
//!
//! Credentials, in order (the first that succeeds wins; a failing one does not stop the next):
//! `Authorization: Bearer` (JWT or API key), `X-Daytona-Preview-Token`, the
//! `DAYTONA_SANDBOX_AUTH_KEY` query parameter, the sandbox cookie, a signed preview token in the
//! host. `http::gate` wires this module into the request pipeline; `http::respond` turns its
//! refusals into responses.

pub mod answer;
pub mod cookie;
pub mod cors;
mod credential_cache;
pub mod http_client;
pub mod identity;
pub mod jwt;
pub mod oidc;
pub mod ratelimit;
pub mod return_to;
pub mod set_cookie;
pub mod sign;
pub mod warning;

mod memo;
mod strip;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

pub use answer::Answer;
// The `[auth]` section (old path `auth::config`).
pub use crate::config::auth as config;
pub use crate::config::AuthConfig;
pub use memo::TokenMemo;
pub(crate) use strip::strip_proxy_cookies;
pub use strip::{bearer, query_param, remove_query_param, strip_credentials};

use crate::base::header_scan::{Present, Tracked};
use crate::registry::{PortRule, RegistryError, Resolver, SandboxRecord, TokenCheck};
use cookie::{CookieCheck, CookieFlags};
use credential_cache::{CredentialCache, Kind};
use http_client::HttpClient;
use identity::{IdentitySigner, Subject, SubjectKind};
use jwt::{JwtError, JwtVerifier};

use crate::registry::BearerVerdict;
use sign::Signer;

pub const PREVIEW_TOKEN_HEADER: &str = "x-daytona-preview-token";
/// [`PREVIEW_TOKEN_HEADER`] as a name: a lookup by `&str` parses it first.
pub const PREVIEW_TOKEN_NAME: http::HeaderName =
    http::HeaderName::from_static(PREVIEW_TOKEN_HEADER);
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

/// What authentication decided, short of a refusal.
#[derive(Debug)]
pub enum Authenticated {
    /// The request may enter (or first gets a cookie and a clean redirect).
    Granted(Granted),
    /// A browser without a working credential goes to the identity provider first: the
    /// login URL.
    Login(String),
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
    /// The user whose credential opened the sandbox, when the identity header is on.
    pub subject: Option<Subject>,
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
    /// Which of the custom headers `headers` may carry (one scan per request).
    pub present: Present,
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
    /// Only `Authorization: Bearer` and `X-Daytona-Preview-Token`: no query token, no sandbox
    /// cookie (header routing on the proxy's own host, which every sandbox shares).
    pub header_credentials_only: bool,
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
    /// Signs the identity header (`[identity]`); `None`: off.
    pub identity: Option<IdentitySigner>,
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
            identity: IdentitySigner::from_config(&config.identity)?,
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

    /// `Set-Cookie` for the sandbox cookie of `id_or_token`; `port`: it opens that port only.
    pub fn sandbox_cookie(
        &self,
        sandbox_id: &str,
        id_or_token: &str,
        port: Option<u16>,
    ) -> Option<HeaderValue> {
        self.sandbox_cookie_for(sandbox_id, id_or_token, port, None)
    }

    /// The sandbox cookie naming the user an OIDC login signed in.
    pub fn sandbox_cookie_for(
        &self,
        sandbox_id: &str,
        id_or_token: &str,
        port: Option<u16>,
        user: Option<&cookie::CookieUser>,
    ) -> Option<HeaderValue> {
        let (signer, max_age) = (&self.signer, self.cookie_max_age);
        // A user too long for a cookie loses the identity header, not the login.
        let value = cookie::issue_for(signer, sandbox_id, id_or_token, port, max_age, user)
            .or_else(|| cookie::issue(signer, sandbox_id, id_or_token, port, max_age))?;
        self.flags.set_cookie(
            &cookie::sandbox_cookie_name(id_or_token),
            &value,
            self.cookie_max_age,
        )
    }

    /// The credentials in order (see the module docs): `Ok(granted)` for the first that opens
    /// the sandbox, else `Err` with the first failure (`None`: no credential was presented).
    async fn try_credentials(
        &self,
        resolver: &Resolver,
        req: &AuthRequest<'_>,
    ) -> Result<Result<Granted, Option<AuthError>>, Denied> {
        let sandbox = req.sandbox;
        // Declared-mode ports without an entry need a credential here: the gate answers 404
        // once the caller may know (see `gate::admit`).
        if sandbox.port_rule(req.port) == PortRule::Public {
            return Ok(Ok(granted(Access::Public)));
        }
        let mut failure: Option<AuthError> = None;
        let mut note = |e: AuthError| {
            failure.get_or_insert(e);
        };

        let authorization = req.present.may_have(Tracked::Authorization);
        if let Some(token) = authorization.then(|| bearer(req.headers)).flatten() {
            match self
                .check_bearer(resolver, sandbox, token, req.peer)
                .await?
            {
                Ok(subject) => {
                    return Ok(Ok(Granted {
                        consumed_authorization: true,
                        subject,
                        ..granted(Access::Bearer)
                    }))
                }
                Err(e) => note(e),
            }
        }
        let token_header = req
            .present
            .may_have(Tracked::PreviewToken)
            .then(|| req.headers.get(PREVIEW_TOKEN_NAME))
            .flatten();
        if let Some(value) = token_header {
            match value.to_str() {
                Ok(token) if req.memo.is_some_and(|m| m.matches(req.sandbox, token)) => {
                    return Ok(Ok(granted(Access::PreviewToken)));
                }
                Ok(token) => match resolver.preview_token(sandbox, token, req.port).await? {
                    TokenCheck::Invalid => note(AuthError::TokenInvalid),
                    check => {
                        // Only the record's all-ports token: the memo knows no port.
                        let all_ports = check == TokenCheck::AllPorts;
                        let remembered = all_ports && sandbox.auth_token_sha256.is_some();
                        if let Some(memo) = req.memo.filter(|_| remembered) {
                            memo.remember(req.sandbox, token);
                        }
                        return Ok(Ok(granted(Access::PreviewToken)));
                    }
                },
                Err(_) => note(AuthError::TokenInvalid),
            }
        }
        if req.header_credentials_only {
            return Ok(Err(failure));
        }
        if let Some(token) = req.query.and_then(|q| query_param(q, PREVIEW_TOKEN_QUERY)) {
            let check = resolver.preview_token(sandbox, token, req.port).await?;
            if check.is_valid() {
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
                    // A port-scoped token's cookie opens its port only.
                    let bound = (check == TokenCheck::ThisPort)
                        .then_some(req.port)
                        .flatten();
                    g.set_cookie = self.sandbox_cookie(&sandbox.id, req.id_or_token, bound);
                }
                return Ok(Ok(g));
            }
            note(AuthError::TokenInvalid);
        }
        // Every cookie of the name: a sibling sandbox may have planted one sorted first.
        let mut cookie_failure = None;
        for value in cookie::sandbox_cookie_values(req.headers, req.id_or_token) {
            match cookie::open(&self.signer, &sandbox.id, req.id_or_token, req.port, value) {
                Ok(user) => {
                    let subject = self.identity.as_ref().and(user).map(|u| Subject {
                        kind: SubjectKind::Oidc,
                        sub: u.sub.into(),
                        org: u.org.map(Into::into),
                    });
                    return Ok(Ok(Granted {
                        subject,
                        ..granted(Access::Cookie)
                    }));
                }
                Err(CookieCheck::Expired) => cookie_failure = Some(AuthError::TokenExpired),
                Err(_) => {
                    cookie_failure.get_or_insert(AuthError::TokenInvalid);
                }
            }
        }
        if let Some(e) = cookie_failure {
            note(e);
        }
        if req.signed {
            let mut g = granted(Access::SignedPreview);
            // A signed link opens one port: so does its cookie.
            g.set_cookie = self.sandbox_cookie(&sandbox.id, req.id_or_token, req.port);
            return Ok(Ok(g));
        }
        Ok(Err(failure))
    }

    /// Decides access: a grant, a login first (a browser navigation without a working
    /// credential, when OIDC is configured), or a refusal.
    pub async fn authenticate(
        &self,
        resolver: &Resolver,
        req: &AuthRequest<'_>,
    ) -> Result<Authenticated, Denied> {
        let failure = match self.try_credentials(resolver, req).await? {
            Ok(granted) => return Ok(Authenticated::Granted(granted)),
            Err(failure) => failure,
        };
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
                return Ok(Authenticated::Login(
                    oidc.login_url(req.host, &path_and_query),
                ));
            }
        }
        Err(failure.unwrap_or(AuthError::Required).into())
    }

    /// A Bearer token: a JWT verified locally, else an API key looked up by its SHA-256.
    /// Cached per (sandbox, kind, hash of the token). The outer error is a backend failure.
    /// `Ok(Some(subject))`: who it speaks for, when the identity header is on and it is known.
    async fn check_bearer(
        &self,
        resolver: &Resolver,
        sandbox: &SandboxRecord,
        token: &str,
        peer: std::net::IpAddr,
    ) -> Result<credential_cache::Verdict, RegistryError> {
        let hash = crate::registry::sha256(token);
        if let Some(verdict) = self.cache.get(&sandbox.id, Kind::Bearer, &hash) {
            return Ok(verdict);
        }
        let (verdict, expires_at) = if jwt::looks_like_jwt(token) {
            match &self.jwt {
                None => (Err(AuthError::TokenInvalid), None),
                Some(verifier) => match verifier.verify(token, &self.http).await {
                    Ok(v) => {
                        let verdict = org_access(v.organization.as_deref(), sandbox)
                            .map(|()| self.jwt_subject(v.subject, v.organization));
                        (verdict, v.exp)
                    }
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
                Some(p) => org_access(Some(&p.organization), sandbox)
                    .map(|()| self.api_key_subject(&hash, Some(&p.organization))),
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
                    // Only an API key is known by its hash here; a JWT the backend vouches for
                    // was not verified locally, so its claims name nobody.
                    Some(BearerVerdict::Allowed) => Ok((!jwt::looks_like_jwt(token))
                        .then(|| self.api_key_subject(&hash, None))
                        .flatten()),
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

    /// The subject of a verified JWT (`None` while identity is off, or without a `sub`).
    fn jwt_subject(&self, sub: Option<String>, org: Option<String>) -> Option<Subject> {
        self.identity.as_ref()?;
        Some(Subject {
            kind: SubjectKind::Jwt,
            sub: sub?.into(),
            org: org.map(Into::into),
        })
    }

    /// An API key's subject (`None` while identity is off).
    fn api_key_subject(&self, hash: &[u8; 32], org: Option<&str>) -> Option<Subject> {
        self.identity.as_ref()?;
        Some(Subject::api_key(hash, org))
    }
}

fn granted(access: Access) -> Granted {
    Granted {
        access: Some(access),
        ..Granted::default()
    }
}

/// A principal of `organization` may enter sandboxes of that organisation only (compared in
/// constant time). The one organisation check: bearer tokens and OIDC logins alike.
fn org_access(organization: Option<&str>, sandbox: &SandboxRecord) -> Result<(), AuthError> {
    match (organization, sandbox.organization.as_deref()) {
        (Some(a), Some(b)) if sign::ct_eq(a, b) => Ok(()),
        _ => Err(AuthError::Forbidden),
    }
}

#[cfg(test)]
mod tests;
