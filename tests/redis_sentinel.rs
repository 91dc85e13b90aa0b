//! Redis Sentinel: one primary, one replica and three sentinels (real `redis-server`s), the real
//! binary as proxy and admin CLI. Registry reads, invalidation reaching a second proxy, activity,
//! signed links and admin commands; then failovers (graceful `SENTINEL FAILOVER` and a killed
//! primary): what clients see, how long until writes and misses work again (printed), and the
//! attack: an admin write that lands on the demoted primary must not report success.
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::admin_cli::*;
use support::redis::{RedisServer, SentinelGroup};
use support::{demo_runner, get, within};

/// Generous hang detectors; the measured times are printed. The target for following a
/// failover is 2 s (measured: ~0.25 s); without following `+switch-master` it takes ~10 s
/// (until the sentinels convert the old primary), so 5 s tells the two apart.
const FOLLOWED: Duration = Duration::from_secs(5);
const RECOVERED: Duration = Duration::from_secs(20);

fn host(id: &str) -> String {
    format!("3000-{id}.preview.localhost")
}

async fn status(proxy: SocketAddr, id: &str) -> u16 {
    get(proxy, &host(id), "/").await.status
}

/// A config file using the group, with a runner registered and `sandboxes` put.
struct Setup {
    _dir: tempfile::TempDir,
    path: PathBuf,
    config: String,
}

async fn setup(group: &SentinelGroup, sandboxes: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandgate.toml");
    let config = format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [registry]\nbackend = \"redis\"\n[registry.cache]\nttl = \"10m\"\n\
         [activity]\nsink = \"redis\"\nthrottle = \"0s\"\nflush_interval = \"50ms\"\n\
         dedupe_across_replicas = true\n\
         [redis]\ntimeout = \"1s\"\n{}\n",
        group.redis_toml()
    );
    std::fs::write(&path, &config).unwrap();
    put_runner(&path, "runner-1", demo_runner("k").await, "k");
    for id in sandboxes {
        put_sandbox(&path, id);
    }
    Setup {
        _dir: dir,
        path,
        config,
    }
}

fn put_sandbox(config: &Path, id: &str) {
    let args = [
        "registry",
        "put-sandbox",
        "--id",
        id,
        "--runner",
        "runner-1",
    ];
    ok(config, &[&args[..], &["--public"]].concat());
}

