//! The SSH gateway (`sandgate ssh-gateway`): `ssh -p 2222 <token>@gateway` reaches the sandbox the
//! access token opens.
//!
//! The username is the credential, so the gateway accepts the `none` method and decides on the
//! username alone. A refused login (invalid token, unknown or stopped sandbox, a limit, an
//! unreachable sandbox) is accepted and then disconnected at once with a reason: OpenSSH prints a
//! disconnect reason, while a plain auth failure would only say "Permission denied".
//!
//! Each accepted session opens one SSH connection to the sandbox's sshd (the runner's SSH endpoint,
//! or `address:ssh_port` in direct mode) with the gateway's key, and every channel the client opens
//! (`session`, `direct-tcpip`) is mirrored there; channel requests, data, EOF, exit status and
//! close are relayed both ways, and request replies are relayed in order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::server::{self, Auth, ChannelOpenHandle, Msg as ServerMsg, Session};
use russh::{client, Channel, ChannelMsg, ChannelOpenFailure, Disconnect};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::activity::{Activity, StreamGuard};
use crate::config::Config;
use crate::metrics::metrics;
use crate::registry::{CacheTtls, Resolver};
use crate::StartError;

/// Clients that send nothing for this long get a keepalive probe; three unanswered close them.
const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Address of the SSH listener.
    pub listen: SocketAddr,
    /// The gateway's host key (OpenSSH format; `sandgate ssh-gateway keygen --out PATH`).
    pub host_key: PathBuf,
    /// The gateway's private key for the sandboxes' (or runners') sshd.
    pub upstream_key: PathBuf,
    /// User the gateway logs in as upstream; `{sandbox}` is replaced by the sandbox id (Daytona
    /// runners' SSH endpoints expect the sandbox id).
    pub upstream_user: String,
    /// Pin the upstream host key (`ssh-ed25519 AAAA...`); empty: any host key is accepted (the
    /// upstream is reached over the platform's internal network).
    pub upstream_host_key: String,
    /// Time to connect to and log in to the upstream sshd.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time a client gets from connecting to being logged in.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// A session with nothing received from the client for this long is closed (0s: never).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open sessions one access token may hold (0: no limit).
    pub max_sessions_per_token: usize,
    /// Open sessions in all (0: no limit).
    pub max_sessions: usize,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            host_key: "ssh_host_ed25519_key".into(),
            upstream_key: "ssh_upstream_ed25519_key".into(),
            upstream_user: "daytona".into(),
            upstream_host_key: String::new(),
            connect_timeout: Duration::from_secs(5),
            auth_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            max_sessions_per_token: 32,
            max_sessions: 10_000,
        }
    }
}

impl SshConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.upstream_user.is_empty() {
            return Err("ssh.upstream_user must not be empty".into());
        }
        if !self.upstream_host_key.is_empty() {
            PublicKey::from_openssh(&self.upstream_host_key)
                .map_err(|e| format!("ssh.upstream_host_key is not an OpenSSH public key: {e}"))?;
        }
        if self.auth_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err("ssh.auth_timeout and ssh.connect_timeout must be positive".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Writes a new Ed25519 private key to `out` (mode 0600) and its public key to `out.pub`.
pub fn keygen(out: &Path) -> Result<PublicKey, SshError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key_error = |reason: String| SshError::Key {
        path: out.to_path_buf(),
        reason,
    };
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    for path in [out, pub_path.as_path()] {
        if path.exists() {
            return Err(SshError::Exists {
                path: path.to_path_buf(),
            });
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| key_error(format!("no randomness: {e}")))?;
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    seed.fill(0);
    let key = PrivateKey::from(pair);
    let private = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| key_error(e.to_string()))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| key_error(e.to_string()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| key_error(e.to_string()))?;
    file.write_all(private.as_bytes())
        .map_err(|e| key_error(e.to_string()))?;
    std::fs::write(&pub_path, format!("{public}\n")).map_err(|e| key_error(e.to_string()))?;
    Ok(key.public_key().clone())
}

fn load_key(path: &Path, what: &str) -> Result<PrivateKey, SshError> {
    if !path.exists() {
        return Err(SshError::Key {
            path: path.to_path_buf(),
            reason: format!(
                "the {what} does not exist; create it with `sandgate ssh-gateway keygen --out {}`",
                path.display()
            ),
        });
    }
    russh::keys::load_secret_key(path, None).map_err(|e| SshError::Key {
        path: path.to_path_buf(),
        reason: format!("cannot load the {what}: {e}"),
    })
}

/// State shared by every connection.
struct Gateway {
    resolver: Resolver,
    activity: Arc<Activity>,
    upstream_key: Arc<PrivateKey>,
    upstream_pin: Option<PublicKey>,
    client_config: Arc<client::Config>,
    config: SshConfig,
    sessions: AtomicUsize,
    per_token: DashMap<[u8; 32], usize>,
}

