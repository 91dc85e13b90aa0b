//! Admin commands against Redis: the registry (`sandgate registry`), signed preview URLs
//! (`sandgate preview-url`) and recorded activity (`sandgate activity`). Every write publishes
//! the matching invalidation so proxies drop their cached copy at once. Output is JSON (or
//! text for activity); raw tokens are never printed back and token hashes only shortened.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use clap::{Args, Subcommand};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use serde_json::{json, Value};

use crate::base::clock::now_ms;
use crate::config::Config;
use crate::registry::ports::{check_port, scoped_ports};
use crate::registry::redis::conn::Conn;
use crate::registry::redis::{Invalidation, RedisFailure, RedisHandle};
use crate::registry::signed_preview::{
    is_signed_token, link_member, link_uses_key, links_index_key, new_signed_token,
    signed_preview_key, LINK_RECORDS_TTL_MS,
};
use crate::registry::{PortAccess, PortsMode, RunnerRecord, UpstreamHosts};

/// A preview token, given raw (`--token`) or as its SHA-256 (`--token-sha256`).
#[derive(Args, Debug)]
pub struct TokenArg {
    #[arg(
        long,
        required_unless_present = "token_sha256",
        conflicts_with = "token_sha256"
    )]
    token: Option<String>,
    #[arg(long)]
    token_sha256: Option<String>,
}

/// One sandbox's setting turned `--on` or `--off`.
#[derive(Args, Debug)]
pub struct Switch {
    #[arg(long)]
    sandbox: String,
    #[arg(long, required_unless_present = "off", conflicts_with = "off")]
    on: bool,
    #[arg(long)]
    off: bool,
}

