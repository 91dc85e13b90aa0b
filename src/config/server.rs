//! `[server]`, `[admin]`, `[proxy]` and `[log]`: the listeners and the HTTP proxy.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the public listener.
    #[serde(with = "super::listen")]
    pub listen: SocketAddr,
    /// Largest request head (request line + headers) accepted, in bytes.
    pub max_header_bytes: usize,
    /// Most headers accepted in one request.
    pub max_headers: usize,
    /// Time a client gets to send a whole request head, counted from the connection's start or
    /// the end of the previous response: it bounds slow senders (slowloris) and idle HTTP/1.1
    /// keep-alive connections alike (hyper uses one timer for both).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections beyond this many wait in the kernel backlog.
    pub max_connections: usize,
    /// Open connections one client IP may hold (0: no limit); more are closed at accept.
    pub max_connections_per_ip: usize,
    /// On SIGTERM/SIGINT, in-flight requests and streams get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Bind the public listeners (plaintext and TLS) with `SO_REUSEPORT`, so several sandgate
    /// processes (one per core, say) can share one port; the kernel spreads connections over them.
    pub reuse_port: bool,
    /// Serving threads, each with its own single-threaded runtime and its own `SO_REUSEPORT`
    /// listener on `listen` (and `tls.listen`), the kernel spreading connections over them, as
    /// nginx's workers do (0: one per CPU this process may run on; 1: serve on the main
    /// runtime). `SANDGATE_WORKER_THREADS` overrides it.
    pub threads: usize,
    /// After an answer sent before the request body was read (a 401 to an upload, say), the
    /// connection closes only once the client stopped sending, or after this many more bytes
    /// (0: close at once), so the client can read the answer instead of a reset.
    pub lingering_bytes: u64,
    /// ... or after this long (at most 60s), whichever comes first.
    #[serde(with = "humantime_serde")]
    pub lingering_timeout: Duration,
    /// CIDRs (or addresses) of the load balancers in front: only from these peers are
    /// `X-Forwarded-For`/`Forwarded` believed and the PROXY protocol accepted.
    pub trusted_proxies: Vec<String>,
    /// `listen` expects a PROXY protocol header (v1 or v2) first on every connection, from a
    /// trusted proxy; connections without one, or from anyone else, are closed.
    pub proxy_protocol: bool,
    /// `serve` writes its process id here at start and removes the file at exit, for
    /// `sandgate reload --pid-file` and init scripts (empty: no pid file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid_file: Option<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(30),
            max_connections: 50_000,
            max_connections_per_ip: 4096,
            shutdown_timeout: Duration::from_secs(30),
            reuse_port: false,
            threads: 0,
            lingering_bytes: 16 << 20,
            lingering_timeout: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            pid_file: None,
        }
    }
}

/// The operations listener: `/metrics`, `/health`, `/ready`, `POST /reload`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener; empty (`None`): no admin listener.
    #[serde(with = "super::listen::empty_is_off")]
    pub listen: Option<SocketAddr>,
    /// The bearer token `POST /reload` requires (`Authorization: Bearer <token>`); without
    /// one the admin listener refuses reloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Preview domains: `<port>-<sandboxId>.<domain>`.
    pub domains: Vec<String>,
    /// Scheme clients use to reach the proxy (`http` or `https`); sets `X-Forwarded-Proto`.
    pub public_scheme: Scheme,
    /// Upstream TCP connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time the upstream gets to send response headers (504 after).
    #[serde(with = "humantime_serde")]
    pub response_header_timeout: Duration,
    /// Idle upstream connections are closed after this long.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle upstream connections kept per runner and serving thread.
    pub pool_max_idle_per_host: usize,
    /// Requests and WebSockets in flight per sandbox on this replica (0: no limit); beyond: 429.
    pub max_requests_per_sandbox: usize,
    /// A proxied WebSocket with no traffic either way for this long is closed (0s: never).
    #[serde(with = "humantime_serde")]
    pub websocket_idle_timeout: Duration,
    /// Largest toolbox request body in bytes (0: no limit); beyond: 413. Previews have no limit.
    pub toolbox_max_body_bytes: u64,
    /// Keep the `X-Forwarded-Host` a trusted proxy (`server.trusted_proxies`) sent instead of
    /// setting the request's host; anyone else's is always replaced.
    pub preserve_forwarded_host: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            domains: vec!["preview.localhost".into()],
            public_scheme: Scheme::Http,
            connect_timeout: Duration::from_secs(3),
            response_header_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            max_requests_per_sandbox: 10_000,
            websocket_idle_timeout: Duration::from_secs(3600),
            toolbox_max_body_bytes: 0,
            preserve_forwarded_host: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// The access log's layout: `text`, `json` or `combined` (Apache combined plus timings);
    /// unset: the same as `format`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_format: Option<AccessFormat>,
    /// A tracing filter, e.g. `info` or `sandgate=debug`. `RUST_LOG` wins when set.
    pub level: String,
    /// One line per request (method, route kind, path without query, status, duration, bytes,
    /// sandbox, request id); never hosts, queries, tokens or cookies.
    /// Written only when `level` (or `RUST_LOG`) lets `sandgate::access` log at `info`.
    pub access: bool,
    /// Where access lines go: `stderr` (with the other logs), `stdout`, or a file path (appended,
    /// created if missing, reopened on SIGUSR1 after logrotate moved it).
    pub access_output: AccessOutput,
    /// Bytes of access lines buffered per worker thread before the background writer must have
    /// written them; the writer wakes when a buffer is half full.
    pub access_buffer: usize,
    /// Longest time a line waits in a buffer before it is written.
    #[serde(with = "humantime_serde")]
    pub access_flush: Duration,
    /// When the writer falls behind (full disk, stuck pipe): `wait` (requests wait for buffer
    /// room, no line is lost) or `drop` (never wait; lines dropped are counted in
    /// `sandgate_access_log_dropped_total`).
    pub access_overflow: Overflow,
    /// Accept a sane `X-Request-Id` or generate one; forward it and return it.
    pub request_id: bool,
    /// The owner's view: the last requests kept per sandbox, served on the admin listener
    /// (`/sandboxes/<id>/requests`). 0 turns the request log off.
    pub requests_per_sandbox: usize,
    /// Most sandboxes the request log keeps at once; a new one evicts the least recently used.
    pub request_log_sandboxes: usize,
}

