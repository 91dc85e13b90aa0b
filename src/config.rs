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
    pub registry: RegistryConfig,
    pub activity: ActivityConfig,
    pub log: LogConfig,
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
    /// Time a client gets to send a whole request head (slowloris guard).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Connections beyond this many wait in the kernel backlog.
    pub max_connections: usize,
    /// On SIGTERM/SIGINT, in-flight requests and streams get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 50_000,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
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
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `static`: the runners and sandboxes listed below.
    pub backend: String,
    pub runners: Vec<RunnerEntry>,
    pub sandboxes: Vec<SandboxEntry>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            backend: "static".into(),
            runners: Vec::new(),
            sandboxes: Vec::new(),
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
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
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
        figment = figment.merge(Env::prefixed("SANDGATE_").split("__"));
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
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return invalid("log.format must be text or json".into());
        }
        if self.registry.backend != "static" {
            return invalid(format!(
                "registry.backend {:?} is not supported (supported: static)",
                self.registry.backend
            ));
        }
        Ok(())
    }
}
