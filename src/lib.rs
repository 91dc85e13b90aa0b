//! sandgate: a reverse proxy for sandbox platforms.
//!
//! A request flows through phases, each in its own module:
//! [`route`] → [`auth`] → [`registry`] (resolve, cached) → [`activity`] → [`forward`] →
//! [`respond`]. [`proxy`] wires them; [`server`] owns listeners and connections.

pub mod activity;
pub mod auth;
pub mod body;
pub mod config;
pub mod demo;
pub mod forward;
pub mod proxy;
pub mod registry;
pub mod respond;
pub mod route;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activity::{Activity, ActivitySink, MemorySink};
use crate::config::Config;
use crate::forward::Forwarder;
use crate::proxy::App;
use crate::registry::{CacheTtls, Registry, Resolver, StaticRegistry};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running proxy: its address, the way to stop it, and its state (for reloads and tests).
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    pub activity_sink: Arc<MemorySink>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Starts the graceful drain and waits for it to finish.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the server has stopped (after [`Running::shutdown_token`] fired).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Builds the phases from `config`, binds the listener and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let (registry, static_registry) = build_registry(&config)?;
    let shutdown = CancellationToken::new();
    let relays = TaskTracker::new();
    let close_relays = CancellationToken::new();
    let activity = Activity::new(&config.activity);
    let activity_sink = Arc::new(MemorySink::default());
    let sink = build_activity_sink(&config, &activity_sink)?;
    let app = Arc::new(App {
        domains: route::Domains::new(&config.proxy.domains),
        resolver: Resolver::new(registry, CacheTtls::from(&config.registry.cache)),
        static_registry,
        activity: activity.clone(),
        forwarder: Forwarder::new(&config.proxy, relays.clone(), close_relays.clone()),
        auth: auth::Auth::from_config(&config).map_err(StartError::Config)?,
    });
    let addr = config.server.listen;
    let listener = server::bind(addr).map_err(|source| StartError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;

    let flusher_stop = CancellationToken::new();
    let flusher = tokio::spawn(activity.run_flusher(
        sink,
        config.activity.flush_interval,
        flusher_stop.clone(),
    ));
    let server_task = {
        let app = app.clone();
        let shutdown = shutdown.clone();
        let server_config = config.server.clone();
        tokio::spawn(async move {
            server::serve(
                app,
                listener,
                &server_config,
                shutdown,
                relays,
                close_relays,
            )
            .await;
            flusher_stop.cancel();
        })
    };
    Ok(Running {
        addr,
        app,
        activity_sink,
        shutdown,
        tasks: vec![server_task, flusher],
    })
}

type Backends = (Arc<dyn Registry>, Option<Arc<StaticRegistry>>);

/// The registry backend named by `registry.backend`.
fn build_registry(config: &Config) -> Result<Backends, StartError> {
    match config.registry.backend.as_str() {
        "static" => {
            let registry = Arc::new(
                StaticRegistry::from_config(&config.registry).map_err(StartError::Config)?,
            );
            Ok((registry.clone(), Some(registry)))
        }
        other => Err(StartError::Config(format!(
            "registry.backend {other:?} is not available yet"
        ))),
    }
}

/// The activity sink named by `activity.sink` (`memory` writes into `memory`).
fn build_activity_sink(
    config: &Config,
    memory: &Arc<MemorySink>,
) -> Result<Arc<dyn ActivitySink>, StartError> {
    match config.activity.sink.as_str() {
        "memory" => Ok(memory.clone()),
        other => Err(StartError::Config(format!(
            "activity.sink {other:?} is not available yet"
        ))),
    }
}
