//! Configuration: one TOML file, every key overridable by `SANDGATE_<SECTION>__<KEY>` env vars.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use crate::activity::ActivityConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub proxy: ProxyConfig,
    pub tls: crate::tls::TlsConfig,
    pub admin: AdminConfig,
    pub registry: RegistryConfig,
    pub activity: ActivityConfig,
    /// Connection to Redis, shared by the `redis` registry backend, the `daytona` backend's L2
    /// cache and the `redis` activity sink.
    pub redis: RedisConfig,
    /// The Daytona-compatible control-plane API (the `daytona` backend and activity sink).
    pub daytona: DaytonaConfig,
    pub log: LogConfig,
    /// Credentials, cookies, browser login, CORS, preview warning (see `crate::auth`).
    pub auth: crate::auth::AuthConfig,
    /// The SSH gateway (`sandgate ssh-gateway`).
    pub ssh: crate::ssh::SshConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the public listener.
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
            lingering_bytes: 16 << 20,
            lingering_timeout: Duration::from_secs(5),
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
        }
    }
}

/// The operations listener: `/metrics`, `/health`, `/ready`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin listener; empty: no admin listener.
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Preview domains: `<port>-<sandboxId>.<domain>`.
    pub domains: Vec<String>,
    /// Scheme clients use to reach the proxy (`http` or `https`); sets `X-Forwarded-Proto`.
    pub public_scheme: String,
    /// Upstream TCP connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time the upstream gets to send response headers (504 after).
    #[serde(with = "humantime_serde")]
    pub response_header_timeout: Duration,
    /// Idle upstream connections are closed after this long.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Idle upstream connections kept per runner.
    pub pool_max_idle_per_host: usize,
    /// Requests and WebSockets in flight per sandbox on this replica (0: no limit); beyond: 429.
    pub max_requests_per_sandbox: usize,
    /// A proxied WebSocket with no traffic either way for this long is closed (0s: never).
    #[serde(with = "humantime_serde")]
    pub websocket_idle_timeout: Duration,
    /// Largest toolbox request body in bytes (0: no limit); beyond: 413. Previews have no limit.
    pub toolbox_max_body_bytes: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            domains: vec!["preview.localhost".into()],
            public_scheme: "http".into(),
            connect_timeout: Duration::from_secs(3),
            response_header_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            max_requests_per_sandbox: 10_000,
            websocket_idle_timeout: Duration::from_secs(3600),
            toolbox_max_body_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `static` (the runners and sandboxes listed below), `redis` or `daytona`.
    pub backend: String,
    pub cache: CacheConfig,
    /// Optional start hook for sandboxes that are not running (off by default).
    pub wake: crate::wake::WakeConfig,
    pub runners: Vec<RunnerEntry>,
    pub sandboxes: Vec<SandboxEntry>,
    /// API keys (static backend): `key` or `key_sha256` (hex) → `organization`.
    pub api_keys: Vec<ApiKeyEntry>,
    /// Signed preview tokens (static backend).
    pub signed_previews: Vec<SignedPreviewEntry>,
    /// SSH access tokens (static backend): `token` or `token_sha256` (hex) → `sandbox`.
    pub ssh_tokens: Vec<SshTokenEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshTokenEntry {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_sha256: Option<String>,
    pub sandbox: String,
    /// Unix seconds; absent: no expiry.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub key_sha256: Option<String>,
    pub organization: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPreviewEntry {
    /// 16 characters `[a-z0-9]`.
    pub token: String,
    pub port: u16,
    pub sandbox: String,
    /// Unix seconds; absent: no expiry.
    #[serde(default)]
    pub expires_at: Option<u64>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            backend: "static".into(),
            cache: CacheConfig::default(),
            wake: crate::wake::WakeConfig::default(),
            runners: Vec::new(),
            sandboxes: Vec::new(),
            api_keys: Vec::new(),
            signed_previews: Vec::new(),
            ssh_tokens: Vec::new(),
        }
    }
}

