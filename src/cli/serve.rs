//! The long-running commands: `sandgate serve` and `sandgate ssh-gateway` (signals, reload).

use std::path::{Path, PathBuf};

use tokio::signal::unix::{signal, SignalKind};

use crate::config::registry::Backend;
use crate::config::Config;
use crate::http::reload::ReloadReport;
use crate::metrics::build;

/// `sandgate serve`: runs the proxy until SIGTERM/SIGINT; SIGHUP (or the admin listener's
/// `POST /reload`) reloads; SIGUSR1 reopens the access log file (logrotate).
pub async fn serve(config: Config, path: Option<PathBuf>) -> Result<(), String> {
    let started_with = config.clone();
    let mut running = crate::start(config).await.map_err(|e| e.to_string())?;
    let _pid_file = PidFile::write(started_with.server.pid_file.as_deref())?;
    // Handle the signals before saying we listen: a SIGTERM or SIGHUP sent right after that line
    // would otherwise hit the default action and kill the process (no drain, no reload).
    let stop = stop_signal();
    let hangup = signal(SignalKind::hangup());
    let reopen = signal(SignalKind::user_defined1());
    // Scripts and tests read this line to learn the bound port (`listen = "127.0.0.1:0"`).
    println!("sandgate listening on http://{}", running.addr);
    if let Some(addr) = running.tls_addr {
        println!("sandgate listening on https://{addr}");
    }
    if let Some(addr) = running.admin_addr {
        println!("sandgate admin on http://{addr}");
    }
    log_startup(&started_with, path.as_deref(), &running);
    let shutdown = running.shutdown_token();
    let app = running.app.clone();
    let mut asked = running.reload_requests.take();
    tokio::spawn(async move {
        let Ok(mut hangup) = hangup else {
            return;
        };
        loop {
            let reply = tokio::select! {
                signal = hangup.recv() => match signal {
                    Some(()) => None,
                    None => return,
                },
                Some(reply) = next_request(&mut asked) => Some(reply),
            };
            let report = reload(&app, path.as_deref(), &started_with);
            if let Some(reply) = reply {
                let _ = reply.send(report);
            }
        }
    });
    let app = running.app.clone();
    tokio::spawn(async move {
        let Ok(mut reopen) = reopen else {
            return;
        };
        while reopen.recv().await.is_some() {
            if let Some(log) = &app.access_log {
                log.reopen();
            }
        }
    });
    stop.await;
    shutdown.cancel();
    running.wait().await;
    tracing::info!("sandgate stopped");
    Ok(())
}

/// The next reload the admin listener asks for (never, without an admin listener).
async fn next_request(
    asked: &mut Option<tokio::sync::mpsc::Receiver<crate::http::reload::ReloadRequest>>,
) -> Option<crate::http::reload::ReloadRequest> {
    match asked {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// One line that says what runs: version, config, registry, listeners. Values are plain words
/// (`tls=off`), never `Some(…)`/`None`.
fn log_startup(config: &Config, path: Option<&Path>, running: &crate::Running) {
    let config_path = path.map_or_else(
        || "built-in defaults".to_string(),
        |p| p.display().to_string(),
    );
    let or_off =
        |addr: Option<std::net::SocketAddr>| addr.map_or("off".to_string(), |a| a.to_string());
    let backend = backend_name(config.registry.backend);
    let (runners, sandboxes) = match config.registry.backend {
        Backend::Static => (
            config.registry.runners.len().to_string(),
            config.registry.sandboxes.len().to_string(),
        ),
        _ => ("-".into(), "-".into()),
    };
    tracing::info!(
        version = build::VERSION,
        commit = build::COMMIT,
        config = ?config_path,
        registry = backend,
        runners = %runners,
        sandboxes = %sandboxes,
        listen = %running.addr,
        tls = %or_off(running.tls_addr),
        admin = %or_off(running.admin_addr),
        "sandgate started"
    );
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Static => "static",
        Backend::Redis => "redis",
        Backend::Daytona => "daytona",
    }
}

/// `server.pid_file`: written at start, removed when `serve` ends.
struct PidFile(Option<PathBuf>);

impl PidFile {
    fn write(path: Option<&Path>) -> Result<PidFile, String> {
        let Some(path) = path.filter(|p| !p.as_os_str().is_empty()) else {
            return Ok(PidFile(None));
        };
        // Written aside and renamed in place: a reader never sees half a pid, and a symlink
        // planted at the path is replaced rather than followed.
        let error =
            |e: std::io::Error| format!("server.pid_file: cannot write {}: {e}", path.display());
        let aside = path.with_extension("pid.new");
        std::fs::write(&aside, format!("{}\n", std::process::id())).map_err(error)?;
        std::fs::rename(&aside, path).map_err(error)?;
        Ok(PidFile(Some(path.to_path_buf())))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `sandgate reload --pid-file FILE`: sends SIGHUP to the process named in FILE.
pub fn signal_reload(pid_file: &Path) -> Result<(), String> {
    use nix::sys::signal::{kill, Signal};
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read {}: {e}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| format!("{} does not hold a process id", pid_file.display()))?;
    // A pid file left by a crash may name a process that has since reused the pid: SIGHUP
    // would kill most programs, so only a sandgate is signalled.
    if let Ok(name) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        if !name.trim().starts_with("sandgate") {
            return Err(format!(
                "process {pid} (from {}) is {:?}, not sandgate: a stale pid file? not signalled",
                pid_file.display(),
                name.trim()
            ));
        }
    }
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP).map_err(|e| {
        format!(
            "cannot signal process {pid} (from {}): {e}; is sandgate running?",
            pid_file.display()
        )
    })?;
    println!("sent SIGHUP to sandgate (pid {pid}); its log reports what was reloaded");
    Ok(())
}

