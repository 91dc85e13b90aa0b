//! A throwaway `redis-server` per test: own free port, no persistence, killed on drop.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Extra arguments (cluster mode, sentinel config), kept for restarts.
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(|_, _| Vec::new())
    }

    /// `args(dir, port)` gives the extra arguments (the first may be a config file path). A
    /// server that exits at once (a port taken between the check and its bind) is started again
    /// on another port.
    pub fn start_with(args: impl Fn(&std::path::Path, u16) -> Vec<String>) -> RedisServer {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = super::free_port();
            let mut server = RedisServer {
                port,
                child: None,
                extra: args(dir.path(), port),
                dir,
            };
            match server.try_start() {
                Ok(()) => return server,
                Err(failure) => failures.push(failure),
            }
        }
        panic!("redis-server did not start: {failures:#?}");
    }

    /// A sentinel on its own port watching `master` as `mymaster`.
    pub fn sentinel_for(master: &RedisServer) -> RedisServer {
        let master_port = master.port;
        Self::start_with(|dir, _| {
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                     sentinel down-after-milliseconds mymaster 5000\n"
                ),
            )
            .expect("sentinel.conf");
            vec![conf.display().to_string(), "--sentinel".into()]
        })
    }

    /// Three cluster masters holding all slots; waits for `cluster_state:ok`.
    pub fn cluster() -> Vec<RedisServer> {
        Self::cluster_of(0)
    }

    /// Three primaries holding all slots and one replica each (`redis-cli --cluster create
    /// --cluster-replicas 1`), `cluster-node-timeout` 1000 ms so a killed primary's replica takes
    /// over within seconds. Waits until every node says `cluster_state:ok`, sees six nodes, and
    /// every replica's link to its primary is up.
    pub fn cluster_with_replicas() -> Vec<RedisServer> {
        Self::cluster_of(1)
    }

    fn cluster_of(replicas_each: usize) -> Vec<RedisServer> {
        let count = 3 * (1 + replicas_each);
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                Self::start_with(|dir, _| {
                    let dir = dir.display().to_string();
                    // The bus port is chosen like the others: the default (port + 10000) lies
                    // in the ephemeral range, where anything may hold it.
                    let bus = super::free_port().to_string();
                    let args = [
                        "--cluster-enabled",
                        "yes",
                        "--dir",
                        &dir,
                        "--cluster-port",
                        &bus,
                    ];
                    // Fast failovers only where a replica can take over: without one, a
                    // stall of the loaded test machine must not mark a node failed.
                    let timeout = ["--cluster-node-timeout", "1000"];
                    let timeout = if replicas_each > 0 { &timeout[..] } else { &[] };
                    args.iter().chain(timeout).map(|a| a.to_string()).collect()
                })
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas_each.to_string()])
            .arg("--cluster-yes")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "cluster create");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !nodes.iter().all(|n| n.cluster_node_ready(count)) {
            assert!(Instant::now() < deadline, "cluster not ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        nodes
    }

    /// `cluster_state:ok`, `nodes` known, and (on a replica) the link to its primary up.
    fn cluster_node_ready(&self, nodes: usize) -> bool {
        let info = self.try_cli(&["CLUSTER", "INFO"]).unwrap_or_default();
        let known = format!("cluster_known_nodes:{nodes}");
        if !info.contains("cluster_state:ok") || !info.contains(&known) {
            return false;
        }
        let replication = self.try_cli(&["INFO", "replication"]).unwrap_or_default();
        replication.contains("role:master") || replication.contains("master_link_status:up")
    }

    /// A cluster node that is currently a primary (`role:master`).
    pub fn is_primary(&self) -> bool {
        self.try_cli(&["INFO", "replication"])
            .is_some_and(|info| info.contains("role:master"))
    }

    /// Whether this node serves `key`'s slot (a primary answers here instead of `MOVED`).
    pub fn owns(&self, key: &str) -> bool {
        self.try_cli(&["TYPE", key])
            .is_some_and(|out| !out.contains("MOVED"))
    }

    /// Runs one command against the cluster this node belongs to (`redis-cli -c` follows
    /// redirections); its raw output.
    pub fn cluster_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-c", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli -c");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: it keeps its connections but
    /// answers nothing, as a stalled replica does.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// The replica following the primary on `port` (its `INFO replication`).
    pub fn replicates(&self, port: u16) -> bool {
        self.try_cli(&["INFO", "replication"])
            .is_some_and(|info| info.contains(&format!("master_port:{port}\r")))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        if let Err(failure) = self.try_start() {
            panic!("{failure}");
        }
    }

    /// Starts on `self.port`; waits until it answers. The error quotes the server's log.
    fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "already running");
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new("redis-server");
        let (first, rest) = match self.extra.first() {
            Some(conf) if !conf.starts_with("--") => (Some(conf.as_str()), &self.extra[1..]),
            _ => (None, &self.extra[..]),
        };
        command.args(first);
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--logfile", &log.display().to_string()])
            .args(rest)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = self.child.as_ref().map_or(0, Child::id);
        let outcome = loop {
            if self.try_cli(&["PING"]).is_some_and(|o| o.trim() == "PONG") {
                // Ours, not another test process's server that took the port first.
                let info = self.try_cli(&["INFO", "server"]).unwrap_or_default();
                if info.contains(&format!("process_id:{pid}\r")) {
                    return Ok(());
                }
                break "answered by another redis-server (the port was taken)".to_string();
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                break format!("exited ({status})");
            }
            if Instant::now() > deadline {
                break "no PONG within 10 s".to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stop();
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        Err(format!(
            "redis-server on port {} {outcome}; its log ends:\n{}",
            self.port,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs one command with `redis-cli` and returns its raw output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// `INFO commandstats` as command → calls.
    pub fn command_calls(&self) -> HashMap<String, u64> {
        self.cli(&["INFO", "commandstats"])
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_string(), calls))
            })
            .collect()
    }

    pub fn calls_of(&self, command: &str) -> u64 {
        self.command_calls().get(command).copied().unwrap_or(0)
    }

    /// One primary, one replica and three sentinels (quorum 2) watching them as `mymaster`,
    /// failing over after 1 s of silence. Waits until the replica is in sync and every
    /// sentinel knows the replica and the other sentinels (a failover needs both).
    pub fn sentinel_group() -> SentinelGroup {
        let primary = Self::start();
        let primary_port = primary.port.to_string();
        let replica = Self::start_with(|_, _| {
            ["--replicaof", "127.0.0.1", &primary_port]
                .map(String::from)
                .to_vec()
        });
        let sentinels = (0..3)
            .map(|_| Self::sentinel_with(&primary, SENTINEL_GROUP_SETTINGS))
            .collect();
        let group = SentinelGroup {
            nodes: vec![primary, replica],
            sentinels,
        };
        group.wait_until_ready();
        group
    }

    /// A sentinel watching `master` as `mymaster` with quorum 2 and `settings` lines.
    fn sentinel_with(master: &RedisServer, settings: &str) -> RedisServer {
        let master_port = master.port;
        Self::start_with(|dir, _| {
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!("sentinel monitor mymaster 127.0.0.1 {master_port} 2\n{settings}"),
            )
            .expect("sentinel.conf");
            vec![conf.display().to_string(), "--sentinel".into()]
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the [`Orchestrator`] does with a start request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `state` goes `starting`, then `started` after the delay.
    Starts,
    /// `state` goes `starting`, then `error` after the delay.
    Errors,
}

/// Whatever runs the sandboxes, as the `redis` wake backend sees it: subscribed to the wake
/// channel, it counts each start request (`PUBLISH <channel> <id>`), sets the sandbox hash's
/// `state` to `starting`, and after the delay (and the gate) to the outcome's state, then
/// publishes `sandbox:<id>` on the invalidation channel. Stops when dropped.
pub struct Orchestrator {
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    behaviour: std::sync::Arc<std::sync::Mutex<(Duration, Outcome)>>,
    gate: super::gate::Gate,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The default names: `[redis] key_prefix`, `invalidation_channel`, `[registry.wake] channel`.
pub const KEY_PREFIX: &str = "sandgate:";
pub const INVALIDATION_CHANNEL: &str = "sandgate:invalidate";
pub const WAKE_CHANNEL: &str = "sandgate:wake";

impl Orchestrator {
    /// Subscribed (the subscription is confirmed) to [`WAKE_CHANNEL`] on `redis`.
    pub async fn start(redis: &RedisServer, delay: Duration) -> Orchestrator {
        use futures_util::StreamExt;
        let client = ::redis::Client::open(redis.url()).expect("redis url");
        let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
        pubsub.subscribe(WAKE_CHANNEL).await.expect("subscribe");
        let writer = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let requests: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
        let behaviour = std::sync::Arc::new(std::sync::Mutex::new((delay, Outcome::Starts)));
        let gate = super::gate::Gate::default();
        let (seen, chosen, passed) = (requests.clone(), behaviour.clone(), gate.clone());
        let task = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let id: String = message.get_payload().unwrap_or_default();
                seen.lock().unwrap().push(id.clone());
                let (delay, outcome) = *chosen.lock().unwrap();
                tokio::spawn(start(writer.clone(), id, delay, outcome, passed.clone()));
            }
        });
        Orchestrator {
            requests,
            behaviour,
            gate,
            task,
        }
    }

    /// From now on, starts take `delay` and end in `outcome`.
    pub fn on_start(&self, delay: Duration, outcome: Outcome) {
        *self.behaviour.lock().unwrap() = (delay, outcome);
    }

    pub fn gate(&self) -> &super::gate::Gate {
        &self.gate
    }

    /// The start requests received (sandbox ids, in order).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

