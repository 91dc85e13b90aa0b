//! The upstream connection pool, per upstream address (a runner, or a sandbox in direct mode):
//! keep-alive HTTP/1.1 connections handed out one request at a time, or one multiplexed h2c
//! connection for runners configured with `protocol = "h2c"`.
//!
//! Built on `hyper::client::conn` rather than hyper-util's pooled client: the hot path is a map
//! read and a `Vec::pop` under a short lock, and a connection goes back to the pool when its
//! response body has been read to the end (see [`Lease`]).

use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

pub use crate::registry::Protocol;

use crate::base::thread_slot;
use crate::http::body::RequestBody;
use crate::metrics::metrics;
use crate::FastMap;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {authority} failed: {source}")]
    Connect {
        authority: Box<str>,
        source: io::Error,
    },
    #[error("connecting to {0} timed out")]
    ConnectTimeout(Box<str>),
    #[error("{0} is not a valid upstream address")]
    BadAddress(Box<str>),
    /// Another request's attempt at the shared h2c connection failed while this one waited.
    #[error("{0} (an attempt this request waited for)")]
    SharedConnectFailed(Box<str>),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    /// No connection could be made (as opposed to a failure on an open connection).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::ConnectTimeout(_)
            | UpstreamError::BadAddress(_)
            | UpstreamError::SharedConnectFailed(_) => true,
            UpstreamError::Http(_) => false,
        }
    }
}

pub struct PoolSettings {
    pub connect_timeout: Duration,
    /// Idle connections are closed after this.
    pub idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per upstream address; more are closed when they free up.
    pub max_idle_per_host: usize,
}

pub struct Pool {
    hosts: FastMap<Box<str>, Arc<HostPool>>,
    settings: PoolSettings,
}

struct HostPool {
    /// Idle HTTP/1.1 connections, one list per serving thread (`thread_slot`): a thread takes
    /// only the connections its own runtime drives, and one thread's cannot crowd out another's.
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// The shared h2c connection, numbered so a request forgets only the one it used.
    h2: Mutex<Option<(u64, http2::SendRequest<RequestBody>)>>,
    h2_opened: std::sync::atomic::AtomicU64,
    /// Held while an h2c connection is being opened, so concurrent first requests share it.
    h2_connecting: tokio::sync::Mutex<()>,
    /// When the last h2c connect failed, and why.
    h2_failed: Mutex<Option<(Instant, String)>>,
}

impl HostPool {
    fn new() -> HostPool {
        HostPool {
            idle: (0..thread_slot::count())
                .map(|_| Mutex::default())
                .collect(),
            h2: Mutex::default(),
            h2_opened: Default::default(),
            h2_connecting: Default::default(),
            h2_failed: Mutex::default(),
        }
    }

    fn idle_of(&self, slot: usize) -> &Mutex<Vec<Idle>> {
        &self.idle[slot % self.idle.len()]
    }

    fn open_h2(&self) -> Option<(u64, http2::SendRequest<RequestBody>)> {
        let h2 = self.h2.lock().ok()?;
        h2.as_ref().filter(|(_, s)| !s.is_closed()).cloned()
    }

    /// Stops handing out connection `number` (it is going away; its open streams go on), unless
    /// another request has replaced it already.
    fn forget_h2(&self, number: u64) {
        if let Ok(mut h2) = self.h2.lock() {
            if h2.as_ref().is_some_and(|(n, _)| *n == number) {
                *h2 = None;
            }
        }
    }

    fn forget_h2_if_closed(&self) {
        if let Ok(mut h2) = self.h2.lock() {
            if h2.as_ref().is_some_and(|(_, s)| s.is_closed()) {
                *h2 = None;
            }
        }
    }

    /// The failure of a connect attempt that ended after `since`, as an error of its own.
    fn h2_failure_since(&self, since: Instant) -> Option<UpstreamError> {
        let failed = self.h2_failed.lock().ok()?;
        let (_, why) = failed.as_ref().filter(|(at, _)| *at >= since)?;
        Some(UpstreamError::SharedConnectFailed(why.as_str().into()))
    }
}

struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
    /// The serving thread whose runtime drives the connection: only that thread takes it, so a
    /// request never hands its bytes to another core.
    slot: usize,
}

/// An HTTP/1.1 connection lent to one request; [`Lease::release`] returns it once the
/// response body has been read to its end. Dropped instead, the connection closes (hyper cannot
/// reuse a connection whose response was abandoned midway).
pub struct Lease {
    sender: http1::SendRequest<RequestBody>,
    host: Arc<HostPool>,
    max_idle: usize,
    idle_timeout: Duration,
    slot: usize,
}

