//! The composition root: builds the shared state from a [`Config`], binds the listeners, starts
//! the server, the admin listener, the activity flusher and the invalidation subscriber, and
//! hands back [`Running`]. Nothing below imports this module.

mod check;
pub mod upgrade;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::redis::RedisActivitySink;
use crate::activity::{Activity, ActivitySink, MemorySink};
use crate::config::activity::Sink;
use crate::config::registry::Backend;
use crate::config::{CertStorageKind, Config, LogConfig};
use crate::http::access_log::AccessLog;
use crate::http::forward::Forwarder;
use crate::http::reload::{self, ReloadRequest};
use crate::http::tls_accept::OnDemand;
use crate::http::{client_addr, route, server, workers, App};
use crate::registry::domains::CustomDomains;
use crate::registry::redis::{RedisHandle, RedisRegistry};
use crate::registry::{Registry, Resolver, StaticRegistry};
use crate::ssh::{GatewayKeys, SshError, SshGateway};
use crate::tls::acme::{Acme, NameAuthority};
use crate::{auth, registry, tls, wake};

pub use check::{check, load_checked, Summary};

/// Why the proxy could not start. Each error names the config key at fault; the message is the
/// one the operator sees (unchanged by the key, which is for callers and tests).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A config section could not be turned into its runtime part.
    #[error("{message}")]
    Config {
        /// The config key (or section) at fault, e.g. `tls`, `registry.backend`.
        key: &'static str,
        message: String,
    },
    /// The SSH gateway's keys (`ssh.host_key`, `ssh.upstream_key`, `ssh.upstream_host_key`).
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The listen key (`server.listen`, `tls.listen`, `admin.listen`), when known.
        key: Option<&'static str>,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    /// The config key at fault, when one is.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            StartError::Config { key, .. } => Some(key),
            StartError::Ssh(_) => Some("ssh"),
            StartError::Bind { key, .. } => *key,
        }
    }
}

/// `map_err` helper: a `String` error of the part built from config `key`.
fn at(key: &'static str) -> impl FnOnce(String) -> StartError {
    move |message| StartError::Config { key, message }
}

/// A running proxy: its address, the way to stop it, and its state (for reloads and tests).
/// Dropping it stops serving (a graceful drain, as [`Running::shutdown`] without the wait).
pub struct Running {
    pub addr: SocketAddr,
    /// The HTTPS listener, when `tls.enabled`.
    pub tls_addr: Option<SocketAddr>,
    /// The admin listener (`/metrics`, `/health`, `/ready`), when `admin.listen` is set.
    pub admin_addr: Option<SocketAddr>,
    pub app: Arc<App>,
    pub activity_sink: Arc<MemorySink>,
    /// Reloads the admin listener was asked for (`POST /reload`); whoever can reload takes
    /// it and answers each with a report. Unanswered, the listener says it cannot reload.
    pub reload_requests: Option<tokio::sync::mpsc::Receiver<ReloadRequest>>,
    /// Copies of every listening socket, for an upgrade to hand over.
    listeners: Vec<upgrade::Handed>,
    tasks: Tasks,
}

/// What a running server owns: the token that stops it and the tasks that end when it has.
struct Tasks {
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// Lets the serving threads' runtimes end, once every task here has (dropped last).
    release: Option<workers::Release>,
    /// Counts this runtime's tasks in `sandgate_tasks_alive` while serving.
    _runtime: crate::metrics::TrackedRuntime,
}

impl Tasks {
    async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        // Only now may the serving threads' runtimes end: the final activity flush above may
        // have used a connection one of them drives.
        drop(self.release);
    }
}

/// The access log when `log.access` is on and the log filter lets `sandgate::access` through
/// at `info` (so `level = "warn"` or `RUST_LOG=warn` turn it off, as they always have).
fn access_log(config: &LogConfig) -> Result<Option<AccessLog>, StartError> {
    if !config.access || !tracing::enabled!(target: "sandgate::access", tracing::Level::INFO) {
        return Ok(None);
    }
    AccessLog::start(config)
        .map(Some)
        .map_err(|e| StartError::Config {
            key: "log.access_output",
            message: format!("log.access_output: cannot open the access log: {e}"),
        })
}

