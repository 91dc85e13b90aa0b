//! Forward phase: builds the upstream request, sends it through the shared upstream pool, and
//! streams the answer back (HTTP bodies frame by frame, WebSockets as a byte relay).

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderName, HeaderValue, CONNECTION, LOCATION, UPGRADE};
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::StreamGuard;
use crate::config::ProxyConfig;
use crate::http::body::{
    is_length_limit, ClientBodyFault, ClientBodyWatch, Guards, ProxyBody, RequestBody,
};
use crate::http::relay::relay;
use crate::http::respond::ProxyError;
use crate::http::route::TOOLBOX_PORT;
use crate::http::upstream::{Lease, Pool, PoolSettings, Protocol, UpstreamError};
use crate::metrics::metrics;
use crate::registry::{InflightGuard, SandboxRecord, Upstream};

pub const RUNNER_AUTH_HEADER: HeaderName = HeaderName::from_static("x-daytona-authorization");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const HTTPS: HeaderValue = HeaderValue::from_static("https");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Hop-by-hop headers (RFC 9110 §7.6.1), plus the non-standard ones seen in the wild.
/// `Trailer` is not one of them: it declares the trailer fields end to end, and hyper only sends
/// the trailer fields a message's `Trailer` header declares, so removing it drops the trailers.
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    UPGRADE,
    // Belongs to an `Upgrade: h2c` request, which is never relayed (RFC 7540 §3.2.1).
    HeaderName::from_static("http2-settings"),
];

/// Where one request goes, decided by route + resolve.
pub enum Target<'a> {
    Preview { port: u16 },
    Toolbox { rest: &'a str },
}

/// Everything the earlier phases decided about one request.
pub struct Destination<'a> {
    pub sandbox: &'a SandboxRecord,
    pub target: Target<'a>,
    /// The one authority of the request (sent as `X-Forwarded-Host`).
    pub original_host: &'a HeaderValue,
    /// The whole `X-Forwarded-For` to send: the peer's IP (rendered once per connection), or a
    /// trusted proxy's chain with the peer appended (`crate::http::client_addr`). A client's own
    /// `X-Forwarded-For` is replaced, never appended to: it could forge any address.
    pub client_ip: &'a HeaderValue,
    /// The client connection is TLS (`X-Forwarded-Proto: https` whatever the configured scheme).
    pub https: bool,
    /// The sandbox's in-flight slot, held until the body or relay ends.
    pub inflight: Option<InflightGuard>,
    /// Replaces the request's query when the auth phase removed a credential from it.
    pub query: Option<&'a str>,
    /// The client connection's limit slots: a WebSocket relay holds them until it ends.
    pub connection_slots: Option<&'a crate::base::ConnectionSlots>,
    /// The client connection's response-header deadline timer.
    pub deadline_timer: &'a DeadlineTimer,
}

/// The response-header deadline timer of one client connection, reused from request to request:
/// moving a registered tokio timer to a later deadline is a few atomic operations, where a fresh
/// `tokio::time::timeout` per request inserts and removes a timer-wheel entry under the timer
/// driver's lock (6–7 % of a request's instructions). Concurrent requests (HTTP/2) that find it
/// in use get a timer of their own.
#[derive(Default)]
pub struct DeadlineTimer(std::sync::Mutex<Option<Pin<Box<Sleep>>>>);

impl DeadlineTimer {
    fn take(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        let reused = self.0.lock().ok().and_then(|mut slot| slot.take());
        match reused {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    fn put_back(&self, sleep: Pin<Box<Sleep>>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(sleep);
        }
    }
}

pub struct Forwarder {
    pool: Arc<Pool>,
    response_header_timeout: Duration,
    websocket_idle_timeout: Duration,
    toolbox_max_body_bytes: u64,
    forwarded_proto: HeaderValue,
    /// Open WebSocket relays, so shutdown can wait for them.
    relays: TaskTracker,
    /// Cancelled at the end of the drain: open WebSocket relays close with 1001.
    close_relays: CancellationToken,
}

impl Forwarder {
    pub fn new(
        config: &ProxyConfig,
        relays: TaskTracker,
        close_relays: CancellationToken,
    ) -> Forwarder {
        let pool = Pool::new(PoolSettings {
            connect_timeout: config.connect_timeout,
            idle_timeout: config.pool_idle_timeout,
            max_idle_per_host: config.pool_max_idle_per_host,
        });
        let forwarded_proto = HeaderValue::from_static(if config.public_scheme == "https" {
            "https"
        } else {
            "http"
        });
        Forwarder {
            pool,
            response_header_timeout: config.response_header_timeout,
            websocket_idle_timeout: config.websocket_idle_timeout,
            toolbox_max_body_bytes: config.toolbox_max_body_bytes,
            forwarded_proto,
            relays,
            close_relays,
        }
    }