/// The in-process cache in front of every registry backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long a found sandbox (and a valid token) is served from memory. Absolute: hits
    /// never extend it.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long "not found" / "invalid" answers are remembered.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// While the backend fails, an expired entry keeps serving this long past its expiry
    /// (responses carry `X-Sandgate-Stale: 1`).
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// Bound on cached entries per kind.
    pub max_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(120),
            negative_ttl: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(600),
            max_entries: 100_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`) of a single node.
    pub url: String,
    /// Redis Cluster seed nodes; when non-empty, used instead of `url`.
    pub cluster_nodes: Vec<String>,
    /// Sentinel: the master's name and the sentinels' URLs; when set, used instead of `url`.
    pub sentinel_master: String,
    pub sentinel_nodes: Vec<String>,
    /// Prefix of sandgate's own keys (the Daytona-compatible keys keep their names).
    pub key_prefix: String,
    /// Pub/sub channel carrying cache invalidations between replicas.
    pub invalidation_channel: String,
    /// Per-command timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: Vec::new(),
            sentinel_master: String::new(),
            sentinel_nodes: Vec::new(),
            key_prefix: "sandgate:".into(),
            invalidation_channel: "sandgate:invalidate".into(),
            timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaytonaConfig {
    /// Base URL of the control-plane API, ending in `/api`.
    pub api_url: String,
    /// The proxy's own API key (`Authorization: Bearer ...` on service calls).
    pub api_key: String,
    /// Per-call timeout (each of up to 3 tries).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Share answers through Redis under Daytona's `proxy:` keys, so the API's own
    /// invalidations reach this cache.
    pub l2_redis: bool,
}

impl Default for DaytonaConfig {
    fn default() -> Self {
        Self {
            api_url: "http://127.0.0.1:3000/api".into(),
            api_key: String::new(),
            timeout: Duration::from_secs(5),
            l2_redis: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerEntry {
    pub id: String,
    /// Base URL of the runner's proxy endpoint, e.g. `http://10.0.0.5:3003`.
    pub url: String,
    /// Sent to the runner as `X-Daytona-Authorization: Bearer <api_key>`.
    pub api_key: String,
    /// `host:port` of the runner's SSH endpoint (default: the url's host, port 2220).
    #[serde(default)]
    pub ssh_endpoint: Option<String>,
    /// `http1` (default) or `h2c`: HTTP/2 with prior knowledge, for gRPC apps in sandboxes.
    #[serde(default)]
    pub protocol: crate::upstream::Protocol,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxEntry {
    pub id: String,
    /// Runner hosting the sandbox (runner mode) ...
    #[serde(default)]
    pub runner: Option<String>,
    /// ... or the sandbox's own address (direct mode).
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub public: bool,
    /// Preview auth token (`X-Daytona-Preview-Token` / `DAYTONA_SANDBOX_AUTH_KEY`).
    #[serde(default)]
    pub auth_token: Option<String>,
    /// `started` (default), `stopped`, `starting`, ...
    #[serde(default = "default_state")]
    pub state: String,
    /// Owning organisation: API keys and JWTs of this organisation open the sandbox.
    #[serde(default)]
    pub organization: Option<String>,
    /// Direct mode: the sandbox's sshd port, for the SSH gateway.
    #[serde(default = "default_ssh_port")]
    pub ssh_port: u16,
    /// `managed` (default: the proxy handles CORS) or `passthrough` (the app does).
    #[serde(default)]
    pub cors: crate::registry::CorsMode,
}

fn default_ssh_port() -> u16 {
    22
}

fn default_state() -> String {
    "started".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `sandgate=debug`. `RUST_LOG` wins when set.
    pub level: String,
    /// One line per request (method, route kind, path without query, status, duration, bytes,
    /// sandbox, request id); never hosts, queries, tokens or cookies.
    pub access: bool,
    /// Accept a sane `X-Request-Id` or generate one; forward it and return it.
    pub request_id: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
            access: true,
            request_id: true,
        }
    }
}

