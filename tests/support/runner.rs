//! A runner emulator: a real hyper HTTP/1.1 server on a free loopback port with the runner's
//! routes (`ANY /sandboxes/{id}/toolbox/*`, `proxy/{port}/…` for previews, `GET /` health) that
//! checks `X-Daytona-Authorization` and records exactly what reached it.
//!
//! App endpoints, under every app base (`/sandboxes/{id}/toolbox/proxy/{port}` for previews,
//! `/sandboxes/{id}/toolbox` for toolbox traffic, and the root for direct mode, where no runner
//! key is checked):
//!
//! | path | behaviour |
//! |---|---|
//! | `/bytes/{n}` | `n` pattern bytes, streamed, with `Content-Length` |
//! | `/chunked/{n}` | `n` pattern bytes, streamed, chunked |
//! | `/abort/{n}` | chunked: `n` pattern bytes, then the upstream connection fails |
//! | `/upload` | counts the streamed request body: `{"len":…,"pattern_ok":…,"sha256":…}` |
//! | `/sse` | `text/event-stream`: one event, then waits for [`Runner::release`], then a second |
//! | `/follow` | the same as chunked `application/octet-stream` (command logs with `follow=true`) |
//! | `/hold` | waits for [`Runner::release`] before answering 200 `released` |
//! | `/slow/{ms}` | sleeps before sending headers |
//! | `/redirect` | 302 with `Location` taken from the request header `x-location` |
//! | `/status/{code}` | answers that status |
//! | `/trailers` | a body then trailers `x-checksum: abc` (if the request had `TE: trailers`) |
//! | `/cors` | the app's own CORS: `Access-Control-Allow-Origin: https://app-chosen.example`, and an `OPTIONS` answered 204 with `X-App-Preflight: 1` |
//! | `/ws` | WebSocket echo (text/binary, pongs; `close:<code>` makes it close with that code) |
//! | anything else | echo: JSON of method, raw target, query, headers, body length and sha256 |
//!
//! Every answer of an app endpoint (redirects, errors and `101`s included) also carries, as
//! `<name>`, each request header `x-reply-<name>`: a test chooses what the sandbox answers with
//! (e.g. `x-reply-set-cookie: a=1; Domain=…` for a planted cookie).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type RespBody = BoxBody<Bytes, Error>;

/// One request as the runner received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The raw request target (path and query), byte for byte.
    pub target: String,
    /// Headers in the order received (names lower-case).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// This request in the shape `support::recorder` answers with (method, path, query,
    /// headers as name → [values]), for checks shared by both upstreams.
    pub fn record(&self) -> serde_json::Value {
        let (path, query) = match self.target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (self.target.as_str(), None),
        };
        let mut headers = serde_json::Map::new();
        for (name, _) in &self.headers {
            headers
                .entry(name.clone())
                .or_insert_with(|| self.all(name).into());
        }
        serde_json::json!({
            "method": self.method,
            "path": path,
            "query": query,
            "headers": headers,
        })
    }
}

struct State {
    expected_auth: String,
    seen: Mutex<Vec<Seen>>,
    count: watch::Sender<usize>,
    released: watch::Sender<bool>,
    /// Close codes the WebSocket echo received from the client (`None`: no code).
    ws_closes: Mutex<Vec<Option<u16>>>,
    ws_closed: watch::Sender<usize>,
}

/// The emulator; it stops when dropped.
pub struct Runner {
    pub addr: SocketAddr,
    pub key: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Runner {
    pub async fn start(key: &str) -> Runner {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            expected_auth: format!("Bearer {key}"),
            seen: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
            released: watch::channel(false).0,
            ws_closes: Mutex::new(Vec::new()),
            ws_closed: watch::channel(0).0,
        });
        let task = tokio::spawn(serve(listener, state.clone()));
        Runner {
            addr,
            key: key.to_string(),
            state,
            task,
        }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the runner received no request")
    }

    /// Waits until the runner has received at least `n` requests (heads).
    pub async fn wait_requests(&self, n: usize) {
        let mut rx = self.state.count.subscribe();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|c| *c >= n))
            .await
            .expect("timed out waiting for requests at the runner")
            .unwrap();
    }

    /// Lets `/sse` and `/hold` finish.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }

    /// Waits until `n` WebSocket sessions ended and returns the close codes received.
    pub async fn ws_closes(&self, n: usize) -> Vec<Option<u16>> {
        let mut rx = self.state.ws_closed.subscribe();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|c| *c >= n))
            .await
            .expect("timed out waiting for websocket sessions to end")
            .unwrap();
        self.state.ws_closes.lock().unwrap().clone()
    }

    /// A static-registry config with this runner as `runner-1` and `extra` TOML appended.
    pub fn config(&self, extra: &str) -> String {
        super::runner_config(self.addr, &self.key, extra)
    }
}

