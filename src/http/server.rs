//! Listeners → connections: the hyper server (HTTP/1.1, h2c prior knowledge, h2 and HTTP/1.1
//! over TLS by ALPN), connection limits (global and per client IP), header limits and timeouts,
//! the admin listener, and graceful drain.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::http::body::ProxyBody;
use crate::http::client_io::{ClientStream, ConnectionEnd, LingerLimits};
use crate::http::head_timer::HeadTimer;
use crate::http::pipeline::{acme_http_challenge, handle, App, ConnectionSlots, Peer};
use crate::http::reload::AdminReload;
use crate::http::request_log::{self, AdminBody};
use crate::http::respond::health;
use crate::http::tls_accept::{self, OnDemand};
use crate::metrics::metrics;

/// The HTTPS side: its listener and what every HTTPS listener shares.
pub struct TlsListener {
    pub listener: TcpListener,
    pub settings: TlsSettings,
}

/// What every HTTPS listener (one per serving thread) shares.
#[derive(Clone)]
pub struct TlsSettings {
    pub acceptor: TlsAcceptor,
    /// Set when certificates are obtained during handshakes (ACME).
    pub on_demand: Option<Arc<OnDemand>>,
    pub handshake_timeout: Duration,
    /// Plaintext requests get a redirect to `https://host:<port>` (except `/health`).
    pub redirect_plaintext: bool,
    pub port: u16,
    /// Every connection starts with a PROXY protocol header from a trusted proxy.
    pub proxy_protocol: bool,
}

/// How a connection's TLS handshake is done.
enum Handshake {
    /// Every certificate is known before the ClientHello.
    Fixed(TlsAcceptor),
    /// Some are obtained during the handshake.
    OnDemand(Arc<OnDemand>),
}

/// What a draining server still has open.
#[derive(Clone)]
pub struct Drain {
    pub relays: TaskTracker,
    pub close_relays: CancellationToken,
}

/// The connection limits (`server.max_connections`, `server.max_connections_per_ip`), shared by
/// every serving thread.
pub struct Limits {
    permits: Arc<Semaphore>,
    per_ip: Arc<PerIpLimit>,
}

impl Limits {
    pub fn new(config: &ServerConfig) -> Arc<Limits> {
        Arc::new(Limits {
            permits: Arc::new(Semaphore::new(config.max_connections)),
            per_ip: Arc::new(PerIpLimit::new(config.max_connections_per_ip)),
        })
    }
}

