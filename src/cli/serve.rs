//! The long-running commands: `sandgate serve` and `sandgate ssh-gateway` (signals, reload).

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;

/// `sandgate serve`: runs the proxy until SIGTERM/SIGINT; SIGHUP reloads; SIGUSR1 reopens the
/// access log file (logrotate).
pub async fn serve(config: Config, path: Option<PathBuf>) -> Result<(), String> {
    let running = crate::start(config).await.map_err(|e| e.to_string())?;
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
    tracing::info!(addr = %running.addr, tls = ?running.tls_addr, admin = ?running.admin_addr, "sandgate listening");
    let shutdown = running.shutdown_token();
    let app = running.app.clone();
    tokio::spawn(async move {
        let Ok(mut hangup) = hangup else {
            return;
        };
        while hangup.recv().await.is_some() {
            reload(&app, path.as_deref());
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

/// Reloads what can change without a restart: the static registry and the TLS certificates.
/// Each part is swapped whole or not at all; a bad file leaves the one in force.
fn reload(app: &crate::proxy::App, path: Option<&std::path::Path>) {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "reload rejected; the previous configuration stays in force");
            return;
        }
    };
    if let Some(registry) = &app.static_registry {
        match registry.reload(&config.registry) {
            Ok(n) => {
                app.resolver.invalidate(None);
                app.auth.clear_cache();
                tracing::info!(sandboxes = n, "static registry reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "registry reload rejected; the previous registry stays in force")
            }
        }
    }
    if let Some(certs) = &app.certs {
        match certs.reload(&config.tls) {
            Ok(()) => tracing::info!("TLS certificates reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "certificate reload rejected; the previous certificates stay in force")
            }
        }
    }
    match app.pages.reload(&config.pages) {
        Ok(()) => tracing::info!("error page templates reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "page templates reload rejected; the previous pages stay in force")
        }
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