#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Create or replace a runner.
    PutRunner {
        #[arg(long)]
        id: String,
        /// The runner's proxy base URL, e.g. http://10.0.0.5:3003.
        #[arg(long)]
        url: String,
        #[arg(long)]
        api_key: String,
        /// host:port of the runner's SSH endpoint.
        #[arg(long)]
        ssh_endpoint: Option<String>,
        /// How the runner speaks HTTP: http1 (default) or h2c (HTTP/2 prior knowledge).
        #[arg(long)]
        protocol: Option<String>,
    },
    /// Create or replace a sandbox (ids are stored lower-case).
    PutSandbox {
        #[arg(long)]
        id: String,
        #[arg(long, required_unless_present = "address", conflicts_with = "address")]
        runner: Option<String>,
        #[arg(long)]
        address: Option<String>,
        #[arg(long)]
        public: bool,
        #[arg(long, default_value = "started")]
        state: String,
        #[arg(long)]
        organization: Option<String>,
        /// The preview token; only its SHA-256 is stored.
        #[arg(long)]
        auth_token: Option<String>,
        /// Who handles CORS: managed (default, the proxy) or passthrough (the app).
        #[arg(long)]
        cors: Option<String>,
        /// all (default: ports without an entry follow --public) or declared (they answer 404).
        #[arg(long)]
        ports: Option<String>,
        /// Send the app the signed X-Sandgate-Identity header (needs `[identity] enabled`).
        #[arg(long)]
        identity: bool,
        /// The Host the app sees on every port, e.g. 'localhost:${PORT}'.
        #[arg(long)]
        upstream_host: Option<String>,
    },
    /// Opt a sandbox in to (--on) or out of (--off) the signed X-Sandgate-Identity header.
    Identity(Switch),
    /// Let requests wake the sandbox when it is not running (--on, the default) or not (--off).
    Wake(Switch),
    /// Set the sandbox's lifecycle state (`started`, `starting`, `stopped`, `error`…), as an
    /// orchestrator does; held requests see it at once.
    State {
        #[arg(long)]
        sandbox: String,
        #[arg(long)]
        state: String,
    },
    /// Set (--template, with ${PORT} and ${SANDBOX}) or clear the Host the app sees, for every
    /// port or for one (--port).
    UpstreamHost {
        #[arg(long)]
        sandbox: String,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        template: Option<String>,
        #[arg(long)]
        clear: bool,
    },
    /// Give one port of a sandbox its own access: public (anyone) or private (a credential).
    Expose {
        #[arg(long)]
        sandbox: String,
        #[arg(long)]
        port: u16,
        #[arg(long, required_unless_present = "private", conflicts_with = "private")]
        public: bool,
        #[arg(long)]
        private: bool,
    },
    /// Remove a port's entry (it then follows the sandbox's mode).
    Unexpose {
        #[arg(long)]
        sandbox: String,
        #[arg(long)]
        port: u16,
    },
    /// Set what ports without an entry do: all (follow the public flag) or declared (404).
    Ports {
        #[arg(long)]
        sandbox: String,
        #[arg(long)]
        mode: String,
    },
    /// Store a preview token bound to some ports (only its SHA-256).
    PutToken {
        #[arg(long)]
        sandbox: String,
        #[command(flatten)]
        token: TokenArg,
        /// A port the token opens (repeat for more).
        #[arg(long = "port", required = true)]
        ports: Vec<u16>,
    },
    /// Revoke a port-scoped preview token.
    RmToken {
        #[arg(long)]
        sandbox: String,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Store an API key (only its SHA-256): it opens the sandboxes of its organisation.
    PutApiKey {
        #[arg(
            long,
            required_unless_present = "key_sha256",
            conflicts_with = "key_sha256"
        )]
        key: Option<String>,
        /// The key's SHA-256 in hex, when the key itself should not pass through this machine.
        #[arg(long)]
        key_sha256: Option<String>,
        #[arg(long)]
        organization: String,
    },
    /// Revoke an API key (cached verdicts expire within `[registry.cache] ttl`).
    RmApiKey {
        #[arg(
            long,
            required_unless_present = "key_sha256",
            conflicts_with = "key_sha256"
        )]
        key: Option<String>,
        #[arg(long)]
        key_sha256: Option<String>,
    },
    /// Remove a sandbox or a runner.
    Rm {
        #[arg(long, required_unless_present = "runner", conflicts_with = "runner")]
        sandbox: Option<String>,
        #[arg(long)]
        runner: Option<String>,
    },
    /// List runners and sandboxes (single node / Sentinel: SCAN).
    List {
        /// At most this many keys of each kind.
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// Show one sandbox and its runner.
    Get {
        #[arg(long)]
        sandbox: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PreviewUrlCommand {
    /// Mint a signed preview URL `scheme://PORT-TOKEN.DOMAIN` for one port.
    Sign {
        #[arg(long)]
        sandbox: String,
        #[arg(long)]
        port: u16,
        /// Lifetime, 1s..24h.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Preview domain (default: the first of `[proxy] domains`).
        #[arg(long)]
        domain: Option<String>,
        /// http or https (default: `[proxy] public_scheme`).
        #[arg(long)]
        scheme: Option<String>,
    },
    /// A sandbox's signed links: port, expiry, last use (tokens shown as a hash prefix).
    List {
        #[arg(long)]
        sandbox: String,
    },
    /// Revoke a signed preview token.
    Revoke {
        #[arg(long)]
        token: String,
        #[arg(long)]
        port: u16,
    },
}

#[derive(Subcommand, Debug)]
pub enum ActivityCommand {
    /// Sandboxes whose last recorded activity is older than the given age.
    Idle {
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Duration,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
    },
    /// The last recorded activity of one sandbox.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Redis(#[from] RedisFailure),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
}

type Result<T> = std::result::Result<T, AdminError>;

pub(crate) fn invalid<T>(message: impl Into<String>) -> Result<T> {
    Err(AdminError::Invalid(message.into()))
}

fn check_id(kind: &str, id: &str) -> Result<String> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return invalid(format!("{kind} id {id:?} must be [A-Za-z0-9_-]+"));
    }
    Ok(id.to_ascii_lowercase())
}

/// The Redis verbs against a config that does not use Redis would only print "Connection
/// refused": say what the config lacks instead. `file` names the config.
pub fn needs_redis(config: &Config, file: &str) -> Result<()> {
    use crate::config::registry::Backend;
    let redis = &config.redis;
    let defaults = crate::config::RedisConfig::default();
    let configured = redis.url != defaults.url
        || !redis.cluster_nodes.is_empty()
        || !redis.sentinel_nodes.is_empty();
    let sink = config.activity.sink == crate::config::activity::Sink::Redis;
    if config.registry.backend == Backend::Redis || sink || configured {
        return Ok(());
    }
    let backend = format!("{:?}", config.registry.backend).to_lowercase();
    invalid(format!(
        "this command needs registry.backend = \"redis\" (or a [redis] url); {file} uses {backend}"
    ))
}

/// How many `[redis] timeout`s a Sentinel admin write may take to be confirmed on the primary
/// (a failover: sentinels notice, elect, promote).
const CONFIRM_ROUNDS: u32 = 10;

pub(crate) struct Admin {
    pub(crate) redis: RedisHandle,
    pub(crate) prefix: String,
    channel: String,
}