/// A running gateway: its address and the way to stop it.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
        resolver: Resolver::new(shared.registry, CacheTtls::from(&config.registry.cache)),
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
    let admin_addr = match config.admin.listen.parse::<SocketAddr>() {
        Ok(admin) => {
            let (listener, addr) = crate::bind(admin, false)?;
            tasks.push(tokio::spawn(crate::server::serve_metrics_only(
                listener,
                shutdown.clone(),
            )));
            Some(addr)
        }
        Err(_) => None,
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

async fn accept_loop(
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

/// What a connection's handler shares with its task.
#[derive(Default)]
struct ConnShared {
    logged_in: AtomicBool,
    upstream: OnceLock<Arc<client::Handle<UpstreamHandler>>>,
}

async fn connection(
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

/// One logged-in session: released (counts, activity, upstream) when the connection ends.
struct Live {
    sandbox: Box<str>,
    upstream: Arc<client::Handle<UpstreamHandler>>,
    _activity: Option<StreamGuard>,
    _slot: SessionSlot,
}

struct SessionSlot {
    gateway: Arc<Gateway>,
    token_hash: [u8; 32],
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

struct Conn {
    gateway: Arc<Gateway>,
    shared: Arc<ConnShared>,
    live: Option<Live>,
    /// Why this login is refused; sent as the disconnect reason right after "login".
    refusal: Option<String>,
}

impl Conn {
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
                format!("cannot reach sandbox {sandbox_id} over SSH; try again later")
            })?;
        metrics().ssh_sessions_total.inc();
        tracing::info!(token = %token_id, sandbox = %sandbox.id, "ssh session open");
        Ok(Live {
            sandbox: sandbox.id.clone(),
            upstream: Arc::new(upstream),
            _activity: gateway.activity.stream(&sandbox.id),
            _slot: slot,
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum UpstreamError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("ssh: {0}")]
    Ssh(#[from] russh::Error),
    #[error("the sshd refused the gateway's key for user {0:?}")]
    Refused(String),
}

async fn connect_upstream(
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

struct UpstreamHandler {
    pin: Option<PublicKey>,
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
        let Some(live) = &self.live else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let upstream = live.upstream.clone();
        let server = session.handle();
        let sandbox = live.sandbox.clone();
        tokio::spawn(async move {
            match upstream.channel_open_session().await {
                Ok(up) => {
                    reply.accept().await;
                    relay(channel, up, server).await;
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
        let Some(live) = &self.live else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let upstream = live.upstream.clone();
        let server = session.handle();
        let (host, originator) = (host_to_connect.to_string(), originator_address.to_string());
        tokio::spawn(async move {
            let opened = upstream
                .channel_open_direct_tcpip(host, port_to_connect, originator, originator_port)
                .await;
            match opened {
                Ok(up) => {
                    reply.accept().await;
                    relay(channel, up, server).await;
                }
                Err(_) => reply.reject(ChannelOpenFailure::ConnectFailed).await,
            }
        });
        Ok(())
    }
}

/// Relays one channel both ways until both directions are done. Each direction runs on its own
/// so a full window one way never stalls the other.
async fn relay(
    client_side: Channel<ServerMsg>,
    upstream: Channel<client::Msg>,
    server: server::Handle,
) {
    let id = client_side.id();
    let (mut from_client, to_client) = client_side.split();
    let (mut from_upstream, to_upstream) = upstream.split();
    let up = async {
        while let Some(msg) = from_client.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    metrics().ssh_bytes_up.inc_by(data.len() as u64);
                    to_upstream.data_bytes(data).await
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    metrics().ssh_bytes_up.inc_by(data.len() as u64);
                    to_upstream.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => to_upstream.eof().await,
                ChannelMsg::Close => break,
                // OpenSSH wants replies to these four: the upstream's replies come back in order.
                ChannelMsg::RequestPty {
                    term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    terminal_modes,
                    ..
                } => {
                    to_upstream
                        .request_pty(
                            true,
                            &term,
                            col_width,
                            row_height,
                            pix_width,
                            pix_height,
                            &terminal_modes,
                        )
                        .await
                }
                ChannelMsg::RequestShell { .. } => to_upstream.request_shell(true).await,
                ChannelMsg::Exec { command, .. } => to_upstream.exec(true, command).await,
                ChannelMsg::RequestSubsystem { name, .. } => {
                    to_upstream.request_subsystem(true, name).await
                }
                ChannelMsg::SetEnv {
                    variable_name,
                    variable_value,
                    ..
                } => {
                    to_upstream
                        .set_env(false, variable_name, variable_value)
                        .await
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    to_upstream
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await
                }
                ChannelMsg::Signal { signal } => to_upstream.signal(signal).await,
                ChannelMsg::RequestX11 { .. } | ChannelMsg::AgentForward { .. } => {
                    let _ = server.channel_failure(id).await;
                    Ok(())
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = to_upstream.close().await;
    };
    let down = async {
        while let Some(msg) = from_upstream.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => {
                    metrics().ssh_bytes_down.inc_by(data.len() as u64);
                    to_client.data_bytes(data).await
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    metrics().ssh_bytes_down.inc_by(data.len() as u64);
                    to_client.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => to_client.eof().await,
                ChannelMsg::ExitStatus { exit_status } => to_client.exit_status(exit_status).await,
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => server
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .map_err(|_| russh::Error::SendError),
                ChannelMsg::Success => server
                    .channel_success(id)
                    .await
                    .map_err(|_| russh::Error::SendError),
                ChannelMsg::Failure => server
                    .channel_failure(id)
                    .await
                    .map_err(|_| russh::Error::SendError),
                ChannelMsg::Close => break,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = to_client.close().await;
    };
    tokio::join!(up, down);
}