/// Config for one public sandbox `sbx-1` (and a private `sbx-priv` with token `tok-secret`) on
/// `runner-1`, plus `extra` TOML.
pub fn sandboxes() -> &'static str {
    "[[registry.sandboxes]]\nid = \"sbx-1\"\nrunner = \"runner-1\"\npublic = true\n\
     auth_token = \"tok-public\"\n\
     [[registry.sandboxes]]\nid = \"sbx-priv\"\nrunner = \"runner-1\"\nauth_token = \"tok-secret\"\n"
}

/// Two tenants on `runner-1`: a public `attacker` and a private `victim` (token `tok-victim`).
pub const ATTACKER_AND_VICTIM: &str =
    "[[registry.sandboxes]]\nid = \"attacker\"\nrunner = \"runner-1\"\npublic = true\n\
     [[registry.sandboxes]]\nid = \"victim\"\nrunner = \"runner-1\"\nauth_token = \"tok-victim\"\n";

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, state).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, state: Arc<State>) -> Response<RespBody> {
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let path = req.uri().path().to_string();
    if path == "/" && req.method() == http::Method::GET {
        return full(StatusCode::OK, "text/plain", "runner ok");
    }
    state.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        target: target.clone(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
    });
    state.count.send_modify(|c| *c += 1);

    let app_path = if let Some(after) = path.strip_prefix("/sandboxes/") {
        let auth = req.headers().get("x-daytona-authorization");
        if auth.map(HeaderValue::as_bytes) != Some(state.expected_auth.as_bytes()) {
            return full(
                StatusCode::UNAUTHORIZED,
                "application/json",
                r#"{"message":"unauthorized"}"#,
            );
        }
        let Some((_sandbox, rest)) = after.split_once("/toolbox") else {
            return full(
                StatusCode::NOT_FOUND,
                "application/json",
                r#"{"message":"not found"}"#,
            );
        };
        match rest.strip_prefix("/proxy/") {
            Some(p) => match p.find('/') {
                Some(i) => p[i..].to_string(),
                None => String::new(),
            },
            None => rest.to_string(),
        }
    } else {
        // Direct mode: the app itself, no runner key.
        path.clone()
    };
    let replies = reply_headers(req.headers());
    let mut response = app(req, &app_path, &target, state).await;
    for (name, value) in replies {
        response.headers_mut().append(name, value);
    }
    response
}

/// The `x-reply-<name>: value` request headers, as `(<name>, value)` in order.
fn reply_headers(headers: &HeaderMap) -> Vec<(http::HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str().strip_prefix("x-reply-")?;
            Some((http::HeaderName::try_from(name).ok()?, value.clone()))
        })
        .collect()
}

