//! The resolve and admit phases of the pipeline, between route and forward: the proxy's own
//! paths on preview hosts (warning accept, login session), resolving the sandbox (through a
//! signed preview token when the host carries one), CORS preflights by the sandbox's mode,
//! authentication (`auth`), wake, the preview warning, and stripping every credential before
//! the request goes on.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{AUTHORIZATION, SET_COOKIE};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::pipeline::{App, Peer};
use crate::auth::cors::{self, CorsDecision};
use crate::auth::{
    oidc, strip_credentials, warning, Answer, AuthError, AuthRequest, Authenticated,
};
use crate::base::header_scan::{Present, Tracked};
use crate::http::body::ProxyBody;
use crate::http::respond::{self, ProxyError};
use crate::http::route::{self, OwnPath, Route, RouteError};
use crate::metrics::metrics;
use crate::registry::domains::{DomainLookup, DomainRecord};
use crate::registry::signed_preview::is_signed_token as is_signed_shape;
use crate::registry::{PortRule, SandboxRecord};

const MAX_FORM_BYTES: usize = 8 * 1024;

pub enum Admission {
    /// The gate answered the request itself.
    Respond(Response<ProxyBody>),
    /// The request may enter the sandbox.
    Enter(Entry),
}

pub struct Entry {
    pub sandbox: Arc<SandboxRecord>,
    /// The sandbox came from a stale cache entry.
    pub stale: bool,
    /// The query without the proxy's credential (`None`: unchanged).
    pub query: Option<String>,
    set_cookie: Option<HeaderValue>,
    cors: CorsDecision,
    /// `X-Forwarded-Host` when it must not be the request's host (a signed preview host:
    /// its token never reaches the app; the proxy's own host, for header routing).
    pub forwarded_host: Option<HeaderValue>,
    /// Header-routed on the proxy's own host ([`Resolution::shared_host`]).
    shared_host: bool,
}

impl Entry {
    /// The sandbox's response with what admission adds: the proxy's cookie, CORS headers, and
    /// `X-Sandgate-Stale: 1` when the sandbox came from a stale cache entry. On the proxy's own
    /// host the app's cookies are removed: that host is every sandbox's, so a cookie jar would
    /// send one sandbox's cookie to all the others.
    pub fn finish(&self, mut response: Response<ProxyBody>) -> Response<ProxyBody> {
        let headers = response.headers_mut();
        if self.shared_host {
            headers.remove(SET_COOKIE);
        }
        if let Some(c) = &self.set_cookie {
            headers.append(SET_COOKIE, c.clone());
        }
        cors::decorate(headers, &self.cors);
        if self.stale {
            headers.insert(STALE_HEADER, HeaderValue::from_static("1"));
        }
        response
    }
}

const STALE_HEADER: http::HeaderName = http::HeaderName::from_static("x-sandgate-stale");

/// `<port>-<sandboxId>.<domain>[:port]` for the host `<port>-<token>.<domain>[:port]`.
fn canonical_host(host: &str, sandbox_id: &str) -> Option<HeaderValue> {
    let (label, rest) = host.split_once('.')?;
    let (port, _token) = label.split_once('-')?;
    HeaderValue::try_from(format!("{port}-{sandbox_id}.{rest}")).ok()
}

/// The browser names the signed host in `Origin` and `Referer` too: there the token becomes the
/// canonical host as well, so it never reaches the app and the app's same-origin checks agree
/// with `X-Forwarded-Host`.
fn unsign_origins(headers: &mut http::HeaderMap, host: &str, canonical: &HeaderValue) {
    for name in [http::header::ORIGIN, http::header::REFERER] {
        let Some(value) = headers.get(&name) else {
            continue;
        };
        if let Some(rewritten) = replace_authority(value.as_bytes(), host, canonical.as_bytes()) {
            headers.insert(name, rewritten);
        }
    }
}

/// `scheme://<host><rest>` → `scheme://<canonical><rest>` when the URL's authority is `host`.
fn replace_authority(url: &[u8], host: &str, canonical: &[u8]) -> Option<HeaderValue> {
    let scheme_end = url.windows(3).position(|w| w == b"://")? + 3;
    let after = &url[scheme_end..];
    let authority_end = after
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(after.len());
    if !after[..authority_end].eq_ignore_ascii_case(host.as_bytes()) {
        return None;
    }
    let mut out = Vec::with_capacity(url.len());
    out.extend_from_slice(&url[..scheme_end]);
    out.extend_from_slice(canonical);
    out.extend_from_slice(&after[authority_end..]);
    HeaderValue::from_bytes(&out).ok()
}

