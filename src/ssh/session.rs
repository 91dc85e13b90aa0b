//! One SSH connection: the login (token → sandbox, session limits), the upstream SSH
//! connection to the sandbox's sshd, and the mirroring of each channel the client opens.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::server::{self, Auth, ChannelOpenHandle, Msg as ServerMsg, Session};
use russh::{client, Channel, ChannelOpenFailure, Disconnect};
use tokio::net::TcpStream;

use super::relay::relay;
use super::SshConfig;
use crate::activity::{Activity, StreamGuard};
use crate::metrics::metrics;
use crate::registry::Resolver;

/// State shared by every connection.
pub(super) struct Gateway {
    pub(super) resolver: Resolver,
    pub(super) activity: Arc<Activity>,
    pub(super) upstream_key: Arc<PrivateKey>,
    pub(super) upstream_pin: Option<PublicKey>,
    pub(super) client_config: Arc<client::Config>,
    pub(super) config: SshConfig,
    pub(super) sessions: AtomicUsize,
    pub(super) per_token: DashMap<[u8; 32], usize>,
}

/// What a connection's handler shares with its task.
#[derive(Default)]
pub(super) struct ConnShared {
    pub(super) logged_in: AtomicBool,
    pub(super) upstream: OnceLock<Arc<client::Handle<UpstreamHandler>>>,
}

/// One logged-in session: released (counts, activity, upstream) when the connection ends.
pub(super) struct Live {
    pub(super) sandbox: Box<str>,
    pub(super) upstream: Arc<client::Handle<UpstreamHandler>>,
    pub(super) activity: Option<StreamGuard>,
    pub(super) _slot: SessionSlot,
}

pub(super) struct SessionSlot {
    pub(super) gateway: Arc<Gateway>,
    pub(super) token_hash: [u8; 32],
}

impl SessionSlot {
    /// `Err(reason)` when a limit is reached.
    fn acquire(gateway: &Arc<Gateway>, token_hash: [u8; 32]) -> Result<SessionSlot, String> {
        let max = gateway.config.max_sessions;
        let before = gateway.sessions.fetch_add(1, Ordering::AcqRel);
        if max > 0 && before >= max {
            gateway.sessions.fetch_sub(1, Ordering::AcqRel);
            return Err("the gateway has too many open sessions; try again later".into());
        }
        let per_token = gateway.config.max_sessions_per_token;
        let mut count = gateway.per_token.entry(token_hash).or_insert(0);
        if per_token > 0 && *count >= per_token {
            drop(count);
            gateway.sessions.fetch_sub(1, Ordering::AcqRel);
            return Err(format!(
                "this access token already has {per_token} open sessions"
            ));
        }
        *count += 1;
        drop(count);
        metrics().ssh_sessions_active.inc();
        Ok(SessionSlot {
            gateway: gateway.clone(),
            token_hash,
        })
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.gateway.sessions.fetch_sub(1, Ordering::AcqRel);
        self.gateway
            .per_token
            .remove_if_mut(&self.token_hash, |_, count| {
                *count = count.saturating_sub(1);
                *count == 0
            });
        metrics().ssh_sessions_active.dec();
    }
}

pub(super) struct Conn {
    pub(super) gateway: Arc<Gateway>,
    pub(super) shared: Arc<ConnShared>,
    pub(super) live: Option<Live>,
    /// Why this login is refused; sent as the disconnect reason right after "login".
    pub(super) refusal: Option<String>,
}

