//! sandgate on a real Redis Cluster started from Debian's `redis-server`: three primaries and
//! three replicas (`redis-cli --cluster create --cluster-replicas 1`). Registry reads across
//! slots, invalidation reaching proxies subscribed on other nodes than the writer's, activity
//! writes, signed links, every admin command, and a killed primary replaced by its replica.
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::admin_cli::{ok, put_runner, sandgate, start_proxy};
use support::redis::{RedisServer, INVALIDATION_CHANNEL, KEY_PREFIX};
use support::{demo_runner, send, within, Proxy};

fn sandbox_key(id: &str) -> String {
    format!("{KEY_PREFIX}sandbox:{id}")
}

/// A proxy (and CLI) config on the cluster; `seeds` in order: the proxy subscribes to
/// invalidations on the first one that answers.
struct ClusterConfig {
    _dir: tempfile::TempDir,
    path: PathBuf,
    text: String,
}

fn cluster_config(seeds: &[&RedisServer], extra: &str) -> ClusterConfig {
    let seeds: Vec<String> = seeds.iter().map(|n| format!("\"{}\"", n.url())).collect();
    let text = format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [registry]\nbackend = \"redis\"\n[registry.cache]\nttl = \"10m\"\n\
         [activity]\nsink = \"redis\"\nthrottle = \"0s\"\nflush_interval = \"50ms\"\n{extra}\n\
         [redis]\ntimeout = \"1s\"\ncluster_nodes = [{}]\n",
        seeds.join(", ")
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, &text).unwrap();
    ClusterConfig {
        _dir: dir,
        path,
        text,
    }
}

/// The status `proxy` answers for `label` (`3000-sbx-a`), with an optional preview token.
async fn status(proxy: &Proxy, label: &str, token: Option<&str>) -> u16 {
    let host = format!("{label}.preview.localhost");
    let headers: Vec<(&str, &str)> = token
        .map(|t| vec![("x-daytona-preview-token", t)])
        .unwrap_or_default();
    send(proxy.addr, "GET", &host, "/", &headers, b"")
        .await
        .status
}

/// The index of the primary serving `key`'s slot.
fn owner(nodes: &[RedisServer], key: &str) -> usize {
    nodes
        .iter()
        .position(|n| n.is_primary() && n.owns(key))
        .unwrap_or_else(|| panic!("no primary serves {key}"))
}

/// What an admin command must leave behind, checked in Redis or through both proxies.
enum Then {
    Nothing,
    /// Both proxies answer `status` for `label` (invalidation reached them).
    Serves {
        label: &'static str,
        token: Option<&'static str>,
        status: u16,
    },
    /// The sandbox hash's field holds `value` ("" = absent).
    Field {
        sandbox: &'static str,
        field: &'static str,
        value: &'static str,
    },
    /// `GET key` answers `value` ("" = absent).
    Key {
        key: &'static str,
        value: &'static str,
    },
}

struct Row {
    /// `RUNNER` stands for the runner's URL, `TOKEN` for the last signed link's token.
    args: &'static [&'static str],
    /// Fragments of the command's output.
    expect: &'static [&'static str],
    then: Then,
}

const API_KEY_SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const API_KEY: &str =
    "sandgate:api-key:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Every admin command, in an order where each one's effect is visible. `sbx-a`, `sbx-c` and
