//! Configuration: one TOML file, every key overridable by `SANDGATE_<SECTION>__<KEY>` env vars.
//!
//! Every section's type lives here, one file per section, so the modules a section configures
//! import it from here and this module imports nothing above `base`.

pub mod acme;
pub mod activity;
pub mod auth;
pub mod identity;
pub mod listen;
pub mod pages;
pub mod redact;
pub mod registry;
pub mod server;
pub mod source;
pub mod ssh;
pub mod tls;
pub mod wake;

use std::path::Path;
use std::time::Duration;

use figment::error::Kind;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use acme::{AcmeConfig, CertStorageKind, ChallengeKind, Dns01Config, DomainsConfig};
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
pub use source::{ConfigError, Problem, Source};
pub use ssh::SshConfig;
pub use tls::{CertPair, TlsConfig};
pub use wake::{StartBackend, WakeConfig};

/// The top-level sections (what a key path in an error message starts with).
pub const SECTIONS: &[&str] = &[
    "server", "proxy", "tls", "admin", "registry", "activity", "redis", "daytona", "log", "auth",
    "ssh", "identity", "pages", "domains", "acme",
];

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
    /// Custom domains: hosts the registry maps to a sandbox's port.
    pub domains: DomainsConfig,
    /// Certificates obtained on demand (ACME) for verified custom domains.
    pub acme: AcmeConfig,
}

