//! The gateway: start (keys, registry, activity, listener), the accept loop, and each
//! connection's limits and lifetime.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use russh::keys::PublicKey;
use russh::server;
use russh::{client, Disconnect};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::keys::load_key;
use super::session::{Conn, ConnShared, Gateway};
use super::SshError;
use crate::config::Config;
use crate::metrics::metrics;
use crate::registry::Resolver;

/// Clients that send nothing for this long get a keepalive probe; three unanswered close them.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(15);

/// A running gateway: its address and the way to stop it.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub(super) shutdown: CancellationToken,
    pub(super) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningGateway {
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Loads the keys, builds the registry and activity sink like the proxy does, binds and serves.
pub async fn start(config: Config) -> Result<RunningGateway, SshError> {
    let host_key = load_key(&config.ssh.host_key, "host key")?;
    let upstream_key = load_key(&config.ssh.upstream_key, "upstream key")?;
    let upstream_pin = match config.ssh.upstream_host_key.as_str() {
        "" => None,
        line => Some(PublicKey::from_openssh(line).map_err(|e| SshError::Key {
            path: "ssh.upstream_host_key".into(),
            reason: e.to_string(),
        })?),
    };
    let shared = crate::Shared::build(&config)?;
    let gateway = Arc::new(Gateway {
        resolver: Resolver::new(shared.registry, config.registry.cache),
        activity: shared.activity.clone(),
        upstream_key: Arc::new(upstream_key),
        upstream_pin,
        client_config: Arc::new(client::Config {
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        }),
        config: config.ssh.clone(),
        sessions: AtomicUsize::new(0),
        per_token: DashMap::new(),
    });
    let server_config = Arc::new(server::Config {
        keys: vec![host_key],
        methods: russh::MethodSet::from(&[russh::MethodKind::None][..]),
        auth_rejection_time: Duration::ZERO,
        inactivity_timeout: (!config.ssh.idle_timeout.is_zero()).then_some(config.ssh.idle_timeout),
        keepalive_interval: Some(KEEPALIVE),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    });
    let (listener, addr) = crate::bind(config.ssh.listen, false)?;
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let admin_addr = match config.admin.listen {
        Some(admin) => {
            let (listener, addr) = crate::bind(admin, false)?;
            tasks.push(tokio::spawn(crate::server::serve_metrics_only(
                listener,
                shutdown.clone(),
            )));
            Some(addr)
        }
        None => None,
    };
    let flusher_stop = CancellationToken::new();
    tasks.push(tokio::spawn(shared.activity.run_flusher(
        shared.sink,
        config.activity.flush_interval,
        flusher_stop.clone(),
    )));
    let stop = shutdown.clone();
    tasks.insert(
        0,
        tokio::spawn(async move {
            accept_loop(gateway, server_config, listener, stop).await;
            flusher_stop.cancel();
        }),
    );
    Ok(RunningGateway {
        addr,
        admin_addr,
        shutdown,
        tasks,
    })
}

pub(super) async fn accept_loop(
    gateway: Arc<Gateway>,
    config: Arc<server::Config>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) {
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "ssh accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        connections.spawn(connection(gateway.clone(), config.clone(), stream, peer));
    }
    // Open sessions are cut at shutdown: SSH sessions can last for hours.
    connections.close();
}

pub(super) async fn connection(
    gateway: Arc<Gateway>,
    config: Arc<server::Config>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let shared = Arc::new(ConnShared::default());
    let handler = Conn {
        gateway: gateway.clone(),
        shared: shared.clone(),
        live: None,
        refusal: None,
    };
    let auth_timeout = gateway.config.auth_timeout;
    let deadline = tokio::time::Instant::now() + auth_timeout;
    let session =
        match tokio::time::timeout(auth_timeout, server::run_stream(config, stream, handler)).await
        {
            Ok(Ok(session)) => session,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "ssh handshake failed");
                return;
            }
            Err(_) => {
                metrics().ssh_refused.inc();
                return;
            }
        };
    let handle = session.handle();
    tokio::pin!(session);
    let mut timer_armed = true;
    loop {
        tokio::select! {
            result = &mut session => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "ssh session ended with an error");
                }
                break;
            }
            _ = tokio::time::sleep_until(deadline), if timer_armed => {
                timer_armed = false;
                if !shared.logged_in.load(Ordering::Acquire) {
                    metrics().ssh_refused.inc();
                    let _ = handle
                        .disconnect(
                            Disconnect::ByApplication,
                            "authentication timed out".into(),
                            "en".into(),
                        )
                        .await;
                }
            }
        }
    }
    // The client is gone: end the upstream connection now rather than when its channels drain.
    if let Some(upstream) = shared.upstream.get() {
        let _ = upstream
            .disconnect(Disconnect::ByApplication, "client disconnected", "en")
            .await;
    }
}
