//! Shared test support: run the real `sandgate` binary on a free port with a given config, and
//! talk to it over real sockets.
#![allow(dead_code)]

pub mod admin_cli;
pub mod bind;
pub mod browser;
pub mod chromium;
pub mod control_plane;
pub mod gate;
pub mod hook;
pub mod nginx;
pub mod oidc;
pub mod pebble;
pub mod recorder;
pub mod redis;
pub mod runner;
pub mod sshd;
pub mod table;
pub mod tls_client;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const BIN: &str = env!("CARGO_BIN_EXE_sandgate");

/// A `sandgate serve` child process; killed on drop.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    pub stderr_path: PathBuf,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `sandgate serve` with `config` (TOML). Unless the config sets `[server] listen`,
    /// it listens on a free loopback port; the bound address is read from the child's stdout.
    pub fn start(config: &str) -> Proxy {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("sandgate.toml");
        let config = if config.contains("[server]") {
            config.to_string()
        } else {
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}")
        };
        std::fs::write(&config_path, config).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "sandgate=debug")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn sandgate");
        let stdout = child.stdout.take().expect("stdout");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let collected = lines.clone();
        std::thread::spawn(move || {
            let mut first = Some(first_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(tx) = first.take() {
                    let _ = tx.send(line.clone());
                }
                collected.lock().unwrap().push(line);
            }
        });
        let line = first_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_default();
        let Some(addr) = line.trim().strip_prefix("sandgate listening on http://") else {
            let _ = child.kill();
            let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("sandgate did not start: stdout {line:?}, stderr:\n{log}");
        };
        let addr = addr.parse().expect("listen address");
        Proxy {
            child,
            addr,
            config_path,
            stderr_path,
            stdout_lines: lines,
            _dir: dir,
        }
    }

    /// The address after `prefix` in a stdout line (`sandgate listening on https://`,
    /// `sandgate admin on http://`), waiting up to 5 s for it.
    pub fn announced(&self, prefix: &str) -> SocketAddr {
        for _ in 0..250 {
            let found = self
                .stdout_lines
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix(prefix).map(|a| a.trim().to_string()));
            if let Some(addr) = found {
                return addr.parse().expect("announced address");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no stdout line starting with {prefix:?}");
    }

    pub fn tls_addr(&self) -> SocketAddr {
        self.announced("sandgate listening on https://")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.announced("sandgate admin on http://")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the proxy process (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status();
        assert!(
            status.map(|s| s.success()).unwrap_or(false),
            "kill -{signal}"
        );
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The value of one sample line (`name{labels} value`) in a Prometheus exposition (0 if absent).
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().split(' ').next())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A free loopback port (bound then released; fine for fixtures started right after). Taken
/// below the kernel's ephemeral range (32768 and up by default): there, an outgoing connection
/// of a test running alongside could take it as its local port before the fixture binds it (CI
/// saw "Address already in use"). Each call in a process gets another port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static SEED: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::process::id().wrapping_mul(7919) ^ nanos
    });
    for _ in 0..SPAN {
        let port = (LOW + seed.wrapping_add(NEXT.fetch_add(1, Ordering::SeqCst)) % SPAN) as u16;
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A whole response, for small bodies.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends one HTTP/1.1 request through a real hyper client to `addr` with the given `Host`.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut builder = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let response = client.request(request).await.expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    send(addr, "GET", host, path, &[], b"").await
}

/// Writes raw bytes on a fresh TCP connection and returns everything read until the server
/// closes or `timeout` passes: for requests no well-behaved client would send.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(timeout)).unwrap();
    stream.write_all(request).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if head_complete_with_body(&out) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when `data` holds a full response head and a body of its `content-length`.
fn head_complete_with_body(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = text[..end]
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse::<usize>().ok());
    match length {
        Some(n) => data.len() >= end + 4 + n,
        None => false,
    }
}

/// The status code of a raw HTTP/1.1 response.
pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A static-registry config with one runner at `runner` and the given extra TOML.
pub fn runner_config(runner: SocketAddr, api_key: &str, sandboxes: &str) -> String {
    format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [[registry.runners]]\nid = \"runner-1\"\nurl = \"http://{runner}\"\napi_key = \"{api_key}\"\n{sandboxes}"
    )
}

/// Sends `request` (any body type, so bodies can stream) on a fresh HTTP/1.1 connection to
/// `addr` and returns the response head with its streaming body.
pub async fn send_streaming<B>(
    addr: SocketAddr,
    request: http::Request<B>,
) -> hyper::Result<http::Response<hyper::body::Incoming>>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    sender.send_request(request).await
}

/// A request builder for `http://{host}{path}` (the host is the preview or proxy host; the
/// connection goes wherever the caller sends it).
pub fn request(method: &str, host: &str, path: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a WebSocket to `ws://{host}{path}` through the proxy at `addr`, with extra headers.
pub async fn ws_connect(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, http::Response<Option<Vec<u8>>>), tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{host}{path}").into_client_request()?;
    for (k, v) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio_tungstenite::client_async_with_config(request, stream, Some(runner::ws_config())).await
}

/// [`raw_exchange`] off the async runtime (so fixtures in this runtime keep running).
pub async fn raw(addr: SocketAddr, request: impl Into<Vec<u8>>) -> String {
    let request = request.into();
    tokio::task::spawn_blocking(move || raw_exchange(addr, &request, Duration::from_secs(10)))
        .await
        .unwrap()
}

/// The body of a raw HTTP/1.1 response (after the head).
pub fn body_of(raw: &str) -> &str {
    raw.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Writes raw bytes on a fresh connection and reads until the server closes or sends nothing
/// for `idle`: for pipelined or smuggled requests, where the number of answers is the question.
pub async fn raw_until_idle(
    addr: SocketAddr,
    request: impl Into<Vec<u8>>,
    idle: Duration,
) -> String {
    let request = request.into();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(idle)).unwrap();
        stream.write_all(&request).expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
    .unwrap()
}

/// The statuses of the HTTP/1.1 responses in `raw`, in order (bodies framed by
/// `Content-Length`; parsing stops at a response without one).
pub fn statuses(raw: &str) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some((head, after)) = rest.split_once("\r\n\r\n") {
        out.push(status_of(head));
        let length = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        });
        match length {
            Some(n) if after.len() >= n => rest = &after[n..],
            _ => break,
        }
    }
    out
}

/// Polls `check` every 2 ms until it holds; the time it took, or a panic after `limit`.
pub async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The demo runner (`sandgate demo`'s upstream) on a free port, answering for `key`.
pub async fn demo_runner(key: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sandgate::cli::demo::run_demo_runner(listener, key.into()));
    addr
}
