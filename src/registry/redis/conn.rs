//! One Redis handle for the registry backend, the activity sink and the admin CLI.
//!
//! Single node: a lazily connecting, self-reconnecting `ConnectionManager` (pipelines concurrent
//! callers on one socket). Cluster: the cluster client's pending connection (also lazy and
//! self-healing). Sentinel: a multiplexed connection to the master the sentinels name (redis-rs's
//! sentinel client asks them and checks the node's `ROLE`), kept with that master's address. It
//! is dropped, so the next call asks the sentinels again, when a sentinel announces
//! `+switch-master` for our master ([`RedisHandle::follow_failovers`]), when the connection
//! fails, and when the node answers `READONLY` (a failover demoted it); the failed call is then
//! retried once on the new master if running it twice is harmless ([`is_repeatable`]).
//! Every call is bounded by `[redis] timeout`: Redis down means a fast error, never a hang.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::RedisConfig;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisFailure {
    /// Redis cannot be reached (refused, dropped, timed out), or the node stopped being the
    /// primary (`READONLY`).
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error (e.g. WRONGTYPE): the data or the command is wrong.
    #[error("redis error: {0}")]
    Command(String),
}

impl From<redis::RedisError> for RedisFailure {
    fn from(e: redis::RedisError) -> Self {
        if is_unreachable(&e) || is_demoted(&e) {
            RedisFailure::Unavailable(e.to_string())
        } else {
            RedisFailure::Command(e.to_string())
        }
    }
}

fn is_unreachable(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || e.is_cluster_error()
}

/// `READONLY`, alone or inside a pipeline or aborted transaction: the node we write to is a
/// replica now (a failover demoted it).
fn is_demoted(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
        || e.clone().into_server_errors().is_some_and(|errors| {
            errors
                .iter()
                .any(|(_, error)| error.kind() == Some(ServerErrorKind::ReadOnly))
        })
}

/// The connection itself is gone (not a slow answer: that one may still be running).
fn is_lost(e: &RedisError) -> bool {
    e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error()
}

/// Commands that may run twice without harm when the first run's fate is unknown (the
/// connection dropped under it): reads, and sandgate's scripts (the resolve script reads; the
/// activity script's `SET NX` + `ZADD` and the lock release leave the same state twice).
fn is_repeatable(cmd: &Cmd) -> bool {
    const REPEATABLE: &[&[u8]] = &[
        b"GET",
        b"MGET",
        b"HGET",
        b"HMGET",
        b"HGETALL",
        b"HLEN",
        b"EXISTS",
        b"TYPE",
        b"TTL",
        b"PTTL",
        b"SCAN",
        b"ZSCORE",
        b"ZRANGE",
        b"ZRANGEBYSCORE",
        b"ZCARD",
        b"SMEMBERS",
        b"PING",
        b"ROLE",
        b"EVAL",
        b"EVALSHA",
        b"EVAL_RO",
        b"EVALSHA_RO",
    ];
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => REPEATABLE.iter().any(|r| name.eq_ignore_ascii_case(r)),
        _ => false,
    }
}

/// A cheap clone of the live connection.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
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

/// The master the sentinels named: its address (`host:port`), a client for dedicated
/// connections (pub/sub), and the shared connection.
struct Master {
    address: String,
    client: redis::Client,
    conn: MultiplexedConnection,
}

type Lookup = Shared<BoxFuture<'static, Result<Arc<Master>, RedisFailure>>>;

struct Sentinel {
    nodes: Vec<String>,
    name: String,
    timeout: Duration,
    current: ArcSwapOption<Master>,
    /// The lookup under way: concurrent callers share it instead of piling up on the sentinels.
    lookup: Mutex<Option<Lookup>>,
    /// Bumped by `+switch-master`: a lookup that started before must not install the old master.
    switches: AtomicU64,
    /// The master's address as last learnt; the invalidation subscriber follows it.
    address: watch::Sender<String>,
    /// The last `+switch-master` target and when it was announced: for a while after it, a
    /// lagging sentinel may still name the old primary (which answers `ROLE` master until it is
    /// converted), so lookups prefer the announced node.
    announced: Mutex<Option<(String, tokio::time::Instant)>>,
}

/// How long after `+switch-master` the announced node wins over a sentinel's older answer
/// (sentinels converge through hello messages every 2 s; the old primary is converted within
/// about 10 s).
const TRUST_ANNOUNCEMENT: Duration = Duration::from_secs(15);

