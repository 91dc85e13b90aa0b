//! Serving threads, as nginx has workers: each thread runs its own single-threaded runtime and
//! accepts on its own `SO_REUSEPORT` listener, the kernel spreading connections over them. A
//! connection, its requests and the upstream connections they use stay on one thread: no task
//! hand-off between cores, no work-stealing. State that must be shared (caches, limits,
//! metrics) is shared as before.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use super::server::TlsSettings;
use super::server::{self, Drain, Limits, TlsListener};
use super::App;
use crate::config::ServerConfig;

/// One serving thread's listeners: plaintext, and HTTPS when TLS is on.
pub type Listeners = (std::net::TcpListener, Option<std::net::TcpListener>);

/// Binds `addr` `count` times (with `SO_REUSEPORT` when more than once), the later sockets on
/// the port the first one got (`:0` picks one). Returns the sockets and the bound address.
///
/// Several threads need `SO_REUSEPORT` even when `reuse_port` is off; the port is then first
/// bound once without it, so a port another process holds is still an error, as it is with one
/// thread, instead of a silent share.
pub fn bind(
    addr: SocketAddr,
    reuse_port: bool,
    count: usize,
) -> std::io::Result<(Vec<std::net::TcpListener>, SocketAddr)> {
    let addr = match (count > 1, reuse_port) {
        (true, false) => server::bind(addr, false)?.local_addr()?,
        _ => addr,
    };
    let first = server::bind(addr, reuse_port || count > 1)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first.into_std()?];
    for _ in 1..count {
        listeners.push(server::bind(bound, true)?.into_std()?);
    }
    Ok((listeners, bound))
}

/// Serving in progress: `drained` ends when every thread has drained (after `shutdown`). The
/// threads' runtimes keep running what was spawned on them (upstream h2c connections, Redis
/// connection drivers other threads and the final activity flush still use) until `release` is
/// dropped, after the proxy's last task has finished.
pub struct Serving {
    pub drained: JoinHandle<()>,
    pub release: Release,
}

/// Dropped, lets the serving threads end their runtimes (and stops serving if that had not
/// happened yet).
pub struct Release {
    shutdown: CancellationToken,
    release: CancellationToken,
}

impl Drop for Release {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.release.cancel();
    }
}

/// Serves on every set of listeners: on the calling runtime when there is one set, else on one
/// thread per set, each with a runtime built here (so a failure is a start error).
pub fn start(
    app: Arc<App>,
    listeners: Vec<Listeners>,
    tls: Option<TlsSettings>,
    config: ServerConfig,
    shutdown: CancellationToken,
    drain: Drain,
) -> std::io::Result<Serving> {
    let limits = Limits::new(&config);
    let config = Arc::new(config);
    let release = Release {
        shutdown: shutdown.clone(),
        release: CancellationToken::new(),
    };
    if listeners.len() == 1 {
        let serving = listeners
            .into_iter()
            .next()
            .map(|pair| serve_pair(app, pair, tls, config, limits, shutdown, drain));
        let drained = tokio::spawn(async move {
            if let Some(serving) = serving {
                serving.await;
            }
        });
        return Ok(Serving { drained, release });
    }
    crate::base::thread_slot::set_count(listeners.len());
    let mut done = Vec::new();
    for (slot, pair) in listeners.into_iter().enumerate() {
        let serving = serve_pair(
            app.clone(),
            pair,
            tls.clone(),
            config.clone(),
            limits.clone(),
            shutdown.clone(),
            drain.clone(),
        );
        done.push(spawn_thread(slot, serving, release.release.clone())?);
    }
    let drained = tokio::spawn(async move {
        for wait in done {
            let _ = wait.await;
        }
    });
    Ok(Serving { drained, release })
}

/// Starts serving thread `slot` with its own runtime: it runs `serving`, says so on the returned
/// channel, and keeps its runtime (and what was spawned on it) running until `released`.
fn spawn_thread(
    slot: usize,
    serving: impl Future<Output = ()> + Send + 'static,
    released: CancellationToken,
) -> std::io::Result<oneshot::Receiver<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (finished, wait) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("sandgate-{slot}"))
        .spawn(move || {
            crate::base::thread_slot::set(slot);
            let _tracked = crate::metrics::metrics().track_runtime(runtime.handle());
            runtime.block_on(async move {
                serving.await;
                let _ = finished.send(());
                released.cancelled().await;
            });
        })?;
    Ok(wait)
}

/// Serves one set of listeners on the current runtime until it has drained.
async fn serve_pair(
    app: Arc<App>,
    (plain, tls_socket): Listeners,
    tls: Option<TlsSettings>,
    config: Arc<ServerConfig>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
    drain: Drain,
) {
    let plain = match TcpListener::from_std(plain) {
        Ok(listener) => listener,
        Err(error) => return tracing::error!(%error, "cannot serve the listener"),
    };
    let tls = match (tls_socket.map(TcpListener::from_std), tls) {
        (Some(Ok(listener)), Some(settings)) => Some(TlsListener { listener, settings }),
        (Some(Err(error)), _) => return tracing::error!(%error, "cannot serve the TLS listener"),
        _ => None,
    };
    server::serve(app, (plain, tls), &config, limits, shutdown, drain).await;
}
