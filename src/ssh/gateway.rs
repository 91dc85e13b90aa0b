//! The gateway: its keys, the accept loop, and each connection's limits and lifetime. The
//! composition root (`app::start_ssh_gateway`) builds the registry and activity, binds, and
//! runs the admin listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use russh::keys::{PrivateKey, PublicKey};
use russh::server;
use russh::{client, Disconnect};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::keys::load_key;
use super::session::{Conn, ConnShared, Gateway};
use super::{SshConfig, SshError};
use crate::activity::Activity;
use crate::metrics::metrics;
use crate::registry::Resolver;

/// Clients that send nothing for this long get a keepalive probe; three unanswered close them.
pub(super) const KEEPALIVE: Duration = Duration::from_secs(15);

/// The gateway's keys, loaded (and checked) before anything else starts.
pub struct GatewayKeys {
    host: PrivateKey,
    upstream: PrivateKey,
    upstream_pin: Option<PublicKey>,
}

impl GatewayKeys {
    /// The host key, the upstream key and the pinned sandbox host key, from `ssh.*`.
    pub fn load(config: &SshConfig) -> Result<GatewayKeys, SshError> {
        let host = load_key(&config.host_key, "host key")?;
        let upstream = load_key(&config.upstream_key, "upstream key")?;
        let upstream_pin = match config.upstream_host_key.as_str() {
            "" => None,
            line => Some(PublicKey::from_openssh(line).map_err(|e| SshError::Key {
                path: "ssh.upstream_host_key".into(),
                reason: e.to_string(),
            })?),
        };
        Ok(GatewayKeys {
            host,
            upstream,
            upstream_pin,
        })
    }
}

/// A gateway ready to accept connections; the composition root (`app`) hands it the resolver
/// and the activity it built like the proxy's, and a bound listener to [`SshGateway::serve`].
pub struct SshGateway {
    gateway: Arc<Gateway>,
    server_config: Arc<server::Config>,
}

impl SshGateway {
    pub fn new(
        keys: GatewayKeys,
        config: &SshConfig,
        resolver: Resolver,
        activity: Arc<Activity>,
    ) -> SshGateway {
        let gateway = Arc::new(Gateway {
            resolver,
            activity,
            upstream_key: Arc::new(keys.upstream),
            upstream_pin: keys.upstream_pin,
            client_config: Arc::new(client::Config {
                inactivity_timeout: None,
                nodelay: true,
                ..Default::default()
            }),
            config: config.clone(),
            sessions: AtomicUsize::new(0),
            per_token: DashMap::new(),
        });
        let server_config = Arc::new(server::Config {
            keys: vec![keys.host],
            methods: russh::MethodSet::from(&[russh::MethodKind::None][..]),
            auth_rejection_time: Duration::ZERO,
            inactivity_timeout: (!config.idle_timeout.is_zero()).then_some(config.idle_timeout),
            keepalive_interval: Some(KEEPALIVE),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        });
        SshGateway {
            gateway,
            server_config,
        }
    }

    /// Accepts connections on `listener` until `shutdown`; open sessions are cut then.
    pub async fn serve(self, listener: tokio::net::TcpListener, shutdown: CancellationToken) {
        accept_loop(self.gateway, self.server_config, listener, shutdown).await;
    }
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
