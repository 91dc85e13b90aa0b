//! The one check `serve` and `check-config` share: everything `serve` would refuse before it
//! binds a port (the config's shape, the static registry's cross-references, the certificate,
//! key and log files), every problem collected, each pointing at its key and line.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::registry::Backend;
use crate::config::{Config, ConfigError, Source};

/// What a config that passed the check will run, for the `OK:` line.
#[derive(Debug, Clone)]
pub struct Summary {
    pub backend: Backend,
    pub runners: usize,
    pub sandboxes: usize,
    /// (scheme or role, address): `http`, `https`, `admin`.
    pub listeners: Vec<(&'static str, SocketAddr)>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.backend {
            Backend::Static => write!(f, "{} runners, {} sandboxes", self.runners, self.sandboxes)?,
            Backend::Redis => f.write_str("registry redis")?,
            Backend::Daytona => f.write_str("registry daytona")?,
        }
        f.write_str(", listeners")?;
        for (i, (role, addr)) in self.listeners.iter().enumerate() {
            let separator = if i == 0 { " " } else { ", " };
            write!(f, "{separator}{role} {addr}")?;
        }
        Ok(())
    }
}

/// Reads, loads and checks the config at `path` (the built-in defaults without one).
pub fn load_checked(path: Option<&Path>) -> Result<(Config, Summary), ConfigError> {
    let source = Source::read(path)?;
    let config = Config::parse(&source)?;
    let summary = check(&config, &source)?;
    Ok((config, summary))
}

/// Every problem `serve` would stop at before binding, or what the config will run.
pub fn check(config: &Config, source: &Source) -> Result<Summary, ConfigError> {
    let mut problems = config.problems();
    if config.registry.backend == Backend::Static {
        problems.extend(crate::registry::check_static(&config.registry));
    }
    if config.tls.enabled {
        problems.extend(certificate_problems(config));
    }
    // Auth (built there) loads the identity keys and the extra CA file.
    problems.extend(super::build_problems(config));
    if let Err(e) = access_log_file(config) {
        problems.push(e);
    }
    if let Err(e) = pid_file(config) {
        problems.push(e);
    }
    if let Err(e) = crate::http::pages::Pages::load(&config.pages) {
        problems.push(e.to_string());
    }
    if !problems.is_empty() {
        // The shape checks and the builders may find one problem twice (a CA file that does
        // not load): say it once.
        let mut seen = std::collections::HashSet::new();
        problems.retain(|p| seen.insert(p.clone()));
        return Err(source.errors(problems.into_iter().map(|m| source.problem(m)).collect()));
    }
    Ok(summary(config))
}

/// Each `[[tls.certs]]` pair loaded on its own, so every bad one is named by its index.
fn certificate_problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, pair) in config.tls.certs.iter().enumerate() {
        let one = crate::config::TlsConfig {
            certs: vec![pair.clone()],
            ..config.tls.clone()
        };
        if let Err(e) = crate::tls::CertResolver::new(&one, None) {
            let part = match e.starts_with(&pair.key.display().to_string()) {
                true => "key",
                false => "cert",
            };
            problems.push(format!("tls.certs[{i}].{part}: {e}"));
        }
    }
    problems
}

/// `log.access_output` as a file: writable if it exists, else its folder must (serve creates
/// it; the check does not).
fn access_log_file(config: &Config) -> Result<(), String> {
    let crate::config::server::AccessOutput::File(path) = &config.log.access_output else {
        return Ok(());
    };
    if !config.log.access {
        return Ok(());
    }
    writable("log.access_output", "open", path)
}

/// `server.pid_file`, written only once the listeners are bound: checked before.
fn pid_file(config: &Config) -> Result<(), String> {
    match config.server.pid_file.as_deref() {
        Some(path) if !path.as_os_str().is_empty() => writable("server.pid_file", "write", path),
        _ => Ok(()),
    }
}

/// `path` (the value of `key`) can be written: it exists and opens for appending (which
/// changes nothing), or its folder exists.
fn writable(key: &str, verb: &str, path: &Path) -> Result<(), String> {
    let cannot = |why: String| format!("{key}: cannot {verb} {}: {why}", path.display());
    if path.exists() {
        return std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map(|_| ())
            .map_err(|e| cannot(e.to_string()));
    }
    // A bare file name's folder is the working directory (`parent()` says "").
    let folder = match path.parent() {
        Some(folder) if folder.as_os_str().is_empty() => Some(Path::new(".")),
        folder => folder,
    };
    match folder {
        Some(folder) if folder.is_dir() => Ok(()),
        _ => Err(cannot("its folder does not exist".into())),
    }
}

fn summary(config: &Config) -> Summary {
    let mut listeners = vec![("http", config.server.listen)];
    if config.tls.enabled {
        listeners.push(("https", config.tls.listen));
    }
    if let Some(admin) = config.admin.listen {
        listeners.push(("admin", admin));
    }
    Summary {
        backend: config.registry.backend,
        runners: config.registry.runners.len(),
        sandboxes: config.registry.sandboxes.len(),
        listeners,
    }
}
