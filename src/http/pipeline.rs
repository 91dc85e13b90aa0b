//! One request, one straight path: route → resolve → admit (both in `gate`) → wake (`hold`) → activity →
//! forward, with every error turned into a response by `respond`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use http_body::Body;

use http::header::{ALLOW, CONNECTION, HOST, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::access_log;
use super::body::ProxyBody;
use super::client_addr::{ClientAddr, FORWARDED};
use super::client_io::ConnectionEnd;
use super::forward::{Destination, Target, UpstreamReport};
use super::gate::{self, Admission};
use super::header_route;
use super::hold;
use super::request_log;
use super::respond::{auth_code, error_response, health, wants_html, PageContext, ProxyError};
use super::route::{self, OwnPath, Route, RouteError};
use crate::base::header_scan::{Present, Tracked};
use crate::metrics::{metrics, RouteKind};
use crate::registry::domains::{DomainLookup, DomainRecord};
use crate::registry::{InflightGuard, SandboxRecord};

pub use super::{App, ConnectionSlots, Peer};

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const SKIP_ACTIVITY_HEADER: HeaderName =
    HeaderName::from_static("x-daytona-skip-last-activity-update");

/// What the phases learned about a request, for the access log, the request log and metrics.
struct Seen {
    kind: RouteKind,
    /// Set once resolved, so refusals (401, 403, 429, 502…) are in the sandbox's request log.
    sandbox: Option<Arc<SandboxRecord>>,
    port: Option<u16>,
    upstream: UpstreamReport,
}

/// The request handler given to the server: never fails, every error becomes a response.
pub async fn handle(app: Arc<App>, mut req: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
    let started = Instant::now();
    let uri = req.uri().clone();
    let method = req.method().clone();
    let present = Present::scan(req.headers());
    let html = wants_html(req.headers(), present);
    let version = req.version();
    let http1 = version <= Version::HTTP_11;
    let body_pending = http1 && !req.body().is_end_stream();
    let client = app.trusted_proxies.client(peer.addr.ip(), req.headers());
    let request_id = app
        .request_ids
        .then(|| request_id(req.headers_mut(), present));
    // Kept for a 401 page's sign-in link (a reference count, not a copy).
    let host = html.then(|| req.headers().get(HOST).cloned()).flatten();
    let user_agent = app
        .access_log
        .as_ref()
        .and_then(|_| req.headers().get(USER_AGENT).cloned());
    let mut seen = Seen {
        kind: RouteKind::Own,
        sandbox: None,
        port: None,
        upstream: UpstreamReport::default(),
    };
    let mut response = match pipeline(&app, req, peer, &client, (html, present), &mut seen).await {
        Ok(response) => response,
        Err(error) => {
            log_error(&error, uri.path(), request_id.as_ref(), &seen);
            if let ProxyError::Auth(auth) = &error {
                metrics().auth_failure(auth_code(auth));
            }
            let context = PageContext {
                pages: &app.pages,
                request_id: request_id.as_ref(),
                port: seen.port,
                login_url: login_url(&app, &error, html, host.as_ref(), &uri),
            };
            error_response(&error, uri.path(), html, &context)
        }
    };
    if http1 {
        end_connection_properly(&mut response, body_pending, &peer.end);
    }
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics().request(seen.kind, status, elapsed);
    if let Some(id) = &request_id {
        response.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
    }
    if let (Some(log), Some(sandbox)) = (&app.request_log, &seen.sandbox) {
        let request = request_log::Request {
            method: &method,
            path: uri.path(),
            status,
            elapsed,
            bytes: response.body().size_hint().exact(),
            kind: seen.kind,
            port: seen.port,
            request_id: request_id.as_ref(),
        };
        log.record(sandbox, &request);
    }
    if let Some(log) = &app.access_log {
        let line = access_log::Line {
            method: &method,
            kind: seen.kind,
            path: uri.path(),
            status,
            elapsed,
            bytes: response.body().size_hint().exact(),
            sandbox: seen.sandbox.as_ref().map(|s| &*s.id),
            request_id: request_id.as_ref(),
            peer_text: (client.ip == peer.addr.ip()).then(|| peer.ip_header.as_bytes()),
            client_ip: client.ip,
            version,
            user_agent: user_agent.as_ref(),
            upstream: seen
                .upstream
                .attempted
                .then(|| seen.sandbox.as_deref().map(|s| (s, seen.port)))
                .flatten(),
            upstream_time: seen.upstream.time,
        };
        if let Some(waiting) = log.record(&line) {
            // The response waits for room, but the line is handed to its own task: a client
            // that resets its stream (dropping this future) does not take its line with it.
            let app = app.clone();
            let _ = tokio::spawn(async move {
                if let Some(log) = &app.access_log {
                    log.wait_for_room(waiting).await;
                }
            })
            .await;
        }
    }
    response
}

/// Where a browser refused with a 401 signs in, when OIDC is configured.
fn login_url(
    app: &App,
    error: &ProxyError,
    html: bool,
    host: Option<&HeaderValue>,
    uri: &http::Uri,
) -> Option<String> {
    let oidc = app.auth.oidc.as_ref().filter(|_| html)?;
    if error.status() != StatusCode::UNAUTHORIZED {
        return None;
    }
    let host = host
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))?;
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    Some(oidc.login_url(host, path_and_query))
}