impl Config {
    /// Loads defaults, then the TOML file (if any), then `SANDGATE_*` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_source(&Source::read(file)?)
    }

    /// [`Config::load`] from a source already read (its text locates the errors).
    pub fn load_source(source: &Source) -> Result<Config, ConfigError> {
        Config::parse(source)?.checked(source)
    }

    /// The config of `source` with the `SANDGATE_*` overrides, paths resolved, not yet checked
    /// (`app::check` checks it whole, collecting every problem).
    pub fn parse(source: &Source) -> Result<Config, ConfigError> {
        // Only SECTION__KEY names are overrides: SANDGATE_CONFIG (the --config flag) and other
        // SANDGATE_* variables of scripts are not config keys.
        let overrides = Env::prefixed("SANDGATE_")
            .filter(|key| key.as_str().contains("__"))
            .split("__");
        Config::extract(source, Some(overrides))
    }

    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let source = Source::text(text);
        Config::extract(&source, None)?.checked(&source)
    }

    fn extract(source: &Source, overrides: Option<Env>) -> Result<Config, ConfigError> {
        let file = Toml::string(source.contents());
        let file_name = figment::Provider::metadata(&file).name;
        let mut figment = Figment::from(Serialized::defaults(Config::default())).merge(file);
        if let Some(overrides) = overrides {
            figment = figment.merge(overrides);
        }
        let mut config: Config = figment
            .extract()
            .map_err(|e| source.errors(figment_problems(e, source)))?;
        if let Some(dir) = source.dir() {
            // Only what the file itself says: a default or a `SANDGATE_*` value was not
            // written next to the file, so it keeps meaning the working directory.
            let from_file = |key: &str| {
                figment
                    .find_metadata(key)
                    .is_some_and(|m| m.name == file_name)
            };
            config.resolve_paths(&dir, from_file);
        }
        Ok(config)
    }

    fn checked(self, source: &Source) -> Result<Config, ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            return Ok(self);
        }
        Err(source.errors(problems.into_iter().map(|m| source.problem(m)).collect()))
    }

    /// Relative paths the config file writes name files next to it, wherever sandgate was
    /// started from. `from_file(key)`: the file, not a default or an override, set `key`.
    fn resolve_paths(&mut self, dir: &Path, from_file: impl Fn(&str) -> bool) {
        let resolve = |key: &str, path: &mut std::path::PathBuf| {
            if from_file(key) && path.is_relative() && !path.as_os_str().is_empty() {
                *path = dir.join(&*path);
            }
        };
        for pair in &mut self.tls.certs {
            resolve("tls.certs", &mut pair.cert);
            resolve("tls.certs", &mut pair.key);
        }
        for key in &mut self.identity.keys {
            resolve("identity.keys", &mut key.private_key_file);
        }
        resolve("ssh.host_key", &mut self.ssh.host_key);
        resolve("ssh.upstream_key", &mut self.ssh.upstream_key);
        if let server::AccessOutput::File(path) = &mut self.log.access_output {
            resolve("log.access_output", path);
        }
        if let Some(path) = &mut self.pages.dir {
            resolve("pages.dir", path);
        }
        if let Some(path) = &mut self.server.pid_file {
            resolve("server.pid_file", path);
        }
        resolve("acme.dir", &mut self.acme.dir);
        if let Some(path) = &mut self.acme.ca_root {
            resolve("acme.ca_root", path);
        }
        if let Some(path) = &mut self.acme.encryption_key_file {
            resolve("acme.encryption_key_file", path);
        }
        if let Some(path) = &mut self.acme.dns01.hook {
            resolve("acme.dns01.hook", path);
        }
        let ca = &mut self.auth.extra_ca_file;
        if from_file("auth.extra_ca_file") && !ca.is_empty() && Path::new(ca.as_str()).is_relative()
        {
            *ca = dir.join(ca.as_str()).to_string_lossy().into_owned();
        }
    }

    /// Every shape problem of the config, each message starting with the key at fault.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |result: Result<(), String>| {
            if let Err(message) = result {
                problems.push(message);
            }
        };
        check(self.check_domains());
        check(self.check_server());
        for (key, on) in [
            ("server.proxy_protocol", self.server.proxy_protocol),
            ("tls.proxy_protocol", self.tls.proxy_protocol),
        ] {
            if on && self.server.trusted_proxies.is_empty() {
                check(Err(format!(
                    "{key} needs server.trusted_proxies: PROXY headers are accepted only from them"
                )));
            }
        }
        if self.tls.enabled && self.tls.certs.is_empty() {
            check(Err(
                "tls.enabled needs at least one [[tls.certs]] pair (cert = \"….pem\", key = \"….key\")"
                    .into(),
            ));
        }
        if !matches!(self.tls.unknown_sni.as_str(), "default" | "refuse") {
            check(Err("tls.unknown_sni must be default or refuse".into()));
        }
        check(self.registry.wake.validate());
        check(self.log.validate());
        check(self.check_wake_backend());
        check(self.activity.validate());
        check(self.check_daytona());
        check(self.auth.validate(&self.proxy.domains));
        check(self.ssh.validate());
        check(self.identity.validate());
        check(self.domains.validate());
        check(self.acme.validate(&self.domains, self.tls.enabled));
        problems
    }

    fn check_domains(&self) -> Result<(), String> {
        if self.proxy.domains.is_empty() {
            return Err("proxy.domains must list at least one preview domain".into());
        }
        for (i, d) in self.proxy.domains.iter().enumerate() {
            if let Some(base) = d.strip_prefix("*.") {
                return Err(format!(
                    "proxy.domains[{i}]: {d:?} is a wildcard: write the base domain: {base} \
                     (previews are <port>-<sandbox>.{base})"
                ));
            }
            if d.is_empty() || d.starts_with('.') || d.contains(['/', ':', ' ', '*']) {
                return Err(format!(
                    "proxy.domains[{i}]: {d:?} is not a domain name (e.g. \"preview.example.com\")"
                ));
            }
        }
        Ok(())
    }

    fn check_server(&self) -> Result<(), String> {
        if self.server.max_header_bytes < 8192 {
            return Err("server.max_header_bytes must be at least 8192".into());
        }
        if self.server.threads > 1024 {
            return Err("server.threads must be at most 1024 (0: one per CPU)".into());
        }
        if self.server.lingering_timeout > Duration::from_secs(60) {
            return Err("server.lingering_timeout must be at most 60s".into());
        }
        server::parse_trusted_proxies(&self.server.trusted_proxies).map(|_| ())
    }

    fn check_wake_backend(&self) -> Result<(), String> {
        let wake_backend = self.registry.wake.start_backend();
        let wake_registry = match wake_backend {
            wake::StartBackend::Daytona => Some(registry::Backend::Daytona),
            wake::StartBackend::Redis => Some(registry::Backend::Redis),
            wake::StartBackend::Hook | wake::StartBackend::None => None,
        };
        if wake_registry.is_some_and(|needed| needed != self.registry.backend) {
            let name = format!("{wake_backend:?}").to_lowercase();
            return Err(format!(
                "registry.wake.backend = {name:?} needs registry.backend = {name:?}: only that registry sees the sandbox start",
            ));
        }
        Ok(())
    }

    fn check_daytona(&self) -> Result<(), String> {
        let uses_daytona = self.registry.backend == registry::Backend::Daytona
            || self.activity.sink == activity::Sink::Daytona
            || self.registry.wake.start_backend() == wake::StartBackend::Daytona;
        if !uses_daytona {
            return Ok(());
        }
        let api_url = self.daytona.api_url.trim_end_matches('/');
        if !(api_url.starts_with("http://") && api_url.ends_with("/api")) {
            return Err(format!(
                "daytona.api_url {:?} must be http://host[:port]/api",
                redact::shown_url(&self.daytona.api_url)
            ));
        }
        if self.daytona.api_key.is_empty() {
            return Err("daytona.api_key must be set".into());
        }
        Ok(())
    }
}