impl Sentinel {
    fn client(&self) -> RedisResult<SentinelClient> {
        SentinelClient::build(
            self.nodes.clone(),
            self.name.clone(),
            None,
            SentinelServerType::Master,
        )
    }

    async fn master(self: &Arc<Self>) -> Result<Arc<Master>, RedisFailure> {
        if let Some(master) = self.current.load_full() {
            return Ok(master);
        }
        let lookup = {
            let mut slot = self.lookup.lock().unwrap_or_else(PoisonError::into_inner);
            slot.get_or_insert_with(|| self.clone().look_up().boxed().shared())
                .clone()
        };
        lookup.await
    }

    async fn look_up(self: Arc<Self>) -> Result<Arc<Master>, RedisFailure> {
        let switches = self.switches.load(Ordering::Acquire);
        let found = match tokio::time::timeout(self.timeout, self.connect()).await {
            Ok(Ok(master)) => Ok(Arc::new(master)),
            Ok(Err(e)) => Err(RedisFailure::Unavailable(format!("sentinel: {e}"))),
            Err(_) => Err(RedisFailure::Unavailable("sentinel: timed out".into())),
        };
        if let Ok(master) = &found {
            if self.switches.load(Ordering::Acquire) == switches {
                self.current.store(Some(master.clone()));
                self.announce(&master.address);
            }
        }
        *self.lookup.lock().unwrap_or_else(PoisonError::into_inner) = None;
        found
    }