/// The proxy's own path on preview hosts that comes before the sandbox is known: the preview
/// warning's accept form (`POST`). `None`: not that path.
pub async fn preview_own_path(
    app: &App,
    req: &mut Request<Incoming>,
    host: &str,
    port: Option<u16>,
) -> Option<Result<Response<ProxyBody>, ProxyError>> {
    if port.is_none() || req.uri().path() != warning::ACCEPT_PATH || req.method() != Method::POST {
        return None;
    }
    let auth = &app.auth;
    let uri = req.uri().clone();
    let form = match Limited::new(req.body_mut(), MAX_FORM_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Some(Err(AuthError::Csrf.into())),
    };
    Some(
        warning::accept(&auth.signer, auth.flags, host, uri.query(), &form)
            .map(respond::answer)
            .ok_or_else(|| AuthError::Csrf.into()),
    )
}

/// What the resolve phase found: the sandbox the host or path names.
pub struct Resolution {
    pub sandbox: Arc<SandboxRecord>,
    /// The sandbox came from a stale cache entry.
    pub stale: bool,
    /// The host's signed preview token named it.
    pub signed: bool,
    /// Routing headers on the proxy's own host named it (`http::header_route`). That host is
    /// shared by every sandbox: header credentials only, no cookie in or out, no CORS grant,
    /// no login redirect or warning page.
    pub shared_host: bool,
}

/// Resolve phase: the sandbox behind `id_or_token` (through a signed preview token when the
/// host label has that shape), from the registry's cache.
pub async fn resolve(
    app: &App,
    id_or_token: &str,
    port: Option<u16>,
    client_ip: IpAddr,
) -> Result<Resolution, ProxyError> {
    let mut sandbox_id = Cow::Borrowed(id_or_token);
    let mut signed = false;
    if let Some(port) = port.filter(|_| is_signed_shape(id_or_token)) {
        if let Some(id) = app.resolver.signed_preview(id_or_token, port).await? {
            sandbox_id = Cow::Owned(id.into());
            signed = true;
        }
    }
    let resolved = app.resolver.sandbox(&sandbox_id).await?;
    let Some(sandbox) = resolved.sandbox else {
        if is_signed_shape(id_or_token) {
            // Guessing signed tokens through the host counts as a failed credential; a valid
            // token never gets here, so the limiter never refuses one.
            app.auth
                .limiter
                .fail(client_ip)
                .map_err(AuthError::RateLimited)?;
        }
        return Err(ProxyError::SandboxNotFound);
    };
    Ok(Resolution {
        sandbox,
        stale: resolved.stale,
        signed,
        shared_host: false,
    })
}

/// Resolve phase by a sandbox id that is never a signed preview token: a routing header's
/// (`shared_host`: the proxy's own host, shared by every sandbox) or a custom domain record's
/// (whatever its id looks like, it opens nothing by itself).
pub async fn resolve_by_id(
    app: &App,
    sandbox_id: &str,
    shared_host: bool,
) -> Result<Resolution, ProxyError> {
    let resolved = app.resolver.sandbox(sandbox_id).await?;
    Ok(Resolution {
        sandbox: resolved.sandbox.ok_or(ProxyError::SandboxNotFound)?,
        stale: resolved.stale,
        signed: false,
        shared_host,
    })
}