impl Admin {
    pub(crate) fn new(config: &Config) -> Result<Admin> {
        Ok(Admin {
            redis: RedisHandle::new(&config.redis).map_err(AdminError::Invalid)?,
            prefix: config.redis.key_prefix.clone(),
            channel: config.redis.invalidation_channel.clone(),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// A transaction (`MULTI`/`EXEC`). Every admin pipeline touches one key, so on a Cluster it
    /// runs on that key's node; the invalidation goes out right after ([`Admin::write`]).
    pub(crate) fn pipe(&self) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe
    }

    /// Runs `pipe` and publishes `what`: in the same transaction where possible; on a Cluster
    /// (pipelines must stay in one slot) right after it.
    pub(crate) async fn write<T: redis::FromRedisValue>(
        &self,
        mut pipe: redis::Pipeline,
        what: Invalidation<'_>,
    ) -> Result<T> {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.channel).arg(what.message());
        if self.redis.is_cluster() {
            let out = self.write_unannounced(pipe).await?;
            self.redis.query::<()>(&publish).await?;
            return Ok(out);
        }
        pipe.add_command(publish).ignore();
        self.write_unannounced(pipe).await
    }

    /// Runs `pipe` as a confirmed write (replicated on a Cluster, on the primary behind
    /// Sentinel) without an invalidation: for keys no proxy caches (the domains index).
    pub(crate) async fn write_unannounced<T: redis::FromRedisValue>(
        &self,
        pipe: redis::Pipeline,
    ) -> Result<T> {
        if self.redis.is_cluster() {
            let out = self.redis.pipe(&pipe).await?;
            self.confirm_replicated(&pipe).await?;
            return Ok(out);
        }
        if !self.redis.is_sentinel() {
            return Ok(self.redis.pipe(&pipe).await?);
        }
        let reply = self.write_on_primary(&pipe).await?;
        redis::from_redis_value(reply)
            .map_err(|e| AdminError::Redis(RedisFailure::Command(e.to_string())))
    }

    /// Sentinel: a write taken by a primary that a failover is demoting is lost with it, so
    /// the write is run again (every admin write leaves the same state twice) on the master
    /// the sentinels name until one run is confirmed on the primary, within [`CONFIRM_ROUNDS`]
    /// times `[redis] timeout`. Answers the first run's reply: a later run may find its own
    /// effect (`DEL` answering 0) when the first one did land.
    async fn write_on_primary(&self, pipe: &redis::Pipeline) -> Result<redis::Value> {
        let deadline = tokio::time::Instant::now() + self.redis.config().timeout * CONFIRM_ROUNDS;
        let mut first_reply = None;
        loop {
            let why = match self.redis.pipe_on_primary(pipe).await {
                Ok(reply) => return Ok(first_reply.unwrap_or(reply)),
                Err((reply, why)) => {
                    first_reply = first_reply.or(reply);
                    why
                }
            };
            if matches!(why, RedisFailure::Command(_)) {
                return Err(why.into());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AdminError::Redis(RedisFailure::Unavailable(format!(
                    "the write may not have reached the primary ({why}); check and retry"
                ))));
            }
            tracing::debug!(error = %why, "admin write not confirmed; running it again");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Cluster: a primary acknowledges a write before its replica has it, and a primary killed
    /// then loses it with its promotion. So the write counts once a replica acknowledged it
    /// (`WAIT 1` on the key's primary, over the connection that wrote), or when that primary
    /// has no replica to lose it to (`ROLE`).
    async fn confirm_replicated(&self, pipe: &redis::Pipeline) -> Result<()> {
        let Some(key) = first_key(pipe) else {
            return Ok(());
        };
        let Conn::Cluster(mut cluster) = self.redis.conn().await? else {
            return Ok(());
        };
        let route = || {
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                &key,
                SlotAddr::Master,
            )))
        };
        let wait_ms = (self.redis.config().timeout / 2).as_millis().max(1) as u64;
        let mut wait = redis::cmd("WAIT");
        wait.arg(1).arg(wait_ms);
        let acked: i64 = redis::from_redis_value(
            self.redis
                .timed(cluster.route_command(wait, route()))
                .await?,
        )
        .map_err(|e| RedisFailure::Command(format!("WAIT answer: {e}")))?;
        if acked >= 1 {
            return Ok(());
        }
        let role: redis::Role = redis::from_redis_value(
            self.redis
                .timed(cluster.route_command(redis::cmd("ROLE"), route()))
                .await?,
        )
        .map_err(|e| RedisFailure::Command(format!("ROLE answer: {e}")))?;
        match role {
            redis::Role::Primary { replicas, .. } if replicas.is_empty() => Ok(()),
            _ => Err(RedisFailure::Unavailable(format!(
                "the write reached a primary but no replica acknowledged it within {wait_ms} ms \
                 (a failover now would lose it); check with `registry get` and retry"
            ))
            .into()),
        }
    }

    /// Sets (`Some`) or removes (`None`) one field of an existing sandbox hash, and publishes
    /// `sandbox:<id>`: every proxy drops its cached record at once. Answers the id.
    async fn set_field(&self, sandbox: &str, field: &str, value: Option<&str>) -> Result<String> {
        let id = check_id("sandbox", sandbox)?;
        let key = self.key("sandbox", &id);
        let exists: bool = self.redis.query(redis::cmd("EXISTS").arg(&key)).await?;
        if !exists {
            return Err(AdminError::NotFound(format!("sandbox {id:?} not found")));
        }
        let mut pipe = self.pipe();
        match value {
            Some(value) => pipe.hset(&key, field, value).ignore(),
            None => pipe.hdel(&key, field).ignore(),
        };
        self.write::<()>(pipe, Invalidation::Sandbox(&id)).await?;
        Ok(id)
    }

    pub(crate) async fn hgetall(&self, key: &str) -> Result<BTreeMap<String, String>> {
        Ok(self.redis.query(redis::cmd("HGETALL").arg(key)).await?)
    }

    /// The keys matching `pattern` (at most `limit`), by `SCAN`: on a Cluster over every
    /// primary (each holds its own slots; one node's SCAN sees only its keys).
    async fn scan(&self, pattern: &str, limit: usize) -> Result<Vec<String>> {
        let mut conn = self.redis.conn().await?;
        let mut keys = Vec::new();
        match &mut conn {
            Conn::Cluster(cluster) => {
                for (host, port) in self.primaries(cluster).await? {
                    if keys.len() >= limit {
                        break;
                    }
                    let route = SingleNodeRoutingInfo::ByAddress { host, port };
                    let node = Some(RoutingInfo::SingleNode(route));
                    self.scan_node(&mut conn, node, pattern, limit, &mut keys)
                        .await?;
                }
            }
            _ => {
                self.scan_node(&mut conn, None, pattern, limit, &mut keys)
                    .await?
            }
        }
        keys.sort();
        keys.dedup();
        keys.truncate(limit);
        Ok(keys)
    }

    /// One node's keys: the connection's own node, or on a Cluster the node `route` names.
    async fn scan_node(
        &self,
        conn: &mut Conn,
        route: Option<RoutingInfo>,
        pattern: &str,
        limit: usize,
        keys: &mut Vec<String>,
    ) -> Result<()> {
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            let page = match (&mut *conn, &route) {
                (Conn::Cluster(cluster), Some(route)) => {
                    self.redis
                        .timed(cluster.route_command(scan, route.clone()))
                        .await?
                }
                (conn, _) => self.redis.timed(scan.query_async(conn)).await?,
            };
            let (next, batch): (u64, Vec<String>) = redis::from_redis_value(page)
                .map_err(|e| RedisFailure::Command(format!("SCAN answer: {e}")))?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() >= limit {
                return Ok(());
            }
        }
    }

    /// The primaries' addresses, from `CLUSTER SLOTS` (the topology the client routes by).
    async fn primaries(&self, cluster: &mut ClusterConnection) -> Result<Vec<(String, u16)>> {
        let slots: redis::Value = self
            .redis
            .timed(redis::cmd("CLUSTER").arg("SLOTS").query_async(cluster))
            .await?;
        let ranges: Vec<Vec<redis::Value>> = redis::from_redis_value(slots)
            .map_err(|e| RedisFailure::Command(format!("CLUSTER SLOTS answer: {e}")))?;
        let mut primaries: Vec<(String, u16)> = ranges
            .iter()
            .filter_map(|range| {
                // [start, end, [host, port, id, …] (the primary), replicas…]
                let node: Vec<redis::Value> = redis::from_redis_value_ref(range.get(2)?).ok()?;
                let host = redis::from_redis_value_ref(node.first()?).ok()?;
                let port = redis::from_redis_value_ref(node.get(1)?).ok()?;
                Some((host, port))
            })
            .collect();
        primaries.sort();
        primaries.dedup();
        if primaries.is_empty() {
            return Err(RedisFailure::Command("CLUSTER SLOTS names no primary".into()).into());
        }
        Ok(primaries)
    }
}