/// figment's errors as problems: the key path without figment's `default.` profile, the line,
/// and for an unknown key the closest known one.
fn figment_problems(error: figment::Error, source: &Source) -> Vec<Problem> {
    error
        .into_iter()
        .map(|e| figment_problem(&e, source))
        .collect()
}

fn figment_problem(error: &figment::Error, source: &Source) -> Problem {
    let mut key = key_path(&error.path);
    let what = match &error.kind {
        Kind::UnknownField(field, expected) => {
            key = with_field(&error.path, key, field);
            format!("unknown key{}", suggestion(field, expected, "known keys"))
        }
        Kind::MissingField(field) => {
            key = with_field(&error.path, key, field);
            "is required".into()
        }
        _ if holds_secret(&key) => secret_problem(&error.kind),
        Kind::UnknownVariant(value, expected) => format!(
            "unknown value {value:?}{}",
            suggestion(value, expected, "expected one of")
        ),
        kind if key.is_empty() => without_secret_lines(&kind.to_string()),
        kind => kind.to_string(),
    };
    let from_env = error
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    if from_env {
        let variable = format!("SANDGATE_{}", key.replace('.', "__").to_uppercase());
        let message = format!("{key}: {what} (set by the environment variable {variable})");
        return Problem {
            key: Some(key),
            line: None,
            message,
        };
    }
    if key.is_empty() {
        return Problem {
            key: None,
            line: syntax_error_line(&what),
            message: what,
        };
    }
    let message = format!("{key}: {what}");
    source.problem_at(Some(key), message)
}

/// The key's last name is a secret's (`cookie_keys`, `registry.wake.api_key`).
fn holds_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    redact::is_secret_key(last.split('[').next().unwrap_or(last))
}

/// What is wrong with a secret's value, without the value (figment's message quotes it).
fn secret_problem(kind: &Kind) -> String {
    match kind {
        Kind::InvalidType(_, expected) => format!("invalid type: expected {expected}"),
        Kind::InvalidValue(_, expected) => format!("invalid value: expected {expected}"),
        Kind::InvalidLength(len, expected) => format!("invalid length {len}, expected {expected}"),
        Kind::UnknownVariant(_, expected) => format!(
            "unknown value (not shown: a secret); expected one of: {}",
            expected.join(", ")
        ),
        _ => "invalid value (not shown: a secret)".into(),
    }
}

/// A TOML syntax error with the lines it quotes (`3 | api_key = "abc`) cleaned: a secret key's
/// value redacted, a URL's password hidden.
fn without_secret_lines(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for line in message.lines() {
        match line.split_once(" | ") {
            Some((number, text)) if number.trim().parse::<usize>().is_ok() => {
                out.push_str(number);
                out.push_str(" | ");
                out.push_str(&without_secret(text));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

/// One line of TOML source: `key = <redacted>` when the key is a secret's, else the line with
/// any URL password hidden.
fn without_secret(text: &str) -> String {
    match text.split_once('=') {
        Some((key, _)) if holds_secret(key.trim().trim_matches(['"', '\''])) => {
            format!("{} = {}", key.trim_end(), redact::REDACTED)
        }
        _ => redact::shown_url(text),
    }
}

/// `key` ending in `field` (figment's path sometimes has it already, sometimes not).
fn with_field(path: &[String], key: String, field: &str) -> String {
    match path.last() {
        Some(last) if last == field => key,
        _ => join_key(&key, field),
    }
}

/// The line of a TOML syntax error ("TOML parse error at line 3, column 7").
fn syntax_error_line(message: &str) -> Option<usize> {
    let rest = message.split_once("at line ")?.1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// figment's path (`registry`, `sandboxes`, `2`, `runner`) as `registry.sandboxes[2].runner`.
fn key_path(path: &[String]) -> String {
    path.iter()
        .fold(String::new(), |key, part| join_key(&key, part))
}

fn join_key(key: &str, part: &str) -> String {
    match (key.is_empty(), part.parse::<usize>()) {
        (_, Ok(index)) => format!("{key}[{index}]"),
        (true, Err(_)) => part.to_string(),
        (false, Err(_)) => format!("{key}.{part}"),
    }
}

/// `; did you mean `listen`?` when a known name is a typo away, else the known names.
fn suggestion(field: &str, expected: &[&str], known_names: &str) -> String {
    let closest = expected
        .iter()
        .map(|known| (edit_distance(field, known), *known))
        .min();
    match closest {
        Some((distance, known)) if distance <= (field.len() / 3).max(2) => {
            format!("; did you mean `{known}`?")
        }
        _ if expected.is_empty() => String::new(),
        _ => format!("; {known_names}: {}", expected.join(", ")),
    }
}

/// Levenshtein distance (keys are short: the quadratic table is fine).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
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