/// `sbx-d` hash to three different primaries (asserted).
fn rows() -> Vec<Row> {
    use Then::*;
    let row = |args, expect, then| Row { args, expect, then };
    vec![
        row(
            &[
                "registry",
                "put-runner",
                "--id",
                "r1",
                "--url",
                "RUNNER",
                "--api-key",
                "k",
            ],
            &["\"stored\":true"],
            Nothing,
        ),
        row(
            &[
                "registry",
                "put-sandbox",
                "--id",
                "sbx-a",
                "--runner",
                "r1",
                "--public",
            ],
            &["\"stored\":true"],
            Serves {
                label: "3000-sbx-a",
                token: None,
                status: 200,
            },
        ),
        row(
            &[
                "registry",
                "put-sandbox",
                "--id",
                "sbx-c",
                "--runner",
                "r1",
                "--public",
            ],
            &["\"stored\":true"],
            Serves {
                label: "3000-sbx-c",
                token: None,
                status: 200,
            },
        ),
        row(
            &[
                "registry",
                "put-sandbox",
                "--id",
                "sbx-d",
                "--runner",
                "r1",
                "--auth-token",
                "tok-d",
            ],
            &["\"stored\":true"],
            Serves {
                label: "3000-sbx-d",
                token: Some("tok-d"),
                status: 200,
            },
        ),
        row(
            &["registry", "get", "--sandbox", "sbx-c"],
            &["\"runner\":\"r1\"", "\"api_key\":\"***\""],
            Nothing,
        ),
        row(
            &["registry", "list"],
            &[
                "\"id\":\"r1\"",
                "\"id\":\"sbx-a\"",
                "\"id\":\"sbx-c\"",
                "\"id\":\"sbx-d\"",
            ],
            Nothing,
        ),
        row(
            &[
                "registry",
                "state",
                "--sandbox",
                "sbx-a",
                "--state",
                "stopped",
            ],
            &["\"state\":\"stopped\""],
            Serves {
                label: "3000-sbx-a",
                token: None,
                status: 503,
            },
        ),
        row(
            &[
                "registry",
                "state",
                "--sandbox",
                "sbx-a",
                "--state",
                "started",
            ],
            &["\"state\":\"started\""],
            Serves {
                label: "3000-sbx-a",
                token: None,
                status: 200,
            },
        ),
        row(
            &["registry", "wake", "--sandbox", "sbx-a", "--off"],
            &["\"wake\":false"],
            Field {
                sandbox: "sbx-a",
                field: "wake",
                value: "false",
            },
        ),
        row(
            &["registry", "wake", "--sandbox", "sbx-a", "--on"],
            &["\"wake\":true"],
            Field {
                sandbox: "sbx-a",
                field: "wake",
                value: "",
            },
        ),
        row(
            &["registry", "identity", "--sandbox", "sbx-a", "--on"],
            &["\"identity\":true"],
            Field {
                sandbox: "sbx-a",
                field: "identity",
                value: "true",
            },
        ),
        row(
            &["registry", "identity", "--sandbox", "sbx-a", "--off"],
            &["\"identity\":false"],
            Field {
                sandbox: "sbx-a",
                field: "identity",
                value: "",
            },
        ),
        row(
            &[
                "registry",
                "upstream-host",
                "--sandbox",
                "sbx-a",
                "--template",
                "localhost:${PORT}",
            ],
            &["\"upstream_host\":\"localhost:${PORT}\""],
            Field {
                sandbox: "sbx-a",
                field: "upstream_host",
                value: "localhost:${PORT}",
            },
        ),
        row(
            &["registry", "upstream-host", "--sandbox", "sbx-a", "--clear"],
            &["\"upstream_host\":null"],
            Field {
                sandbox: "sbx-a",
                field: "upstream_host",
                value: "",
            },
        ),
        row(
            &[
                "registry",
                "ports",
                "--sandbox",
                "sbx-c",
                "--mode",
                "declared",
            ],
            &["\"ports\":\"declared\""],
            Serves {
                label: "3000-sbx-c",
                token: None,
                status: 404,
            },
        ),
        row(
            &[
                "registry",
                "expose",
                "--sandbox",
                "sbx-c",
                "--port",
                "3000",
                "--public",
            ],
            &["\"access\":\"public\""],
            Serves {
                label: "3000-sbx-c",
                token: None,
                status: 200,
            },
        ),
        row(
            &[
                "registry",
                "unexpose",
                "--sandbox",
                "sbx-c",
                "--port",
                "3000",
            ],
            &["\"access\":null"],
            Serves {
                label: "3000-sbx-c",
                token: None,
                status: 404,
            },
        ),
        row(
            &["registry", "ports", "--sandbox", "sbx-c", "--mode", "all"],
            &["\"ports\":\"all\""],
            Serves {
                label: "3000-sbx-c",
                token: None,
                status: 200,
            },
        ),
        row(
            &[
                "registry",
                "put-token",
                "--sandbox",
                "sbx-d",
                "--token",
                "tok-3000",
                "--port",
                "3000",
            ],
            &["\"ports\":[3000]"],
            Serves {
                label: "3000-sbx-d",
                token: Some("tok-3000"),
                status: 200,
            },
        ),
        row(
            &[
                "registry",
                "rm-token",
                "--sandbox",
                "sbx-d",
                "--token",
                "tok-3000",
            ],
            &["\"removed\":true"],
            Serves {
                label: "3000-sbx-d",
                token: Some("tok-3000"),
                status: 401,
            },
        ),
        row(
            &[
                "registry",
                "put-api-key",
                "--key-sha256",
                API_KEY_SHA,
                "--organization",
                "org-1",
            ],
            &["\"stored\":true"],
            Key {
                key: API_KEY,
                value: "org-1",
            },
        ),
        row(
            &["registry", "rm-api-key", "--key-sha256", API_KEY_SHA],
            &["\"removed\":true"],
            Key {
                key: API_KEY,
                value: "",
            },
        ),
        row(
            &[
                "preview-url",
                "sign",
                "--sandbox",
                "sbx-d",
                "--port",
                "3000",
            ],
            &["http://3000-", ".preview.localhost"],
            Serves {
                label: "3000-TOKEN",
                token: None,
                status: 200,
            },
        ),
        row(
            // The proxies recorded the link's use (another key, another slot).
            &["preview-url", "list", "--sandbox", "sbx-d"],
            &["\"port\":3000", "\"last_used\":\"20"],
            Nothing,
        ),
        row(
            &[
                "preview-url",
                "revoke",
                "--token",
                "TOKEN",
                "--port",
                "3000",
            ],
            &["\"revoked\":true"],
            Serves {
                label: "3000-TOKEN",
                token: None,
                status: 404,
            },
        ),
        row(
            &["preview-url", "list", "--sandbox", "sbx-d"],
            &["[]"],
            Nothing,
        ),
        row(
            &["activity", "show", "sbx-a", "--json"],
            &["\"sandbox\":\"sbx-a\""],
            Nothing,
        ),
        row(
            &["activity", "idle", "--older-than", "0s", "--json"],
            &["\"sandbox\":\"sbx-c\"", "\"sandbox\":\"sbx-d\""],
            Nothing,
        ),
        row(
            &["registry", "rm", "--sandbox", "sbx-c"],
            &["\"removed\":true"],
            Serves {
                label: "3000-sbx-c",
                token: None,
                status: 404,
            },
        ),
        row(
            // The runner's sandboxes now name a missing runner: bad data, for both proxies.
            &["registry", "rm", "--runner", "r1"],
            &["\"removed\":true"],
            Serves {
                label: "3000-sbx-a",
                token: None,
                status: 502,
            },
        ),
    ]
}