impl Lease {
    pub fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        if self.sender.is_ready() {
            self.push();
            return;
        }
        // The answer came before the whole request body went out (an early 4xx, say): the
        // connection is free only once hyper has finished the upload. Pooling it now would make
        // the next request wait behind that upload.
        tokio::spawn(async move {
            let mut lease = self;
            let ready = tokio::time::timeout(lease.idle_timeout, lease.sender.ready()).await;
            if matches!(ready, Ok(Ok(()))) {
                lease.push();
            }
        });
    }

    fn push(self) {
        if let Ok(mut idle) = self.host.idle_of(self.slot).lock() {
            if idle.len() < self.max_idle {
                idle.push(Idle {
                    sender: self.sender,
                    since: Instant::now(),
                    slot: self.slot,
                });
            }
        }
    }
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            hosts: FastMap::default(),
            settings,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&pool)));
        }
        pool
    }

    /// Sends `req` (origin-form URI, `Host` set) to `authority` (`host:port`). Returns the
    /// response and, for HTTP/1.1, the connection to release when its body ends. Upgrades
    /// must be sent as `Protocol::Http1`.
    pub async fn send(
        &self,
        authority: &str,
        protocol: Protocol,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), UpstreamError> {
        let host = self.host(authority);
        if protocol == Protocol::H2c {
            return self.send_h2(&host, authority, req).await.map(|r| (r, None));
        }
        let mut req = req;
        while let Some(mut sender) = self.checkout(&host) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok((response, Some(self.lease(sender, host)))),
                // Closed before the request went out: try the next connection.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = self.connect_h1(authority).await?;
        let response = sender.send_request(req).await?;
        Ok((response, Some(self.lease(sender, host))))
    }

    fn host(&self, authority: &str) -> Arc<HostPool> {
        if let Some(host) = self.hosts.get(authority) {
            return host.clone();
        }
        self.hosts
            .entry(authority.into())
            .or_insert_with(|| Arc::new(HostPool::new()))
            .clone()
    }

    fn lease(&self, sender: http1::SendRequest<RequestBody>, host: Arc<HostPool>) -> Lease {
        Lease {
            sender,
            host,
            max_idle: self.settings.max_idle_per_host,
            idle_timeout: self.settings.idle_timeout,
            slot: thread_slot::current(),
        }
    }

    /// The most recently used idle connection of this serving thread that has not idled out.
    fn checkout(&self, host: &HostPool) -> Option<http1::SendRequest<RequestBody>> {
        let slot = thread_slot::current();
        let mut idle = host.idle_of(slot).lock().ok()?;
        while let Some(at) = idle.iter().rposition(|c| c.slot == slot) {
            let candidate = idle.remove(at);
            if candidate.since.elapsed() < self.settings.idle_timeout
                && !candidate.sender.is_closed()
            {
                return Some(candidate.sender);
            }
        }
        None
    }

    async fn connect_h1(
        &self,
        authority: &str,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let io = self.connect(authority).await?;
        let (sender, connection) = http1::handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn send_h2(
        &self,
        host: &HostPool,
        authority: &str,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        // h2 carries the authority in the URI (`:authority`), not in a Host header: the Host
        // the proxy chose (a sandbox's `upstream_host`, else the runner's) becomes it.
        let host_header = req.headers_mut().remove(http::header::HOST);
        let uri_authority = host_header.as_ref().and_then(|h| h.to_str().ok());
        *req.version_mut() = Version::HTTP_2;
        *req.uri_mut() = absolute_uri(uri_authority.unwrap_or(authority), req.uri())?;
        // A bodiless request the runner provably never processed is sent once more: a stream it
        // refused (any method), or, for idempotent methods only, one above the last id of its
        // GOAWAY while it restarts (over a fresh connection). hyper can report a graceful
        // GOAWAY to a request whose HEADERS still go out afterwards, so a POST is not replayed
        // on that evidence. Any request a connection that died since it was cached hands back
        // unsent goes again too.
        let mut replay = req.body().is_end_stream().then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().clone(),
            )
        });
        let mut retried = false;
        loop {
            let (number, mut sender) = self.h2_sender(host, authority).await?;
            let failure = match sender.ready().await {
                Err(e) => e,
                Ok(()) => match sender.try_send_request(req).await {
                    Ok(response) => return Ok(response),
                    Err(mut e) => {
                        let unsent = e.take_message();
                        let error = e.into_error();
                        req = match unsent {
                            Some(unsent) => unsent,
                            None => {
                                let going_away = unprocessed(&error);
                                let again = replay.take().filter(|(method, _, _)| {
                                    going_away.is_some_and(|away| !away || method.is_idempotent())
                                });
                                let Some(parts) = again else {
                                    return Err(error.into());
                                };
                                if going_away == Some(true) {
                                    host.forget_h2(number);
                                }
                                rebuild(parts)
                            }
                        };
                        error
                    }
                },
            };
            host.forget_h2_if_closed();
            if retried {
                return Err(failure.into());
            }
            retried = true;
        }
    }

    /// The runner's shared h2c connection, opened by the first request that needs one. Requests
    /// queued behind a connect that failed get that failure at once instead of each trying (and
    /// timing out) in turn.
    async fn h2_sender(
        &self,
        host: &HostPool,
        authority: &str,
    ) -> Result<(u64, http2::SendRequest<RequestBody>), UpstreamError> {
        if let Some(open) = host.open_h2() {
            return Ok(open);
        }
        let queued_at = Instant::now();
        let _connecting = host.h2_connecting.lock().await;
        if let Some(open) = host.open_h2() {
            return Ok(open);
        }
        if let Some(failure) = host.h2_failure_since(queued_at) {
            return Err(failure);
        }
        match self.connect_h2(authority).await {
            Ok(sender) => {
                let number = host
                    .h2_opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut h2) = host.h2.lock() {
                    *h2 = Some((number, sender.clone()));
                }
                Ok((number, sender))
            }
            Err(e) => {
                if let Ok(mut failed) = host.h2_failed.lock() {
                    *failed = Some((Instant::now(), e.to_string()));
                }
                Err(e)
            }
        }
    }

    async fn connect_h2(
        &self,
        authority: &str,
    ) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        let io = self.connect(authority).await?;
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            // A runner that vanished without a reset is noticed while no request is open too.
            .keep_alive_while_idle(true)
            .handshake(io)
            .await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream h2 connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn connect(&self, authority: &str) -> Result<TokioIo<TcpStream>, UpstreamError> {
        let attempt = async {
            let mut last = None;
            for addr in tokio::net::lookup_host(authority).await? {
                match TcpStream::connect(addr).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
        };
        let stream = match tokio::time::timeout(self.settings.connect_timeout, attempt).await {
            Err(_) => return Err(UpstreamError::ConnectTimeout(authority.into())),
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    authority: authority.into(),
                    source,
                })
            }
            Ok(Ok(stream)) => stream,
        };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        metrics().upstream_connects.inc();
        Ok(TokioIo::new(stream))
    }

    /// Closes idle connections past the idle timeout and forgets addresses with nothing open.
    fn sweep_once(&self) {
        let timeout = self.settings.idle_timeout;
        self.hosts.retain(|_, host| {
            let idle_left: usize = host
                .idle
                .iter()
                .map(|list| {
                    list.lock().map_or(0, |mut idle| {
                        idle.retain(|c| c.since.elapsed() < timeout && !c.sender.is_closed());
                        idle.len()
                    })
                })
                .sum();
            let h2_open = host.h2.lock().is_ok_and(|mut h2| {
                if h2.as_ref().is_some_and(|(_, s)| s.is_closed()) {
                    *h2 = None;
                }
                h2.is_some()
            });
            // Leased connections hold a reference: keep the entry for their return.
            idle_left > 0 || h2_open || Arc::strong_count(host) > 1
        });
    }
}

async fn sweep(pool: Weak<Pool>) {
    let period = match pool.upgrade() {
        Some(pool) => (pool.settings.idle_timeout / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(15)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        match pool.upgrade() {
            Some(pool) => pool.sweep_once(),
            None => return,
        }
    }
}

/// `Some` when `error` proves the runner never processed the request: `Some(true)` for a stream
/// above the last id of the runner's GOAWAY (the connection is going away), `Some(false)` for a
/// stream it refused (RFC 9113 §8.7).
fn unprocessed(error: &hyper::Error) -> Option<bool> {
    let h2 = std::error::Error::source(error)?.downcast_ref::<h2::Error>()?;
    if !h2.is_remote() {
        return None;
    }
    if h2.is_go_away() {
        return Some(true);
    }
    (h2.reason() == Some(h2::Reason::REFUSED_STREAM)).then_some(false)
}

/// The bodiless request to send again, from its kept method, URI and headers.
fn rebuild((method, uri, headers): (http::Method, Uri, http::HeaderMap)) -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = headers;
    req
}

fn absolute_uri(authority: &str, origin: &Uri) -> Result<Uri, UpstreamError> {
    let path = origin
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| UpstreamError::BadAddress(authority.into()))
}
