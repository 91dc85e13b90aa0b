//! One Redis handle for the registry backend, the activity sink and the admin CLI.
//!
//! Single node: a lazily connecting, self-reconnecting `ConnectionManager` (pipelines concurrent
//! callers on one socket). Cluster: the cluster client's pending connection (also lazy and
//! self-healing). Sentinel: a multiplexed connection to the master the sentinels name, dropped on
//! a connection error so the next call asks the sentinels again (a failover moves the master).
//! Every call is bounded by `[redis] timeout`: Redis down means a fast error, never a hang.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use crate::config::RedisConfig;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisFailure {
    /// Redis cannot be reached (refused, dropped, timed out).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error (e.g. WRONGTYPE): the data or the command is wrong.
    #[error("redis error: {0}")]
    Command(String),
}

impl From<redis::RedisError> for RedisFailure {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.is_unrecoverable_error()
            || e.is_cluster_error()
        {
            RedisFailure::Unavailable(e.to_string())
        } else {
            RedisFailure::Command(e.to_string())
        }
    }
}

/// A cheap clone of the live connection.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

struct Sentinel {
    nodes: Vec<String>,
    master: String,
    current: ArcSwapOption<MultiplexedConnection>,
    /// One master lookup at a time; concurrent callers fail fast instead of piling up.
    resolving: AtomicBool,
}

pub struct RedisHandle {
    timeout: Duration,
    fixed: Option<Conn>,
    sentinel: Option<Sentinel>,
    config: RedisConfig,
}

impl RedisHandle {
    /// Builds the handle without connecting (Redis may be down at start).
    pub fn new(config: &RedisConfig) -> Result<RedisHandle, String> {
        let timeout = config.timeout;
        let (fixed, sentinel) = if !config.cluster_nodes.is_empty() {
            let client = redis::cluster::ClusterClient::builder(config.cluster_nodes.clone())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()
                .map_err(|e| format!("redis.cluster_nodes: {e}"))?;
            let conn = client
                .get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new());
            (Some(Conn::Cluster(conn)), None)
        } else if !config.sentinel_master.is_empty() {
            if config.sentinel_nodes.is_empty() {
                return Err(
                    "redis.sentinel_master is set but redis.sentinel_nodes is empty".into(),
                );
            }
            // Validates the URLs now; connections are made on use.
            SentinelClient::build(
                config.sentinel_nodes.clone(),
                config.sentinel_master.clone(),
                None,
                SentinelServerType::Master,
            )
            .map_err(|e| format!("redis.sentinel_nodes: {e}"))?;
            let sentinel = Sentinel {
                nodes: config.sentinel_nodes.clone(),
                master: config.sentinel_master.clone(),
                current: ArcSwapOption::empty(),
                resolving: AtomicBool::new(false),
            };
            (None, Some(sentinel))
        } else {
            let client = redis::Client::open(config.url.as_str())
                .map_err(|e| format!("redis.url {:?}: {e}", redacted(&config.url)))?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_min_delay(Duration::from_millis(20))
                .set_max_delay(Duration::from_millis(500));
            let manager = ConnectionManager::new_lazy_with_config(client, manager_config)
                .map_err(|e| format!("redis.url: {e}"))?;
            (Some(Conn::Single(manager)), None)
        };
        Ok(RedisHandle {
            timeout,
            fixed,
            sentinel,
            config: config.clone(),
        })
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.fixed, Some(Conn::Cluster(_)))
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    pub async fn conn(&self) -> Result<Conn, RedisFailure> {
        if let Some(conn) = &self.fixed {
            return Ok(conn.clone());
        }
        let Some(sentinel) = &self.sentinel else {
            return Err(RedisFailure::Unavailable("no redis configured".into()));
        };
        if let Some(conn) = sentinel.current.load_full() {
            return Ok(Conn::Sentinel((*conn).clone()));
        }
        if sentinel.resolving.swap(true, Ordering::AcqRel) {
            return Err(RedisFailure::Unavailable(
                "asking the sentinels for the master".into(),
            ));
        }
        let result = tokio::time::timeout(self.timeout, self.sentinel_connect(sentinel)).await;
        sentinel.resolving.store(false, Ordering::Release);
        let conn = match result {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(RedisFailure::Unavailable(format!("sentinel: {e}"))),
            Err(_) => return Err(RedisFailure::Unavailable("sentinel: timed out".into())),
        };
        sentinel.current.store(Some(Arc::new(conn.clone())));
        Ok(Conn::Sentinel(conn))
    }

    async fn sentinel_connect(&self, sentinel: &Sentinel) -> RedisResult<MultiplexedConnection> {
        let mut client = SentinelClient::build(
            sentinel.nodes.clone(),
            sentinel.master.clone(),
            None,
            SentinelServerType::Master,
        )?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        client.get_async_connection_with_config(&config).await
    }

    /// A plain client for a dedicated connection (pub/sub): the single node, the current
    /// sentinel master, or the first reachable cluster node (PUBLISH reaches every node).
    pub async fn pubsub_client(&self) -> Result<redis::Client, RedisFailure> {
        let open = |url: &str| {
            redis::Client::open(url).map_err(|e| RedisFailure::Unavailable(e.to_string()))
        };
        if let Some(sentinel) = &self.sentinel {
            let mut client = SentinelClient::build(
                sentinel.nodes.clone(),
                sentinel.master.clone(),
                None,
                SentinelServerType::Master,
            )?;
            return tokio::time::timeout(self.timeout, client.async_get_client())
                .await
                .map_err(|_| RedisFailure::Unavailable("sentinel: timed out".into()))?
                .map_err(Into::into);
        }
        if self.is_cluster() {
            let mut last = RedisFailure::Unavailable("no cluster node reachable".into());
            for node in &self.config.cluster_nodes {
                let client = open(node)?;
                let ping = async {
                    let mut c = client.get_multiplexed_async_connection().await?;
                    redis::cmd("PING").query_async::<()>(&mut c).await
                };
                match tokio::time::timeout(self.timeout, ping).await {
                    Ok(Ok(())) => return Ok(client),
                    Ok(Err(e)) => last = e.into(),
                    Err(_) => last = RedisFailure::Unavailable(format!("{node}: timed out")),
                }
            }
            return Err(last);
        }
        open(&self.config.url)
    }

    /// Runs one Redis call within `[redis] timeout`.
    pub async fn timed<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, RedisFailure> {
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => RedisFailure::from(e),
            Err(_) => RedisFailure::Unavailable(format!("no answer within {:?}", self.timeout)),
        };
        if let (RedisFailure::Unavailable(_), Some(sentinel)) = (&result, &self.sentinel) {
            sentinel.current.store(None);
        }
        Err(result)
    }

    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisFailure> {
        let mut conn = self.conn().await?;
        self.timed(cmd.query_async(&mut conn)).await
    }

    pub async fn pipe<T: redis::FromRedisValue>(&self, p: &Pipeline) -> Result<T, RedisFailure> {
        let mut conn = self.conn().await?;
        self.timed(p.query_async(&mut conn)).await
    }

    pub async fn ping(&self) -> bool {
        self.query::<String>(&redis::cmd("PING")).await.is_ok()
    }
}

/// A Redis URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}
