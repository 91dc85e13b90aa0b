//! `sandgate demo`: a built-in demo runner (the runner's routes; an app with a page and a live
//! WebSocket echo, an event stream and large downloads) and a proxy in front of it with a
//! sandbox for each case (public, private, stopped), so the proxy can be tried with no
//! infrastructure. The same runner is the fast upstream of the benchmarks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::forward::RUNNER_AUTH_HEADER;

const PAGE: &str = include_str!("demo_page.html");

/// Serves the demo runner on `listener` forever. Requests must carry
/// `X-Daytona-Authorization: Bearer <api_key>`, as a real runner requires.
pub async fn run_demo_runner(listener: TcpListener, api_key: String) {
    let expected: Arc<HeaderValue> = match HeaderValue::try_from(format!("Bearer {api_key}")) {
        Ok(v) => Arc::new(v),
        Err(_) => {
            tracing::error!("demo runner api key is not a valid header value");
            return;
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "demo runner accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let expected = expected.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let expected = expected.clone();
                async move {
                    if req.uri().path().starts_with(DEMO_START) {
                        return Ok::<_, Infallible>(demo_start(&req, &expected).await);
                    }
                    Ok(runner(read_body(req).await, &expected))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The demo's start hook: `POST /demo-start/{id}` answers 200 (the sandbox is up) after
/// [`DEMO_START_DELAY`], as a control plane starting a sandbox would.
const DEMO_START: &str = "/demo-start/";
const DEMO_START_DELAY: std::time::Duration = std::time::Duration::from_millis(1500);

async fn demo_start(req: &Request<Incoming>, expected: &HeaderValue) -> Response<DemoBody> {
    if req.headers().get(http::header::AUTHORIZATION) != Some(expected) {
        let body = r#"{"message":"unauthorized"}"#.into();
        return text(StatusCode::UNAUTHORIZED, "application/json", body);
    }
    tokio::time::sleep(DEMO_START_DELAY).await;
    text(
        StatusCode::OK,
        "application/json",
        r#"{"state":"started"}"#.into(),
    )
}

/// Reads (and discards) a request body before answering, as a real app does; an upstream that
/// answers without reading makes proxies see resets on kept-alive connections.
async fn read_body(req: Request<Incoming>) -> Request<Incoming> {
    use http_body_util::BodyExt;
    if req.headers().contains_key(UPGRADE) {
        return req;
    }
    let (parts, mut body) = req.into_parts();
    while let Some(Ok(_)) = body.frame().await {}
    Request::from_parts(parts, body)
}

fn runner(req: Request<Incoming>, expected: &HeaderValue) -> Response<DemoBody> {
    if req.uri().path() == "/" {
        return text(StatusCode::OK, "text/plain", "runner ok".into());
    }
    if req.headers().get(RUNNER_AUTH_HEADER) != Some(expected) {
        return text(
            StatusCode::UNAUTHORIZED,
            "application/json",
            r#"{"message":"unauthorized"}"#.into(),
        );
    }
    let path = req.uri().path().to_owned();
    let Some((sandbox, rest)) = path
        .strip_prefix("/sandboxes/")
        .and_then(|p| p.split_once("/toolbox"))
    else {
        return text(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"message":"not found"}"#.into(),
        );
    };
    if let Some(app_path) = rest.strip_prefix("/proxy/") {
        let (port, app_path) = app_path
            .split_once('/')
            .map_or((app_path, ""), |(p, r)| (p, r));
        return app(req, sandbox, port, app_path);
    }
    match rest {
        "/version" => text(
            StatusCode::OK,
            "application/json",
            r#"{"version":"demo"}"#.into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"message":"no such toolbox path"}"#.into(),
        ),
    }
}

/// `/bytes/{n}` up to this size comes from one shared buffer in one piece (benchmarks)...
const MAX_FILL_BYTES: usize = 1 << 20;
/// ... and up to this size as a stream of such pieces (a large download).
const MAX_DOWNLOAD_BYTES: u64 = 64 << 20;

/// The demo sandbox app on any port: `/` a page, `/ws` a WebSocket echo, `/events` a
/// server-sent event a second, `/bytes/{n}` a body of `n` bytes (at most 64 MiB), anything
/// else a line.
fn app(req: Request<Incoming>, sandbox: &str, port: &str, path: &str) -> Response<DemoBody> {
    if let Some(n) = path.strip_prefix("bytes/") {
        return fill(n);
    }
    match path {
        "" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            PAGE.replace("{sandbox}", sandbox).replace("{port}", port),
        ),
        "ws" => websocket_echo(req),
        "events" => events(),
        _ => text(
            StatusCode::OK,
            "text/plain",
            format!("hello from sandbox {sandbox}, port {port}, path /{path}\n"),
        ),
    }
}

fn fill_buffer() -> &'static Bytes {
    static FILL: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    FILL.get_or_init(|| Bytes::from(vec![b'x'; MAX_FILL_BYTES]))
}

/// `n` bytes of `x`, sliced from one shared buffer (no allocation or copy per request, so the
/// upstream stays cheap in benchmarks).
fn fill(n: &str) -> Response<DemoBody> {
    let body = match n.parse::<u64>() {
        Ok(n) if n <= MAX_FILL_BYTES as u64 => {
            DemoBody::Full(Full::new(fill_buffer().slice(..n as usize)))
        }
        Ok(n) if n <= MAX_DOWNLOAD_BYTES => DemoBody::Chunks { left: n },
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                "text/plain",
                format!("bytes/{{n}}: n must be a number up to {MAX_DOWNLOAD_BYTES}\n"),
            )
        }
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// An event a second, forever (until the client goes).
fn events() -> Response<DemoBody> {
    let mut response = Response::new(DemoBody::Ticks {
        interval: Box::pin(tokio::time::interval(std::time::Duration::from_secs(1))),
        sent: 0,
    });
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    response
}

/// The demo app's bodies: whole, a long download in pieces of the shared buffer, or events.
pub enum DemoBody {
    Full(Full<Bytes>),
    Chunks {
        left: u64,
    },
    Ticks {
        interval: std::pin::Pin<Box<tokio::time::Interval>>,
        sent: u64,
    },
}

impl Body for DemoBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        use std::task::Poll;
        match self.get_mut() {
            DemoBody::Full(full) => std::pin::Pin::new(full).poll_frame(cx),
            DemoBody::Chunks { left } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let piece = (*left).min(MAX_FILL_BYTES as u64);
                *left -= piece;
                let data = fill_buffer().slice(..piece as usize);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            DemoBody::Ticks { interval, sent } => {
                if interval.as_mut().poll_tick(cx).is_pending() {
                    return Poll::Pending;
                }
                *sent += 1;
                let event = format!("id: {sent}\nevent: tick\ndata: tick {sent}\n\n");
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DemoBody::Full(full) => full.is_end_stream(),
            DemoBody::Chunks { left } => *left == 0,
            DemoBody::Ticks { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DemoBody::Full(full) => full.size_hint(),
            DemoBody::Chunks { left } => SizeHint::with_exact(*left),
            DemoBody::Ticks { .. } => SizeHint::default(),
        }
    }
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<DemoBody> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "expected a WebSocket upgrade\n".into(),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(message)) = ws.next().await {
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(DemoBody::Full(Full::default()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::try_from(accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<DemoBody> {
    let mut response = Response::new(DemoBody::Full(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A sandbox for each case, on the demo runner: `demo` (public), `private` (its token opens
/// it), and `sleepy` (stopped: the first request wakes it through the demo runner's start hook).
pub const PRIVATE_TOKEN: &str = "demo-private-token";

/// The config `sandgate demo` runs with. The runner key is the one the demo runner checks;
/// the cookie key is fresh per run (a demo has no replicas to share cookies with).
pub fn demo_config(
    listen: SocketAddr,
    admin: SocketAddr,
    runner: SocketAddr,
    runner_key: &str,
) -> String {
    let key = toml_string(runner_key);
    let cookie_key = hex::encode(rand::random::<[u8; 32]>());
    format!(
        r#"
[server]
listen = "{listen}"
[admin]
listen = "{admin}"
[proxy]
domains = ["preview.localhost"]
[auth]
cookie_keys = ["{cookie_key}"]
[registry]
backend = "static"
[registry.wake]
url = "http://{runner}/demo-start/{{id}}"
api_key = {key}
[[registry.runners]]
id = "demo-runner"
url = "http://{runner}"
api_key = {key}
[[registry.sandboxes]]
id = "demo"
runner = "demo-runner"
public = true
auth_token = "demo-token"
[[registry.sandboxes]]
id = "private"
runner = "demo-runner"
auth_token = "{PRIVATE_TOKEN}"
[[registry.sandboxes]]
id = "sleepy"
runner = "demo-runner"
public = true
state = "stopped"
"#
    )
}

/// A TOML basic string: JSON's escapes are TOML's.
fn toml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// Where `sandgate demo` listens.
pub struct DemoListen {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub runner: SocketAddr,
}

/// `sandgate demo`: the demo runner, and the proxy in front of it unless `runner_only`.
pub async fn run(listen: DemoListen, runner_only: bool, runner_key: String) -> Result<(), String> {
    let runner = tokio::net::TcpListener::bind(listen.runner)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", listen.runner))?;
    let runner_addr = runner.local_addr().map_err(|e| e.to_string())?;
    let runner_task = tokio::spawn(run_demo_runner(runner, runner_key.clone()));
    if runner_only {
        println!("demo runner listening on http://{runner_addr}");
        super::serve::stop_signal().await;
        runner_task.abort();
        return Ok(());
    }
    let toml = demo_config(listen.proxy, listen.admin, runner_addr, &runner_key);
    let config = crate::config::Config::from_toml_str(&toml).map_err(|e| e.to_string())?;
    let running = crate::start(config).await.map_err(|e| e.to_string())?;
    print!("{}", urls(running.addr.port(), running.admin_addr));
    let shutdown = running.shutdown_token();
    super::serve::stop_signal().await;
    shutdown.cancel();
    running.wait().await;
    runner_task.abort();
    Ok(())
}

/// The startup text: every case, as a URL to open or a command to run.
fn urls(port: u16, admin: Option<SocketAddr>) -> String {
    let host = |sandbox: &str| format!("http://3000-{sandbox}.preview.localhost:{port}");
    let demo = host("demo");
    let private = host("private");
    let sleepy = host("sleepy");
    let mut lines = vec![
        "sandgate demo is running. Open or run:".to_string(),
        format!("  public      {demo}/   (a page with a live WebSocket echo)"),
        format!("  private     {private}/?DAYTONA_SANDBOX_AUTH_KEY={PRIVATE_TOKEN}   (the token link; without it: 401)"),
        format!("              curl -H 'X-Daytona-Preview-Token: {PRIVATE_TOKEN}' {private}/hello"),
        format!("  stopped     {sleepy}/   (the first request starts it)"),
        format!("  events      curl -N {demo}/events   (server-sent events, one a second)"),
        format!("  download    curl -o /dev/null {demo}/bytes/{MAX_DOWNLOAD_BYTES}   (64 MiB, streamed)"),
        format!("  toolbox     curl -H 'X-Daytona-Preview-Token: demo-token' http://127.0.0.1:{port}/toolbox/demo/version"),
        format!("  health      curl http://127.0.0.1:{port}/health"),
    ];
    if let Some(admin) = admin {
        lines.push(format!("  metrics     curl http://{admin}/metrics"));
    }
    lines.push("Ctrl-C stops it.\n".to_string());
    lines.join("\n")
}
