//! Browser login with OpenID Connect (authorization code + PKCE), across hosts without
//! domain-wide cookies:
//!
//! 1. preview host (or verified custom domain), navigation without credentials →
//!    `{scheme}://{login_host}/login?returnTo=<url>`
//! 2. `/login` → signed `state` {nonce, returnTo, expiry} + signed `sandgate-oidc` cookie
//!    (`__Host-sandgate-oidc` under https)
//!    {nonce, PKCE verifier, expiry} on the login host → the issuer's authorize endpoint (S256)
//! 3. `/callback` → state checked against the cookie, code exchanged with the verifier, ID token
//!    verified via JWKS (iss, aud = client_id, exp), organisation checked against the sandbox →
//!    `{preview host}/__sandgate/session?ticket=<signed {nonce, sandbox, host, path, expiry 60 s}>`
//!    (single-use per replica)
//! 4. the preview host checks the ticket (host and sandbox), sets its host-only sandbox cookie
//!    (naming the user's `sub` and organisation, for the identity header) and redirects to the
//!    path.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::{AuthConfig, OidcConfig};
use super::cookie::OIDC_COOKIE;
use super::http_client::{encode, HttpClient};
use super::jwt::{Jwks, JwtVerifier};
use super::return_to::{same_host_path, split_absolute};
use super::sign::{ct_eq, now_unix, random_token};
use super::{query_param, Answer, Auth, AuthError};
use crate::registry::SandboxRecord;

pub const SESSION_PATH: &str = "/__sandgate/session";
/// A `returnTo` a sign-in may not come back to.
pub const NOT_RETURNABLE: AuthError =
    AuthError::BadLogin("returnTo must be a preview URL or a verified custom domain");
const STATE_PURPOSE: &str = "oidc-state";
const PKCE_PURPOSE: &str = "oidc-pkce";
const TICKET_PURPOSE: &str = "login-ticket";
const LOGIN_TTL: u64 = 600;
const TICKET_TTL: u64 = 60;

#[derive(Serialize, Deserialize)]
struct State {
    n: String,
    r: String,
    e: u64,
}

#[derive(Serialize, Deserialize)]
struct Pkce {
    n: String,
    v: String,
    e: u64,
}

#[derive(Serialize, Deserialize)]
struct Ticket {
    /// Random: every ticket is unique (they are single-use).
    n: String,
    s: String,
    h: String,
    p: String,
    e: u64,
    /// The user's `sub` and organisation, for the sandbox cookie (the identity header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
}

struct Discovered {
    authorization_endpoint: String,
    token_endpoint: String,
    verifier: JwtVerifier,
}

pub struct Oidc {
    cfg: OidcConfig,
    scheme: String,
    org_claim: String,
    jwks_ttl: std::time::Duration,
    jwks_min_refetch: std::time::Duration,
    discovered: ArcSwapOption<Discovered>,
}

impl Oidc {
    pub fn new(config: &AuthConfig, scheme: &str) -> Self {
        Oidc {
            cfg: config.oidc.clone(),
            scheme: scheme.into(),
            org_claim: config.jwt.organization_claim.clone(),
            jwks_ttl: config.jwt.jwks_ttl,
            jwks_min_refetch: config.jwt.jwks_min_refetch,
            discovered: ArcSwapOption::empty(),
        }
    }

    fn redirect_uri(&self) -> String {
        format!("{}://{}/callback", self.scheme, self.cfg.login_host)
    }

    /// Where a browser without credentials on `host` goes to sign in.
    pub fn login_url(&self, host: &str, path_and_query: &str) -> String {
        let return_to = format!("{}://{host}{path_and_query}", self.scheme);
        format!(
            "{}://{}/login?returnTo={}",
            self.scheme,
            self.cfg.login_host,
            encode(&return_to)
        )
    }

    async fn discover(&self, http: &HttpClient) -> Result<Arc<Discovered>, AuthError> {
        if let Some(d) = self.discovered.load_full() {
            return Ok(d);
        }
        let issuer = self.cfg.issuer.trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let doc = http.get_json(&url).await.map_err(|e| {
            tracing::warn!(%url, error = %e, "OIDC discovery failed");
            AuthError::IdpUnavailable
        })?;
        let field = |name: &str| {
            doc.get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or(AuthError::IdpUnavailable)
        };
        let doc_issuer = field("issuer")?;
        if doc_issuer.trim_end_matches('/') != issuer {
            tracing::warn!("OIDC discovery: issuer does not match the configured issuer");
            return Err(AuthError::IdpUnavailable);
        }
        let jwks = Jwks::new(field("jwks_uri")?, self.jwks_ttl, self.jwks_min_refetch);
        let discovered = Arc::new(Discovered {
            authorization_endpoint: field("authorization_endpoint")?,
            token_endpoint: field("token_endpoint")?,
            verifier: JwtVerifier::for_oidc(
                jwks,
                &doc_issuer,
                &self.cfg.client_id,
                &self.org_claim,
            ),
        });
        self.discovered.store(Some(discovered.clone()));
        Ok(discovered)
    }