async fn start(
    mut redis: ::redis::aio::MultiplexedConnection,
    id: String,
    delay: Duration,
    outcome: Outcome,
    gate: super::gate::Gate,
) {
    let key = format!("{KEY_PREFIX}sandbox:{id}");
    let set_state = |state: &'static str| {
        let mut cmd = ::redis::cmd("HSET");
        cmd.arg(&key).arg("state").arg(state);
        cmd
    };
    let invalidate = || {
        let mut cmd = ::redis::cmd("PUBLISH");
        cmd.arg(INVALIDATION_CHANNEL).arg(format!("sandbox:{id}"));
        cmd
    };
    let _: Result<(), _> = set_state("starting").query_async(&mut redis).await;
    let _: Result<(), _> = invalidate().query_async(&mut redis).await;
    tokio::time::sleep(delay).await;
    gate.passed().await;
    let end = match outcome {
        Outcome::Starts => "started",
        Outcome::Errors => "error",
    };
    let _: Result<(), _> = set_state(end).query_async(&mut redis).await;
    let _: Result<(), _> = invalidate().query_async(&mut redis).await;
}

const SENTINEL_GROUP_SETTINGS: &str = "sentinel down-after-milliseconds mymaster 1000\n\
                                       sentinel failover-timeout mymaster 3000\n\
                                       sentinel parallel-syncs mymaster 1\n";

