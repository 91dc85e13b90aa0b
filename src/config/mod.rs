//! Configuration: one TOML file, every key overridable by `SANDGATE_<SECTION>__<KEY>` env vars.
//!
//! Every section's type lives here, one file per section, so the modules a section configures
//! import it from here and this module imports nothing above `base`.

pub mod activity;
pub mod auth;
pub mod identity;
pub mod pages;
pub mod registry;
pub mod server;
pub mod ssh;
pub mod tls;
pub mod wake;

use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use activity::ActivityConfig;
pub use auth::{AuthConfig, JwtConfig, OidcConfig};
pub use identity::IdentityConfig;
pub use pages::PagesConfig;
pub use registry::{
    ApiKeyEntry, CacheConfig, CorsMode, DaytonaConfig, PortAccess, PortsMode, Protocol,
    RedisConfig, RegistryConfig, RunnerEntry, SandboxEntry, ScopedTokenEntry, SignedPreviewEntry,
    SshTokenEntry,
};
pub use server::{AdminConfig, LogConfig, ProxyConfig, ServerConfig};
pub use ssh::SshConfig;
pub use tls::{CertPair, TlsConfig};
pub use wake::{StartBackend, WakeConfig};

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
    pub tls: TlsConfig,
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
    pub auth: AuthConfig,
    /// The SSH gateway (`sandgate ssh-gateway`).
    pub ssh: SshConfig,
    /// The signed identity header for apps (`X-Sandgate-Identity`).
    pub identity: IdentityConfig,
    /// The operator's error page templates.
    pub pages: PagesConfig,
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
        if self.server.max_header_bytes < 8192 {
            return invalid("server.max_header_bytes must be at least 8192".into());
        }
        if self.server.threads > 1024 {
            return invalid("server.threads must be at most 1024 (0: one per CPU)".into());
        }
        if self.server.lingering_timeout > Duration::from_secs(60) {
            return invalid("server.lingering_timeout must be at most 60s".into());
        }
        server::parse_trusted_proxies(&self.server.trusted_proxies)
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
        self.log.validate().map_err(ConfigError::Invalid)?;
        let wake_backend = self.registry.wake.start_backend();
        let wake_registry = match wake_backend {
            wake::StartBackend::Daytona => Some(registry::Backend::Daytona),
            wake::StartBackend::Redis => Some(registry::Backend::Redis),
            wake::StartBackend::Hook | wake::StartBackend::None => None,
        };
        if wake_registry.is_some_and(|needed| needed != self.registry.backend) {
            return invalid(format!(
                "registry.wake.backend = {:?} needs registry.backend = {:?}: only that registry sees the sandbox start",
                format!("{wake_backend:?}").to_lowercase(),
                format!("{wake_backend:?}").to_lowercase(),
            ));
        }
        self.activity.validate().map_err(ConfigError::Invalid)?;
        let uses_daytona = self.registry.backend == registry::Backend::Daytona
            || self.activity.sink == activity::Sink::Daytona
            || self.registry.wake.start_backend() == wake::StartBackend::Daytona;
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
        self.identity.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

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
        let text = include_str!("../../config/example.toml");
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

    #[test]
    fn the_request_log_is_bounded_and_errors_name_the_key() {
        for (toml, key) in [
            ("requests_per_sandbox = 100001", "log.requests_per_sandbox"),
            ("request_log_sandboxes = 0", "log.request_log_sandboxes"),
            (
                "requests_per_sandbox = 100000\nrequest_log_sandboxes = 100000",
                "log.request_log_sandboxes",
            ),
        ] {
            let error = error_of(&format!("[log]\n{toml}\n"));
            assert!(error.contains(key), "{toml}: {error}");
        }
        let off = Config::from_toml_str("[log]\nrequests_per_sandbox = 0\n").unwrap();
        assert_eq!(off.log.requests_per_sandbox, 0);
    }

    fn error_of(toml: &str) -> String {
        Config::from_toml_str(toml)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn typed_values_are_checked_at_load_and_errors_name_the_key() {
        for (toml, key) in [
            ("[registry]\nbackend = \"etcd\"\n", "registry.backend"),
            ("[activity]\nsink = \"kafka\"\n", "activity.sink"),
            ("[proxy]\npublic_scheme = \"ftp\"\n", "proxy.public_scheme"),
            ("[admin]\nlisten = \"localhost\"\n", "admin.listen"),
        ] {
            let error = error_of(toml);
            assert!(error.contains(key), "{toml}: {error}");
        }
        let config = Config::from_toml_str(
            "[registry]\nbackend = \"redis\"\n[activity]\nsink = \"daytona\"\n\
             [daytona]\napi_key = \"k\"\n[proxy]\npublic_scheme = \"https\"\n",
        )
        .unwrap();
        assert_eq!(config.registry.backend, registry::Backend::Redis);
        assert_eq!(config.activity.sink, activity::Sink::Daytona);
        assert_eq!(config.proxy.public_scheme, server::Scheme::Https);
    }

    #[test]
    fn admin_listen_is_an_address_or_empty_for_off() {
        assert_eq!(Config::default().admin.listen, None);
        assert_eq!(
            Config::from_toml_str("[admin]\nlisten = \"\"\n")
                .unwrap()
                .admin
                .listen,
            None
        );
        let on = Config::from_toml_str("[admin]\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        assert_eq!(
            on.admin.listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9000)))
        );
    }
}