async fn app(
    req: Request<Incoming>,
    path: &str,
    target: &str,
    state: Arc<State>,
) -> Response<RespBody> {
    let arg = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|n| n.parse::<u64>().ok())
    };
    if let Some(n) = arg("/bytes/") {
        let mut r = Response::new(PatternBody::new(n, true).boxed());
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        return r;
    }
    if let Some(n) = arg("/chunked/") {
        return Response::new(PatternBody::new(n, false).boxed());
    }
    if let Some(n) = arg("/abort/") {
        let mut body = PatternBody::new(n, false);
        body.fail_at_end = true;
        return Response::new(body.boxed());
    }
    if let Some(ms) = arg("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return full(StatusCode::OK, "text/plain", "slow");
    }
    if let Some(code) = arg("/status/") {
        let mut r = full(StatusCode::OK, "text/plain", "status");
        *r.status_mut() = StatusCode::from_u16(code as u16).unwrap();
        return r;
    }
    match path {
        "/upload" => upload(req).await,
        "/sse" => held_stream(
            state,
            "text/event-stream",
            b"data: first\n\n",
            b"data: second\n\n",
        ),
        "/follow" => held_stream(state, "application/octet-stream", b"line 1\n", b"line 2\n"),
        "/hold" => {
            let mut rx = state.released.subscribe();
            let _ = rx.wait_for(|r| *r).await;
            full(StatusCode::OK, "text/plain", "released")
        }
        "/redirect" => {
            let mut r = full(StatusCode::FOUND, "text/plain", "moved");
            if let Some(to) = req.headers().get("x-location") {
                r.headers_mut().insert("location", to.clone());
            }
            r
        }
        "/trailers" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("abc"));
            let frames = vec![
                Ok::<_, Error>(Frame::data(Bytes::from_static(b"with trailers"))),
                Ok(Frame::trailers(trailers)),
            ];
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            let mut r = Response::new(BodyExt::boxed(body));
            r.headers_mut()
                .insert("trailer", HeaderValue::from_static("x-checksum"));
            r
        }
        "/ws" => websocket(req, state),
        "/cors" => app_cors(req.method() == http::Method::OPTIONS),
        _ => echo(req, target).await,
    }
}

/// An app that does CORS itself (one origin, credentials), preflights included.
fn app_cors(preflight: bool) -> Response<RespBody> {
    let mut r = full(StatusCode::OK, "text/plain", "app cors");
    if preflight {
        r = Response::new(empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r.headers_mut()
            .insert("x-app-preflight", HeaderValue::from_static("1"));
        r.headers_mut().insert(
            "access-control-allow-methods",
            HeaderValue::from_static("PUT"),
        );
    }
    let h = r.headers_mut();
    h.insert(
        "access-control-allow-origin",
        HeaderValue::from_static("https://app-chosen.example"),
    );
    h.insert(
        "access-control-allow-credentials",
        HeaderValue::from_static("true"),
    );
    r
}

async fn echo(req: Request<Incoming>, target: &str) -> Response<RespBody> {
    let (parts, body) = req.into_parts();
    let collected = body.collect().await.ok();
    let trailers: Vec<serde_json::Value> = collected
        .as_ref()
        .and_then(|c| c.trailers())
        .map(|t| {
            t.iter()
                .map(|(n, v)| {
                    serde_json::json!([n.as_str(), String::from_utf8_lossy(v.as_bytes())])
                })
                .collect()
        })
        .unwrap_or_default();
    let body = collected.map(|c| c.to_bytes()).unwrap_or_default();
    let headers: Vec<serde_json::Value> = parts
        .headers
        .iter()
        .map(|(n, v)| serde_json::json!([n.as_str(), String::from_utf8_lossy(v.as_bytes())]))
        .collect();
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "target": target,
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": hex::encode(Sha256::digest(&body)),
        "trailers": trailers,
    });
    full(StatusCode::OK, "application/json", json.to_string())
}

async fn upload(req: Request<Incoming>) -> Response<RespBody> {
    let mut body = req.into_body();
    let mut len = 0u64;
    let mut pattern_ok = true;
    let mut hasher = Sha256::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return full(StatusCode::BAD_REQUEST, "text/plain", e.to_string()),
        };
        if let Ok(data) = frame.into_data() {
            pattern_ok &= matches_pattern(len, &data);
            // Hashing a GiB in a debug build is slow; the pattern check covers big bodies.
            if len < (16 << 20) {
                hasher.update(&data);
            }
            len += data.len() as u64;
        }
    }
    let sha = if len <= (16 << 20) {
        hex::encode(hasher.finalize())
    } else {
        String::new()
    };
    let json = serde_json::json!({"len": len, "pattern_ok": pattern_ok, "sha256": sha});
    full(StatusCode::OK, "application/json", json.to_string())
}