/// How long the shutdown waits for the access log's last lines (a stuck output loses them).
const ACCESS_LOG_FINAL_WRITE: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes out the buffered access lines once nothing logs any more.
async fn close_access_log(app: &App) {
    if let Some(log) = &app.access_log {
        if !log.close(ACCESS_LOG_FINAL_WRITE).await {
            tracing::warn!("the access log's output is stuck; its last lines are lost");
        }
    }
}

impl Running {
    /// Starts the graceful drain and waits for it to finish.
    pub async fn shutdown(self) {
        self.tasks.shutdown.cancel();
        self.wait().await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.shutdown.clone()
    }

    /// Waits until the server has stopped (after [`Running::shutdown_token`] fired).
    pub async fn wait(mut self) {
        // The copies kept for an upgrade would keep the ports open (connections queued, never
        // accepted) after the serving threads close theirs.
        self.listeners.clear();
        self.tasks.wait().await;
        close_access_log(&self.app).await;
    }

    /// New descriptors of every listening socket (the same kernel sockets), to hand over.
    pub fn listening_sockets(&self) -> std::io::Result<Vec<upgrade::Handed>> {
        self.listeners
            .iter()
            .map(|handed| {
                Ok(upgrade::Handed {
                    key: handed.key,
                    addr: handed.addr,
                    socket: handed.socket.try_clone()?,
                })
            })
            .collect()
    }
}

/// Builds the phases from `config`, binds the listener and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_inheriting(config, &mut upgrade::Inherited::default()).await
}