    async fn connect(&self) -> RedisResult<Master> {
        let mut client = self.client()?.async_get_client().await?;
        let mut address = client.get_connection_info().addr().to_string();
        if let Some(announced) = self.recent_announcement().filter(|a| *a != address) {
            match self.announced_primary(&announced).await {
                Ok(announced_client) => {
                    tracing::debug!(sentinel_said = %address, %announced,
                        "a sentinel still names the old primary; using the announced one");
                    client = announced_client;
                    address = announced;
                }
                Err(e) => tracing::debug!(%announced, error = %e, "announced primary not usable"),
            }
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(Master {
            address,
            client,
            conn,
        })
    }

    /// Stops using `master` (it failed or was demoted), unless a lookup already replaced it.
    fn forget(&self, master: &Arc<Master>) {
        self.current.compare_and_swap(master, None);
    }

    fn recent_announcement(&self) -> Option<String> {
        let announced = self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        announced
            .as_ref()
            .filter(|(_, at)| at.elapsed() < TRUST_ANNOUNCEMENT)
            .map(|(address, _)| address.clone())
    }

    /// A client for the announced node, once it says it is the primary (`ROLE`).
    async fn announced_primary(&self, address: &str) -> RedisResult<redis::Client> {
        let client = redis::Client::open(format!("redis://{address}"))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        match redis::cmd("ROLE").query_async(&mut conn).await? {
            redis::Role::Primary { .. } => Ok(client),
            _ => Err(RedisError::from((
                ErrorKind::Server(ServerErrorKind::ReadOnly),
                "the announced node is not a primary",
            ))),
        }
    }

    /// A sentinel announced that our master moved to `address`.
    fn switched(&self, address: &str) {
        *self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some((address.to_string(), tokio::time::Instant::now()));
        self.switches.fetch_add(1, Ordering::AcqRel);
        let current = self.current.load_full();
        if current.is_some_and(|m| m.address != address) {
            self.current.store(None);
        }
        self.announce(address);
    }

    fn announce(&self, address: &str) {
        self.address.send_if_modified(|known| {
            let changed = known != address;
            if changed {
                address.clone_into(known);
            }
            changed
        });
    }
}

/// A connection to the sentinels' master. When that master goes away (the connection is lost,
/// or it answers `READONLY`: demoted) it asks the sentinels again, and retries the call once on
/// the new master when the first run surely did nothing (`READONLY`) or repeating is harmless.
#[derive(Clone)]
pub struct SentinelConn {
    sentinel: Arc<Sentinel>,
    master: Arc<Master>,
    conn: MultiplexedConnection,
}

impl SentinelConn {
    /// After `e`: whether this now talks to a fresh master and the call should run again.
    async fn moved_on(&mut self, e: &RedisError, repeatable: bool) -> bool {
        let demoted = is_demoted(e);
        if !demoted && !is_lost(e) {
            return false;
        }
        self.sentinel.forget(&self.master);
        if !(demoted || repeatable) {
            return false;
        }
        match self.sentinel.master().await {
            Ok(master) => {
                tracing::debug!(from = %self.master.address, to = %master.address, error = %e,
                    "redis master moved; retrying once");
                self.conn = master.conn.clone();
                self.master = master;
                true
            }
            Err(_) => false,
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            match self.conn.req_packed_command(cmd).await {
                Err(e) if self.moved_on(&e, is_repeatable(cmd)).await => {
                    self.conn.req_packed_command(cmd).await
                }
                answer => answer,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            match self.conn.req_packed_commands(pipeline, offset, count).await {
                Err(e)
                    if self
                        .moved_on(&e, pipeline.cmd_iter().all(is_repeatable))
                        .await =>
                {
                    self.conn.req_packed_commands(pipeline, offset, count).await
                }
                answer => answer,
            }
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

/// What a sentinel says about our master.
struct SentinelView {
    master: Option<String>,
    /// Replicas that should acknowledge writes ([`is_healthy_replica`]).
    healthy_replicas: usize,
    /// It is promoting a replica (the failover's leader, until `+switch-master`).
    promoting: bool,
}

pub struct RedisHandle {
    timeout: Duration,
    fixed: Option<Conn>,
    sentinel: Option<Arc<Sentinel>>,
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
            let sentinel = Sentinel {
                nodes: config.sentinel_nodes.clone(),
                name: config.sentinel_master.clone(),
                timeout,
                current: ArcSwapOption::empty(),
                lookup: Mutex::new(None),
                switches: AtomicU64::new(0),
                address: watch::Sender::new(String::new()),
                announced: Mutex::new(None),
            };
            // Validates the URLs now; connections are made on use.
            sentinel
                .client()
                .map_err(|e| format!("redis.sentinel_nodes: {e}"))?;
            (None, Some(Arc::new(sentinel)))
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

    pub fn is_sentinel(&self) -> bool {
        self.sentinel.is_some()
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
        let master = sentinel.master().await?;
        Ok(Conn::Sentinel(SentinelConn {
            sentinel: sentinel.clone(),
            conn: master.conn.clone(),
            master,
        }))
    }

    /// Sentinel: the master's address as last learnt (a lookup or `+switch-master`), changing
    /// when the master moves. `None` in the other modes.
    pub fn master_moves(&self) -> Option<watch::Receiver<String>> {
        self.sentinel.as_ref().map(|s| s.address.subscribe())
    }

    /// Sentinel only (returns at once otherwise): listens on every sentinel for
    /// `+switch-master` naming our master and moves to the new one at once: the connection is
    /// dropped (the next call asks the sentinels) and [`RedisHandle::master_moves`] changes
    /// (the invalidation subscriber resubscribes). Ends when `stop` fires.
    pub async fn follow_failovers(self: Arc<Self>, stop: CancellationToken) {
        let Some(sentinel) = &self.sentinel else {
            return;
        };
        let watchers = sentinel
            .nodes
            .iter()
            .map(|node| watch_sentinel(sentinel, node, &stop));
        futures_util::future::join_all(watchers).await;
    }

    /// A plain client for a dedicated connection (pub/sub): the single node, the current
    /// sentinel master, or the first reachable cluster node (PUBLISH reaches every node).
    pub async fn pubsub_client(&self) -> Result<redis::Client, RedisFailure> {
        let open = |url: &str| {
            redis::Client::open(url).map_err(|e| RedisFailure::Unavailable(e.to_string()))
        };
        if let Some(sentinel) = &self.sentinel {
            return Ok(sentinel.master().await?.client.clone());
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

    /// Runs the write `pipe` and, on a Sentinel setup, confirms it reached the primary: on the
    /// same connection `ROLE` says master, every sentinel that answers names that
    /// node and none is promoting a replica, and when a replica is up (in `ROLE` or to the sentinels) `WAIT 1` sees it
    /// acknowledged. A write taken by a primary that a failover is demoting is lost with it, so
    /// it must not count. Single node and Cluster: the write's answer is the confirmation (no
    /// sentinels to ask; a Cluster node answers MOVED, not OK, once it lost the slot).
    /// `Err((reply, why))`: `reply` is the write's own answer when it ran but was not confirmed.
    pub async fn pipe_on_primary(
        &self,
        pipe: &Pipeline,
    ) -> Result<Value, (Option<Value>, RedisFailure)> {
        let mut conn = self.conn().await.map_err(|e| (None, e))?;
        let reply: Value = self
            .timed(pipe.query_async(&mut conn))
            .await
            .map_err(|e| (None, e))?;
        let (Some(sentinel), Conn::Sentinel(link)) = (&self.sentinel, &mut conn) else {
            return Ok(reply);
        };
        match self.confirm_primary(sentinel, link).await {
            Ok(()) => Ok(reply),
            Err(why) => {
                sentinel.forget(&link.master);
                Err((Some(reply), why))
            }
        }
    }

    async fn confirm_primary(
        &self,
        sentinel: &Sentinel,
        link: &mut SentinelConn,
    ) -> Result<(), RedisFailure> {
        let address = link.master.address.clone();
        let not_confirmed = |why: String| {
            RedisFailure::Unavailable(format!("write on {address} not confirmed: {why}"))
        };
        let role: redis::Role = self
            .timed(redis::cmd("ROLE").query_async(&mut link.conn))
            .await?;
        let redis::Role::Primary { replicas, .. } = role else {
            return Err(not_confirmed("the node is no longer the primary".into()));
        };
        let views: Vec<SentinelView> =
            futures_util::future::join_all(sentinel.nodes.iter().map(|n| self.ask(sentinel, n)))
                .await
                .into_iter()
                .flatten()
                .collect();
        // Every sentinel that answers, not a majority: the others learn of a failover from the
        // leader's hello messages up to seconds later, while the old primary still takes writes.
        let naming_us = views
            .iter()
            .filter(|v| v.master.as_deref() == Some(&*address))
            .count();
        // ... and a majority of the configured ones: a minority cut off with the old primary
        // would otherwise confirm it.
        if views.len() * 2 <= sentinel.nodes.len() || naming_us < views.len() {
            return Err(not_confirmed(format!(
                "{naming_us} of {} sentinels ({} reachable) name it the primary",
                sentinel.nodes.len(),
                views.len()
            )));
        }
        if views.iter().any(|v| v.promoting) {
            return Err(not_confirmed("a sentinel is promoting a replica".into()));
        }
        let replica_up = !replicas.is_empty() || views.iter().any(|v| v.healthy_replicas > 0);
        if !replica_up {
            return Ok(());
        }
        // Half the timeout: the answer must come back within the connection's own timeout.
        let wait_ms = (self.timeout / 2).as_millis().max(1) as u64;
        let acked: i64 = self
            .timed(
                redis::cmd("WAIT")
                    .arg(1)
                    .arg(wait_ms)
                    .query_async(&mut link.conn),
            )
            .await?;
        if acked < 1 {
            return Err(not_confirmed(format!(
                "no replica acknowledged it within {wait_ms} ms"
            )));
        }
        Ok(())
    }

    /// One sentinel's view of our master, `None` when it does not answer in time.
    async fn ask(&self, sentinel: &Sentinel, node: &str) -> Option<SentinelView> {
        let ask = async {
            let client = redis::Client::open(node)?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let master: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&sentinel.name)
                .query_async(&mut conn)
                .await?;
            let replicas: Vec<HashMap<String, String>> = redis::cmd("SENTINEL")
                .arg("replicas")
                .arg(&sentinel.name)
                .query_async(&mut conn)
                .await?;
            let healthy_replicas = replicas.iter().filter(|r| is_healthy_replica(r)).count();
            let promoting = replicas.iter().any(|r| {
                r.get("flags")
                    .is_some_and(|f| f.split(',').any(|f| f == "promoted"))
            });
            Ok::<_, RedisError>(SentinelView {
                master: master.map(|(host, port)| format!("{host}:{port}")),
                healthy_replicas,
                promoting,
            })
        };
        match tokio::time::timeout(self.timeout, ask).await {
            Ok(Ok(view)) => Some(view),
            _ => None,
        }
    }
}

/// A replica as a sentinel lists it that should acknowledge writes: not down, not
/// disconnected, and reporting itself a replica (after a failover the old primary is listed as
/// a replica but keeps saying master, and accepting writes, until the sentinels convert it).
fn is_healthy_replica(replica: &HashMap<String, String>) -> bool {
    let field = |name: &str| replica.get(name).map(String::as_str).unwrap_or_default();
    let down = field("flags")
        .split(',')
        .any(|f| matches!(f, "s_down" | "o_down" | "disconnected" | "promoted"));
    !down && field("role-reported") == "slave"
}

/// `+switch-master` says `<name> <old-ip> <old-port> <new-ip> <new-port>`: the new address
/// when `name` is ours.
fn switched_to(message: &str, master: &str) -> Option<String> {
    let mut words = message.split_ascii_whitespace();
    if words.next()? != master {
        return None;
    }
    let (_, _, ip, port) = (words.next()?, words.next()?, words.next()?, words.next()?);
    Some(format!("{ip}:{port}"))
}

/// Keeps one subscription to `+switch-master` on the sentinel at `node`, reconnecting with a
/// backoff, until `stop` fires.
async fn watch_sentinel(sentinel: &Sentinel, node: &str, stop: &CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    let mut failing = false;
    while !stop.is_cancelled() {
        let listened = tokio::select! {
            _ = stop.cancelled() => return,
            listened = listen_for_switches(sentinel, node) => listened,
        };
        match listened {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) if !failing => {
                tracing::warn!(sentinel = %redacted(node), error = %e,
                    "cannot follow failovers on this sentinel; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Returns `Ok` when the subscription ended (closed, or a missed ping).
async fn listen_for_switches(sentinel: &Sentinel, node: &str) -> Result<(), RedisFailure> {
    use futures_util::StreamExt;
    let timed = |e: tokio::time::error::Elapsed| RedisFailure::Unavailable(e.to_string());
    let client = redis::Client::open(node)?;
    let mut pubsub = tokio::time::timeout(sentinel.timeout, client.get_async_pubsub())
        .await
        .map_err(timed)??;
    tokio::time::timeout(sentinel.timeout, pubsub.subscribe("+switch-master"))
        .await
        .map_err(timed)??;
    let (mut sink, mut messages) = pubsub.split();
    let mut ping = tokio::time::interval(Duration::from_secs(10));
    ping.tick().await;
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { return Ok(()) };
                let Ok(text) = message.get_payload::<String>() else { continue };
                if let Some(address) = switched_to(&text, &sentinel.name) {
                    tracing::info!(master = %sentinel.name, %address, "redis master switched");
                    sentinel.switched(&address);
                }
            }
            _ = ping.tick() => {
                // A half-open socket never ends the stream; a missed ping does.
                let pong = tokio::time::timeout(sentinel.timeout, sink.ping::<Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return Ok(());
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_master_messages() {
        let cases = [
            (
                "mymaster 127.0.0.1 6379 127.0.0.1 6380",
                Some("127.0.0.1:6380"),
            ),
            ("other 127.0.0.1 6379 127.0.0.1 6380", None),
            ("mymaster 127.0.0.1 6379", None),
            ("", None),
        ];
        for (message, want) in cases {
            assert_eq!(
                switched_to(message, "mymaster").as_deref(),
                want,
                "{message}"
            );
        }
    }

    #[test]
    fn only_harmless_commands_repeat_after_a_lost_connection() {
        let cases = [
            (redis::cmd("HGETALL").arg("k").clone(), true),
            (redis::cmd("evalsha").arg("x").clone(), true),
            (redis::cmd("HSET").arg("k").arg("f").arg("v").clone(), false),
            (redis::cmd("SET").arg("k").arg("v").arg("NX").clone(), false),
            (redis::cmd("INCR").arg("k").clone(), false),
        ];
        for (cmd, want) in cases {
            assert_eq!(is_repeatable(&cmd), want, "{:?}", cmd.args_iter().next());
        }
    }

    #[test]
    fn replicas_that_must_acknowledge_writes() {
        let cases = [
            ("slave", "slave", true),
            ("slave,s_down", "slave", false),
            ("slave,s_down,disconnected", "slave", false),
            ("slave,disconnected", "slave", false),
            ("slave", "master", false),
            ("slave,promoted", "slave", false),
        ];
        for (flags, role, want) in cases {
            let replica = HashMap::from([
                ("flags".to_string(), flags.to_string()),
                ("role-reported".to_string(), role.to_string()),
            ]);
            assert_eq!(is_healthy_replica(&replica), want, "{flags} {role}");
        }
    }
}