    /// Sends `req` (already stripped of consumed credentials) to the sandbox and returns the
    /// streamed response.
    pub async fn forward(
        &self,
        mut req: Request<Incoming>,
        destination: Destination<'_>,
        guard: impl FnOnce() -> Option<StreamGuard>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Destination {
            sandbox,
            target,
            original_host,
            client_ip,
            https,
            query,
            inflight,
            connection_slots,
            deadline_timer,
        } = destination;
        let proto = if https { &HTTPS } else { &self.forwarded_proto };
        let query = effective_query(query, req.uri().query());
        let uri = upstream_uri(sandbox, &target, req.uri().path(), query)?;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let address = UpstreamAddress::of(sandbox, &target)?;
        let upgrade = wants_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        rewrite_request_headers(
            req.headers_mut(),
            sandbox,
            &address.host_header,
            original_host,
            client_ip,
            proto,
            upgrade,
        );

        let watch = ClientBodyWatch::of(req.body());
        let req = self.limit_body(req, &target, watch.clone())?;
        let started = Instant::now();
        let far = Duration::from_secs(86_400 * 365);
        let deadline_at = started
            .checked_add(self.response_header_timeout)
            .unwrap_or_else(|| started + far);
        let mut deadline = deadline_timer.take(deadline_at);
        // Upgrades (WebSockets) go over HTTP/1.1 whatever the runner's protocol.
        let protocol = if upgrade {
            Protocol::Http1
        } else {
            address.protocol
        };
        let sent = tokio::select! {
            biased;
            sent = self.pool.send(&address.authority, protocol, req) => Ok(sent),
            () = &mut deadline => Err(()),
        };
        deadline_timer.put_back(deadline);
        let (mut response, lease) = match sent {
            Err(()) => {
                metrics().upstream_timeouts.inc();
                return Err(ProxyError::UpstreamTimeout(self.response_header_timeout));
            }
            Ok(Err(e)) => return Err(self.failure(&e, watch.as_deref(), sandbox, &target)),
            Ok(Ok(response)) => response,
        };
        metrics()
            .upstream_duration
            .observe(started.elapsed().as_secs_f64());

        if let Target::Preview { port } = target {
            if response.status() == StatusCode::BAD_GATEWAY
                && matches!(sandbox.upstream, Upstream::Runner(_))
            {
                drain_in_background(response.into_body(), lease);
                return Err(ProxyError::PortNotListening(port));
            }
        }
        // Whatever the status (101s, redirects and errors included): no cookie for the parent
        // domain or under the proxy's names from a sandbox.
        crate::auth::cookie::filter_response_cookies(response.headers_mut());
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            return match client_upgrade {
                Some(client_upgrade) => {
                    let guards = Guards {
                        activity: guard(),
                        inflight,
                        connection: connection_slots.cloned(),
                    };
                    Ok(self.relay_upgrade(client_upgrade, response, guards))
                }
                None => Err(ProxyError::UpstreamFailed),
            };
        }
        remove_hop_by_hop(response.headers_mut());
        if let Target::Toolbox { .. } = target {
            if response.status().is_redirection() {
                prefix_toolbox_location(response.headers_mut(), &sandbox.id);
            }
        }
        let stream_guard = if is_long_lived(response.headers()) {
            guard()
        } else {
            None
        };
        let guards = Guards {
            activity: stream_guard,
            inflight,
            connection: None,
        };
        Ok(response.map(|body| ProxyBody::upstream(body, guards, lease)))
    }