    /// `GET /login?returnTo=<URL>` on the login host; `may_return_to` says whether an
    /// authority is one a sign-in may come back to (a preview host, a verified custom domain).
    pub async fn login<F, Fut, E>(
        &self,
        auth: &Auth,
        query: Option<&str>,
        may_return_to: F,
    ) -> Result<Answer, E>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<bool, E>>,
        E: From<AuthError>,
    {
        let return_to = decoded_param(query, "returnTo").unwrap_or_default();
        let Some((authority, _)) = split_absolute(&return_to) else {
            return Err(NOT_RETURNABLE.into());
        };
        if return_to.bytes().any(|b| b.is_ascii_control())
            || !may_return_to(authority.to_string()).await?
        {
            return Err(NOT_RETURNABLE.into());
        }
        let discovered = self.discover(&auth.http).await?;
        let rnd = |_| AuthError::IdpUnavailable;
        let nonce = random_token().map_err(rnd)?;
        let verifier = random_token().map_err(rnd)?;
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let id_token_nonce = token_nonce(&nonce);
        let e = now_unix() + LOGIN_TTL;
        let state = auth.signer.sign(
            STATE_PURPOSE,
            &State {
                n: nonce.clone(),
                r: return_to,
                e,
            },
        );
        let pkce = auth.signer.sign(
            PKCE_PURPOSE,
            &Pkce {
                n: nonce,
                v: verifier,
                e,
            },
        );
        let (Some(state), Some(pkce)) = (state, pkce) else {
            return Err(AuthError::IdpUnavailable.into());
        };
        let endpoint = &discovered.authorization_endpoint;
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        let mut url = format!(
            "{endpoint}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
            encode(&self.cfg.client_id),
            encode(&self.redirect_uri()),
            encode(&self.cfg.scopes.join(" ")),
            encode(&state),
            id_token_nonce,
            challenge,
        );
        if !self.cfg.audience.is_empty() {
            url.push_str("&audience=");
            url.push_str(&encode(&self.cfg.audience));
        }
        redirect(
            &url,
            auth.flags.set_lax_cookie(OIDC_COOKIE, &pkce, LOGIN_TTL),
        )
        .map_err(E::from)
    }

