//! The long-running commands: `sandgate serve` and `sandgate ssh-gateway` (signals, reload).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::app::upgrade::{self, Handed, Inherited};
use crate::config::registry::Backend;
use crate::config::Config;
use crate::http::reload::ReloadReport;
use crate::metrics::build;

/// `sandgate serve`: runs the proxy until SIGTERM/SIGINT; SIGHUP (or the admin listener's
/// `POST /reload`) reloads; SIGUSR1 reopens the access log file (logrotate); SIGUSR2 upgrades
/// (starts the binary again, hands it the listeners, then drains as on SIGTERM).
pub async fn serve(config: Config, path: Option<PathBuf>) -> Result<(), String> {
    let started_with = config.clone();
    // Before anything slow: SIGUSR2's default action would kill the process.
    let upgrades = signal(SignalKind::user_defined2());
    // Now, while the path still names this binary: once the file is replaced, the kernel's
    // link (`/proc/self/exe`) names a deleted file, and the upgrade must run the new one.
    let exe = std::env::current_exe();
    let mut inherited = Inherited::from_env()
        .map_err(|e| format!("upgrade: cannot take over the old process's listeners: {e}"))?;
    let mut running = crate::app::start_inheriting(config, &mut inherited)
        .await
        .map_err(|e| e.to_string())?;
    let upgrading = inherited.is_upgrade();
    if upgrading {
        // This process already serves on the inherited sockets: whatever went wrong with the
        // old one (it died mid-handshake, it gave up on us), exiting now could leave no one
        // serving, so this process keeps serving.
        if let Err(error) = confirm_ready(inherited).await {
            tracing::warn!(%error, "upgrade: no go from the old process; serving anyway");
        }
    }
    let pid_file = PidFile::write(started_with.server.pid_file.as_deref());
    // After an upgrade the old process is draining: exiting now would leave no one serving.
    let _pid_file = match pid_file {
        Err(error) if upgrading => {
            tracing::error!(%error, "upgrade: serving without a pid file");
            PidFile(None)
        }
        other => other?,
    };
    upgrade::notify_systemd_ready();
    let stopping = Arc::new(AtomicBool::new(false));
    let upgraded = Upgrader {
        stopping: stopping.clone(),
        exe,
        args: std::env::args_os().skip(1).collect(),
        socket_dir: upgrade::socket_dir(started_with.server.pid_file.as_deref()),
        sockets: running.listening_sockets().map_err(|e| e.to_string())?,
    }
    .on_signal(upgrades);
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
    tokio::select! {
        () = stop => stopping.store(true, Ordering::Release),
        () = upgraded => {}
    }
    shutdown.cancel();
    running.wait().await;
    tracing::info!("sandgate stopped");
    Ok(())
}

/// Tells the old process this one serves, and waits for it to stop accepting.
async fn confirm_ready(mut inherited: Inherited) -> Result<(), String> {
    let confirmed = tokio::task::spawn_blocking(move || inherited.confirm_ready())
        .await
        .map_err(|e| e.to_string())?;
    confirmed.map_err(|e| format!("upgrade: the old process did not hand over: {e}"))?;
    tracing::info!("upgrade: the old process stops accepting; this one serves");
    Ok(())
}

/// What an upgrade needs: the binary and arguments this process was started with, where the
/// hand-over socket goes, and copies of the listening sockets.
struct Upgrader {
    /// Set when this process is told to stop: a hand-over under way is called off.
    stopping: Arc<AtomicBool>,
    exe: std::io::Result<PathBuf>,
    args: Vec<std::ffi::OsString>,
    socket_dir: PathBuf,
    sockets: Vec<Handed>,
}

impl Upgrader {
    /// Upgrades on each SIGUSR2, one at a time, until one succeeds: then resolves, and this
    /// process must stop accepting. A failed upgrade leaves it serving.
    async fn on_signal(self, upgrades: std::io::Result<Signal>) {
        let Ok(mut upgrades) = upgrades else {
            return std::future::pending().await;
        };
        while upgrades.recv().await.is_some() {
            tracing::info!("upgrade: starting the new process");
            match self.run().await {
                Ok(pid) => {
                    tracing::info!(pid, "upgrade: the new process serves; draining this one");
                    return;
                }
                Err(error) => {
                    tracing::error!(%error, "upgrade failed; this process keeps serving")
                }
            }
        }
        std::future::pending().await
    }