/// Admit phase: CORS preflight, the OIDC session hand-off, authentication, the preview warning,
/// and stripping every credential before the request goes on. A sandbox that is not running is
/// admitted too: only a caller who may enter learns its state or wakes it (`hold`, next).
#[allow(clippy::too_many_arguments)]
pub async fn admit(
    app: &App,
    req: &mut Request<Incoming>,
    host: &str,
    id_or_token: &str,
    port: Option<u16>,
    resolution: Resolution,
    (client, client_ip): (&Peer, IpAddr),
    (html, present): (bool, Present),
) -> Result<Admission, ProxyError> {
    let auth = &app.auth;
    let uri = req.uri().clone();
    let method = req.method().clone();
    let Resolution {
        sandbox,
        stale,
        signed,
        shared_host,
    } = resolution;
    if sandbox.public {
        // Nothing to hide on a public sandbox: an undeclared port is 404 for everyone.
        not_exposed(&sandbox, port)?;
    }
    // After resolving: the mode is the sandbox's, and a preflight carries no credentials, so
    // the proxy answers it before authenticating (passthrough ones go on to the app).
    let own: [&str; 2] = [id_or_token, &sandbox.id];
    let own = if port.is_some() && !shared_host {
        &own[..]
    } else {
        &[]
    };
    let (cors, hands_off) = match auth
        .cors
        .decide(req.headers_mut(), present, sandbox.cors, own)
    {
        // Not a sandbox's origin: no grant, and preflights (which cannot carry the routing
        // headers) go to the app like any request.
        _ if shared_host => (CorsDecision::None, true),
        decided => decided,
    };
    if let Some(r) = auth
        .cors
        .preflight(&method, req.headers(), &cors, hands_off)
    {
        return Ok(Admission::Respond(respond::answer(r)));
    }
    let preview_host = port.is_some() && !shared_host;
    if preview_host && uri.path() == oidc::SESSION_PATH && method == Method::GET {
        // A custom domain's cookie opens its port only: its DNS is its owner's, not the
        // platform's, so a cookie lost with it must not open the sandbox's other ports.
        let bound = route::custom_domain_host(host, &app.domains).and(port);
        return oidc::session(auth, host, uri.query(), &sandbox, id_or_token, bound)
            .map(|answer| Admission::Respond(respond::answer(answer)))
            .map_err(Into::into);
    }

    let navigation = !shared_host && warning::is_navigation(req.headers(), present, html);
    let safe_method = matches!(method, Method::GET | Method::HEAD);
    let authenticated = auth
        .authenticate(
            &app.resolver,
            &AuthRequest {
                sandbox: &sandbox,
                port,
                id_or_token,
                signed,
                headers: req.headers(),
                present,
                query: uri.query(),
                path: uri.path(),
                host,
                peer: client_ip,
                navigation,
                safe_method,
                memo: Some(&client.token_memo),
                header_credentials_only: shared_host,
            },
        )
        .await?;
    let granted = match authenticated {
        Authenticated::Granted(granted) => granted,
        Authenticated::Login(location) => {
            metrics().auth_failure(respond::LOGIN_REQUIRED);
            return Ok(Admission::Respond(respond::login_redirect(
                &location,
                uri.path(),
                html,
            )));
        }
    };
    // A private sandbox's port policy is told only to whoever may enter it (401 first).
    not_exposed(&sandbox, port)?;
    if let Some(location) = granted.redirect {
        // Built by `same_host_path`: always a header value; a redirect without it is a refusal.
        let location = HeaderValue::try_from(location).map_err(|_| AuthError::TokenInvalid)?;
        let answer = Answer::redirect(location, granted.set_cookie);
        return Ok(Admission::Respond(respond::answer(answer)));
    }
    if auth.preview_warning
        && navigation
        && warning::applies(port, req.headers(), present, auth.flags)
    {
        let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
        return Ok(Admission::Respond(respond::answer(warning::page(
            &auth.signer,
            host,
            path_and_query,
            safe_method,
        ))));
    }

    if present.may_have(Tracked::Authorization) && req.headers().contains_key(AUTHORIZATION) {
        auth.remove_platform_authorization(
            &app.resolver,
            &sandbox,
            req.headers_mut(),
            granted.consumed_authorization,
            client_ip,
        )
        .await;
    }
    let query = strip_credentials(req.headers_mut(), present, uri.query());
    set_identity(
        auth,
        req.headers_mut(),
        present,
        &sandbox,
        port,
        granted.subject.as_ref(),
    );
    let forwarded_host = if signed {
        let canonical =
            canonical_host(host, &sandbox.id).ok_or(RouteError::BadHost("preview host"))?;
        unsign_origins(req.headers_mut(), host, &canonical);
        Some(canonical)
    } else {
        None
    };
    Ok(Admission::Enter(Entry {
        sandbox,
        stale,
        query,
        set_cookie: granted.set_cookie,
        cors,
        forwarded_host,
        shared_host,
    }))
}

/// `Err(PortNotExposed)` for a port the sandbox's policy does not expose (declared mode).
pub(super) fn not_exposed(sandbox: &SandboxRecord, port: Option<u16>) -> Result<(), ProxyError> {
    match (sandbox.port_rule(port), port) {
        (PortRule::NotExposed, Some(port)) => Err(ProxyError::PortNotExposed(port)),
        _ => Ok(()),
    }
}