    /// `GET /callback?code&state` on the login host. `resolve` maps the authority of `returnTo`
    /// (a preview host or a verified custom domain) to its sandbox; its error type `E` (the
    /// caller's) carries auth's refusals too.
    pub async fn callback<F, Fut, E>(
        &self,
        auth: &Auth,
        headers: &HeaderMap,
        query: Option<&str>,
        resolve: F,
    ) -> Result<Answer, E>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Arc<SandboxRecord>, E>>,
        E: From<AuthError>,
    {
        if query_param(query.unwrap_or(""), "error").is_some() {
            return Err(AuthError::BadLogin("the identity provider refused the login").into());
        }
        let code = decoded_param(query, "code").ok_or(AuthError::BadLogin("missing code"))?;
        let state_raw =
            decoded_param(query, "state").ok_or(AuthError::BadLogin("missing state"))?;
        // Every login cookie: one planted for the login host may be sorted first.
        let sessions: Vec<Pkce> = auth
            .flags
            .values(headers, OIDC_COOKIE)
            .filter_map(|c| auth.signer.verify(PKCE_PURPOSE, c))
            .collect();
        if sessions.is_empty() {
            return Err(
                AuthError::BadLogin("login session missing or expired; start again").into(),
            );
        }
        let state: State = auth
            .signer
            .verify(STATE_PURPOSE, &state_raw)
            .ok_or(AuthError::BadLogin("invalid state"))?;
        let now = now_unix();
        let pkce = sessions.into_iter().find(|p| ct_eq(&state.n, &p.n));
        let Some(pkce) = pkce.filter(|p| state.e > now && p.e > now) else {
            return Err(AuthError::BadLogin("state does not match this browser's login").into());
        };
        let discovered = self.discover(&auth.http).await?;
        let redirect_uri = self.redirect_uri();
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect_uri.as_str()),
            ("client_id", self.cfg.client_id.as_str()),
            ("code_verifier", pkce.v.as_str()),
        ];
        if !self.cfg.client_secret.is_empty() {
            form.push(("client_secret", self.cfg.client_secret.as_str()));
        }
        let tokens = auth
            .http
            .post_form(&discovered.token_endpoint, &form)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "OIDC code exchange failed");
                AuthError::BadLogin("the code exchange failed")
            })?;
        let id_token = tokens
            .get("id_token")
            .and_then(|t| t.as_str())
            .ok_or(AuthError::BadLogin("no ID token"))?;
        let verified = discovered
            .verifier
            .verify(id_token, &auth.http)
            .await
            .map_err(|e| {
                tracing::info!(error = %e, "OIDC ID token rejected");
                AuthError::BadLogin("the ID token is not valid")
            })?;
        let expected_nonce = token_nonce(&pkce.n);
        if !verified
            .nonce
            .as_deref()
            .is_some_and(|n| ct_eq(n, &expected_nonce))
        {
            return Err(AuthError::BadLogin("the ID token's nonce does not match").into());
        }
        let (authority, path) =
            split_absolute(&state.r).ok_or(AuthError::BadLogin("bad returnTo"))?;
        let authority = authority.to_ascii_lowercase();
        let path = same_host_path(path, &authority);
        let sandbox = resolve(authority.clone()).await?;
        super::org_access(verified.organization.as_deref(), &sandbox)?;
        let ticket = auth
            .signer
            .sign(
                TICKET_PURPOSE,
                &Ticket {
                    n: random_token().map_err(|_| AuthError::IdpUnavailable)?,
                    s: sandbox.id.to_string(),
                    h: authority.clone(),
                    p: path,
                    e: now + TICKET_TTL,
                    u: verified.subject,
                    o: verified.organization,
                },
            )
            .ok_or(AuthError::IdpUnavailable)?;
        redirect(
            &format!(
                "{}://{authority}{SESSION_PATH}?ticket={}",
                self.scheme,
                encode(&ticket)
            ),
            auth.flags.set_lax_cookie(OIDC_COOKIE, "", 0),
        )
        .map_err(E::from)
    }
}

/// `GET /__sandgate/session?ticket=…` on a preview host or custom domain: the sandbox cookie
/// for this host (opening `port` only, when given) and a redirect to the path the login started
/// from.
pub fn session(
    auth: &Auth,
    host: &str,
    query: Option<&str>,
    sandbox: &SandboxRecord,
    id_or_token: &str,
    port: Option<u16>,
) -> Result<Answer, AuthError> {
    let raw = decoded_param(query, "ticket").ok_or(AuthError::TokenInvalid)?;
    let ticket: Ticket = auth
        .signer
        .verify(TICKET_PURPOSE, &raw)
        .ok_or(AuthError::TokenInvalid)?;
    if ticket.e <= now_unix() {
        return Err(AuthError::TokenExpired);
    }
    if !ticket.h.eq_ignore_ascii_case(host) || ticket.s != *sandbox.id {
        return Err(AuthError::TokenInvalid);
    }
    if !auth.spend_ticket(&raw, ticket.e) {
        return Err(AuthError::TokenInvalid);
    }
    // Only for the identity header: without it the cookie stays as small as before.
    let user = ticket
        .u
        .filter(|_| auth.identity.is_some())
        .map(|sub| super::cookie::CookieUser { sub, org: ticket.o });
    redirect(
        &same_host_path(&ticket.p, host),
        auth.sandbox_cookie_for(&sandbox.id, id_or_token, port, user.as_ref()),
    )
}

/// The `nonce` sent to the provider: derived from the login's secret nonce (which stays in the
/// signed cookie and state), so the ID token is bound to this browser's login.
fn token_nonce(login_nonce: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(
        format!("id-token-nonce:{login_nonce}").as_bytes(),
    ))
}

/// A `302` to `location` (never cached) setting `cookie`; a location that is no header value is
/// a failed login.
fn redirect(location: &str, cookie: Option<HeaderValue>) -> Result<Answer, AuthError> {
    let value = HeaderValue::try_from(location).map_err(|_| AuthError::BadLogin("bad redirect"))?;
    Ok(Answer::redirect(value, cookie))
}

fn decoded_param(query: Option<&str>, name: &str) -> Option<String> {
    let raw = query_param(query?, name)?;
    let plus_as_space = raw.replace('+', " ");
    Some(
        percent_encoding::percent_decode_str(&plus_as_space)
            .decode_utf8()
            .ok()?
            .into_owned(),
    )
}
