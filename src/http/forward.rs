//! Forward phase: builds the upstream request, sends it through the shared upstream pool, and
//! streams the answer back (HTTP bodies frame by frame, WebSockets as a byte relay).

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::header::HeaderValue;
use http::{Request, Response, StatusCode, Uri, Version};
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

use super::headers::{
    declared_length, is_long_lived, prefix_toolbox_location, rewrite_request_headers,
    strip_location_prefix, wants_upgrade, HTTPS,
};
pub use super::headers::{remove_hop_by_hop, scrub_trailers, RUNNER_AUTH_HEADER};

/// Where one request goes, decided by route + resolve.
pub enum Target<'a> {
    /// `prefix`: a custom domain's path prefix (empty, or `/x` without a trailing `/`).
    Preview {
        port: u16,
        prefix: &'a str,
    },
    Toolbox {
        rest: &'a str,
    },
}

/// Everything the earlier phases decided about one request.
pub struct Destination<'a> {
    pub sandbox: &'a SandboxRecord,
    pub target: Target<'a>,
    /// The one authority of the request (sent as `X-Forwarded-Host`).
    pub original_host: &'a HeaderValue,
    /// A trusted proxy's `X-Forwarded-Host` goes on instead (`proxy.preserve_forwarded_host`).
    pub keep_forwarded_host: bool,
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
    /// The request may carry `Upgrade` (`false`: it has none, no lookup needed).
    pub may_upgrade: bool,
    /// Where the forward phase reports the upstream call, for the logs.
    pub report: &'a mut UpstreamReport,
}

/// What the logs learn about one upstream call: how long the answer took, or why it failed.
#[derive(Debug, Default)]
pub struct UpstreamReport {
    /// The request was sent (or its connection attempted).
    pub attempted: bool,
    /// From sending the request to the response head.
    pub time: Option<Duration>,
    /// Why no usable answer came, with the OS error when there was one.
    pub failure: Option<UpstreamFailure>,
}

/// An upstream failure as the operator needs it: the whole error chain and, when the chain has
/// one, the OS error (`Connection refused (os error 111)`).
#[derive(Debug)]
pub struct UpstreamFailure {
    pub error: Box<str>,
    pub os_error: Option<Box<str>>,
}