/// Serves until `shutdown` fires, then drains: stops accepting, lets in-flight requests,
/// streams and WebSockets finish for up to `shutdown_timeout`, then closes WebSockets with 1001.
pub async fn serve(
    app: Arc<App>,
    (plain, tls): (TcpListener, Option<TlsListener>),
    config: &ServerConfig,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    drain: Drain,
) {
    let builder = Arc::new(connection_builder(config));
    let graceful = GracefulShutdown::new();
    let permits = limits.permits.clone();
    let per_ip = limits.per_ip.clone();
    let linger = LingerLimits {
        bytes: config.lingering_bytes,
        timeout: config.lingering_timeout,
    };
    let redirect_to = tls
        .as_ref()
        .filter(|t| t.settings.redirect_plaintext)
        .map(|t| t.settings.port);
    // The connections poll the drain signal on every wake-up, which takes its waiter list's
    // lock: a token of this serving thread's own keeps that lock out of the other threads' way.
    let draining_here = shutdown.child_token();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (accepted, over_tls) = tokio::select! {
            accepted = plain.accept() => (accepted, false),
            accepted = accept_tls(tls.as_ref()) => (accepted, true),
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy_protocol = match &tls {
            Some(t) if over_tls => t.settings.proxy_protocol,
            _ => config.proxy_protocol,
        };
        let per_ip = per_ip.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let draining = draining_here.clone();
        let header_timeout = config.header_read_timeout;
        let tls_side = over_tls
            .then(|| {
                tls.as_ref().map(|t| {
                    let handshake = match &t.settings.on_demand {
                        Some(on_demand) => Handshake::OnDemand(on_demand.clone()),
                        None => Handshake::Fixed(t.settings.acceptor.clone()),
                    };
                    (handshake, t.settings.handshake_timeout)
                })
            })
            .flatten();
        tokio::spawn(async move {
            let mut stream = stream;
            let peer = match proxy_protocol {
                true => match proxied_peer(&app, &mut stream, peer, header_timeout).await {
                    Some(client) => client,
                    None => return,
                },
                false => peer,
            };
            // Per TCP peer, or per PROXY protocol source address.
            let Some(ip_slot) = per_ip.acquire(peer.ip()) else {
                metrics().connections_refused.inc();
                tracing::debug!(%peer, "per-IP connection limit reached");
                return;
            };
            let _ = stream.set_nodelay(true);
            // One handshake deadline for the peek and the handshake after it.
            let handshake_started = tokio::time::Instant::now();
            if let Some((_, handshake_timeout)) = &tls_side {
                match first_byte(&stream, *handshake_timeout).await {
                    FirstByte::Byte(byte) if byte.is_ascii_alphabetic() => {
                        tracing::debug!(%peer, "plain HTTP on the TLS port: answered 400");
                        return answer_plain_http(stream).await;
                    }
                    FirstByte::Byte(_) => {}
                    FirstByte::Closed => return,
                    FirstByte::TimedOut => {
                        metrics().tls_handshake_errors.inc();
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
            let end = Arc::new(ConnectionEnd::default());
            let stream = ClientStream::new(stream, end.clone(), linger);
            let connection = Connection {
                app,
                builder,
                watcher,
                draining,
                peer,
                slots: Arc::new((permit, ip_slot)),
                end,
            };
            metrics().connections_active.inc();
            metrics().connections_accepted.inc();
            match tls_side {
                Some((handshake, timeout)) => {
                    let left = timeout.saturating_sub(handshake_started.elapsed());
                    connection.serve_tls(stream, handshake, left).await
                }
                None => connection.serve_plain(stream, redirect_to).await,
            }
            metrics().connections_active.dec();
        });
    }
    drop(plain);
    drop(tls);
    drain_connections(graceful, config.shutdown_timeout, drain).await;
}

/// The client address a trusted proxy's PROXY header names (the TCP peer for `LOCAL`/`UNKNOWN`
/// health checks); `None`, and the connection is dropped, for a peer that is not a trusted
/// proxy or a missing, malformed or slow header.
async fn proxied_peer(
    app: &App,
    stream: &mut TcpStream,
    tcp_peer: SocketAddr,
    timeout: Duration,
) -> Option<SocketAddr> {
    if !app.trusted_proxies.contains(tcp_peer.ip()) {
        metrics().connections_refused.inc();
        tracing::debug!(peer = %tcp_peer, "PROXY protocol listener: peer is not a trusted proxy");
        return None;
    }
    match crate::http::client_addr::read_proxy_header(stream, timeout).await {
        Ok(source) => Some(source.unwrap_or(tcp_peer)),
        Err(error) => {
            metrics().connections_refused.inc();
            tracing::debug!(peer = %tcp_peer, %error, "PROXY protocol header refused");
            None
        }
    }
}

async fn accept_tls(tls: Option<&TlsListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match tls {
        Some(t) => t.listener.accept().await,
        None => std::future::pending().await,
    }
}

struct Connection {
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// Held while the connection is open: the drain waits for it.
    watcher: Watcher,
    /// Fires when the drain starts.
    draining: CancellationToken,
    peer: SocketAddr,
    /// Held for as long as the connection, or a WebSocket relayed from it, is open.
    slots: ConnectionSlots,
    /// How the connection's socket is to be closed, as its requests decided.
    end: Arc<ConnectionEnd>,
}

impl Connection {
    async fn serve_tls(self, stream: ClientStream, handshake: Handshake, timeout: Duration) {
        let accepted = match handshake {
            Handshake::Fixed(acceptor) => tokio::time::timeout(timeout, acceptor.accept(stream))
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    ))
                }),
            Handshake::OnDemand(on_demand) => tls_accept::accept(&on_demand, stream, timeout).await,
        };
        match accepted {
            Ok(tls) => self.serve(tls, true).await,
            Err(e) => {
                metrics().tls_handshake_errors.inc();
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
            }
        }
    }

    async fn serve_plain(self, stream: ClientStream, redirect_to_port: Option<u16>) {
        match redirect_to_port {
            Some(port) => {
                let requests = Arc::new(Notify::new());
                let seen = requests.clone();
                let app = self.app.clone();
                let service = service_fn(move |req: Request<Incoming>| {
                    seen.notify_one();
                    // The CA's HTTP-01 request is answered, not redirected.
                    let answer = acme_http_challenge(&app, req.uri(), false)
                        .unwrap_or_else(|| redirect_to_https(&req, port));
                    async move { Ok::<_, Infallible>(answer) }
                });
                let conn = self
                    .builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let drain = (self.draining, requests, self.watcher);
                if let Err(e) = serve_until_drained(conn, drain).await {
                    tracing::debug!(error = %e, "redirect connection ended with an error");
                }
            }
            None => self.serve(stream, false).await,
        }
    }

    async fn serve<I>(self, io: I, https: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app;
        let client = Arc::new(
            Peer::new(self.peer, https)
                .with_slots(self.slots)
                .with_end(self.end),
        );
        let requests = Arc::new(Notify::new());
        let seen = requests.clone();
        let service = service_fn(move |req| {
            seen.notify_one();
            let app = app.clone();
            let client = client.clone();
            async move { Ok::<_, Infallible>(handle(app, req, &client).await) }
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let drain = (self.draining, requests, self.watcher);
        if let Err(e) = serve_until_drained(conn, drain).await {
            tracing::debug!(error = %e, peer = %self.peer, "connection ended with an error");
        }
    }
}

/// How long a connection has, once the drain starts, to send one more request.
const NEXT_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Serves `conn` to its end. Once the drain starts, it answers one more request (or waits
/// [`NEXT_REQUEST_GRACE`] for one) before shutting down gracefully (what is in flight is
/// answered, with `Connection: close`, then the connection closes). Closing at once would reset
/// requests a client already sent on an idle keep-alive connection, or on a connection accepted
/// as the drain started (still detecting its protocol, which a graceful shutdown drops): both
/// happen under load at every upgrade hand-over and SIGTERM.
async fn serve_until_drained<C>(
    conn: C,
    (draining, requests, _watcher): (CancellationToken, Arc<Notify>, Watcher),
) -> C::Output
where
    C: GracefulConnection,
{
    tokio::pin!(conn);
    tokio::select! {
        output = conn.as_mut() => return output,
        () = draining.cancelled() => {}
    }
    // A permit left by an earlier request says nothing about the next one.
    let _ = futures_util::FutureExt::now_or_never(requests.notified());
    let next = tokio::time::timeout(NEXT_REQUEST_GRACE, requests.notified());
    tokio::select! {
        output = conn.as_mut() => return output,
        _ = next => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// The connection's first byte, looked at without consuming it (TLS then reads it as if nothing
/// had), to tell plain HTTP (every method starts with an ASCII letter) from a TLS ClientHello
/// (0x16), within `timeout` (the handshake's).
async fn first_byte(stream: &TcpStream, timeout: Duration) -> FirstByte {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) => FirstByte::Byte(first[0]),
        Ok(_) => FirstByte::Closed,
        Err(_) => FirstByte::TimedOut,
    }
}

/// What [`first_byte`] saw.
enum FirstByte {
    Byte(u8),
    /// The peer closed (or the socket failed) before sending anything: not a handshake error.
    Closed,
    TimedOut,
}

/// The answer nginx gives plain HTTP on an HTTPS port, then a close that lets the client read
/// it: the write side is shut first and what the client still sends is drained (bounded).
async fn answer_plain_http(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "this port speaks HTTPS: use https:// instead of http://\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let drain = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        let mut left = 64 * 1024;
        while left > 0 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => left -= n.min(left),
            }
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// `308` to the same host on the HTTPS port; `/health` answers in plaintext.
fn redirect_to_https(req: &Request<Incoming>, https_port: u16) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Empty);
    if req.uri().path() == "/health" {
        return health::json_ok(health::OK);
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        });
    let Some(host) = host else {
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    match HeaderValue::try_from(format!("https://{host}{port}{path}")) {
        Ok(location) => {
            *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
            response.headers_mut().insert(LOCATION, location);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

async fn drain_connections(graceful: GracefulShutdown, timeout: Duration, drain: Drain) {
    tracing::info!(?timeout, "draining connections");
    drain.relays.close();
    let everything_done = async {
        graceful.shutdown().await;
        drain.relays.wait().await;
    };
    if tokio::time::timeout(timeout, everything_done)
        .await
        .is_err()
    {
        tracing::info!("shutdown timeout reached; closing what is still open");
    }
    drain.close_relays.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), drain.relays.wait()).await;
}

fn connection_builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(HeadTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes)
        .max_headers(config.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(config.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Open connections per client IP; a slot is released when its connection ends.
struct PerIpLimit {
    max: usize,
    open: Arc<DashMap<IpAddr, usize>>,
}

struct IpSlot {
    ip: IpAddr,
    open: Arc<DashMap<IpAddr, usize>>,
}

impl PerIpLimit {
    fn new(max: usize) -> PerIpLimit {
        PerIpLimit {
            max,
            open: Arc::new(DashMap::new()),
        }
    }

    fn acquire(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut count = self.open.entry(ip).or_insert(0);
        if self.max > 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.open.remove_if_mut(&self.ip, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// Binds a listener with `SO_REUSEADDR` (and `SO_REUSEPORT` when `reuse_port`) and a deep
/// backlog.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(4096)
}

/// The admin listener: `/metrics` (Prometheus), `/health` (live), `/ready` (the registry
/// answers, or the cache can serve), `/sandboxes/<id>/requests` (the request log), `POST
/// /reload` (with `reload`). Runs until `shutdown` fires, which also ends the request log's
/// live streams.
pub async fn serve_admin(
    app: Arc<App>,
    listener: TcpListener,
    shutdown: CancellationToken,
    reload: Option<AdminReload>,
) {
    serve_admin_with(Some(app), listener, shutdown, reload).await
}

/// The admin listener of a process without the HTTP proxy (the SSH gateway): `/metrics`,
/// `/health`, and `/ready` always ready.
pub async fn serve_metrics_only(listener: TcpListener, shutdown: CancellationToken) {
    serve_admin_with(None, listener, shutdown, None).await
}

async fn serve_admin_with(
    app: Option<Arc<App>>,
    listener: TcpListener,
    shutdown: CancellationToken,
    reload: Option<AdminReload>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                let shutdown = shutdown.clone();
                let reload = reload.clone();
                async move {
                    Ok::<_, Infallible>(
                        admin(app.as_deref(), &req, &shutdown, reload.as_ref()).await,
                    )
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The admin listener's answer to `req`: the request log's paths, a reload, or the fixed ones.
async fn admin(
    app: Option<&App>,
    req: &Request<Incoming>,
    shutdown: &CancellationToken,
    reload: Option<&AdminReload>,
) -> Response<AdminBody> {
    let uri = req.uri();
    let sandbox = uri.path().strip_prefix("/sandboxes/");
    if let Some(id) = sandbox.and_then(|rest| rest.strip_suffix("/requests")) {
        let log = app.and_then(|app| app.request_log.as_ref());
        return request_log::admin(log, id, uri.query(), shutdown);
    }
    if let (Some(reload), "/reload") = (reload, uri.path()) {
        return reload
            .answer(req.method(), req.headers())
            .await
            .map(Either::Left);
    }
    fixed_admin(app, uri.path()).await.map(Either::Left)
}

async fn fixed_admin(app: Option<&App>, path: &str) -> Response<ProxyBody> {
    let ready = match app {
        Some(app) => app.resolver.ready().await,
        None => true,
    };
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics().render(),
        ),
        "/health" => (StatusCode::OK, "application/json", health::OK.into()),
        "/ready" if ready => (StatusCode::OK, "application/json", health::READY.into()),
        "/ready" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            health::NOT_READY.into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "application/json",
            health::NOT_FOUND.into(),
        ),
    };
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