/// Reads may need a moment (the proxies' activity and link-use flushes): they are retried.
fn is_read(args: &[&str]) -> bool {
    matches!(args.get(1), Some(&("get" | "list" | "show" | "idle")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_command_works_across_slots_and_reaches_proxies_on_other_nodes() {
    let nodes = RedisServer::cluster_with_replicas();
    let owners: Vec<usize> = ["sbx-a", "sbx-c", "sbx-d"]
        .iter()
        .map(|id| owner(&nodes, &sandbox_key(id)))
        .collect();
    assert!(
        owners[0] != owners[1] && owners[1] != owners[2] && owners[0] != owners[2],
        "the sandboxes must sit on three primaries: {owners:?}"
    );
    // The writer's PUBLISH goes to the channel's node; the proxies subscribe elsewhere: one on
    // another primary, one on a replica.
    let publish_node = owner(&nodes, INVALIDATION_CHANNEL);
    let primary_seed = owners.iter().copied().find(|&i| i != publish_node).unwrap();
    let replica_seed = nodes.iter().position(|n| !n.is_primary()).unwrap();
    let rest: Vec<&RedisServer> = nodes.iter().collect();
    let seeded = |first: usize| {
        let mut seeds = vec![&nodes[first]];
        seeds.extend(rest.iter().filter(|n| n.port != nodes[first].port));
        seeds
    };
    let cli = cluster_config(&seeded(publish_node), "");
    let config_a = cluster_config(&seeded(primary_seed), "");
    let config_b = cluster_config(&seeded(replica_seed), "");
    let proxies = [start_proxy(&config_a.text), start_proxy(&config_b.text)];
    for seed in [primary_seed, replica_seed] {
        let clients = nodes[seed].cli(&["CLIENT", "LIST"]);
        assert!(clients.contains("sub=1"), "subscriber on {seed}: {clients}");
    }
    assert!(!nodes[publish_node]
        .cli(&["CLIENT", "LIST"])
        .contains("sub=1"));

    let runner = demo_runner("k").await.to_string();
    let runner_url = format!("http://{runner}");
    let mut token = String::new();
    for row in rows() {
        let args: Vec<String> = row
            .args
            .iter()
            .map(|a| a.replace("RUNNER", &runner_url).replace("TOKEN", &token))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output_holds = |out: &str| row.expect.iter().all(|e| out.contains(e));
        let out = if is_read(&args) {
            let mut out = String::new();
            within(Duration::from_secs(5), &format!("{args:?}"), || {
                out = ok(&cli.path, &args);
                let held = output_holds(&out);
                async move { held }
            })
            .await;
            out
        } else {
            ok(&cli.path, &args)
        };
        assert!(output_holds(&out), "{args:?}: {out}");
        if args[..2] == ["preview-url", "sign"] {
            token = out["http://3000-".len().."http://3000-".len() + 16].to_string();
        }
        match row.then {
            Then::Nothing => {}
            Then::Serves {
                label,
                token: credential,
                status: want,
            } => {
                let label = label.replace("TOKEN", &token);
                let took = within(Duration::from_secs(5), &format!("{args:?}"), || async {
                    status(&proxies[0], &label, credential).await == want
                        && status(&proxies[1], &label, credential).await == want
                })
                .await;
                println!(
                    "{:<40} both proxies answer {want} after {took:?}",
                    args[..2].join(" ") + " " + args[2]
                );
            }
            Then::Field {
                sandbox,
                field,
                value,
            } => {
                let stored = nodes[0].cluster_cli(&["HGET", &sandbox_key(sandbox), field]);
                assert_eq!(stored.trim(), value, "{args:?}");
            }
            Then::Key { key, value } => {
                assert_eq!(
                    nodes[0].cluster_cli(&["GET", key]).trim(),
                    value,
                    "{args:?}"
                );
            }
        }
    }
    // Admin writes on one key run as a transaction on its node.
    let execs = nodes[owners[0]].calls_of("exec");
    assert!(execs >= 1, "no MULTI/EXEC on sbx-a's node");
    for proxy in &proxies {
        assert!(!proxy.stderr().contains("recording signed link uses failed"));
    }
}

#[tokio::test]
async fn activity_marks_land_with_and_without_cross_replica_locks() {
    use sandgate::activity::redis::RedisActivitySink;
    use sandgate::activity::{Activity, ActivityConfig};
    let nodes = RedisServer::cluster_with_replicas();
    let config = cluster_config(&[&nodes[0], &nodes[1]], "");
    let config = sandgate::config::Config::from_toml_str(&config.text).unwrap();
    let handle = Arc::new(sandgate::registry::redis::RedisHandle::new(&config.redis).unwrap());
    let activity_config = |dedupe: bool| ActivityConfig {
        throttle: Duration::from_secs(if dedupe { 10 } else { 0 }),
        dedupe_across_replicas: dedupe,
        ..Default::default()
    };
    let ids: Vec<String> = (0..300).map(|i| format!("sbx-{i}")).collect();
    // Replicas count the commands they replay: only primaries' counts tell what was sent.
    let zadds = || -> u64 {
        nodes
            .iter()
            .filter(|n| n.is_primary())
            .map(|n| n.calls_of("zadd"))
            .sum()
    };
    let zadds_before = zadds();

    let plain = RedisActivitySink::new(handle.clone(), &activity_config(false));
    let marks = Activity::new(&activity_config(false));
    for id in &ids[..200] {
        marks.mark(id);
    }
    assert_eq!(marks.flush(&plain).await.unwrap(), 200);
    assert_eq!(zadds() - zadds_before, 1, "one variadic ZADD");

    // Two replicas sharing the locks: the second write inside the window is skipped.
    let a = RedisActivitySink::new(handle.clone(), &activity_config(true));
    let b = RedisActivitySink::new(handle.clone(), &activity_config(true));
    let (a_marks, b_marks) = (
        Activity::new(&activity_config(true)),
        Activity::new(&activity_config(true)),
    );
    for id in &ids[200..] {
        a_marks.mark(id);
    }
    a_marks.flush(&a).await.unwrap();
    let first = nodes[0].cluster_cli(&["ZSCORE", "sandbox:activity", "sbx-250"]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    b_marks.mark("sbx-250");
    b_marks.flush(&b).await.unwrap();
    let again = nodes[0].cluster_cli(&["ZSCORE", "sandbox:activity", "sbx-250"]);
    assert_eq!(again, first, "the second replica's mark was skipped");
    assert_eq!(
        nodes[0].cluster_cli(&["ZCARD", "sandbox:activity"]).trim(),
        "300"
    );
    // The locks share the sorted set's slot, so one script takes them and writes the winners
    // atomically on that node.
    let set_node = owner(&nodes, "sandbox:activity");
    let lock = "sandgate:activity-lock:{sandbox:activity}:sbx-250";
    assert_eq!(owner(&nodes, lock), set_node);
    assert_eq!(nodes[set_node].cli(&["EXISTS", lock]).trim(), "1");
    let scripts = nodes[set_node].calls_of("eval") + nodes[set_node].calls_of("evalsha");
    println!(
        "two flushes with locks (100 marks, then 1) -> {scripts} script calls on the set's node"
    );
    assert!(scripts >= 1);
    let untagged = nodes[0].cluster_cli(&["EXISTS", "sandgate:activity-lock:sbx-250"]);
    assert_eq!(untagged.trim(), "0", "no lock outside the set's slot");
}

/// Requests `label` in a loop until `stop`; every status seen (0: no answer, e.g. a reset).
fn reader(
    proxy: SocketAddr,
    label: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u16>> {
    tokio::spawn(async move {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {label}.preview.localhost\r\nConnection: close\r\n\r\n"
        );
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            seen.push(support::status_of(
                &support::raw(proxy, request.clone()).await,
            ));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    })
}

/// Prints the proxy's log when the test fails: what it saw during the failover.
struct LogOnPanic<'a>(&'a Proxy);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.0.stderr();
            eprintln!("proxy log:\n{}", &log[log.len().saturating_sub(20_000)..]);
        }
    }
}

