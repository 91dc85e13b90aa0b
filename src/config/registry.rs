//! `[registry]` (with its cache and the static backend's lists), `[redis]` and `[daytona]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::WakeConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `static` (the runners and sandboxes listed below), `redis` or `daytona`.
    pub backend: Backend,
    pub cache: CacheConfig,
    /// Optional start hook for sandboxes that are not running (off by default).
    pub wake: WakeConfig,
    pub runners: Vec<RunnerEntry>,
    pub sandboxes: Vec<SandboxEntry>,
    /// API keys (static backend): `key` or `key_sha256` (hex) → `organization`.
    pub api_keys: Vec<ApiKeyEntry>,
    /// Signed preview tokens (static backend).
    pub signed_previews: Vec<SignedPreviewEntry>,
    /// SSH access tokens (static backend): `token` or `token_sha256` (hex) → `sandbox`.
    pub ssh_tokens: Vec<SshTokenEntry>,
    /// Custom domains (static backend): `host` → `sandbox` + `port`; see docs/domains.md.
    pub domains: Vec<DomainEntry>,
}

/// `[[registry.domains]]`: a custom domain of the static backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEntry {
    pub host: String,
    pub sandbox: String,
    pub port: u16,
    /// Prepended to the request path, e.g. `/app`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// `verified` or `pending` (default).
    #[serde(default)]
    pub state: Option<String>,
    /// While pending: `dns` (default: the TXT record `_sandgate-challenge.<host>` must hold
    /// `token`) or `control-plane`.
    #[serde(default)]
    pub verification: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
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
            backend: Backend::Static,
            cache: CacheConfig::default(),
            wake: WakeConfig::default(),
            runners: Vec::new(),
            sandboxes: Vec::new(),
            api_keys: Vec::new(),
            signed_previews: Vec::new(),
            ssh_tokens: Vec::new(),
            domains: Vec::new(),
        }
    }
}

/// `registry.backend`: where sandboxes, runners and credentials are looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The runners, sandboxes and credentials listed in the config file.
    #[default]
    Static,
    /// Daytona-compatible keys in Redis.
    Redis,
    /// The Daytona-compatible control-plane API.
    Daytona,
}

/// The in-process cache in front of every registry backend (`registry::Resolver`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
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
    pub protocol: Protocol,
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
    pub cors: CorsMode,
    /// Requests opened by a user's credential carry `X-Sandgate-Identity` (needs `[identity]`).
    #[serde(default)]
    pub identity: bool,
    /// A request may wake the sandbox when it is not running (`[registry.wake]`).
    #[serde(default = "default_true")]
    pub wake: bool,
    /// The `Host` the app sees, with `${PORT}` and `${SANDBOX}` (e.g. `localhost:${PORT}`).
    #[serde(default)]
    pub upstream_host: Option<String>,
    /// Per port (`{ "3000" = "..." }`), before `upstream_host`.
    #[serde(default)]
    pub upstream_hosts: std::collections::BTreeMap<String, String>,
    /// `all` (default: a port without an entry follows `public`) or `declared` (it is not
    /// exposed: 404 `PORT_NOT_EXPOSED`).
    #[serde(default)]
    pub ports: PortsMode,
    /// Port (a string, as TOML keys are) → `public` or `private`. Reserved ports are refused.
    #[serde(default)]
    pub port_access: std::collections::BTreeMap<String, PortAccess>,
    /// Preview tokens bound to a few ports (`auth_token` opens every port).
    #[serde(default)]
    pub preview_tokens: Vec<ScopedTokenEntry>,
}

/// A port-scoped preview token: `token` or `token_sha256` (hex), and its ports.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedTokenEntry {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_sha256: Option<String>,
    pub ports: Vec<u16>,
}

fn default_ssh_port() -> u16 {
    22
}

fn default_true() -> bool {
    true
}

fn default_state() -> String {
    "started".into()
}

/// How an upstream speaks HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plaintext (gRPC apps); upgrades still use HTTP/1.1.
    H2c,
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Protocol, String> {
        match s {
            "http1" => Ok(Protocol::Http1),
            "h2c" => Ok(Protocol::H2c),
            other => Err(format!("protocol {other:?} must be \"http1\" or \"h2c\"")),
        }
    }
}

/// Who handles CORS for a sandbox's previews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CorsMode {
    /// The proxy answers preflights and allows credentialed CORS only for the sandbox's own
    /// origins (any port) and the configured `auth.cors_allowed_origins`.
    #[default]
    Managed,
    /// The proxy adds and answers nothing: preflights reach the app (after authentication, like
    /// any request) and the app's own CORS headers reach the client untouched.
    Passthrough,
}

impl std::str::FromStr for CorsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<CorsMode, String> {
        match s {
            "managed" => Ok(CorsMode::Managed),
            "passthrough" => Ok(CorsMode::Passthrough),
            other => Err(format!(
                "cors {other:?} must be \"managed\" or \"passthrough\""
            )),
        }
    }
}

/// How one declared port may be entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortAccess {
    /// Anyone, even on a private sandbox.
    Public,
    /// Any valid credential of the sandbox, even on a public sandbox.
    Private,
}

impl std::str::FromStr for PortAccess {
    type Err = String;

    fn from_str(s: &str) -> Result<PortAccess, String> {
        match s {
            "public" => Ok(PortAccess::Public),
            "private" => Ok(PortAccess::Private),
            other => Err(format!("must be public or private, not {other:?}")),
        }
    }
}

impl PortAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            PortAccess::Public => "public",
            PortAccess::Private => "private",
        }
    }
}

/// What a port without an entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortsMode {
    /// It follows the sandbox's `public` flag (the behaviour without a policy).
    #[default]
    All,
    /// It is not exposed: 404 `PORT_NOT_EXPOSED`, even on a public sandbox.
    Declared,
}

impl std::str::FromStr for PortsMode {
    type Err = String;

    fn from_str(s: &str) -> Result<PortsMode, String> {
        match s {
            "all" => Ok(PortsMode::All),
            "declared" => Ok(PortsMode::Declared),
            other => Err(format!("must be all or declared, not {other:?}")),
        }
    }
}

impl PortsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PortsMode::All => "all",
            PortsMode::Declared => "declared",
        }
    }
}