/// A client's `X-Sandgate-Identity` never goes on, whatever the configuration; the proxy's own
/// does when a user's credential opened a preview of a sandbox that gets identity headers
/// (toolbox traffic goes to the platform's daemon: no identity).
fn set_identity(
    auth: &crate::auth::Auth,
    headers: &mut http::HeaderMap,
    present: Present,
    sandbox: &SandboxRecord,
    port: Option<u16>,
    subject: Option<&crate::auth::identity::Subject>,
) {
    use crate::auth::identity::IDENTITY_HEADER;
    if present.may_have(Tracked::Identity) {
        headers.remove(IDENTITY_HEADER);
    }
    let (Some(signer), Some(subject), Some(port)) = (&auth.identity, subject, port) else {
        return;
    };
    if !signer.applies(sandbox.identity) {
        return;
    }
    let org = sandbox.organization.as_deref();
    if let Some(value) = signer.header(subject, &sandbox.id, org, port) {
        headers.insert(IDENTITY_HEADER, value);
    }
}

/// `/login` and `/callback` on the proxy's own host.
pub async fn own_host(
    app: &App,
    path: OwnPath,
    req: &Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(oidc) = &app.auth.oidc else {
        return Err(ProxyError::NotFound);
    };
    let query = req.uri().query();
    match path {
        OwnPath::Login => {
            let may_return_to = |authority: String| async move {
                let preview = route::route(&authority, "/", &app.domains);
                if matches!(preview, Ok(Route::Preview { .. })) {
                    return Ok(true);
                }
                verified_domain(app, &authority).await.map(|d| d.is_some())
            };
            Ok(respond::answer(
                oidc.login(&app.auth, query, may_return_to).await?,
            ))
        }
        OwnPath::Callback => oidc
            .callback(&app.auth, req.headers(), query, |authority| async move {
                resolve_return_host(app, &authority).await
            })
            .await
            .map(respond::answer),
        _ => Err(ProxyError::NotFound),
    }
}

/// The custom domain record `authority` names, if it is one and verified now.
async fn verified_domain(
    app: &App,
    authority: &str,
) -> Result<Option<Arc<DomainRecord>>, ProxyError> {
    let (Some(domains), Some(name)) = (
        &app.custom_domains,
        route::custom_domain_host(authority, &app.domains),
    ) else {
        return Ok(None);
    };
    match domains.lookup(&name).await? {
        DomainLookup::Verified(record) => Ok(Some(record)),
        DomainLookup::Pending(_) | DomainLookup::Unknown => Ok(None),
    }
}

/// The sandbox a sign-in's `returnTo` authority names: a preview host's
/// (`<port>-<idOrToken>.<domain>[:port]`), or a verified custom domain's (looked up by id only,
/// as its requests are).
async fn resolve_return_host(app: &App, authority: &str) -> Result<Arc<SandboxRecord>, ProxyError> {
    let Ok(Route::Preview { port, id_or_token }) = route::route(authority, "/", &app.domains)
    else {
        let record = verified_domain(app, authority)
            .await?
            .ok_or(oidc::NOT_RETURNABLE)?;
        return app
            .resolver
            .sandbox(&record.sandbox)
            .await?
            .sandbox
            .ok_or(ProxyError::SandboxNotFound);
    };
    let mut id: Cow<'_, str> = Cow::Borrowed(&id_or_token);
    if is_signed_shape(&id_or_token) {
        if let Some(found) = app.resolver.signed_preview(&id_or_token, port).await? {
            id = Cow::Owned(found.into());
        }
    }
    app.resolver
        .sandbox(&id)
        .await?
        .sandbox
        .ok_or(ProxyError::SandboxNotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_hosts_token_leaves_origin_and_referer() {
        let host = "3000-abcdefgh12345678.preview.localhost:8080";
        let canonical = "3000-sbx-1.preview.localhost:8080";
        let cases: [(&str, Option<&str>); 6] = [
            (
                "https://3000-abcdefgh12345678.preview.localhost:8080",
                Some("https://3000-sbx-1.preview.localhost:8080"),
            ),
            (
                "http://3000-ABCDEFGH12345678.preview.localhost:8080/p?q=1#f",
                Some("http://3000-sbx-1.preview.localhost:8080/p?q=1#f"),
            ),
            ("https://dashboard.example.com/x", None),
            (
                "https://3000-abcdefgh12345678.preview.localhost:8080.evil/",
                None,
            ),
            ("https://3000-abcdefgh12345678.preview.localhost", None),
            ("null", None),
        ];
        for (url, expected) in cases {
            let got = replace_authority(url.as_bytes(), host, canonical.as_bytes());
            assert_eq!(got.as_ref().map(|v| v.to_str().unwrap()), expected, "{url}");
        }
    }
}