    async fn run(&self) -> Result<u32, String> {
        let exe = match &self.exe {
            Ok(exe) => exe.clone(),
            Err(e) => return Err(format!("the path of this binary is unknown: {e}")),
        };
        let sockets = self
            .sockets
            .iter()
            .map(|handed| {
                Ok(Handed {
                    key: handed.key,
                    addr: handed.addr,
                    socket: handed.socket.try_clone()?,
                })
            })
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        let stopping = self.stopping.clone();
        upgrade::hand_over(
            sockets,
            exe,
            self.args.clone(),
            self.socket_dir.clone(),
            stopping,
        )
        .await
        .map_err(|e| e.to_string())
    }
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
        let aside = path.with_extension(format!("pid.{}", std::process::id()));
        let _ = std::fs::remove_file(&aside);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&aside)
            .map_err(error)?;
        std::io::Write::write_all(&mut file, format!("{}\n", std::process::id()).as_bytes())
            .map_err(error)?;
        std::fs::rename(&aside, path).map_err(error)?;
        Ok(PidFile(Some(path.to_path_buf())))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // After an upgrade the file names the new process: it is left to that one.
        if let Some(path) = &self.0 {
            if read_pid(path).ok() == Some(std::process::id() as i32) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn read_pid(pid_file: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read {}: {e}", pid_file.display()))?;
    text.trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| format!("{} does not hold a process id", pid_file.display()))
}

/// `sandgate reload --pid-file FILE`: sends SIGHUP to the process named in FILE.
pub fn signal_reload(pid_file: &Path) -> Result<(), String> {
    use nix::sys::signal::Signal;
    let pid = signal_sandgate(pid_file, Signal::SIGHUP)?;
    println!("sent SIGHUP to sandgate (pid {pid}); its log reports what was reloaded");
    Ok(())
}

/// `sandgate upgrade --pid-file FILE`: sends SIGUSR2 to the process named in FILE and waits
/// until FILE names the new process (success), or the upgrade visibly failed.
pub fn signal_upgrade(pid_file: &Path) -> Result<(), String> {
    use nix::sys::signal::Signal;
    let old = signal_sandgate(pid_file, Signal::SIGUSR2)?;
    println!("sent SIGUSR2 to sandgate (pid {old}); waiting for the new process");
    let socket = upgrade::socket_dir(Some(pid_file)).join(format!("sandgate-upgrade-{old}.sock"));
    let deadline = Instant::now() + upgrade::READY_WITHIN + Duration::from_secs(10);
    let failed =
        |why: &str| format!("upgrade failed: {why}; pid {old} keeps serving (its log says why)");
    let mut socket_seen = None;
    loop {
        match read_pid(pid_file) {
            Ok(new) if new != old => {
                println!("upgraded: pid {new} serves; pid {old} drains its connections and exits");
                return Ok(());
            }
            _ => {}
        }
        if !Path::new(&format!("/proc/{old}")).exists() {
            return Err(format!(
                "pid {old} exited and {} names no new process",
                pid_file.display()
            ));
        }
        // The hand-over socket exists while an upgrade runs; the new process writes the pid
        // file right after it is gone.
        match (socket.exists(), socket_seen) {
            (true, _) => socket_seen = Some(None),
            (false, Some(None)) => socket_seen = Some(Some(Instant::now())),
            (false, Some(Some(gone))) if gone.elapsed() > Duration::from_secs(2) => {
                return Err(failed("the new process did not take over"));
            }
            _ => {}
        }
        if Instant::now() > deadline {
            return Err(failed("no new process in the pid file"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `signal` to the sandgate process named in `pid_file`; returns its pid.
fn signal_sandgate(pid_file: &Path, signal: nix::sys::signal::Signal) -> Result<i32, String> {
    use nix::sys::signal::kill;
    let pid = read_pid(pid_file)?;
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
    kill(nix::unistd::Pid::from_raw(pid), signal).map_err(|e| {
        format!(
            "cannot signal process {pid} (from {}): {e}; is sandgate running?",
            pid_file.display()
        )
    })?;
    Ok(pid)
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
            "registry.domains",
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
                if let Some(domains) = &app.custom_domains {
                    domains.forget_all();
                }
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