/// `sandgate ssh-gateway`: runs the SSH gateway until SIGTERM/SIGINT.
pub async fn ssh_gateway(config: Config) -> Result<(), String> {
    let running = crate::app::start_ssh_gateway(config)
        .await
        .map_err(|e| e.to_string())?;
    let stop = stop_signal();
    println!("sandgate ssh gateway listening on {}", running.addr);
    if let Some(addr) = running.admin_addr {
        println!("sandgate admin on http://{addr}");
    }
    tracing::info!(addr = %running.addr, "sandgate ssh gateway listening");
    let shutdown = running.shutdown_token();
    stop.await;
    shutdown.cancel();
    running.wait().await;
    Ok(())
}

/// Keys a reload applies (prefixes of key paths), when this process has the part they
/// configure: everything else that changed needs a restart.
fn reloadable(app: &crate::proxy::App) -> Vec<&'static str> {
    let mut keys = vec!["pages"];
    if app.static_registry.is_some() {
        keys.extend([
            "registry.runners",
            "registry.sandboxes",
            "registry.api_keys",
            "registry.signed_previews",
            "registry.ssh_tokens",
        ]);
    }
    // With TLS off at start there is no listener to give certificates to.
    if app.certs.is_some() {
        keys.push("tls.certs");
    }
    keys
}

/// Reloads what can change without a restart: the static registry and the TLS certificates.
/// Each part is swapped whole or not at all; a bad file leaves the one in force. Changed keys
/// that only a restart applies are logged (and reported) by name.
fn reload(app: &crate::proxy::App, path: Option<&Path>, running: &Config) -> ReloadReport {
    let mut report = ReloadReport::default();
    let config = match Config::load(path) {
        Ok(mut config) => {
            if let Some(threads) = super::worker_threads() {
                config.server.threads = threads;
            }
            config
        }
        Err(e) => {
            tracing::error!(error = ?e.to_string(), "reload rejected; the previous configuration stays in force");
            report.errors.push(e.to_string());
            return report;
        }
    };
    if let Some(registry) = &app.static_registry {
        match registry.reload(&config.registry) {
            Ok(n) => {
                app.resolver.invalidate(None);
                app.auth.clear_cache();
                tracing::info!(sandboxes = n, "static registry reloaded");
                report.applied.push("registry".into());
            }
            Err(e) => {
                tracing::error!(error = ?e, "registry reload rejected; the previous registry stays in force");
                report.errors.push(e);
            }
        }
    }
    if let Some(certs) = &app.certs {
        match certs.reload(&config.tls) {
            Ok(()) => {
                tracing::info!("TLS certificates reloaded");
                report.applied.push("tls.certs".into());
            }
            Err(e) => {
                tracing::error!(error = ?e, "certificate reload rejected; the previous certificates stay in force");
                report.errors.push(e);
            }
        }
    }
    match app.pages.reload(&config.pages) {
        Ok(()) => {
            if config.pages.dir.is_some() {
                tracing::info!("error page templates reloaded");
                report.applied.push("pages".into());
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "page templates reload rejected; the previous pages stay in force");
            report.errors.push(e.to_string());
        }
    }
    let reloadable = reloadable(app);
    report.needs_restart = changed_keys(running, &config)
        .into_iter()
        .filter(|key| !reloadable.iter().any(|r| is_under(key, r)))
        .collect();
    if !report.needs_restart.is_empty() {
        tracing::warn!(
            keys = ?report.needs_restart.join(", "),
            "changed keys need a restart to apply; they keep their running values until then"
        );
    }
    report
}

/// `key` is `prefix` or a key below it (`registry.sandboxes[2].id` under `registry.sandboxes`).
fn is_under(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The key paths whose values differ between `old` and `new` (tables compared key by key;
/// a list is one value).
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return Vec::new();
    };
    let mut changed = Vec::new();
    diff("", &old, &new, &mut changed);
    changed
}

fn diff(path: &str, old: &serde_json::Value, new: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(old), Value::Object(new)) => {
            let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let child = match path {
                    "" => key.clone(),
                    _ => format!("{path}.{key}"),
                };
                let missing = Value::Null;
                diff(
                    &child,
                    old.get(key).unwrap_or(&missing),
                    new.get(key).unwrap_or(&missing),
                    out,
                );
            }
        }
        (old, new) if old != new => out.push(path.to_string()),
        _ => {}
    }
}

/// Registers the SIGTERM and SIGINT handlers now; the future resolves when one arrives.
pub(super) fn stop_signal() -> impl std::future::Future<Output = ()> {
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        tracing::info!("stop signal received");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_named_by_path_and_reloadable_ones_recognised() {
        let old = Config::default();
        let mut new = Config::default();
        new.server.listen = "127.0.0.1:9999".parse().unwrap();
        new.log.level = "debug".into();
        new.admin.token = Some("t".into());
        assert_eq!(
            changed_keys(&old, &new),
            ["admin.token", "log.level", "server.listen"]
        );
        for (key, prefix, under) in [
            ("registry.sandboxes", "registry.sandboxes", true),
            ("registry.sandboxes[1].id", "registry.sandboxes", true),
            ("registry.sandboxes_x", "registry.sandboxes", false),
            ("tls.certs", "tls.certs", true),
            ("tls.listen", "tls.certs", false),
        ] {
            assert_eq!(is_under(key, prefix), under, "{key} under {prefix}");
        }
    }
}