/// A chunked stream: `first`, then (after [`Runner::release`]) `second`, then the end.
fn held_stream(
    state: Arc<State>,
    content_type: &'static str,
    first: &'static [u8],
    second: &'static [u8],
) -> Response<RespBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Error>>(4);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from_static(first)))).await;
        let mut released = state.released.subscribe();
        let _ = released.wait_for(|r| *r).await;
        let _ = tx.send(Ok(Frame::data(Bytes::from_static(second)))).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(stream)));
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    r
}

pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

fn websocket(mut req: Request<Incoming>, state: Arc<State>) -> Response<RespBody> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return full(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "expected a WebSocket upgrade",
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    // Pick the first offered subprotocol, as servers do.
    let protocol = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_string());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(ws_config()),
        )
        .await;
        let mut close_code = None;
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = &message {
                close_code = frame.as_ref().map(|f| u16::from(f.code));
                continue;
            }
            let close_with = match &message {
                Message::Text(text) => text
                    .strip_prefix("close:")
                    .map(|c| c.parse().unwrap_or(1000)),
                _ => None,
            };
            if let Some(code) = close_with {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: "asked to".into(),
                };
                let _ = ws.close(Some(frame)).await;
            } else if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
            {
                break;
            }
        }
        state.ws_closes.lock().unwrap().push(close_code);
        state.ws_closed.send_modify(|c| *c += 1);
    });
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("connection", HeaderValue::from_static("upgrade"));
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    headers.insert("sec-websocket-accept", accept.parse().unwrap());
    if let Some(p) = protocol {
        headers.insert("sec-websocket-protocol", p.parse().unwrap());
    }
    response
}

pub fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<RespBody> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    r
}

fn empty() -> RespBody {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

// ---- the pattern: periodic bytes, cheap to generate and to check even in debug builds ----

const PERIOD: usize = 64 * 1024;
const CHUNK: usize = 64 * 1024;

/// Two periods of the pattern, so any offset has a contiguous period after it.
fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        (0..2 * PERIOD)
            .map(|i| {
                let i = i % PERIOD;
                (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8
            })
            .collect::<Vec<u8>>()
            .into()
    })
}

/// True if `data` is the pattern starting at absolute offset `offset`.
pub fn matches_pattern(offset: u64, data: &[u8]) -> bool {
    let pattern = pattern();
    let mut offset = (offset % PERIOD as u64) as usize;
    let mut rest = data;
    while !rest.is_empty() {
        let n = rest.len().min(PERIOD);
        if rest[..n] != pattern[offset..offset + n] {
            return false;
        }
        rest = &rest[n..];
        offset = (offset + n) % PERIOD;
    }
    true
}

/// `len` bytes of the pattern, generated on the fly (zero-copy slices of one buffer).
pub struct PatternBody {
    sent: u64,
    len: u64,
    exact: bool,
    /// After the last byte, fail instead of ending (a mid-stream upstream failure).
    pub fail_at_end: bool,
}

impl PatternBody {
    pub fn new(len: u64, exact: bool) -> PatternBody {
        PatternBody {
            sent: 0,
            len,
            exact,
            fail_at_end: false,
        }
    }

    pub fn boxed(self) -> RespBody {
        BodyExt::boxed(self)
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.sent >= self.len {
            if self.fail_at_end {
                self.fail_at_end = false;
                return Poll::Ready(Some(Err("emulated upstream failure".into())));
            }
            return Poll::Ready(None);
        }
        let n = (self.len - self.sent).min(CHUNK as u64) as usize;
        let start = (self.sent % PERIOD as u64) as usize;
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(pattern().slice(start..start + n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.len && !self.fail_at_end
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.len - self.sent)
        } else {
            SizeHint::default()
        }
    }
}

/// Reads a whole body, checking it against the pattern without keeping it; returns its length.
pub async fn drain_pattern<B>(mut body: B) -> Result<(u64, bool), B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut len = 0u64;
    let mut ok = true;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            ok &= matches_pattern(len, &data);
            len += data.len() as u64;
        }
    }
    Ok((len, ok))
}