/// An HTTP/1 connection whose response body fails is reset, not closed as if the body were whole.
/// One that answers without reading the request body (every answer the proxy makes itself) says
/// `Connection: close` and, closing, drains what the client still uploads (bounded), so the
/// client reads the answer instead of a broken pipe.
fn end_connection_properly(
    response: &mut Response<ProxyBody>,
    body_pending: bool,
    end: &Arc<ConnectionEnd>,
) {
    if !response.body().is_generated() {
        response.body_mut().reset_connection_on_error(end);
    } else if body_pending && response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        end.linger();
    }
}

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The client's `X-Request-Id` when it is sane, else a new one; set on the request so it is
/// forwarded.
fn request_id(headers: &mut http::HeaderMap, present: Present) -> HeaderValue {
    let valid = |v: &HeaderValue| {
        (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
    };
    let sent = present
        .may_have(Tracked::RequestId)
        .then(|| headers.get(REQUEST_ID_HEADER))
        .flatten();
    if let Some(v) = sent.filter(|v| valid(v)) {
        return v.clone();
    }
    static PREFIX: LazyLock<u64> = LazyLock::new(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(crate::base::clock::now_nanos());
        h.finish()
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // 16 hex digits of the per-process prefix, then 10 of the counter.
    let mut id = [0u8; 26];
    put_hex(&mut id[..16], *PREFIX);
    put_hex(&mut id[16..], n);
    let id = HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"));
    headers.insert(REQUEST_ID_HEADER, id.clone());
    id
}

/// Writes the low `out.len()` hex digits of `value` into `out`.
fn put_hex(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

async fn pipeline(
    app: &Arc<App>,
    mut req: Request<Incoming>,
    peer: &Peer,
    client: &ClientAddr,
    (html, present): (bool, Present),
    seen: &mut Seen,
) -> Result<Response<ProxyBody>, ProxyError> {
    let host = authority_value(&req)?;
    let host_str = host
        .to_str()
        .map_err(|_| RouteError::BadHost("Host is not ASCII"))?;
    let uri = req.uri().clone();
    if uri.path() == "*" {
        return asterisk_form(req.method());
    }
    if let Some(answer) = acme_http_challenge(app, &uri, peer.https) {
        return Ok(answer);
    }
    let by_header;
    // Header-routed: the preview host the app sees as `X-Forwarded-Host`.
    let mut shared_host = None;
    let routed = route::route(host_str, uri.path(), &app.domains);
    let domain = custom_domain(app, host_str, &routed).await?;
    let routed = match domain {
        // The path is the app's, not the proxy's own host's (`/toolbox/…` included): what
        // `route` made of it is not used.
        Some(_) => Route::Own(OwnPath::NotFound),
        None => routed?,
    };
    let (sandbox_id, port, target) = match (domain.as_deref(), routed) {
        (Some(domain), _) => {
            route::check_path(uri.path())?;
            seen.kind = RouteKind::Preview;
            seen.port = Some(domain.port);
            let prefix = domain.path_prefix.as_deref().unwrap_or("");
            let target = Target::Preview {
                port: domain.port,
                prefix,
            };
            (Cow::Borrowed(&*domain.sandbox), Some(domain.port), target)
        }
        (None, Route::Own(own)) => {
            // Only here: a preview host or a toolbox path never re-routes by the headers.
            by_header =
                match header_route::parse(req.headers(), present).map_err(RouteError::from)? {
                    Some(by_header) => by_header,
                    None => return own_host(app, own, &req).await,
                };
            route::check_path(uri.path())?;
            seen.kind = RouteKind::Preview;
            let preview_host = by_header.preview_host(app.domains.primary(), host_str);
            shared_host = Some(preview_host.unwrap_or_else(|| host.clone()));
            let port = by_header.port;
            seen.port = Some(port);
            (
                by_header.sandbox_id().into(),
                Some(port),
                Target::Preview { port, prefix: "" },
            )
        }
        (None, Route::Preview { port, id_or_token }) => {
            seen.kind = RouteKind::Preview;
            seen.port = Some(port);
            (
                id_or_token,
                Some(port),
                Target::Preview { port, prefix: "" },
            )
        }
        (None, Route::Toolbox { sandbox_id, rest }) => {
            seen.kind = RouteKind::Toolbox;
            (sandbox_id.into(), None, Target::Toolbox { rest })
        }
    };

    let preview_port = port.filter(|_| shared_host.is_none());
    if let Some(answer) = gate::preview_own_path(app, &mut req, host_str, preview_port).await {
        return answer;
    }
    let resolution = match (&shared_host, &domain) {
        (Some(_), _) => gate::resolve_by_id(app, &sandbox_id, true).await?,
        (None, Some(_)) => gate::resolve_by_id(app, &sandbox_id, false).await?,
        (None, None) => gate::resolve(app, &sandbox_id, port, client.ip).await?,
    };
    seen.sandbox = Some(resolution.sandbox.clone());
    let admission = gate::admit(
        app,
        &mut req,
        host_str,
        &sandbox_id,
        port,
        resolution,
        (peer, client.ip),
        (html, present),
    );
    let mut entry = match admission.await? {
        Admission::Respond(response) => return Ok(response),
        Admission::Enter(entry) => entry,
    };
    let header_routed = shared_host.is_some();
    if header_routed {
        entry.forwarded_host = shared_host;
    }
    if !entry.sandbox.is_running() {
        let counts = app
            .activity
            .counts_as_activity(port, req.headers(), present);
        let navigation =
            !header_routed && crate::auth::warning::is_navigation(req.headers(), present, html);
        let facts = (counts, navigation, client.ip);
        if let Some(page) = hold::wake(app, &mut entry, &req, port, facts).await? {
            return Ok(page);
        }
    }
    let marked = record_activity(app, &mut req, port, present, &entry.sandbox);
    let destination = destination(
        app,
        &mut req,
        (peer, client, present),
        &host,
        &entry,
        target,
        &mut seen.upstream,
    )?;
    let activity = &app.activity;
    let guard = || marked.then(|| activity.stream(&entry.sandbox.id)).flatten();
    let response = app.forwarder.forward(req, destination, guard).await?;
    Ok(entry.finish(response))
}

/// Route phase, custom domains: a host the registry maps to a sandbox's port (verified), or a
/// clear refusal while it waits for verification. A lookup failure is an error, except for the
/// proxy's own health paths (a registry outage must not fail liveness checks).
async fn custom_domain(
    app: &App,
    host: &str,
    routed: &Result<Route<'_>, RouteError>,
) -> Result<Option<Arc<DomainRecord>>, ProxyError> {
    let Some(domains) = &app.custom_domains else {
        return Ok(None);
    };
    if matches!(routed, Ok(Route::Preview { .. })) {
        return Ok(None);
    }
    let Some(name) = route::custom_domain_host(host, &app.domains) else {
        return Ok(None);
    };
    match domains.lookup(&name).await {
        Ok(DomainLookup::Unknown) => Ok(None),
        Ok(DomainLookup::Pending(record)) => Err(ProxyError::DomainPending(record.host.clone())),
        Ok(DomainLookup::Verified(record)) => Ok(Some(record)),
        Err(_) if matches!(routed, Ok(Route::Own(OwnPath::Health | OwnPath::Ready))) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// HTTP-01: the CA fetches `/.well-known/acme-challenge/<token>` over plain HTTP, on any host
/// (also when plain HTTP is otherwise redirected to HTTPS).
pub fn acme_http_challenge(app: &App, uri: &http::Uri, https: bool) -> Option<Response<ProxyBody>> {
    let acme = app.acme.as_ref().filter(|_| !https)?;
    let token = uri.path().strip_prefix("/.well-known/acme-challenge/")?;
    let key_authorization = acme.http_challenge(token)?;
    let mut response = Response::new(ProxyBody::full(bytes::Bytes::copy_from_slice(
        key_authorization.as_bytes(),
    )));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(response)
}

/// Activity phase: marks the sandbox if the request counts as activity (not skipped by the
/// client, whose header is consumed, not on an ignored port, not from a monitor); `true` when
/// the response's stream should keep marking it while open.
fn record_activity(
    app: &App,
    req: &mut Request<Incoming>,
    port: Option<u16>,
    present: Present,
    sandbox: &SandboxRecord,
) -> bool {
    let counts = app
        .activity
        .mark_if_counts(&sandbox.id, port, req.headers(), present);
    if present.may_have(Tracked::SkipActivity) {
        req.headers_mut().remove(SKIP_ACTIVITY_HEADER);
    }
    counts
}

/// Forward phase, before the upstream call: where the request goes and with what, within the
/// sandbox's in-flight limit. (Plain function, not a future of its own: the hot path keeps one
/// state machine.)
fn destination<'a>(
    app: &App,
    req: &mut Request<Incoming>,
    (peer, client, present): (&'a Peer, &'a ClientAddr, Present),
    host: &'a HeaderValue,
    entry: &'a gate::Entry,
    target: Target<'a>,
    report: &'a mut UpstreamReport,
) -> Result<Destination<'a>, ProxyError> {
    let forwarded = present.may_have(Tracked::Forwarded);
    if forwarded && (!client.via_trusted_proxy || entry.forwarded_host.is_some()) {
        // Only a trusted proxy's `Forwarded` goes on (a client's own would be a forgery), and
        // not on a signed preview host, whose token it may name.
        req.headers_mut().remove(FORWARDED);
    }
    header_route::remove(req.headers_mut(), present);
    let sandbox = &entry.sandbox;
    let inflight = match app.max_requests_per_sandbox {
        0 => None,
        max => Some(InflightGuard::acquire(sandbox, max).ok_or(ProxyError::SandboxBusy)?),
    };
    // A trusted proxy's `X-Forwarded-Host` may stay (opt-in); anyone else's is replaced.
    let keep_forwarded_host = app.forwarder.preserves_forwarded_host()
        && client.via_trusted_proxy
        && entry.forwarded_host.is_none()
        && present.may_have(Tracked::ForwardedHost)
        && req.headers().contains_key(X_FORWARDED_HOST);
    Ok(Destination {
        inflight,
        sandbox,
        target,
        original_host: entry.forwarded_host.as_ref().unwrap_or(host),
        keep_forwarded_host,
        client_ip: client.forwarded_for.as_ref().unwrap_or(&peer.ip_header),
        https: peer.https,
        query: entry.query.as_deref(),
        connection_slots: peer.slots.as_ref(),
        deadline_timer: &peer.deadline_timer,
        may_upgrade: present.may_have(Tracked::Upgrade),
        report,
    })
}

/// The authority as an owned header value (a cheap clone for HTTP/1).
fn authority_value<B>(req: &Request<B>) -> Result<HeaderValue, RouteError> {
    let authority = route::authority(req.version(), req.uri(), req.headers())?;
    match req.headers().get(HOST) {
        Some(h) if h.as_bytes() == authority.as_bytes() => Ok(h.clone()),
        _ => HeaderValue::from_str(authority)
            .map_err(|_| RouteError::BadHost("Host is not a header value")),
    }
}

async fn own_host(
    app: &App,
    path: OwnPath,
    req: &Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    match path {
        OwnPath::Health => Ok(health::json_ok(health::OK_WITH_VERSION)),
        OwnPath::Ready if app.resolver.ready().await => Ok(health::json_ok(health::READY)),
        OwnPath::Ready => Err(ProxyError::NotReady),
        OwnPath::Login | OwnPath::Callback => gate::own_host(app, path, req).await,
        OwnPath::IdentityJwks => identity_jwks(app),
        OwnPath::AcceptPreviewWarning | OwnPath::NotFound => Err(ProxyError::NotFound),
    }
}

/// The identity header's public keys; 404 while `[identity]` is off. Verifiers cache it for
/// 5 minutes: a rotation publishes the new key before it signs (see `config::identity`).
fn identity_jwks(app: &App) -> Result<Response<ProxyBody>, ProxyError> {
    let signer = app.auth.identity.as_ref().ok_or(ProxyError::NotFound)?;
    let mut response = Response::new(ProxyBody::full(signer.jwks()));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(response)
}

/// `OPTIONS *` asks about the server, not a resource: the proxy answers it (there is no sandbox
/// path to forward it to); any other method with the asterisk-form target is malformed.
fn asterisk_form(method: &Method) -> Result<Response<ProxyBody>, ProxyError> {
    if method != Method::OPTIONS {
        return Err(RouteError::AsteriskForm.into());
    }
    let mut response = Response::new(ProxyBody::Empty);
    response.headers_mut().insert(
        ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    Ok(response)
}

/// One line per failed request. Strings go through `?` (quoted, escaped) so every line stays
/// one logfmt record; the status is a number. An upstream failure names the sandbox, its
/// runner, the address, the error chain with the OS error, and the request id.
fn log_error(error: &ProxyError, path: &str, request_id: Option<&HeaderValue>, seen: &Seen) {
    let status = error.status().as_u16();
    let request_id = request_id.and_then(|id| id.to_str().ok()).unwrap_or("-");
    let sandbox = seen.sandbox.as_deref();
    let sandbox_id = sandbox.map_or("-", |s| &*s.id);
    if let (Some(failure), Some(sandbox)) = (&seen.upstream.failure, sandbox) {
        let mut upstream = Vec::new();
        access_log::upstream_address(&mut upstream, sandbox, seen.port);
        tracing::warn!(
            status,
            code = error.code(),
            sandbox = ?sandbox_id,
            runner = ?runner_id(sandbox),
            upstream = ?String::from_utf8_lossy(&upstream),
            os_error = ?failure.os_error.as_deref().unwrap_or("-"),
            error = ?&*failure.error,
            request_id = ?request_id,
            path = ?path,
            "upstream failed"
        );
    } else if error.status().is_server_error() {
        tracing::warn!(
            status,
            code = error.code(),
            sandbox = ?sandbox_id,
            error = ?error.to_string(),
            request_id = ?request_id,
            path = ?path,
            "request failed"
        );
    } else {
        tracing::debug!(status, code = error.code(), sandbox = ?sandbox_id, request_id = ?request_id, path = ?path, "request refused");
    }
}

/// The runner a sandbox is reached through (`-` when the proxy goes to the sandbox directly).
fn runner_id(sandbox: &SandboxRecord) -> &str {
    match &sandbox.upstream {
        crate::registry::Upstream::Runner(runner) => &runner.id,
        crate::registry::Upstream::Direct { .. } => "-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_26_hex_digits_and_distinct() {
        let first = request_id(&mut http::HeaderMap::new(), Present::UNKNOWN);
        let second = request_id(&mut http::HeaderMap::new(), Present::UNKNOWN);
        for id in [&first, &second] {
            assert_eq!(id.len(), 26);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
        }
        assert_ne!(first, second);
        assert_eq!(
            first.as_bytes()[..16],
            second.as_bytes()[..16],
            "one prefix"
        );
        let mut kept = http::HeaderMap::new();
        kept.insert(REQUEST_ID_HEADER, HeaderValue::from_static("client-id-1"));
        assert_eq!(request_id(&mut kept, Present::UNKNOWN), "client-id-1");
        let present = Present::scan(&kept);
        assert_eq!(request_id(&mut kept, present), "client-id-1");
        assert_eq!(Tracked::RequestId.name(), REQUEST_ID_HEADER.as_str());
        assert_eq!(Tracked::SkipActivity.name(), SKIP_ACTIVITY_HEADER.as_str());
    }

    #[test]
    fn hex_digits_are_the_low_ones() {
        let mut out = [0u8; 4];
        put_hex(&mut out, 0x12abcd);
        assert_eq!(&out, b"abcd");
    }
}