/// Asks `proxy` for `label` until it answers 200 (20 s hang detector); every status seen.
async fn until_served(proxy: &Proxy, label: &str, what: &str) -> Vec<u16> {
    let statuses = Mutex::new(Vec::new());
    within(Duration::from_secs(20), what, || async {
        let s = status(proxy, label, None).await;
        statuses.lock().unwrap().push(s);
        s == 200
    })
    .await;
    statuses.into_inner().unwrap()
}

/// Runs the admin CLI until it succeeds; the time it took.
async fn until_cli_succeeds(config: &Path, args: &[&str], limit: Duration) -> Duration {
    let failures = Mutex::new(Vec::new());
    let took = within(limit, &format!("{args:?}"), || {
        let (success, _, stderr) = sandgate(config, args);
        if !success {
            failures.lock().unwrap().push(stderr);
        }
        async move { success }
    })
    .await;
    let failures = failures.into_inner().unwrap();
    if let Some(first) = failures.first() {
        println!("  {} failed attempt(s), first: {first}", failures.len());
    }
    took
}

// Four workers: the admin CLI runs as a blocking child process while the reader keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_primary_is_replaced_and_nothing_is_stuck() {
    let mut nodes = RedisServer::cluster_with_replicas();
    // The victim serves sbx-a (cached), sbx-e (never read before the kill) and sbx-i (written
    // after it), and holds the proxy's invalidation subscription; the writer publishes
    // elsewhere; sbx-d lives on another primary.
    let victim = owner(&nodes, &sandbox_key("sbx-a"));
    for id in ["sbx-e", "sbx-i"] {
        assert_eq!(owner(&nodes, &sandbox_key(id)), victim, "{id}");
    }
    let publish_node = owner(&nodes, INVALIDATION_CHANNEL);
    assert_ne!(victim, publish_node);
    let elsewhere = owner(&nodes, &sandbox_key("sbx-d"));
    assert_ne!(elsewhere, victim);
    let mut seeds = vec![&nodes[victim]];
    seeds.extend(nodes.iter().filter(|n| n.port != nodes[victim].port));
    let config = cluster_config(&seeds, "");
    let cli = cluster_config(&[&nodes[publish_node]], "");
    let runner = demo_runner("k").await;
    put_runner(&cli.path, "r1", runner, "k");
    for id in ["sbx-a", "sbx-e", "sbx-d"] {
        ok(
            &cli.path,
            &[
                "registry",
                "put-sandbox",
                "--id",
                id,
                "--runner",
                "r1",
                "--public",
            ],
        );
    }
    let proxy = start_proxy(&config.text);
    let _log = LogOnPanic(&proxy);
    assert!(nodes[victim].cli(&["CLIENT", "LIST"]).contains("sub=1"));
    assert_eq!(
        support::get(proxy.addr, "3000-sbx-a.preview.localhost", "/")
            .await
            .status,
        200
    );
    let stop = Arc::new(AtomicBool::new(false));
    let hot = reader(proxy.addr, "3000-sbx-a", stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let replica_of_victim = {
        let id = nodes[victim].cli(&["CLUSTER", "MYID"]).trim().to_string();
        nodes
            .iter()
            .position(|n| {
                n.cli(&["INFO", "replication"]).contains("role:slave")
                    && n.cli(&["CLUSTER", "NODES"])
                        .lines()
                        .any(|l| l.contains("myself") && l.contains(&id))
            })
            .expect("the victim's replica")
    };
    nodes[victim].stop();
    let killed = Instant::now();
    println!("killed primary {victim}; its replica is node {replica_of_victim}");

    // The subscriber moves to the next seed at once.
    within(Duration::from_secs(10), "resubscribed", || async {
        proxy
            .stderr()
            .matches("subscribed to cache invalidations")
            .count()
            >= 2
    })
    .await;
    println!(
        "invalidations subscribed on another node {:?} after the kill",
        killed.elapsed()
    );
    // A miss on another primary's slots: Redis refuses every keyed command (CLUSTERDOWN) while
    // a slot has no primary (`cluster-require-full-coverage yes`, the default).
    let statuses = until_served(&proxy, "3000-sbx-d", "miss on another primary").await;
    println!(
        "cache miss on another primary's slots works {:?} after the kill ({} attempts before)",
        killed.elapsed(),
        statuses.len() - 1
    );
    let statuses = until_served(&proxy, "3000-sbx-e", "cache miss on the victim's slots").await;
    let miss = killed.elapsed();
    let mut seen = statuses.clone();
    seen.dedup();
    println!(
        "cache miss on the victim's slots works {miss:?} after the kill \
         ({} attempts before, statuses {seen:?})",
        statuses.len() - 1
    );
    let promoted = within(Duration::from_secs(10), "replica promoted", || async {
        nodes[replica_of_victim].is_primary()
    })
    .await;
    println!("replica is primary (checked {promoted:?} after the miss worked)");
    until_cli_succeeds(
        &cli.path,
        &[
            "registry",
            "put-sandbox",
            "--id",
            "sbx-i",
            "--runner",
            "r1",
            "--public",
        ],
        Duration::from_secs(20),
    )
    .await;
    println!(
        "admin write on the victim's slots works {:?} after the kill",
        killed.elapsed()
    );
    let served = within(Duration::from_secs(5), "new sandbox served", || async {
        support::get(proxy.addr, "3000-sbx-i.preview.localhost", "/")
            .await
            .status
            == 200
    })
    .await;
    println!("sandbox written after the failover served after {served:?}");

    // The subscriber moved off the dead node: a removal still reaches the proxy.
    ok(&cli.path, &["registry", "rm", "--sandbox", "sbx-a"]);
    let removed = within(Duration::from_secs(10), "rm after failover", || async {
        support::get(proxy.addr, "3000-sbx-a.preview.localhost", "/")
            .await
            .status
            == 404
    })
    .await;
    println!("rm after the failover reached the proxy in {removed:?}");
    stop.store(true, Ordering::Relaxed);
    let hot = hot.await.unwrap();
    let cut = hot.iter().position(|s| *s == 404).unwrap_or(hot.len());
    let failed: Vec<&u16> = hot[..cut].iter().filter(|s| **s != 200).collect();
    println!(
        "cached sandbox during the failover: {} requests, {} not 200",
        cut,
        failed.len()
    );
    assert!(failed.is_empty(), "a cached sandbox failed: {failed:?}");
    let ready = within(Duration::from_secs(5), "ready", || async {
        support::get(proxy.addr, "127.0.0.1", "/ready").await.status == 200
    })
    .await;
    println!("ready after {ready:?}");

    // The dead node comes back as a replica of its replacement; nothing else to do.
    nodes[victim].restart();
    let rejoined = within(Duration::from_secs(10), "rejoined", || async {
        let info = nodes[victim].cli(&["INFO", "replication"]);
        info.contains("role:slave") && info.contains("master_link_status:up")
    })
    .await;
    println!("the old primary rejoined as a replica {rejoined:?} after its restart");
    assert_eq!(
        support::get(proxy.addr, "3000-sbx-i.preview.localhost", "/")
            .await
            .status,
        200
    );
}