/// The key of a pipeline's first command (every admin pipeline touches one key).
fn first_key(pipe: &redis::Pipeline) -> Option<Vec<u8>> {
    match pipe.cmd_iter().next()?.args_iter().nth(1)? {
        redis::Arg::Simple(key) => Some(key.to_vec()),
        _ => None,
    }
}

/// Checks `template` with the proxy's own parser: for `port`, or every port. The error names
/// `flag`.
fn check_upstream_host(id: &str, port: Option<u16>, template: &str, flag: &str) -> Result<()> {
    let checked = match port {
        None => UpstreamHosts::new(id, Some(template), []),
        Some(port) => UpstreamHosts::new(id, None, [(port, template)]),
    };
    checked
        .map(drop)
        .map_err(|e| AdminError::Invalid(format!("{flag}: {e}")))
}

/// `upstream_host` (every port) or `upstream_host:<port>`.
fn upstream_host_field(port: Option<u16>) -> Result<String> {
    match port {
        None => Ok("upstream_host".into()),
        Some(0) => invalid("--port: port 0 is not a port"),
        Some(port) => Ok(format!("upstream_host:{port}")),
    }
}

/// The hex SHA-256 of a preview token, from the token or given directly.
impl TokenArg {
    /// The token's SHA-256 in hex.
    fn hash(&self) -> Result<String> {
        api_key_hash(self.token.as_deref(), self.token_sha256.as_deref())
            .or_else(|_| invalid("give --token or --token-sha256 (64 hex digits)"))
    }
}