/// See [`RedisServer::sentinel_group`]. `nodes` are the data nodes (primary first at start;
/// a failover swaps the roles, so ask [`SentinelGroup::primary`]).
pub struct SentinelGroup {
    pub nodes: Vec<RedisServer>,
    pub sentinels: Vec<RedisServer>,
}

impl SentinelGroup {
    /// The `[redis]` lines naming the sentinels.
    pub fn redis_toml(&self) -> String {
        let urls: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("\"{}\"", s.url()))
            .collect();
        format!(
            "sentinel_master = \"mymaster\"\nsentinel_nodes = [{}]",
            urls.join(", ")
        )
    }

    /// The primary's port as the first sentinel names it.
    pub fn primary_port(&self) -> u16 {
        self.named_by(&self.sentinels[0])
            .expect("the sentinel names a primary")
    }

    fn named_by(&self, sentinel: &RedisServer) -> Option<u16> {
        let out = sentinel.try_cli(&["SENTINEL", "get-master-addr-by-name", "mymaster"])?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// The data node on `port`.
    pub fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a data node on that port")
    }

    /// Polls until every sentinel names `port` and that node says it is the master.
    pub fn wait_for_primary(&self, port: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        let settled = || {
            self.sentinels
                .iter()
                .all(|s| self.named_by(s) == Some(port))
                && self
                    .nodes
                    .iter()
                    .find(|n| n.port == port)
                    .and_then(|n| n.try_cli(&["ROLE"]))
                    .is_some_and(|role| role.starts_with("master"))
        };
        while !settled() {
            assert!(Instant::now() < deadline, "primary {port} not settled");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls until the node on `port` is a replica in sync with its primary.
    pub fn wait_for_replica(&self, port: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        let node = self.nodes.iter().find(|n| n.port == port).expect("node");
        while !node
            .try_cli(&["INFO", "replication"])
            .is_some_and(|i| i.contains("role:slave") && i.contains("master_link_status:up"))
        {
            assert!(Instant::now() < deadline, "replica {port} not in sync");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_until_ready(&self) {
        let primary = self.nodes[0].port;
        self.wait_for_replica(self.nodes[1].port, Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(15);
        let knows_all = |s: &RedisServer| {
            let info = s
                .try_cli(&["SENTINEL", "master", "mymaster"])
                .unwrap_or_default();
            let field = |name: &str| {
                let mut lines = info.lines();
                lines.find(|l| l.trim() == name)?;
                lines.next().map(|v| v.trim().to_string())
            };
            field("num-slaves").as_deref() == Some("1")
                && field("num-other-sentinels").as_deref() == Some("2")
        };
        while !self.sentinels.iter().all(knows_all) {
            assert!(Instant::now() < deadline, "sentinels not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.wait_for_primary(primary, Duration::from_secs(5));
    }

    /// `SENTINEL FAILOVER mymaster`: the graceful move an operator makes. Asked of the last
    /// sentinel: the proxies list the sentinels in order, so the first ones they ask learn of
    /// the failover late (from hello messages) and may still name the old primary.
    pub fn failover(&self) {
        let leader = self.sentinels.last().expect("sentinels");
        let out = leader.cli(&["SENTINEL", "FAILOVER", "mymaster"]);
        assert!(out.contains("OK"), "SENTINEL FAILOVER: {out}");
    }
}