/// A primary acknowledges a write before its replica has it: a write no replica acknowledged
/// would be lost by a failover right now, so the admin CLI must not report it as done. With the
/// key's replica frozen, `put-sandbox` fails naming why; thawed, the same command succeeds.
#[tokio::test]
async fn a_write_no_replica_acknowledged_is_not_reported_as_done() {
    let nodes = RedisServer::cluster_with_replicas();
    let key = sandbox_key("sbx-w");
    let primary = owner(&nodes, &key);
    let replica = nodes
        .iter()
        .find(|n| n.replicates(nodes[primary].port))
        .expect("the primary's replica");
    let cli = cluster_config(&[&nodes[primary]], "");
    let put = [
        "registry",
        "put-sandbox",
        "--id",
        "sbx-w",
        "--address",
        "10.0.0.7",
    ];
    replica.signal("-STOP");
    let (success, _, stderr) = sandgate(&cli.path, &put);
    replica.signal("-CONT");
    assert!(!success, "reported as done without a replica");
    assert!(stderr.contains("no replica acknowledged"), "{stderr}");
    until_cli_succeeds(&cli.path, &put, Duration::from_secs(20)).await;
    assert!(nodes[primary]
        .cli(&["HGET", &key, "address"])
        .contains("10.0.0.7"));
}