    /// Why the upstream call failed: the client's body (malformed, cut short, too large) is the
    /// client's fault (4xx, not an upstream error); anything else is the upstream's.
    fn failure(
        &self,
        error: &UpstreamError,
        watch: Option<&ClientBodyWatch>,
        sandbox: &SandboxRecord,
        target: &Target<'_>,
    ) -> ProxyError {
        match ClientBodyWatch::fault(watch) {
            Some(ClientBodyFault::TooLarge) => {
                ProxyError::BodyTooLarge(self.toolbox_max_body_bytes)
            }
            Some(ClientBodyFault::Broken) => {
                tracing::debug!(error = ?error, sandbox = %sandbox.id, "the client's request body failed");
                ProxyError::BadRequestBody
            }
            None if is_length_limit(error) => ProxyError::BodyTooLarge(self.toolbox_max_body_bytes),
            None => classify_client_error(error, sandbox, target),
        }
    }

    /// Toolbox bodies over `toolbox_max_body_bytes`: refused up front by `Content-Length`, or
    /// cut while streaming (the upload is aborted and the client gets 413).
    fn limit_body(
        &self,
        req: Request<Incoming>,
        target: &Target<'_>,
        watch: Option<Arc<ClientBodyWatch>>,
    ) -> Result<Request<RequestBody>, ProxyError> {
        let max = self.toolbox_max_body_bytes;
        if max == 0 || matches!(target, Target::Preview { .. }) {
            return Ok(req.map(|body| RequestBody::Streamed(body, watch)));
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(ProxyError::BodyTooLarge(max));
        }
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        Ok(req.map(|body| RequestBody::Limited(http_body_util::Limited::new(body, limit), watch)))
    }

    fn relay_upgrade(
        &self,
        client_upgrade: hyper::upgrade::OnUpgrade,
        mut response: Response<Incoming>,
        guards: Guards,
    ) -> Response<ProxyBody> {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let shutdown = self.close_relays.clone();
        let idle_timeout = self.websocket_idle_timeout;
        self.relays.spawn(async move {
            let _guards = guards;
            metrics().websockets_active.inc();
            let _open = scopeguard(|| {
                metrics().websockets_active.dec();
            });
            let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            relay(
                TokioIo::new(client),
                TokioIo::new(upstream),
                idle_timeout,
                shutdown,
            )
            .await;
        });
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, ProxyBody::Empty)
    }
}

/// Reads the body of an answer the proxy replaces (the runner's 502 for a port nothing listens
/// on) to its end off the request path, so the keep-alive connection goes back to the pool
/// instead of closing: a client polling a port that is not up yet would otherwise cost a new
/// upstream connection per request. Bounded in bytes and time; past either the connection closes.
fn drain_in_background(body: Incoming, lease: Option<Lease>) {
    const MAX_BYTES: usize = 64 * 1024;
    const MAX_TIME: Duration = Duration::from_secs(5);
    if lease.is_none() {
        return; // HTTP/2: dropping the body resets just this stream
    }
    let mut body = ProxyBody::upstream(body, Guards::default(), lease);
    if body.is_end_stream() {
        return; // released already
    }
    tokio::spawn(async move {
        let drain = async {
            let mut read = 0;
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len());
                if read > MAX_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(MAX_TIME, drain).await;
    });
}

/// The query to forward: the client's, unless the auth phase stripped a credential from it; a
/// query left empty by that is dropped whole (no dangling `?` the client never sent bare).
fn effective_query<'q>(stripped: Option<&'q str>, original: Option<&'q str>) -> Option<&'q str> {
    match stripped {
        Some(stripped) => (!stripped.is_empty()).then_some(stripped),
        None => original,
    }
}

/// Runs `f` when dropped (a relay task may end at any await point).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Where the request goes: the address to connect to, the `Host` it gets, the protocol.
struct UpstreamAddress<'a> {
    authority: Cow<'a, str>,
    host_header: HeaderValue,
    protocol: Protocol,
}

impl<'a> UpstreamAddress<'a> {
    fn of(sandbox: &'a SandboxRecord, target: &Target<'_>) -> Result<Self, ProxyError> {
        match &sandbox.upstream {
            Upstream::Runner(runner) => Ok(UpstreamAddress {
                authority: Cow::Borrowed(&runner.authority),
                host_header: runner.host_header.clone(),
                protocol: runner.protocol,
            }),
            Upstream::Direct { address } => {
                let port = match target {
                    Target::Preview { port } => *port,
                    Target::Toolbox { .. } => TOOLBOX_PORT,
                };
                let authority = match address.parse::<std::net::Ipv6Addr>() {
                    Ok(_) => format!("[{address}]:{port}"),
                    Err(_) => format!("{address}:{port}"),
                };
                let host_header =
                    HeaderValue::from_str(&authority).map_err(|_| ProxyError::UpstreamFailed)?;
                Ok(UpstreamAddress {
                    authority: Cow::Owned(authority),
                    host_header,
                    protocol: Protocol::Http1,
                })
            }
        }
    }
}

