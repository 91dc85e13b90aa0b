//! `sandgate demo`: a built-in demo runner (the runner's routes, a small page with a live
//! WebSocket echo) so the proxy can be tried with no infrastructure. The same runner is the
//! fast upstream of the benchmarks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
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

async fn demo_start(req: &Request<Incoming>, expected: &HeaderValue) -> Response<Full<Bytes>> {
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

fn runner(req: Request<Incoming>, expected: &HeaderValue) -> Response<Full<Bytes>> {
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

/// The largest body `/bytes/{n}` serves.
const MAX_FILL_BYTES: usize = 1 << 20;

/// The demo sandbox app on any port: `/` a page, `/ws` a WebSocket echo, `/bytes/{n}` a body of
/// `n` bytes (at most 1 MiB; for benchmarks), anything else a line.
fn app(req: Request<Incoming>, sandbox: &str, port: &str, path: &str) -> Response<Full<Bytes>> {
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
        _ => text(
            StatusCode::OK,
            "text/plain",
            format!("hello from sandbox {sandbox}, port {port}, path /{path}\n"),
        ),
    }
}

/// `n` bytes of `x`, sliced from one shared buffer (no allocation or copy per request, so the
/// upstream stays cheap in benchmarks).
fn fill(n: &str) -> Response<Full<Bytes>> {
    static FILL: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    match n.parse::<usize>() {
        Ok(n) if n <= MAX_FILL_BYTES => {
            let all = FILL.get_or_init(|| Bytes::from(vec![b'x'; MAX_FILL_BYTES]));
            let mut response = Response::new(Full::new(all.slice(..n)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        _ => text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            format!("bytes/{{n}}: n must be a number up to {MAX_FILL_BYTES}\n"),
        ),
    }
}

fn websocket_echo(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
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
    let mut response = Response::new(Full::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::try_from(accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    response
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The config `sandgate demo` runs with: a public sandbox `demo` on the demo runner, and a
/// stopped one, `sleepy`, that the first request wakes through the demo runner's start hook.
pub fn demo_config(listen: SocketAddr, runner: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
[proxy]
domains = ["preview.localhost"]
[registry]
backend = "static"
[registry.wake]
url = "http://{runner}/demo-start/{{id}}"
api_key = "demo-runner-key"
[[registry.runners]]
id = "demo-runner"
url = "http://{runner}"
api_key = "demo-runner-key"
[[registry.sandboxes]]
id = "demo"
runner = "demo-runner"
public = true
auth_token = "demo-token"
[[registry.sandboxes]]
id = "sleepy"
runner = "demo-runner"
public = true
state = "stopped"
"#
    )
}

/// `sandgate demo`: the demo runner, and the proxy in front of it unless `runner_only`.
pub async fn run(
    listen: SocketAddr,
    runner_listen: SocketAddr,
    runner_only: bool,
    runner_key: String,
) -> Result<(), String> {
    let runner = tokio::net::TcpListener::bind(runner_listen)
        .await
        .map_err(|e| format!("cannot listen on {runner_listen}: {e}"))?;
    let runner_addr = runner.local_addr().map_err(|e| e.to_string())?;
    let runner_task = tokio::spawn(run_demo_runner(runner, runner_key));
    if runner_only {
        println!("demo runner listening on http://{runner_addr}");
        super::serve::stop_signal().await;
        runner_task.abort();
        return Ok(());
    }
    let config = crate::config::Config::from_toml_str(&demo_config(listen, runner_addr))
        .map_err(|e| e.to_string())?;
    let running = crate::start(config).await.map_err(|e| e.to_string())?;
    let port = running.addr.port();
    println!("sandgate demo is running.");
    println!("  open        http://3000-demo.preview.localhost:{port}/");
    println!("  or          curl http://3000-demo.preview.localhost:{port}/hello");
    println!("  wake        http://3000-sleepy.preview.localhost:{port}/   (stopped: the first request starts it)");
    println!("  toolbox     curl -H 'X-Daytona-Preview-Token: demo-token' http://127.0.0.1:{port}/toolbox/demo/version");
    println!("  health      curl http://127.0.0.1:{port}/health");
    println!("Ctrl-C stops it.");
    let shutdown = running.shutdown_token();
    super::serve::stop_signal().await;
    shutdown.cancel();
    running.wait().await;
    runner_task.abort();
    Ok(())
}