/// The request log's memory at most, in bytes: `request_log_sandboxes` rings of
/// `requests_per_sandbox` fixed-size entries (about 480 bytes each).
pub const MAX_REQUEST_LOG_BYTES: usize = 1 << 30;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            access_format: None,
            level: "info".into(),
            access: true,
            access_output: AccessOutput::Stderr,
            access_buffer: 64 * 1024,
            access_flush: Duration::from_secs(1),
            access_overflow: Overflow::Wait,
            request_id: true,
            requests_per_sandbox: 64,
            request_log_sandboxes: 1024,
        }
    }
}

impl LogConfig {
    /// `access_format`, or the layout of `format` when unset.
    pub fn access_format(&self) -> AccessFormat {
        match (self.access_format, self.format.as_str()) {
            (Some(format), _) => format,
            (None, "json") => AccessFormat::Json,
            (None, _) => AccessFormat::Text,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.format.as_str(), "text" | "json") {
            return Err("log.format must be text or json".into());
        }
        if !(4096..=16 << 20).contains(&self.access_buffer) {
            return Err("log.access_buffer must be between 4096 and 16777216 bytes".into());
        }
        if self.access_flush.is_zero() || self.access_flush > Duration::from_secs(60) {
            return Err("log.access_flush must be more than 0s and at most 60s".into());
        }
        self.validate_request_log()
    }

    fn validate_request_log(&self) -> Result<(), String> {
        use crate::base::request_ring::Ring;
        if self.requests_per_sandbox > 100_000 {
            return Err("log.requests_per_sandbox must be at most 100000 (0: off)".into());
        }
        if self.requests_per_sandbox > 0 && self.request_log_sandboxes == 0 {
            return Err("log.request_log_sandboxes must be at least 1".into());
        }
        let bytes =
            Ring::bytes_for(self.requests_per_sandbox).saturating_mul(self.request_log_sandboxes);
        if self.requests_per_sandbox > 0 && bytes > MAX_REQUEST_LOG_BYTES {
            return Err(format!(
                "log.request_log_sandboxes: {} sandboxes of {} requests take {bytes} bytes, more \
                 than the 1 GiB allowed",
                self.request_log_sandboxes, self.requests_per_sandbox
            ));
        }
        Ok(())
    }
}

/// `log.access_output`: `stdout`, `stderr` or a file path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AccessOutput {
    Stdout,
    Stderr,
    File(std::path::PathBuf),
}

impl TryFrom<String> for AccessOutput {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Ok(match text.as_str() {
            "stdout" => AccessOutput::Stdout,
            "stderr" => AccessOutput::Stderr,
            "" => return Err("log.access_output must be stdout, stderr or a file path".into()),
            _ => AccessOutput::File(text.into()),
        })
    }
}

impl From<AccessOutput> for String {
    fn from(output: AccessOutput) -> String {
        match output {
            AccessOutput::Stdout => "stdout".into(),
            AccessOutput::Stderr => "stderr".into(),
            AccessOutput::File(path) => path.to_string_lossy().into_owned(),
        }
    }
}

/// `log.access_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    Text,
    Json,
    Combined,
}

/// `log.access_overflow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    #[default]
    Wait,
    Drop,
}

/// `proxy.public_scheme`: the scheme clients use to reach the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// `server.trusted_proxies`: CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses; errors name
/// the key.
pub fn parse_trusted_proxies(entries: &[String]) -> Result<Vec<IpNet>, String> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let entry = entry.trim();
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    format!(
                        "server.trusted_proxies[{i}]: {entry:?} is not a CIDR (e.g. \
                         \"10.0.0.0/8\") or an IP address"
                    )
                })
        })
        .collect()
}