/// [`start`], serving on the sockets an upgrade handed over where they match the config
/// (binding the rest).
pub async fn start_inheriting(
    config: Config,
    inherited: &mut upgrade::Inherited,
) -> Result<Running, StartError> {
    let Shared {
        redis,
        registry,
        static_registry,
        activity,
        activity_sink,
        sink,
    } = Shared::build(&config)?;
    let shutdown = CancellationToken::new();
    let relays = TaskTracker::new();
    let close_relays = CancellationToken::new();
    let custom_domains = match config.domains.enabled {
        true => Some(Arc::new(
            CustomDomains::new(registry.clone(), &config.domains).map_err(at("domains"))?,
        )),
        false => None,
    };
    let acme = match config.acme.enabled {
        true => {
            let authority: Arc<dyn NameAuthority> = match &custom_domains {
                Some(domains) => Arc::new(VerifiedDomains {
                    domains: domains.clone(),
                    preview: route::Domains::new(&config.proxy.domains),
                }),
                // Only the wildcards of `acme.dns01` (the config check requires one of both).
                None => Arc::new(NoNames),
            };
            Some(Acme::new(&config.acme, redis.clone(), authority).map_err(at("acme"))?)
        }
        false => None,
    };
    let certs = match config.tls.enabled {
        true => Some(Arc::new(
            tls::CertResolver::new(&config.tls, acme.clone()).map_err(at("tls"))?,
        )),
        false => None,
    };
    let app = Arc::new(App {
        domains: route::Domains::new(&config.proxy.domains),
        resolver: Resolver::new(registry, config.registry.cache),
        static_registry,
        certs: certs.clone(),
        activity: activity.clone(),
        forwarder: Forwarder::new(&config.proxy, relays.clone(), close_relays.clone()),
        auth: build_auth(&config)?,
        waker: wake::Waker::new(
            &config.registry.wake,
            wake_starter(&config, redis.as_ref())?,
            redis.clone(),
            shutdown.clone(),
        ),
        max_requests_per_sandbox: config.proxy.max_requests_per_sandbox,
        access_log: access_log(&config.log)?,
        request_log: crate::http::request_log::RequestLog::new(&config.log),
        request_ids: config.log.request_id,
        trusted_proxies: client_addr::TrustedProxies::parse(&config.server.trusted_proxies)
            .map_err(at("server.trusted_proxies"))?,
        pages: crate::http::pages::Pages::load(&config.pages)
            .map_err(|e| at("pages.dir")(e.to_string()))?,
        custom_domains,
        acme: acme.clone(),
    });
    let live = Arc::downgrade(&app);
    crate::metrics::metrics().sample_caches(move || live.upgrade().map(|a| a.resolver.entries()));
    let mut listeners = Vec::new();
    let plain = inherited.take("server.listen", config.server.listen);
    let tls_inherited = match certs {
        Some(_) => inherited.take("tls.listen", config.tls.listen),
        None => Vec::new(),
    };
    // Inherited sockets keep their thread count: the kernel spreads connections over all of
    // them, so each needs a thread that accepts (both listeners get the larger count).
    let threads = match plain.len().max(tls_inherited.len()) {
        0 => serving_threads(&config.server),
        n => n,
    };
    let (plain, addr) = bind_serving(
        "server.listen",
        config.server.listen,
        config.server.reuse_port,
        threads,
        plain,
    )?;
    keep_copies(&mut listeners, "server.listen", addr, &plain)?;
    let (listeners_by_thread, tls_settings, tls_addr) = match certs {
        Some(certs) => {
            let (tls, addr) = bind_serving(
                "tls.listen",
                config.tls.listen,
                config.server.reuse_port,
                threads,
                tls_inherited,
            )?;
            keep_copies(&mut listeners, "tls.listen", addr, &tls)?;
            let serving = tls::server_config(certs.clone()).map_err(at("tls"))?;
            let on_demand = match &acme {
                Some(acme) => Some(Arc::new(OnDemand {
                    certs,
                    config: serving.clone(),
                    challenge: tls::challenge_config(acme.clone()).map_err(at("acme"))?,
                    wait: config.acme.handshake_wait,
                })),
                None => None,
            };
            let settings = workers::TlsSettings {
                acceptor: serving.into(),
                on_demand,
                handshake_timeout: config.tls.handshake_timeout,
                redirect_plaintext: config.tls.redirect_plaintext,
                port: addr.port(),
                proxy_protocol: config.tls.proxy_protocol,
            };
            let pairs = plain.into_iter().zip(tls.into_iter().map(Some)).collect();
            (pairs, Some(settings), Some(addr))
        }
        None => (plain.into_iter().map(|p| (p, None)).collect(), None, None),
    };
    let mut tasks = Vec::new();
    let mut reload_requests = None;
    let admin_addr = match config.admin.listen {
        Some(admin) => {
            let (listener, addr) =
                bind_or_inherit("admin.listen", admin, inherited.take("admin.listen", admin))?;
            let copy = listener
                .as_fd()
                .try_clone_to_owned()
                .map_err(bind_error("admin.listen", addr))?;
            listeners.push(upgrade::Handed {
                key: "admin.listen",
                addr,
                socket: copy.into(),
            });
            let (reload, requests) = reload::channel(config.admin.token.as_deref());
            reload_requests = Some(requests);
            tasks.push(tokio::spawn(server::serve_admin(
                app.clone(),
                listener,
                shutdown.clone(),
                Some(reload),
            )));
            Some(addr)
        }
        None => None,
    };

    if let Some(acme) = &acme {
        tasks.push(tokio::spawn(acme.clone().maintain(shutdown.clone())));
    }
    let flusher_stop = CancellationToken::new();
    tasks.push(tokio::spawn(activity.run_flusher(
        sink,
        config.activity.flush_interval,
        flusher_stop.clone(),
    )));
    if let Some(link_uses) = app.resolver.link_uses() {
        tasks.push(tokio::spawn(link_uses.run_flusher(
            app.resolver.backend().clone(),
            config.activity.flush_interval,
            config.activity.throttle,
            flusher_stop.clone(),
        )));
    }
    let serving = workers::start(
        app.clone(),
        listeners_by_thread,
        tls_settings,
        config.server.clone(),
        shutdown.clone(),
        server::Drain {
            relays,
            close_relays,
        },
    )
    .map_err(|e| StartError::Config {
        key: "server.threads",
        message: format!("server.threads: cannot start the serving threads: {e}"),
    })?;
    let server_task = {
        let drained = serving.drained;
        tokio::spawn(async move {
            let _ = drained.await;
            flusher_stop.cancel();
        })
    };
    tasks.insert(0, server_task);
    if let (Some(redis), Backend::Redis) = (&redis, config.registry.backend) {
        let live = Arc::downgrade(&app);
        let apply = move |m: &registry::redis::Invalidation| {
            live.upgrade()
                .map(|app| m.apply(&app.resolver, app.custom_domains.as_deref()))
                .is_some()
        };
        tasks.push(tokio::spawn(registry::redis::invalidation::run_subscriber(
            redis.clone(),
            apply,
            shutdown.clone(),
        )));
    }
    if let Some(redis) = redis.as_ref().filter(|r| r.is_sentinel()) {
        tasks.push(tokio::spawn(
            redis.clone().follow_failovers(shutdown.clone()),
        ));
    }
    Ok(Running {
        addr,
        tls_addr,
        admin_addr,
        app,
        activity_sink,
        reload_requests,
        listeners,
        tasks: Tasks {
            shutdown,
            tasks,
            release: Some(serving.release),
            _runtime: crate::metrics::metrics().track_runtime(&tokio::runtime::Handle::current()),
        },
    })
}