/// A stored hash as JSON, secrets masked.
fn shown(fields: &BTreeMap<String, String>) -> Value {
    let mut out = serde_json::Map::new();
    for (k, v) in fields {
        let v = match k.as_str() {
            "api_key" => "***".to_string(),
            "auth_token_sha256" => format!("{}…", v.get(..8).unwrap_or(v)),
            _ => v.clone(),
        };
        // A scoped token's field is named by its hash: shorten the name too.
        let k = match k.strip_prefix("token:") {
            Some(hash) => format!("token:{}…", hash.get(..8).unwrap_or(hash)),
            None => k.clone(),
        };
        out.insert(k, Value::String(v));
    }
    Value::Object(out)
}

/// The hex SHA-256 of an API key, from the key or given directly.
fn api_key_hash(key: Option<&str>, key_sha256: Option<&str>) -> Result<String> {
    match (key, key_sha256) {
        (Some(key), _) if !key.is_empty() => Ok(hex::encode(crate::registry::sha256(key))),
        (None, Some(h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(h.to_ascii_lowercase())
        }
        _ => invalid("give --key or --key-sha256 (64 hex digits)"),
    }
}

pub async fn registry(config: &Config, command: RegistryCommand) -> Result<String> {
    let admin = Admin::new(config)?;
    match command {
        RegistryCommand::PutRunner {
            id,
            url,
            api_key,
            ssh_endpoint,
            protocol,
        } => {
            let id = check_id("runner", &id)?;
            RunnerRecord::new(&id, &url, &api_key).map_err(AdminError::Invalid)?;
            if let Some(protocol) = &protocol {
                protocol
                    .parse::<crate::upstream::Protocol>()
                    .map_err(AdminError::Invalid)?;
            }
            let key = admin.key("runner", &id);
            let mut pipe = admin.pipe();
            pipe.del(&key).ignore();
            let mut fields = vec![("url", url.trim_end_matches('/')), ("api_key", &api_key)];
            if let Some(ssh) = &ssh_endpoint {
                fields.push(("ssh_endpoint", ssh));
            }
            if let Some(protocol) = &protocol {
                fields.push(("protocol", protocol));
            }
            pipe.hset_multiple(&key, &fields).ignore();
            // A runner's sandboxes are not indexed: drop every cached sandbox.
            admin.write::<()>(pipe, Invalidation::All).await?;
            Ok(json!({"runner": id, "stored": true}).to_string())
        }
        RegistryCommand::PutSandbox {
            id,
            runner,
            address,
            public,
            state,
            organization,
            auth_token,
            cors,
            ports,
            identity,
            upstream_host,
        } => {
            let id = check_id("sandbox", &id)?;
            let mut fields: Vec<(&str, String)> = Vec::new();
            if identity {
                fields.push(("identity", "true".into()));
            }
            if let Some(template) = upstream_host {
                check_upstream_host(&id, None, &template, "--upstream-host")?;
                fields.push(("upstream_host", template));
            }
            if let Some(ports) = ports {
                ports
                    .parse::<PortsMode>()
                    .map_err(|e| AdminError::Invalid(format!("--ports: {e}")))?;
                fields.push(("ports", ports));
            }
            if let Some(cors) = cors {
                cors.parse::<crate::registry::CorsMode>()
                    .map_err(AdminError::Invalid)?;
                fields.push(("cors", cors));
            }
            if let Some(runner) = runner {
                let runner = check_id("runner", &runner)?;
                let exists: bool = admin
                    .redis
                    .query(redis::cmd("EXISTS").arg(admin.key("runner", &runner)))
                    .await?;
                if !exists {
                    return Err(AdminError::NotFound(format!(
                        "runner {runner:?} not found (put-runner first)"
                    )));
                }
                fields.push(("runner", runner));
            }
            if let Some(address) = address {
                if address.is_empty() || address.contains(['/', ' ', '@']) {
                    return invalid(format!("address {address:?} is not a host"));
                }
                fields.push(("address", address));
            }
            fields.push(("public", public.to_string()));
            fields.push(("state", state));
            if let Some(org) = organization {
                fields.push(("organization", org));
            }
            if let Some(token) = auth_token {
                fields.push((
                    "auth_token_sha256",
                    hex::encode(crate::registry::sha256(&token)),
                ));
            }
            let key = admin.key("sandbox", &id);
            let mut pipe = admin.pipe();
            pipe.del(&key).ignore();
            pipe.hset_multiple(&key, &fields).ignore();
            admin.write::<()>(pipe, Invalidation::Sandbox(&id)).await?;
            Ok(json!({"sandbox": id, "stored": true}).to_string())
        }
        RegistryCommand::Expose {
            sandbox,
            port,
            public,
            private: _,
        } => {
            check_port(port).map_err(|e| AdminError::Invalid(format!("--port: {e}")))?;
            let access = if public {
                PortAccess::Public
            } else {
                PortAccess::Private
            };
            let field = format!("port:{port}");
            let id = admin
                .set_field(&sandbox, &field, Some(access.as_str()))
                .await?;
            Ok(json!({"sandbox": id, "port": port, "access": access.as_str()}).to_string())
        }
        RegistryCommand::Unexpose { sandbox, port } => {
            let id = admin
                .set_field(&sandbox, &format!("port:{port}"), None)
                .await?;
            Ok(json!({"sandbox": id, "port": port, "access": null}).to_string())
        }
        RegistryCommand::Ports { sandbox, mode } => {
            let mode: PortsMode = mode
                .parse()
                .map_err(|e| AdminError::Invalid(format!("--mode: {e}")))?;
            let id = admin
                .set_field(&sandbox, "ports", Some(mode.as_str()))
                .await?;
            Ok(json!({"sandbox": id, "ports": mode.as_str()}).to_string())
        }
        RegistryCommand::Identity(Switch { sandbox, on, .. }) => {
            // Off removes the field: the record then says what a new one says.
            let id = admin
                .set_field(&sandbox, "identity", on.then_some("true"))
                .await?;
            Ok(json!({"sandbox": id, "identity": on}).to_string())
        }
        RegistryCommand::Wake(Switch { sandbox, on, .. }) => {
            // On removes the field: waking is the default.
            let id = admin
                .set_field(&sandbox, "wake", (!on).then_some("false"))
                .await?;
            Ok(json!({"sandbox": id, "wake": on}).to_string())
        }
        RegistryCommand::State { sandbox, state } => {
            let valid = !state.is_empty()
                && state.len() <= 64
                && state.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
            if !valid {
                return Err(AdminError::Invalid(
                    "--state must be a lower-case word such as started, stopped, error".into(),
                ));
            }
            let id = admin.set_field(&sandbox, "state", Some(&state)).await?;
            Ok(json!({"sandbox": id, "state": state}).to_string())
        }
        RegistryCommand::UpstreamHost {
            sandbox,
            port,
            template,
            clear: _,
        } => {
            let field = upstream_host_field(port)?;
            if let Some(template) = &template {
                let id = check_id("sandbox", &sandbox)?;
                check_upstream_host(&id, port, template, "--template")?;
            }
            let id = admin
                .set_field(&sandbox, &field, template.as_deref())
                .await?;
            Ok(json!({"sandbox": id, "port": port, "upstream_host": template}).to_string())
        }
        RegistryCommand::PutToken {
            sandbox,
            token,
            ports,
        } => {
            let hash = token.hash()?;
            let ports =
                scoped_ports(ports).map_err(|e| AdminError::Invalid(format!("--port: {e}")))?;
            let list: Vec<String> = ports.iter().map(u16::to_string).collect();
            let id = admin
                .set_field(&sandbox, &format!("token:{hash}"), Some(&list.join(",")))
                .await?;
            Ok(
                json!({"sandbox": id, "token_sha256": format!("{}…", &hash[..8]), "ports": ports})
                    .to_string(),
            )
        }
        RegistryCommand::RmToken { sandbox, token } => {
            let hash = token.hash()?;
            let id = admin
                .set_field(&sandbox, &format!("token:{hash}"), None)
                .await?;
            Ok(
                json!({"sandbox": id, "token_sha256": format!("{}…", &hash[..8]), "removed": true})
                    .to_string(),
            )
        }
        RegistryCommand::PutApiKey {
            key,
            key_sha256,
            organization,
        } => {
            let hash = api_key_hash(key.as_deref(), key_sha256.as_deref())?;
            if organization.is_empty() {
                return invalid("--organization must not be empty");
            }
            let mut pipe = admin.pipe();
            pipe.set(admin.key("api-key", &hash), &organization)
                .ignore();
            admin.write::<()>(pipe, Invalidation::All).await?;
            Ok(json!({"api_key_sha256": format!("{}…", &hash[..8]), "organization": organization, "stored": true}).to_string())
        }
        RegistryCommand::RmApiKey { key, key_sha256 } => {
            let hash = api_key_hash(key.as_deref(), key_sha256.as_deref())?;
            let mut pipe = admin.pipe();
            pipe.del(admin.key("api-key", &hash));
            let (removed,): (u32,) = admin.write(pipe, Invalidation::All).await?;
            if removed == 0 {
                return Err(AdminError::NotFound("no such API key".into()));
            }
            Ok(json!({"api_key_sha256": format!("{}…", &hash[..8]), "removed": true}).to_string())
        }
        RegistryCommand::Rm { sandbox, runner } => {
            let (kind, id) = match (sandbox, runner) {
                (Some(s), _) => ("sandbox", check_id("sandbox", &s)?),
                (None, Some(r)) => ("runner", check_id("runner", &r)?),
                (None, None) => return invalid("give --sandbox or --runner"),
            };
            let mut pipe = admin.pipe();
            pipe.del(admin.key(kind, &id));
            let what = if kind == "sandbox" {
                Invalidation::Sandbox(&id)
            } else {
                Invalidation::All
            };
            let (removed,): (u32,) = admin.write(pipe, what).await?;
            if removed == 0 {
                return Err(AdminError::NotFound(format!("{kind} {id:?} not found")));
            }
            Ok(json!({kind: id, "removed": true}).to_string())
        }
        RegistryCommand::List { limit } => {
            let mut out = serde_json::Map::new();
            for (kind, plural) in [("runner", "runners"), ("sandbox", "sandboxes")] {
                let keys = admin.scan(&admin.key(kind, "*"), limit).await?;
                let mut entries = Vec::new();
                for key in keys {
                    let fields = admin.hgetall(&key).await.unwrap_or_default();
                    let id = key.rsplit(':').next().unwrap_or(&key).to_string();
                    entries.push(json!({"id": id, "fields": shown(&fields)}));
                }
                out.insert(plural.to_string(), Value::Array(entries));
            }
            Ok(Value::Object(out).to_string())
        }
        RegistryCommand::Get { sandbox } => {
            let id = check_id("sandbox", &sandbox)?;
            let fields = admin.hgetall(&admin.key("sandbox", &id)).await?;
            if fields.is_empty() {
                return Err(AdminError::NotFound(format!("sandbox {id:?} not found")));
            }
            let runner = match fields.get("runner") {
                Some(r) => shown(&admin.hgetall(&admin.key("runner", r)).await?),
                None => Value::Null,
            };
            Ok(json!({"id": id, "fields": shown(&fields), "runner": runner}).to_string())
        }
    }
}

pub async fn preview_url(config: &Config, command: PreviewUrlCommand) -> Result<String> {
    let admin = Admin::new(config)?;
    match command {
        PreviewUrlCommand::Sign {
            sandbox,
            port,
            ttl,
            domain,
            scheme,
        } => {
            let id = check_id("sandbox", &sandbox)?;
            if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(24 * 3600) {
                return invalid("--ttl must be between 1s and 24h");
            }
            let scheme = scheme.unwrap_or_else(|| config.proxy.public_scheme.as_str().to_string());
            if !matches!(scheme.as_str(), "http" | "https") {
                return invalid("--scheme must be http or https");
            }
            let domain = match domain.or_else(|| config.proxy.domains.first().cloned()) {
                Some(d) => d,
                None => return invalid("no --domain and no [proxy] domains"),
            };
            let token = new_signed_token();
            let ttl_ms = ttl.as_millis() as u64;
            let index = links_index_key(&admin.prefix, &id);
            let mut pipe = admin.pipe();
            pipe.cmd("SET")
                .arg(signed_preview_key(port, &token))
                .arg(&id)
                .arg("PX")
                .arg(ttl_ms)
                .arg("NX");
            // Drops a cached "invalid" answer for this token, however unlikely.
            let (stored,): (Option<String>,) =
                admin.write(pipe, Invalidation::Signed(&token)).await?;
            if stored.is_none() {
                return invalid("token collision; try again");
            }
            // The index is another key (another Cluster slot): its own round trip.
            let mut pipe = redis::pipe();
            pipe.zadd(&index, link_member(port, &token), now_ms() + ttl_ms)
                .ignore();
            pipe.pexpire(&index, LINK_RECORDS_TTL_MS as i64).ignore();
            admin.redis.pipe::<()>(&pipe).await?;
            Ok(format!("{scheme}://{port}-{token}.{domain}"))
        }
        PreviewUrlCommand::Revoke { token, port } => {
            if !is_signed_token(&token) {
                return invalid("a signed preview token is 16 characters [a-z0-9]");
            }
            let key = signed_preview_key(port, &token);
            let sandbox: Option<String> = admin.redis.query(redis::cmd("GET").arg(&key)).await?;
            let mut pipe = admin.pipe();
            pipe.del(&key);
            let (removed,): (u32,) = admin.write(pipe, Invalidation::Signed(&token)).await?;
            if let Some(id) = &sandbox {
                // Other keys (other Cluster slots): one command each.
                let member = link_member(port, &token);
                let index = links_index_key(&admin.prefix, id);
                admin
                    .redis
                    .query::<()>(redis::cmd("ZREM").arg(index).arg(&member))
                    .await?;
                let uses = link_uses_key(&admin.prefix, id);
                admin
                    .redis
                    .query::<()>(redis::cmd("HDEL").arg(uses).arg(&member))
                    .await?;
            }
            if removed == 0 {
                return Err(AdminError::NotFound(
                    "no such token for that port (expired or revoked)".into(),
                ));
            }
            Ok(json!({"revoked": true, "port": port}).to_string())
        }
        PreviewUrlCommand::List { sandbox } => {
            let id = check_id("sandbox", &sandbox)?;
            let index = links_index_key(&admin.prefix, &id);
            let now = now_ms();
            let mut pipe = admin.pipe();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(now)
                .ignore();
            pipe.cmd("ZRANGE")
                .arg(&index)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES");
            let (links,): (Vec<(String, f64)>,) = admin.redis.pipe(&pipe).await?;
            let uses: BTreeMap<String, u64> = admin
                .redis
                .query(redis::cmd("HGETALL").arg(link_uses_key(&admin.prefix, &id)))
                .await?;
            let list: Vec<Value> = links
                .iter()
                .filter_map(|(member, expires)| {
                    let expires = *expires as u64;
                    let (port, hash) = member.split_once(':')?;
                    Some(json!({
                        "port": port.parse::<u16>().ok()?,
                        "token_sha256": format!("{}…", hash.get(..12)?),
                        "expires_at": iso(expires),
                        "expires_in_ms": expires.saturating_sub(now),
                        "last_used": uses.get(member).map(|ms| iso(*ms)),
                    }))
                })
                .collect();
            Ok(Value::Array(list).to_string())
        }
    }
}

pub(crate) fn iso(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn activity_entry(id: &str, ms: u64, now: u64) -> (Value, String) {
    let idle = Duration::from_millis(now.saturating_sub(ms) / 1000 * 1000);
    let idle_text = humantime::format_duration(idle).to_string();
    let json = json!({
        "sandbox": id,
        "last_activity": iso(ms),
        "last_activity_ms": ms,
        "idle_for": idle_text,
        "idle_for_ms": now.saturating_sub(ms),
    });
    let text = format!("{id}\t{}\tidle {idle_text}", iso(ms));
    (json, text)
}

pub async fn activity(config: &Config, command: ActivityCommand) -> Result<String> {
    let admin = Admin::new(config)?;
    let key = &config.activity.redis_key;
    let now = now_ms();
    match command {
        ActivityCommand::Idle {
            older_than,
            json,
            limit,
        } => {
            let cutoff = now.saturating_sub(older_than.as_millis() as u64);
            let rows: Vec<(String, f64)> = admin
                .redis
                .query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg("-inf")
                        .arg(format!("({cutoff}"))
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit),
                )
                .await?;
            let entries: Vec<_> = rows
                .iter()
                .map(|(id, ms)| activity_entry(id, *ms as u64, now))
                .collect();
            if json {
                let list: Vec<_> = entries.into_iter().map(|(j, _)| j).collect();
                return Ok(Value::Array(list).to_string());
            }
            let lines: Vec<_> = entries.into_iter().map(|(_, t)| t).collect();
            Ok(lines.join("\n"))
        }
        ActivityCommand::Show { id, json } => {
            let score: Option<f64> = admin
                .redis
                .query(redis::cmd("ZSCORE").arg(key).arg(&id))
                .await?;
            let Some(ms) = score else {
                return Err(AdminError::NotFound(format!(
                    "no activity recorded for {id:?}"
                )));
            };
            let (j, t) = activity_entry(&id, ms as u64, now);
            Ok(if json { j.to_string() } else { t })
        }
    }
}