/// The origin-form request target: `{prefix}/proxy/{port}{path}?{query}` through a runner,
/// `{path}?{query}` straight to the sandbox.
fn upstream_uri(
    sandbox: &SandboxRecord,
    target: &Target<'_>,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, ProxyError> {
    let mut buf = BytesMut::with_capacity(
        sandbox.path_prefix.len() + path.len() + query.map_or(0, str::len) + 16,
    );
    buf.put_slice(sandbox.path_prefix.as_bytes());
    let direct = matches!(sandbox.upstream, Upstream::Direct { .. });
    let path = match target {
        Target::Preview { port } => {
            if !direct {
                buf.put_slice(b"/proxy/");
                buf.put_slice(itoa::Buffer::new().format(*port).as_bytes());
            }
            path
        }
        Target::Toolbox { rest } => rest,
    };
    if path.is_empty() && buf.is_empty() {
        buf.put_u8(b'/');
    }
    buf.put_slice(path.as_bytes());
    if let Some(q) = query {
        buf.put_u8(b'?');
        buf.put_slice(q.as_bytes());
    }
    Uri::from_maybe_shared(buf.freeze()).map_err(|_| ProxyError::UpstreamFailed)
}

/// Only WebSocket upgrades are relayed; any other `Upgrade` token (`h2c`, ...) is dropped with
/// the hop-by-hop headers and the request goes on as a plain one.
fn wants_upgrade<B>(req: &Request<B>) -> bool {
    has_token(req.headers(), UPGRADE, "websocket")
        && has_token(req.headers(), CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those named by `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (cheap comparisons of standard
    // headers) instead of a hashed removal per hop-by-hop name.
    let any = headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(name) || name == header::TE);
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// Names a client trailer never carries to the sandbox: the proxy's and the runner's
/// credentials (an `Authorization` trailer is dropped whatever it holds: trailers are not
/// authenticated, so the platform's could not be told from the app's) and the fields the proxy
/// sets itself.
const TRAILER_DENY: [HeaderName; 9] = [
    header::AUTHORIZATION,
    RUNNER_AUTH_HEADER,
    HeaderName::from_static(crate::auth::PREVIEW_TOKEN_HEADER),
    header::HOST,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    header::TE,
    header::TRAILER,
];

/// Filters client request trailers as the headers are: credentials, the proxy's cookies and
/// hop-by-hop names never reach the sandbox.
pub fn scrub_trailers(trailers: &mut HeaderMap) {
    remove_hop_by_hop(trailers);
    for name in &TRAILER_DENY {
        trailers.remove(name);
    }
    crate::auth::strip_proxy_cookies(trailers);
}

fn rewrite_request_headers(
    headers: &mut HeaderMap,
    sandbox: &SandboxRecord,
    upstream_host: &HeaderValue,
    original_host: &HeaderValue,
    client_ip: &HeaderValue,
    proto: &HeaderValue,
    upgrade: bool,
) {
    remove_hop_by_hop(headers);
    if upgrade {
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // The upstream's own authority; the original goes in X-Forwarded-Host.
    headers.insert(header::HOST, upstream_host.clone());
    match sandbox.runner_auth() {
        Some(auth) => headers.insert(RUNNER_AUTH_HEADER, auth.clone()),
        None => headers.remove(RUNNER_AUTH_HEADER),
    };
    headers.insert(X_FORWARDED_HOST, original_host.clone());
    headers.insert(X_FORWARDED_PROTO, proto.clone());
    headers.insert(X_FORWARDED_FOR, client_ip.clone());
}

/// A relative redirect from the toolbox gets the `/toolbox/<id>` prefix back. Absolute URLs and
/// scheme-relative `//host` ones are left alone.
fn prefix_toolbox_location(headers: &mut HeaderMap, sandbox_id: &str) {
    let Some(location) = headers.get(LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if !location.starts_with('/') || location.starts_with("//") {
        return;
    }
    let prefix_len = "/toolbox/".len() + sandbox_id.len();
    let already = location.len() >= prefix_len
        && location.starts_with("/toolbox/")
        && location[9..prefix_len].eq_ignore_ascii_case(sandbox_id)
        && matches!(
            location.as_bytes().get(prefix_len),
            None | Some(b'/' | b'?')
        );
    if already {
        return;
    }
    if let Ok(v) = HeaderValue::try_from(format!("/toolbox/{sandbox_id}{location}")) {
        headers.insert(LOCATION, v);
    }
}

/// Streams that stay open: server-sent events and bodies of unknown length.
fn is_long_lived(headers: &HeaderMap) -> bool {
    let event_stream = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    event_stream || !headers.contains_key(header::CONTENT_LENGTH)
}

fn classify_client_error(
    error: &UpstreamError,
    sandbox: &SandboxRecord,
    target: &Target<'_>,
) -> ProxyError {
    tracing::debug!(error = ?error, sandbox = %sandbox.id, "upstream request failed");
    if !error.is_connect() {
        metrics().upstream_other_errors.inc();
        return ProxyError::UpstreamFailed;
    }
    metrics().upstream_connect_errors.inc();
    match (&sandbox.upstream, target) {
        (Upstream::Direct { .. }, Target::Preview { port }) => ProxyError::PortNotListening(*port),
        _ => ProxyError::RunnerUnreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RunnerRecord;
    use std::sync::Arc;

    fn runner_sandbox() -> SandboxRecord {
        let runner = Arc::new(RunnerRecord::new("r", "http://127.0.0.1:9000/", "key").unwrap());
        SandboxRecord::new("sbx-1", Upstream::Runner(runner), false, "started", None)
    }

    fn direct_sandbox() -> SandboxRecord {
        SandboxRecord::new(
            "sbx-2",
            Upstream::Direct {
                address: "10.1.2.3".into(),
            },
            false,
            "started",
            None,
        )
    }

    #[test]
    fn upstream_uris_keep_raw_bytes() {
        let s = runner_sandbox();
        let uri = upstream_uri(
            &s,
            &Target::Preview { port: 3000 },
            "/a%2Fb/%E2%9C%93",
            Some("x=%20&y"),
        )
        .unwrap();
        assert_eq!(
            uri,
            "/sandboxes/sbx-1/toolbox/proxy/3000/a%2Fb/%E2%9C%93?x=%20&y"
        );
        let uri = upstream_uri(
            &s,
            &Target::Toolbox { rest: "/files" },
            "/toolbox/sbx-1/files",
            Some("path=/"),
        )
        .unwrap();
        assert_eq!(uri, "/sandboxes/sbx-1/toolbox/files?path=/");
        let d = direct_sandbox();
        let uri = upstream_uri(&d, &Target::Preview { port: 8080 }, "/", None).unwrap();
        assert_eq!(uri, "/");
        let address = UpstreamAddress::of(&d, &Target::Preview { port: 8080 }).unwrap();
        assert_eq!(address.authority, "10.1.2.3:8080");
        assert_eq!(address.host_header, "10.1.2.3:8080");
        let uri = upstream_uri(&d, &Target::Toolbox { rest: "" }, "/toolbox/sbx-2", None).unwrap();
        assert_eq!(uri, "/");
        let address = UpstreamAddress::of(&d, &Target::Toolbox { rest: "" }).unwrap();
        assert_eq!(address.authority, "10.1.2.3:2280");
        let v6 = SandboxRecord::new(
            "sbx-3",
            Upstream::Direct {
                address: "fd00::7".into(),
            },
            false,
            "started",
            None,
        );
        let address = UpstreamAddress::of(&v6, &Target::Preview { port: 8080 }).unwrap();
        assert_eq!(
            (&*address.authority, address.host_header.to_str().unwrap()),
            ("[fd00::7]:8080", "[fd00::7]:8080")
        );
        let address = UpstreamAddress::of(&s, &Target::Toolbox { rest: "" }).unwrap();
        assert_eq!(
            (&*address.authority, address.host_header.to_str().unwrap()),
            ("127.0.0.1:9000", "127.0.0.1:9000")
        );
    }

    #[test]
    fn stripped_queries_replace_the_original() {
        assert_eq!(effective_query(None, Some("a=1")), Some("a=1"));
        assert_eq!(
            effective_query(None, Some("")),
            Some(""),
            "a bare `?` stays"
        );
        assert_eq!(effective_query(Some("a=1"), Some("a=1&K=t")), Some("a=1"));
        assert_eq!(effective_query(Some(""), Some("K=t")), None);
    }

    #[test]
    fn client_trailers_lose_credentials_and_hop_by_hop_names() {
        let mut t = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer apikey"),
            ("authorization", "Basic dTpw"),
            ("x-daytona-authorization", "Bearer forged"),
            ("x-daytona-preview-token", "tok"),
            ("proxy-authorization", "Basic x"),
            ("connection", "x-named"),
            ("x-named", "1"),
            ("x-forwarded-host", "evil"),
            ("cookie", "app=1; daytona-sandbox-auth-sbx=sig"),
            ("x-checksum", "abc"),
        ] {
            t.append(name, value.parse().unwrap());
        }
        scrub_trailers(&mut t);
        let mut left: Vec<_> = t
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        left.sort();
        assert_eq!(left, [("cookie", "app=1"), ("x-checksum", "abc")]);
    }

    #[test]
    fn trailer_declarations_survive() {
        let mut h = HeaderMap::new();
        h.insert(header::TRAILER, "x-checksum".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h[header::TRAILER], "x-checksum");
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
    }

    #[test]
    fn request_headers_are_rewritten() {
        let s = runner_sandbox();
        let mut h = HeaderMap::new();
        h.insert(RUNNER_AUTH_HEADER, "Bearer forged".parse().unwrap());
        h.insert(CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(
            header::HOST,
            "3000-sbx-1.preview.localhost".parse().unwrap(),
        );
        h.insert(X_FORWARDED_FOR, "1.2.3.4".parse().unwrap());
        let proto = HeaderValue::from_static("https");
        let host = HeaderValue::from_static("3000-sbx-1.preview.localhost");
        let ip = HeaderValue::from_static("127.0.0.9");
        let upstream_host = HeaderValue::from_static("127.0.0.1:9000");
        rewrite_request_headers(&mut h, &s, &upstream_host, &host, &ip, &proto, false);
        assert_eq!(h[RUNNER_AUTH_HEADER], "Bearer key");
        assert!(
            h.get("x-secret").is_none()
                && h.get(CONNECTION).is_none()
                && h.get("keep-alive").is_none()
        );
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h[header::HOST], "127.0.0.1:9000");
        assert_eq!(h[X_FORWARDED_HOST], "3000-sbx-1.preview.localhost");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(
            h[X_FORWARDED_FOR], "127.0.0.9",
            "replaced: the client's own list could be forged"
        );

        let mut forged = HeaderMap::new();
        forged.insert(RUNNER_AUTH_HEADER, "Bearer forged".parse().unwrap());
        rewrite_request_headers(
            &mut forged,
            &direct_sandbox(),
            &upstream_host,
            &host,
            &ip,
            &proto,
            false,
        );
        assert!(
            forged.get(RUNNER_AUTH_HEADER).is_none(),
            "direct mode never forwards a runner key"
        );
    }

    #[test]
    fn upgrade_headers_survive_only_for_upgrades() {
        let s = runner_sandbox();
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        h.insert("sec-websocket-protocol", "chat, v2".parse().unwrap());
        let proto = HeaderValue::from_static("http");
        let (host, ip) = (
            HeaderValue::from_static("h"),
            HeaderValue::from_static("127.0.0.1"),
        );
        rewrite_request_headers(&mut h, &s, &host, &host, &ip, &proto, true);
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h["sec-websocket-protocol"], "chat, v2");
    }

    #[test]
    fn toolbox_locations_get_their_prefix() {
        let cases = [
            ("/files?a=1", "/toolbox/sbx-1/files?a=1"),
            ("/toolbox/sbx-1/x", "/toolbox/sbx-1/x"),
            ("/toolbox/sbx-10/x", "/toolbox/sbx-1/toolbox/sbx-10/x"),
            ("https://elsewhere/x", "https://elsewhere/x"),
            ("//elsewhere/x", "//elsewhere/x"),
            ("relative", "relative"),
        ];
        for (before, after) in cases {
            let mut h = HeaderMap::new();
            h.insert(LOCATION, before.parse().unwrap());
            prefix_toolbox_location(&mut h, "sbx-1");
            assert_eq!(h[LOCATION], after, "{before}");
        }
    }
}