impl Conn {
    /// The logged-in session and the channel's reply handle, or `None` after refusing the
    /// channel (no session, no channels).
    async fn live_or_refuse(&self, reply: ChannelOpenHandle) -> Option<(&Live, ChannelOpenHandle)> {
        match &self.live {
            Some(live) => Some((live, reply)),
            None => {
                reply
                    .reject(ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                None
            }
        }
    }

    async fn login(&mut self, token: &str) -> Result<Live, String> {
        let gateway = &self.gateway;
        let token_hash = crate::registry::sha256(token);
        let token_id = hex::encode(&token_hash[..6]);
        let refuse = |reason: &str| {
            metrics().ssh_auth_failures.inc();
            tracing::info!(token = %token_id, reason, "ssh login refused");
            reason.to_string()
        };
        let sandbox_id = match gateway.resolver.ssh_token(token).await {
            Ok(Some(id)) => id,
            Ok(None) => return Err(refuse("invalid or expired SSH access token")),
            Err(e) => {
                tracing::warn!(error = %e, "ssh token lookup failed");
                return Err("the registry is unavailable; try again later".into());
            }
        };
        let sandbox = match gateway.resolver.sandbox(&sandbox_id).await {
            Ok(resolved) => resolved.sandbox,
            Err(e) => {
                tracing::warn!(error = %e, "ssh sandbox lookup failed");
                return Err("the registry is unavailable; try again later".into());
            }
        };
        let Some(sandbox) = sandbox else {
            return Err(refuse(&format!("sandbox {sandbox_id} does not exist")));
        };
        if !sandbox.is_running() {
            return Err(refuse(&format!(
                "sandbox {sandbox_id} is not started (state: {}); start it and retry",
                sandbox.state
            )));
        }
        let Some(target) = sandbox.ssh_target() else {
            return Err(refuse(&format!("sandbox {sandbox_id} has no SSH endpoint")));
        };
        let slot = SessionSlot::acquire(gateway, token_hash).inspect_err(|_| {
            metrics().ssh_refused.inc();
        })?;
        let user = gateway
            .config
            .upstream_user
            .replace("{sandbox}", &sandbox.id);
        let upstream = connect_upstream(gateway, &target, &user)
            .await
            .map_err(|e| {
                metrics().ssh_upstream_errors.inc();
                tracing::warn!(sandbox = %sandbox.id, target, error = %e, "ssh upstream failed");
                e.client_reason(&sandbox_id)
            })?;
        metrics().ssh_sessions_total.inc();
        tracing::info!(token = %token_id, sandbox = %sandbox.id, "ssh session open");
        Ok(Live {
            sandbox: sandbox.id.clone(),
            upstream: Arc::new(upstream),
            activity: gateway.activity.stream(&sandbox.id),
            _slot: slot,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum UpstreamError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
    #[error("the sshd refused the gateway's key for user {0:?}")]
    Refused(String),
}

impl UpstreamError {
    /// What the SSH client is told: the real reason, in terms the sandbox's owner can act on,
    /// without the upstream address.
    fn client_reason(&self, sandbox: &str) -> String {
        match self {
            UpstreamError::Refused(user) => format!(
                "sandbox {sandbox}'s sshd refused the gateway's key for user {user:?}: add the \
                 gateway's upstream public key to that user's authorized_keys in the sandbox"
            ),
            UpstreamError::Connect(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                format!(
                    "nothing accepts SSH connections in sandbox {sandbox} (connection refused): \
                     is its sshd running?"
                )
            }
            UpstreamError::Connect(_) => {
                format!("cannot connect to sandbox {sandbox}'s SSH endpoint; try again later")
            }
            UpstreamError::Timeout => format!(
                "sandbox {sandbox}'s SSH endpoint did not answer in time; try again later"
            ),
            UpstreamError::Ssh(russh::Error::UnknownKey) => format!(
                "sandbox {sandbox}'s SSH host key does not match the gateway's ssh.upstream_host_key"
            ),
            UpstreamError::Ssh(_) => {
                format!("the SSH handshake with sandbox {sandbox} failed; try again later")
            }
        }
    }
}

pub(super) async fn connect_upstream(
    gateway: &Gateway,
    target: &str,
    user: &str,
) -> Result<client::Handle<UpstreamHandler>, UpstreamError> {
    let attempt = async {
        let stream = TcpStream::connect(target)
            .await
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        let handler = UpstreamHandler {
            pin: gateway.upstream_pin.clone(),
        };
        let mut handle =
            client::connect_stream(gateway.client_config.clone(), stream, handler).await?;
        let key = PrivateKeyWithHashAlg::new(gateway.upstream_key.clone(), None);
        let result = handle.authenticate_publickey(user, key).await?;
        if !result.success() {
            return Err(UpstreamError::Refused(user.to_string()));
        }
        Ok(handle)
    };
    tokio::time::timeout(gateway.config.connect_timeout, attempt)
        .await
        .map_err(|_| UpstreamError::Timeout)?
}

pub(super) struct UpstreamHandler {
    pub(super) pin: Option<PublicKey>,
}

impl client::Handler for UpstreamHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match (&self.pin, key) {
            (None, _) => true,
            (Some(pin), PublicKeyOrCertificate::PublicKey { key, .. }) => {
                pin.key_data() == key.key_data()
            }
            (Some(_), PublicKeyOrCertificate::Certificate(_)) => false,
        })
    }
}

impl server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        if self.live.is_none() && self.refusal.is_none() {
            match self.login(user).await {
                Ok(live) => {
                    let _ = self.shared.upstream.set(live.upstream.clone());
                    self.live = Some(live);
                }
                Err(reason) => self.refusal = Some(reason),
            }
        }
        self.shared.logged_in.store(true, Ordering::Release);
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(reason) = &self.refusal {
            session.disconnect(Disconnect::ByApplication, reason, "en")?;
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<ServerMsg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((live, reply)) = self.live_or_refuse(reply).await else {
            return Ok(());
        };
        let upstream = live.upstream.clone();
        let moved = live.activity.as_ref().map(StreamGuard::toucher);
        let server = session.handle();
        let sandbox = live.sandbox.clone();
        tokio::spawn(async move {
            match upstream.channel_open_session().await {
                Ok(up) => {
                    reply.accept().await;
                    relay(channel, up, server, moved).await;
                }
                Err(e) => {
                    tracing::warn!(sandbox = %sandbox, error = %e, "upstream session channel refused");
                    reply.reject(ChannelOpenFailure::ConnectFailed).await;
                }
            }
        });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<ServerMsg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some((live, reply)) = self.live_or_refuse(reply).await else {
            return Ok(());
        };
        let upstream = live.upstream.clone();
        let moved = live.activity.as_ref().map(StreamGuard::toucher);
        let server = session.handle();
        let (host, originator) = (host_to_connect.to_string(), originator_address.to_string());
        tokio::spawn(async move {
            let opened = upstream
                .channel_open_direct_tcpip(host, port_to_connect, originator, originator_port)
                .await;
            match opened {
                Ok(up) => {
                    reply.accept().await;
                    relay(channel, up, server, moved).await;
                }
                Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
            }
        });
        Ok(())
    }
}