/// The instant the sentinel announces the next `+switch-master` (subscribed on return).
async fn next_switch(sentinel: &RedisServer) -> tokio::task::JoinHandle<Instant> {
    use futures_util::StreamExt;
    let client = ::redis::Client::open(sentinel.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("+switch-master").await.unwrap();
    tokio::spawn(async move {
        pubsub.on_message().next().await;
        Instant::now()
    })
}

/// Requests `id` until `stop`; the statuses other than `expected`.
fn reader(
    proxy: SocketAddr,
    stop: &Arc<AtomicBool>,
    id: impl Fn(u64) -> String + Send + 'static,
    expected: u16,
) -> tokio::task::JoinHandle<(u64, Vec<u16>)> {
    let stop = stop.clone();
    tokio::spawn(async move {
        let (mut sent, mut unexpected) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let status = status(proxy, &id(sent)).await;
            if status != expected {
                unexpected.push(status);
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (sent, unexpected)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_invalidation_activity_links_and_admin_commands() {
    let group = RedisServer::sentinel_group();
    let s = setup(&group, &["sbx-a", "sbx-b"]).await;
    let first = start_proxy(&s.config);
    let second = start_proxy(&s.config);
    for proxy in [&first, &second] {
        for id in ["sbx-a", "sbx-b"] {
            assert_eq!(status(proxy.addr, id).await, 200, "{id}");
        }
    }
    // Every admin verb used here writes through the primary and reads back.
    let rows: &[(&[&str], &str)] = &[
        (&["registry", "get", "--sandbox", "sbx-a"], "runner-1"),
        (&["registry", "list"], "sbx-b"),
        (
            &[
                "registry",
                "state",
                "--sandbox",
                "sbx-b",
                "--state",
                "started",
            ],
            "",
        ),
        (
            &[
                "registry",
                "expose",
                "--sandbox",
                "sbx-a",
                "--port",
                "8080",
                "--public",
            ],
            "",
        ),
        (
            &[
                "registry",
                "unexpose",
                "--sandbox",
                "sbx-a",
                "--port",
                "8080",
            ],
            "",
        ),
        (&["registry", "wake", "--sandbox", "sbx-a", "--off"], ""),
        (&["registry", "wake", "--sandbox", "sbx-a", "--on"], ""),
    ];
    for (args, shows) in rows {
        let out = ok(&s.path, args);
        assert!(out.contains(shows), "{args:?}: {out}");
    }
    within(Duration::from_secs(3), "activity recorded", || async {
        sandgate(&s.path, &["activity", "show", "sbx-a"]).0
    })
    .await;

    // An rm through the CLI reaches both proxies (each subscribed on the primary).
    ok(&s.path, &["registry", "rm", "--sandbox", "sbx-b"]);
    for proxy in [&first, &second] {
        let took = within(Duration::from_secs(2), "rm pushed", || async {
            status(proxy.addr, "sbx-b").await == 404
        })
        .await;
        println!("rm visible on a proxy after {took:?}");
    }

    let sign = [
        "preview-url",
        "sign",
        "--sandbox",
        "sbx-a",
        "--port",
        "3000",
    ];
    let url = ok(&s.path, &sign);
    let token = &url["http://3000-".len().."http://3000-".len() + 16];
    let link = format!("3000-{token}.preview.localhost");
    assert_eq!(get(second.addr, &link, "/").await.status, 200);
    let listed = ok(&s.path, &["preview-url", "list", "--sandbox", "sbx-a"]);
    assert!(listed.contains("\"port\":3000"), "{listed}");
    ok(
        &s.path,
        &["preview-url", "revoke", "--token", token, "--port", "3000"],
    );
    within(Duration::from_secs(2), "revoke pushed", || async {
        get(second.addr, &link, "/").await.status != 200
    })
    .await;
    let primary = group.primary_port();
    let keys = group.nodes.iter().find(|n| n.port == primary).unwrap();
    let keys = keys.cli(&["KEYS", "sandgate:*"]);
    assert!(keys.contains("sandgate:sandbox:sbx-a"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_is_followed_without_errors() {
    let group = RedisServer::sentinel_group();
    let s = setup(&group, &["cached", "doomed"]).await;
    let proxy = start_proxy(&s.config);
    for id in ["cached", "doomed"] {
        assert_eq!(status(proxy.addr, id).await, 200, "{id}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cached = reader(proxy.addr, &stop, |_| "cached".into(), 200);
    // Every request a cache miss: Redis answers (404) or the proxy cannot tell (503).
    let misses = reader(proxy.addr, &stop, |n| format!("miss-{n}"), 404);
    let switched = next_switch(&group.sentinels[1]).await;
    let old = group.primary_port();
    let asked = Instant::now();
    group.failover();
    let switched = tokio::time::timeout(RECOVERED, switched)
        .await
        .expect("+switch-master")
        .unwrap();
    println!(
        "+switch-master {:?} after SENTINEL FAILOVER",
        switched - asked
    );

    put_sandbox(&s.path, "fresh");
    ok(&s.path, &["registry", "rm", "--sandbox", "doomed"]);
    let written = switched.elapsed();
    within(FOLLOWED, "put after the failover served", || async {
        status(proxy.addr, "fresh").await == 200
    })
    .await;
    let put_served = switched.elapsed();
    within(FOLLOWED, "rm after the failover pushed", || async {
        status(proxy.addr, "doomed").await == 404
    })
    .await;
    let rm_pushed = switched.elapsed();
    println!(
        "after +switch-master: CLI put + rm done {written:?}, put served {put_served:?}, \
         rm answered 404 {rm_pushed:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (cached_sent, cached_failed) = cached.await.unwrap();
    let (miss_sent, miss_failed) = misses.await.unwrap();
    println!(
        "during the failover: {cached_sent} cached requests, not 200: {cached_failed:?}; \
         {miss_sent} misses, not 404: {miss_failed:?}"
    );
    assert!(cached_failed.is_empty(), "{cached_failed:?}");
    assert!(miss_failed.is_empty(), "{miss_failed:?}");
    assert_ne!(group.primary_port(), old, "the primary moved");
    assert!(
        proxy.stderr().contains("resubscribing"),
        "{}",
        proxy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_nothing_stays_stuck() {
    let mut group = RedisServer::sentinel_group();
    let s = setup(&group, &["cached", "doomed"]).await;
    let proxy = start_proxy(&s.config);
    for id in ["cached", "doomed"] {
        assert_eq!(status(proxy.addr, id).await, 200, "{id}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let cached = reader(proxy.addr, &stop, |_| "cached".into(), 200);
    let old = group.primary_port();
    group.node(old).stop();
    let killed = Instant::now();

    let writes_back = within(RECOVERED, "admin writes work again", || async {
        let args = [
            "registry",
            "put-sandbox",
            "--id",
            "fresh",
            "--runner",
            "runner-1",
        ];
        sandgate(&s.path, &[&args[..], &["--public"]].concat()).0
    })
    .await;
    let misses_back = within(RECOVERED, "misses served again", || async {
        status(proxy.addr, "fresh").await == 200
    })
    .await;
    ok(&s.path, &["registry", "rm", "--sandbox", "doomed"]);
    let pushed = within(FOLLOWED, "rm pushed after the failover", || async {
        status(proxy.addr, "doomed").await == 404
    })
    .await;
    println!(
        "primary killed: admin writes work after {writes_back:?}, misses served after {:?}, \
         an rm then pushed in {pushed:?} ({:?} in all)",
        writes_back + misses_back,
        killed.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let (sent, failed) = cached.await.unwrap();
    println!("{sent} cached requests during the outage, not 200: {failed:?}");
    assert!(failed.is_empty(), "{failed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_reported_as_done_survive_a_failover() {
    let group = RedisServer::sentinel_group();
    let s = setup(&group, &[]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut refused = 0usize;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, done, path) = (stop.clone(), done.clone(), s.path.clone());
            std::thread::spawn(move || {
                let mut refused = 0;
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("w{w}-{i}");
                    let args = [
                        "registry",
                        "put-sandbox",
                        "--id",
                        &id,
                        "--runner",
                        "runner-1",
                    ];
                    if sandgate(&path, &args).0 {
                        done.lock().unwrap().push(id);
                    } else {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let old = group.primary_port();
    group.failover();
    let deadline = Instant::now() + RECOVERED;
    while group.primary_port() == old {
        assert!(Instant::now() < deadline, "no failover");
        std::thread::sleep(Duration::from_millis(20));
    }
    let new = group.primary_port();
    group.wait_for_primary(new, RECOVERED);
    group.wait_for_replica(old, RECOVERED);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        refused += writer.join().unwrap();
    }
    let primary = group.nodes.iter().find(|n| n.port == new).unwrap();
    let done = done.lock().unwrap();
    let lost: Vec<&String> = done
        .iter()
        .filter(|id| {
            primary
                .cli(&["EXISTS", &format!("sandgate:sandbox:{id}")])
                .trim()
                != "1"
        })
        .collect();
    println!(
        "admin writes across the failover: {} reported done, {refused} refused, lost: {lost:?}",
        done.len()
    );
    assert!(lost.is_empty(), "reported done but lost: {lost:?}");
}