impl UpstreamFailure {
    fn of(error: &(dyn std::error::Error + 'static)) -> UpstreamFailure {
        UpstreamFailure {
            error: error_chain(error).into(),
            os_error: os_error(error).map(|e| e.to_string().into()),
        }
    }

    fn said(text: String) -> UpstreamFailure {
        UpstreamFailure {
            error: text.into(),
            os_error: None,
        }
    }
}

/// `outer: inner: innermost`, skipping a cause whose text its parent already shows.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

/// The deepest `io::Error` of the chain that came from the OS (or else the deepest one).
fn os_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut found = None;
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if io.raw_os_error().is_some() || found.is_none() {
                found = Some(io);
            }
        }
        cause = current.source();
    }
    found
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
    preserve_forwarded_host: bool,
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
        let forwarded_proto = HeaderValue::from_static(config.public_scheme.as_str());
        Forwarder {
            pool,
            response_header_timeout: config.response_header_timeout,
            websocket_idle_timeout: config.websocket_idle_timeout,
            toolbox_max_body_bytes: config.toolbox_max_body_bytes,
            preserve_forwarded_host: config.preserve_forwarded_host,
            forwarded_proto,
            relays,
            close_relays,
        }
    }

    /// `proxy.preserve_forwarded_host`.
    pub fn preserves_forwarded_host(&self) -> bool {
        self.preserve_forwarded_host
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
            keep_forwarded_host,
            client_ip,
            https,
            query,
            inflight,
            connection_slots,
            deadline_timer,
            may_upgrade,
            report,
        } = destination;
        let proto = if https { &HTTPS } else { &self.forwarded_proto };
        let query = effective_query(query, req.uri().query());
        let uri = upstream_uri(sandbox, &target, req.uri().path(), query)?;
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        let address = UpstreamAddress::of(sandbox, &target)?;
        let upgrade = may_upgrade && wants_upgrade(&req);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        rewrite_request_headers(
            req.headers_mut(),
            sandbox,
            &address.host_header,
            (!keep_forwarded_host).then_some(original_host),
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
        report.attempted = true;
        let sent = tokio::select! {
            biased;
            sent = self.pool.send(&address.authority, protocol, req) => Ok(sent),
            () = &mut deadline => Err(()),
        };
        deadline_timer.put_back(deadline);
        let (mut response, lease) = match sent {
            Err(()) => {
                metrics().upstream_timeouts.inc();
                report.failure = Some(UpstreamFailure::said(format!(
                    "no response headers within {}",
                    humantime::format_duration(self.response_header_timeout)
                )));
                return Err(ProxyError::UpstreamTimeout(self.response_header_timeout));
            }
            Ok(Err(e)) => {
                let error = self.failure(&e, watch.as_deref(), sandbox, &target);
                // A client's broken or oversized body is not the upstream's failure.
                if error.status().is_server_error() {
                    report.failure = Some(UpstreamFailure::of(&e));
                }
                return Err(error);
            }
            Ok(Ok(response)) => response,
        };
        let upstream_time = started.elapsed();
        report.time = Some(upstream_time);
        metrics()
            .upstream_duration
            .observe(upstream_time.as_secs_f64());

        if let Target::Preview { port, .. } = target {
            if response.status() == StatusCode::BAD_GATEWAY
                && matches!(sandbox.upstream, Upstream::Runner(_))
            {
                drain_in_background(response.into_body(), lease);
                report.failure = Some(UpstreamFailure::said(format!(
                    "the runner answered 502: nothing listens on port {port} in the sandbox"
                )));
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
                None => {
                    report.failure = Some(UpstreamFailure::said(
                        "the upstream switched protocols unasked".into(),
                    ));
                    Err(ProxyError::UpstreamFailed)
                }
            };
        }
        remove_hop_by_hop(response.headers_mut());
        if response.status().is_redirection() {
            match target {
                Target::Toolbox { .. } => {
                    prefix_toolbox_location(response.headers_mut(), &sandbox.id)
                }
                Target::Preview { prefix, .. } if !prefix.is_empty() => {
                    strip_location_prefix(response.headers_mut(), prefix)
                }
                Target::Preview { .. } => {}
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
        if declared_length(req.headers()).is_some_and(|n| n > max) {
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
            // The whole of `guards` (connection slot, in-flight count, activity) lives as long as
            // the relay: without this binding the block would capture only the field it uses.
            let guards = guards;
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
                || {
                    if let Some(activity) = &guards.activity {
                        activity.touch();
                    }
                },
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
    /// The sandbox's `upstream_host` for a preview port replaces the `Host` (the connection
    /// still goes to the runner or the sandbox's address).
    fn of(sandbox: &'a SandboxRecord, target: &Target<'_>) -> Result<Self, ProxyError> {
        let mut address = Self::default_for(sandbox, target)?;
        if let Target::Preview { port, .. } = target {
            if let Some(host) = sandbox.upstream_hosts.for_port(*port) {
                address.host_header = host;
            }
        }
        Ok(address)
    }

    fn default_for(sandbox: &'a SandboxRecord, target: &Target<'_>) -> Result<Self, ProxyError> {
        match &sandbox.upstream {
            Upstream::Runner(runner) => Ok(UpstreamAddress {
                authority: Cow::Borrowed(&runner.authority),
                host_header: runner.host_header.clone(),
                protocol: runner.protocol,
            }),
            Upstream::Direct { address } => {
                let port = match target {
                    Target::Preview { port, .. } => *port,
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
        Target::Preview { port, prefix } => {
            if !direct {
                buf.put_slice(b"/proxy/");
                buf.put_slice(itoa::Buffer::new().format(*port).as_bytes());
            }
            buf.put_slice(prefix.as_bytes());
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
        (Upstream::Direct { .. }, Target::Preview { port, .. }) => {
            ProxyError::PortNotListening(*port)
        }
        _ => ProxyError::RunnerUnreachable,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::registry::RunnerRecord;
    use std::sync::Arc;

    pub(in crate::http) fn runner_sandbox() -> SandboxRecord {
        let runner = Arc::new(RunnerRecord::new("r", "http://127.0.0.1:9000/", "key").unwrap());
        SandboxRecord::new("sbx-1", Upstream::Runner(runner), false, "started", None)
    }

    pub(in crate::http) fn direct_sandbox() -> SandboxRecord {
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
            &Target::Preview {
                port: 3000,
                prefix: "",
            },
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
        let uri = upstream_uri(
            &d,
            &Target::Preview {
                port: 8080,
                prefix: "",
            },
            "/",
            None,
        )
        .unwrap();
        assert_eq!(uri, "/");
        let address = UpstreamAddress::of(
            &d,
            &Target::Preview {
                port: 8080,
                prefix: "",
            },
        )
        .unwrap();
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
        let address = UpstreamAddress::of(
            &v6,
            &Target::Preview {
                port: 8080,
                prefix: "",
            },
        )
        .unwrap();
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
}