impl Config {
    /// Loads defaults, then the TOML file (if any), then `SANDGATE_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        // Only SECTION__KEY names are overrides: SANDGATE_CONFIG (the --config flag) and other
        // SANDGATE_* variables of scripts are not config keys.
        let overrides = Env::prefixed("SANDGATE_")
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        figment = figment.merge(overrides);
        let config: Config = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.proxy.domains.is_empty() {
            return invalid("proxy.domains must list at least one preview domain".into());
        }
        for d in &self.proxy.domains {
            if d.is_empty() || d.starts_with('.') || d.contains(['/', ':', ' ']) {
                return invalid(format!("proxy.domains: {d:?} is not a domain name"));
            }
        }
        if !matches!(self.proxy.public_scheme.as_str(), "http" | "https") {
            return invalid("proxy.public_scheme must be http or https".into());
        }
        if self.server.max_header_bytes < 8192 {
            return invalid("server.max_header_bytes must be at least 8192".into());
        }
        if self.server.lingering_timeout > Duration::from_secs(60) {
            return invalid("server.lingering_timeout must be at most 60s".into());
        }
        if !self.admin.listen.is_empty() && self.admin.listen.parse::<SocketAddr>().is_err() {
            return invalid(format!(
                "admin.listen {:?} is not an address",
                self.admin.listen
            ));
        }
        crate::client_addr::TrustedProxies::parse(&self.server.trusted_proxies)
            .map_err(ConfigError::Invalid)?;
        for (key, on) in [
            ("server.proxy_protocol", self.server.proxy_protocol),
            ("tls.proxy_protocol", self.tls.proxy_protocol),
        ] {
            if on && self.server.trusted_proxies.is_empty() {
                return invalid(format!(
                    "{key} needs server.trusted_proxies: PROXY headers are accepted only from them"
                ));
            }
        }
        if self.tls.enabled && self.tls.certs.is_empty() {
            return invalid("tls.enabled needs at least one [[tls.certs]] pair".into());
        }
        if !matches!(self.tls.unknown_sni.as_str(), "default" | "refuse") {
            return invalid("tls.unknown_sni must be default or refuse".into());
        }
        self.registry
            .wake
            .validate()
            .map_err(ConfigError::Invalid)?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return invalid("log.format must be text or json".into());
        }
        if !matches!(
            self.registry.backend.as_str(),
            "static" | "redis" | "daytona"
        ) {
            return invalid(format!(
                "registry.backend {:?} is not supported (static, redis or daytona)",
                self.registry.backend
            ));
        }
        if !matches!(self.activity.sink.as_str(), "memory" | "redis" | "daytona") {
            return invalid(format!(
                "activity.sink {:?} is not supported (memory, redis or daytona)",
                self.activity.sink
            ));
        }
        let uses_daytona = self.registry.backend == "daytona" || self.activity.sink == "daytona";
        let api_url = self.daytona.api_url.trim_end_matches('/');
        if uses_daytona && !(api_url.starts_with("http://") && api_url.ends_with("/api")) {
            return invalid(format!(
                "daytona.api_url {:?} must be http://host[:port]/api",
                self.daytona.api_url
            ));
        }
        if uses_daytona && self.daytona.api_key.is_empty() {
            return invalid("daytona.api_key must be set".into());
        }
        self.auth
            .validate(&self.proxy.domains)
            .map_err(ConfigError::Invalid)?;
        self.ssh.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
    fn env_overrides_are_section_keys_only() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("SANDGATE_SERVER__LISTEN", "127.0.0.1:9999");
            jail.set_env("SANDGATE_CONFIG", "/some/file.toml");
            jail.set_env("SANDGATE_BIN", "/usr/bin/sandgate");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.server.listen.port(), 9999);
            Ok(())
        });
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../config/example.toml");
        let config = Config::from_toml_str(text).unwrap();
        assert_eq!(
            config.server.lingering_bytes,
            ServerConfig::default().lingering_bytes
        );
    }

    #[test]
    fn lingering_is_bounded() {
        let error = Config::from_toml_str("[server]\nlingering_timeout = \"2m\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("server.lingering_timeout"), "{error}");
    }
}