/// A running SSH gateway: its address and the way to stop it.
pub struct RunningGateway {
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/health`, `/ready`), when `admin.listen` is set.
    pub admin_addr: Option<SocketAddr>,
    tasks: Tasks,
}

impl RunningGateway {
    pub fn shutdown_token(&self) -> CancellationToken {
        self.tasks.shutdown.clone()
    }

    /// Waits until the gateway has stopped (after [`RunningGateway::shutdown_token`] fired).
    pub async fn wait(self) {
        self.tasks.wait().await;
    }
}

/// `sandgate ssh-gateway`: loads the keys, builds the registry and activity sink like the
/// proxy does, binds and serves (with the metrics-only admin listener when `admin.listen` is
/// set).
pub async fn start_ssh_gateway(config: Config) -> Result<RunningGateway, StartError> {
    let keys = GatewayKeys::load(&config.ssh)?;
    let shared = Shared::build(&config)?;
    let resolver = Resolver::new(shared.registry, config.registry.cache);
    let gateway = SshGateway::new(keys, &config.ssh, resolver, shared.activity.clone());
    let (listener, addr) = bind_key("ssh.listen", config.ssh.listen, false)?;
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    let admin_addr = match config.admin.listen {
        Some(admin) => {
            let (listener, addr) = bind_key("admin.listen", admin, false)?;
            tasks.push(tokio::spawn(server::serve_metrics_only(
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
            gateway.serve(listener, stop).await;
            flusher_stop.cancel();
        }),
    );
    Ok(RunningGateway {
        addr,
        admin_addr,
        tasks: Tasks {
            shutdown,
            tasks,
            release: None,
            _runtime: crate::metrics::metrics().track_runtime(&tokio::runtime::Handle::current()),
        },
    })
}

/// What the proxy and the SSH gateway build alike from one config: registry, activity, sink.
struct Shared {
    pub redis: Option<Arc<RedisHandle>>,
    pub registry: Arc<dyn Registry>,
    pub static_registry: Option<Arc<StaticRegistry>>,
    pub activity: Arc<Activity>,
    /// Where the `memory` sink writes.
    pub activity_sink: Arc<MemorySink>,
    pub sink: Arc<dyn ActivitySink>,
}

impl Shared {
    fn build(config: &Config) -> Result<Shared, StartError> {
        let redis = redis_handle(config)?;
        let (registry, static_registry) = build_registry(config, redis.as_ref())?;
        let activity = Activity::new(&config.activity);
        let activity_sink = Arc::new(MemorySink::default());
        let sink = build_activity_sink(config, &activity_sink, redis.as_ref())?;
        Ok(Shared {
            redis,
            registry,
            static_registry,
            activity,
            activity_sink,
            sink,
        })
    }
}

fn bind_key(
    key: &'static str,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let fail = |source| StartError::Bind {
        key: Some(key),
        addr,
        source,
    };
    let listener = server::bind(addr, reuse_port).map_err(fail)?;
    let bound = listener.local_addr().map_err(fail)?;
    Ok((listener, bound))
}

fn bind_error(key: &'static str, addr: SocketAddr) -> impl Fn(std::io::Error) -> StartError {
    move |source| StartError::Bind {
        key: Some(key),
        addr,
        source,
    }
}

/// Binds `addr` once per serving thread, or serves on the `inherited` sockets (binding more on
/// their port when there are fewer than threads); errors name the listen key.
fn bind_serving(
    key: &'static str,
    addr: SocketAddr,
    reuse_port: bool,
    threads: usize,
    mut inherited: Vec<std::net::TcpListener>,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), StartError> {
    let Some(first) = inherited.first() else {
        return workers::bind(addr, reuse_port, threads).map_err(bind_error(key, addr));
    };
    let bound = first.local_addr().map_err(bind_error(key, addr))?;
    while inherited.len() < threads {
        let more = server::bind(bound, true).and_then(|l| l.into_std());
        inherited.push(more.map_err(bind_error(key, bound))?);
    }
    tracing::info!(key, addr = %bound, sockets = inherited.len(), "serving on inherited sockets");
    Ok((inherited, bound))
}

/// The admin listener: inherited when one was handed over, else bound.
fn bind_or_inherit(
    key: &'static str,
    addr: SocketAddr,
    inherited: Vec<std::net::TcpListener>,
) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let Some(socket) = inherited.into_iter().next() else {
        return bind_key(key, addr, false);
    };
    let listener = tokio::net::TcpListener::from_std(socket).map_err(bind_error(key, addr))?;
    let bound = listener.local_addr().map_err(bind_error(key, addr))?;
    tracing::info!(key, addr = %bound, "serving on the inherited socket");
    Ok((listener, bound))
}

/// Keeps a copy of each of `sockets` for an upgrade to hand over.
fn keep_copies(
    out: &mut Vec<upgrade::Handed>,
    key: &'static str,
    addr: SocketAddr,
    sockets: &[std::net::TcpListener],
) -> Result<(), StartError> {
    for socket in sockets {
        let socket = socket.try_clone().map_err(bind_error(key, addr))?;
        out.push(upgrade::Handed { key, addr, socket });
    }
    Ok(())
}

/// `server.threads`, with 0 meaning one per CPU this process may run on.
fn serving_threads(config: &crate::config::ServerConfig) -> usize {
    match config.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

type Backends = (Arc<dyn Registry>, Option<Arc<StaticRegistry>>);

/// Tries every part [`start`] builds from the config alone, with the same functions and no
/// connection made (Redis and HTTP clients are lazy), so `check` refuses what `start` would.
/// The static registry is left to `registry::check_static`, which names every bad entry.
fn build_problems(config: &Config) -> Vec<String> {
    let redis = match redis_handle(config) {
        Ok(redis) => redis,
        // What needs Redis would only repeat that it has none.
        Err(e) => return vec![e.to_string()],
    };
    let mut problems = Vec::new();
    if config.registry.backend != Backend::Static {
        if let Err(e) = build_registry(config, redis.as_ref()) {
            problems.push(e.to_string());
        }
    }
    if let Err(e) = build_activity_sink(config, &Arc::default(), redis.as_ref()) {
        problems.push(e.to_string());
    }
    if let Err(e) = wake_starter(config, redis.as_ref()) {
        problems.push(e.to_string());
    }
    if config.acme.enabled {
        // The key file, the CA root, storage needing Redis: what `serve` would stop at.
        if let Err(e) = Acme::new(&config.acme, redis.clone(), Arc::new(NoNames)) {
            problems.push(e);
        }
    }
    // Quiet: its warnings (no cookie key) are for the process that serves.
    let auth =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
            build_auth(config)
        });
    if let Err(e) = auth {
        problems.push(e.to_string());
    }
    problems
}

fn build_auth(config: &Config) -> Result<auth::Auth, StartError> {
    auth::Auth::from_config(config).map_err(at("auth"))
}

fn wake_starter(
    config: &Config,
    redis: Option<&Arc<RedisHandle>>,
) -> Result<Option<Box<dyn wake::start::Starter>>, StartError> {
    wake::starter(config, redis).map_err(at("registry.wake"))
}

/// The shared Redis handle, when the registry, the activity sink, the start backend or a wake
/// lock (a Daytona L2 in Redis) uses Redis. Does not connect: Redis may be down at start.
fn redis_handle(config: &Config) -> Result<Option<Arc<RedisHandle>>, StartError> {
    if !uses_redis(config) {
        return Ok(None);
    }
    let handle = RedisHandle::new(&config.redis).map_err(at("redis"))?;
    Ok(Some(Arc::new(handle)))
}

/// Does anything configured talk to Redis?
fn uses_redis(config: &Config) -> bool {
    let wakes = config.registry.wake.start_backend() != crate::config::StartBackend::None;
    let daytona_l2 = config.registry.backend == Backend::Daytona && config.daytona.l2_redis;
    config.registry.backend == Backend::Redis
        || config.activity.sink == Sink::Redis
        || config.registry.wake.start_backend() == crate::config::StartBackend::Redis
        || (wakes && daytona_l2)
        || (config.acme.enabled && config.acme.storage == CertStorageKind::Redis)
}

/// No name is a custom domain: a config check (nothing is ordered there), or ACME for the
/// `acme.dns01` wildcards only.
struct NoNames;

impl NameAuthority for NoNames {
    fn may_order<'a>(&'a self, _name: &'a str) -> crate::base::BoxFuture<'a, bool> {
        Box::pin(async { false })
    }
}

/// A name may get a certificate when it is a verified custom domain outside the preview
/// domains (their names are the platform's, never a tenant's).
struct VerifiedDomains {
    domains: Arc<CustomDomains>,
    preview: route::Domains,
}

impl NameAuthority for VerifiedDomains {
    fn may_order<'a>(&'a self, name: &'a str) -> crate::base::BoxFuture<'a, bool> {
        Box::pin(async move {
            if route::custom_domain_host(name, &self.preview).as_deref() != Some(name) {
                return false;
            }
            self.domains.is_verified(name).await
        })
    }
}

/// The registry backend named by `registry.backend`.
fn build_registry(
    config: &Config,
    redis: Option<&Arc<RedisHandle>>,
) -> Result<Backends, StartError> {
    match config.registry.backend {
        Backend::Static => {
            let registry =
                Arc::new(StaticRegistry::from_config(&config.registry).map_err(at("registry"))?);
            Ok((registry.clone(), Some(registry)))
        }
        Backend::Daytona => {
            let redis = config.daytona.l2_redis.then_some(&config.redis);
            let registry =
                registry::DaytonaRegistry::new(&config.daytona, redis).map_err(at("daytona"))?;
            Ok((Arc::new(registry), None))
        }
        Backend::Redis => {
            let redis = redis.ok_or_else(|| at("redis")("redis: not configured".into()))?;
            Ok((Arc::new(RedisRegistry::new(redis.clone())), None))
        }
    }
}

/// The activity sink named by `activity.sink` (`memory` writes into `memory`).
fn build_activity_sink(
    config: &Config,
    memory: &Arc<MemorySink>,
    redis: Option<&Arc<RedisHandle>>,
) -> Result<Arc<dyn ActivitySink>, StartError> {
    match config.activity.sink {
        Sink::Memory => Ok(memory.clone()),
        Sink::Daytona => Ok(Arc::new(
            crate::activity::daytona::DaytonaActivitySink::new(
                &config.daytona,
                config.activity.daytona_concurrency,
            )
            .map_err(at("daytona"))?,
        )),
        Sink::Redis => {
            let redis = redis.ok_or_else(|| at("redis")("redis: not configured".into()))?;
            Ok(Arc::new(RedisActivitySink::new(
                redis.clone(),
                &config.activity,
            )))
        }
    }
}
