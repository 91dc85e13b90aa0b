//! The Redis registry backend, push invalidation, the admin CLI and the Redis activity sink,
//! against a real `redis-server` and the real binary.
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::admin_cli::*;
use support::redis::RedisServer;
use support::{demo_runner, get, send, within, Proxy};

fn put_sandbox(config: &Path, id: &str, runner: &str, extra: &[&str]) {
    let mut args = vec![
        "registry",
        "put-sandbox",
        "--id",
        id,
        "--runner",
        runner,
        "--public",
    ];
    args.extend_from_slice(extra);
    ok(config, &args);
}

fn host(id: &str) -> String {
    format!("3000-{id}.preview.localhost")
}

#[tokio::test]
async fn cli_writes_are_served_and_rm_is_pushed_at_once() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let runner = demo_runner("k").await;
    put_runner(&cli.path, "runner-1", runner, "k");
    put_sandbox(
        &cli.path,
        "Sbx-1",
        "runner-1",
        &["--auth-token", "secret-token"],
    );
    let proxy = start_proxy(&redis_toml(
        &redis,
        "[activity]\nsink = \"redis\"\nthrottle = \"0s\"\nflush_interval = \"50ms\"",
    ));

    let reply = get(proxy.addr, &host("sbx-1"), "/hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "hello from sandbox sbx-1, port 3000, path /hi\n"
    );

    // The record as stored: lower-case id, the token only as a (shortened) hash.
    let shown = ok(&cli.path, &["registry", "get", "--sandbox", "SBX-1"]);
    let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(json["fields"]["runner"], "runner-1");
    assert_eq!(json["runner"]["api_key"], "***");
    assert!(!shown.contains("secret-token"), "{shown}");
    let full_hash = redis.cli(&["HGET", "sandgate:sandbox:sbx-1", "auth_token_sha256"]);
    assert_eq!(full_hash.trim().len(), 64);
    assert!(!shown.contains(full_hash.trim()));
    let list = ok(&cli.path, &["registry", "list"]);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list["runners"][0]["id"], "runner-1");
    assert_eq!(list["sandboxes"][0]["id"], "sbx-1");

    // Activity went to the sorted set through the redis sink.
    let marked = within(Duration::from_secs(3), "activity in redis", || async {
        !redis
            .cli(&["ZSCORE", "sandbox:activity", "sbx-1"])
            .trim()
            .is_empty()
    })
    .await;
    println!("activity visible in redis after {marked:?}");

    ok(&cli.path, &["registry", "rm", "--sandbox", "sbx-1"]);
    let took = within(Duration::from_secs(1), "404 after rm", || async {
        get(proxy.addr, &host("sbx-1"), "/hi").await.status == 404
    })
    .await;
    println!("rm visible after {took:?}");
    let (success, _, stderr) = sandgate(&cli.path, &["registry", "rm", "--sandbox", "sbx-1"]);
    assert!(!success && stderr.contains("not found"), "{stderr}");

    // Invalid input never reaches Redis.
    let (success, _, stderr) = sandgate(
        &cli.path,
        &["registry", "put-sandbox", "--id", "x", "--runner", "nope"],
    );
    assert!(
        !success && stderr.contains("runner \"nope\" not found"),
        "{stderr}"
    );
    let (success, _, stderr) = sandgate(
        &cli.path,
        &[
            "registry",
            "put-runner",
            "--id",
            "r",
            "--url",
            "ftp://x",
            "--api-key",
            "k",
        ],
    );
    assert!(!success && stderr.contains("http://"), "{stderr}");
    ok(&cli.path, &["registry", "rm", "--runner", "runner-1"]);
}

#[tokio::test]
async fn invalidation_reaches_a_second_proxy_quickly() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let runner = demo_runner("k").await;
    put_runner(&cli.path, "runner-1", runner, "k");
    put_sandbox(&cli.path, "sbx-2", "runner-1", &[]);
    let config = redis_toml(&redis, "[registry.cache]\nttl = \"10m\"");
    let first = start_proxy(&config);
    let second = start_proxy(&config);
    for proxy in [&first, &second] {
        let reply = get(proxy.addr, &host("sbx-2"), "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    put_sandbox(&cli.path, "sbx-2", "runner-1", &["--state", "stopped"]);
    let written = Instant::now();
    within(
        Duration::from_secs(2),
        "second proxy sees the change",
        || async { get(second.addr, &host("sbx-2"), "/").await.status == 503 },
    )
    .await;
    let took = written.elapsed();
    println!("invalidation reached the second proxy within {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_requests_make_one_backend_read() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let runner = demo_runner("k").await;
    put_runner(&cli.path, "runner-1", runner, "k");
    put_sandbox(&cli.path, "warm", "runner-1", &[]);
    put_sandbox(&cli.path, "cold", "runner-1", &[]);
    let proxy = start_proxy(&redis_toml(&redis, ""));
    // Loads the script, so the measured read is one EVALSHA.
    assert_eq!(get(proxy.addr, &host("warm"), "/").await.status, 200);
    let before = redis.calls_of("evalsha");
    let tasks: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(async move { get(proxy.addr, &host("cold"), "/").await.status }))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    let reads = redis.calls_of("evalsha") - before;
    println!("1000 concurrent cold requests -> {reads} backend read(s)");
    assert_eq!(reads, 1);
}

#[tokio::test]
async fn cache_expiry_is_absolute_even_for_a_hot_key() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let runner = demo_runner("k").await;
    put_runner(&cli.path, "runner-1", runner, "k");
    put_runner(&cli.path, "dead", "127.0.0.1:1".parse().unwrap(), "k");
    put_sandbox(&cli.path, "hot", "runner-1", &[]);
    let proxy = start_proxy(&redis_toml(&redis, "[registry.cache]\nttl = \"300ms\""));
    assert_eq!(get(proxy.addr, &host("hot"), "/").await.status, 200);
    // Behind the proxies' back: no PUBLISH.
    redis.cli(&["HSET", "sandgate:sandbox:hot", "runner", "dead"]);
    let changed = Instant::now();
    within(Duration::from_secs(3), "new runner used", || async {
        get(proxy.addr, &host("hot"), "/").await.status == 502
    })
    .await;
    let took = changed.elapsed();
    println!("unpublished change seen after {took:?} (ttl 300ms)");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn redis_outage_serves_stale_fails_fast_and_recovers() {
    let mut redis = RedisServer::start();
    let cli = cli_config(&redis);
    let runner = demo_runner("k").await;
    put_runner(&cli.path, "runner-1", runner, "k");
    put_sandbox(&cli.path, "cached", "runner-1", &[]);
    put_sandbox(&cli.path, "uncached", "runner-1", &[]);
    let proxy = start_proxy(&redis_toml(&redis, "[registry.cache]\nttl = \"300ms\""));
    assert_eq!(get(proxy.addr, &host("cached"), "/").await.status, 200);
    assert_eq!(get(proxy.addr, "127.0.0.1", "/ready").await.status, 200);

    redis.stop();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let reply = get(proxy.addr, &host("cached"), "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["x-sandgate-stale"], "1");
    let start = Instant::now();
    let reply = get(proxy.addr, &host("uncached"), "/").await;
    println!(
        "uncached answer during the outage after {:?}",
        start.elapsed()
    );
    assert_eq!(reply.status, 503, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["code"], "REGISTRY_UNAVAILABLE");
    assert!(
        !json["message"].as_str().unwrap_or_default().is_empty(),
        "{json}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(get(proxy.addr, "127.0.0.1", "/ready").await.status, 503);

    // Same port, empty data (no persistence): write it again; the proxy was never restarted.
    redis.restart();
    put_runner(&cli.path, "runner-1", runner, "k");
    put_sandbox(&cli.path, "cached", "runner-1", &[]);
    put_sandbox(&cli.path, "uncached", "runner-1", &[]);
    let took = within(Duration::from_secs(5), "recovery", || async {
        get(proxy.addr, "127.0.0.1", "/ready").await.status == 200
            && get(proxy.addr, &host("uncached"), "/").await.status == 200
    })
    .await;
    println!("recovered {took:?} after redis came back");
    let reply = get(proxy.addr, &host("cached"), "/").await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get("x-sandgate-stale").is_none());
}

#[tokio::test]
async fn bad_data_is_a_502_for_that_sandbox_only() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let runner = demo_runner("k").await;
    put_runner(&cli.path, "runner-1", runner, "k");
    put_sandbox(&cli.path, "good", "runner-1", &[]);
    redis.cli(&["SET", "sandgate:sandbox:json", "{\"runner\":\"runner-1\"}"]);
    redis.cli(&[
        "HSET",
        "sandgate:sandbox:maybe",
        "runner",
        "runner-1",
        "public",
        "maybe",
    ]);
    redis.cli(&["HSET", "sandgate:sandbox:orphan", "runner", "gone"]);
    redis.cli(&[
        "HSET",
        "sandgate:sandbox:both",
        "runner",
        "runner-1",
        "address",
        "10.0.0.1",
    ]);
    redis.cli(&[
        "HSET",
        "sandgate:runner:badurl",
        "url",
        "not a url",
        "api_key",
        "k",
    ]);
    redis.cli(&["HSET", "sandgate:sandbox:badrunner", "runner", "badurl"]);
    redis.cli(&[
        "HSET",
        "sandgate:sandbox:hash",
        "address",
        "10.0.0.1",
        "auth_token_sha256",
        "xyz",
    ]);
    let proxy = start_proxy(&redis_toml(&redis, ""));
    for (id, expect) in [
        ("json", "a string"),
        ("maybe", "public must be true or false"),
        ("orphan", r#"runner \"gone\" not found"#), // quoted for logfmt
        ("both", "exactly one"),
        ("badrunner", "not a URL"),
        ("hash", "64 hex digits"),
    ] {
        let reply = get(proxy.addr, &host(id), "/").await;
        assert_eq!(reply.status, 502, "{id}: {}", reply.text());
        assert_eq!(reply.json()["code"], "REGISTRY_BAD_DATA", "{id}");
        assert!(
            proxy.stderr().contains(expect),
            "{id}: log should say {expect:?}"
        );
    }
    assert_eq!(get(proxy.addr, &host("good"), "/").await.status, 200);
    assert_eq!(get(proxy.addr, &host("unknown"), "/").await.status, 404);
}

fn library_handle(redis: &RedisServer) -> Arc<sandgate::registry::redis::RedisHandle> {
    let config = sandgate::config::Config::from_toml_str(&redis_toml(redis, "")).unwrap();
    Arc::new(sandgate::registry::redis::RedisHandle::new(&config.redis).unwrap())
}

#[tokio::test]
async fn signed_preview_tokens_are_port_bound_expire_and_revoke() {
    use sandgate::registry::{Lifetime, Registry};
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let registry = sandgate::registry::redis::RedisRegistry::new(library_handle(&redis));

    let url = ok(
        &cli.path,
        &[
            "preview-url",
            "sign",
            "--sandbox",
            "Sbx-9",
            "--port",
            "3000",
            "--ttl",
            "1s",
            "--domain",
            "example.com",
            "--scheme",
            "https",
        ],
    );
    let token = url
        .strip_prefix("https://3000-")
        .and_then(|rest| rest.strip_suffix(".example.com"))
        .unwrap_or_else(|| panic!("unexpected url {url}"));
    assert_eq!(token.len(), 16);
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    let ttl: i64 = redis
        .cli(&[
            "PTTL",
            &format!("sandbox:signed-preview-url-token:3000:{token}"),
        ])
        .trim()
        .parse()
        .unwrap();
    assert!(ttl > 0 && ttl <= 1000, "{ttl}");

    let found = registry.signed_preview(token, 3000).await.unwrap().unwrap();
    assert_eq!(&*found.sandbox, "sbx-9");
    assert!(
        matches!(found.lifetime, Lifetime::Remaining(left) if left <= Duration::from_secs(1)),
        "the key's TTL comes along: {:?}",
        found.lifetime
    );
    assert_eq!(registry.signed_preview(token, 3001).await.unwrap(), None);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        registry.signed_preview(token, 3000).await.unwrap(),
        None,
        "expired"
    );

    let url = ok(
        &cli.path,
        &[
            "preview-url",
            "sign",
            "--sandbox",
            "sbx-9",
            "--port",
            "8080",
        ],
    );
    assert!(
        url.starts_with("http://8080-") && url.ends_with(".preview.localhost"),
        "{url}"
    );
    let token = &url["http://8080-".len().."http://8080-".len() + 16];
    let found = registry.signed_preview(token, 8080).await.unwrap().unwrap();
    assert_eq!(&*found.sandbox, "sbx-9");
    ok(
        &cli.path,
        &["preview-url", "revoke", "--token", token, "--port", "8080"],
    );
    assert_eq!(
        registry.signed_preview(token, 8080).await.unwrap(),
        None,
        "revoked"
    );
    let (success, _, _) = sandgate(
        &cli.path,
        &["preview-url", "revoke", "--token", token, "--port", "8080"],
    );
    assert!(!success, "second revoke reports the token is gone");
    for bad in ["0s", "25h"] {
        let (success, _, stderr) = sandgate(
            &cli.path,
            &[
                "preview-url",
                "sign",
                "--sandbox",
                "s",
                "--port",
                "1",
                "--ttl",
                bad,
            ],
        );
        assert!(!success && stderr.contains("1s and 24h"), "{stderr}");
    }

    // SSH tokens are stored by hash.
    let hash = hex::encode(sandgate::registry::sha256("ssh-secret"));
    redis.cli(&[
        "SET",
        &format!("sandgate:ssh-token:{hash}"),
        "sbx-9",
        "EX",
        "60",
    ]);
    assert_eq!(
        registry
            .ssh_token("ssh-secret")
            .await
            .unwrap()
            .map(|g| g.sandbox)
            .as_deref(),
        Some("sbx-9")
    );
    assert_eq!(registry.ssh_token("other").await.unwrap(), None);
    assert!(registry.ready().await);
}

fn activity_config(dedupe: bool) -> sandgate::activity::ActivityConfig {
    sandgate::activity::ActivityConfig {
        // With de-duplication the throttle is also the cross-replica lock's lifetime.
        throttle: if dedupe {
            Duration::from_secs(10)
        } else {
            Duration::ZERO
        },
        dedupe_across_replicas: dedupe,
        ..Default::default()
    }
}

#[tokio::test]
async fn activity_sink_writes_one_batch_and_survives_an_outage() {
    use sandgate::activity::redis::RedisActivitySink;
    use sandgate::activity::Activity;
    let mut redis = RedisServer::start();
    let sink = RedisActivitySink::new(library_handle(&redis), &activity_config(false));
    let activity = Activity::new(&activity_config(false));
    for i in 0..1000 {
        activity.mark(&format!("sbx-{i}"));
    }
    let before = redis.command_calls();
    assert_eq!(activity.flush(&sink).await.unwrap(), 1000);
    let after = redis.command_calls();
    assert_eq!(redis.cli(&["ZCARD", "sandbox:activity"]).trim(), "1000");
    let zadds = after.get("zadd").copied().unwrap_or(0) - before.get("zadd").copied().unwrap_or(0);
    let total: u64 = after.values().sum::<u64>() - before.values().sum::<u64>();
    println!("1000 marks -> {zadds} ZADD, {total} commands (incl. the INFO)");
    assert_eq!(zadds, 1, "one variadic ZADD");
    assert!(total <= 4, "MULTI/EXEC at most around it: {total}");

    // Outage: marks keep coming, flushes fail, the latest mark lands once Redis is back.
    redis.stop();
    activity.mark("sbx-0");
    assert!(activity.flush(&sink).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    activity.mark("sbx-0");
    let latest = sandgate::activity::now_ms();
    assert!(activity.flush(&sink).await.is_err());
    redis.restart();
    let landed = within(Duration::from_secs(5), "flush after restart", || async {
        activity.flush(&sink).await.is_ok()
    })
    .await;
    println!("sink recovered {landed:?} after redis came back");
    let score: u64 = redis
        .cli(&["ZSCORE", "sandbox:activity", "sbx-0"])
        .trim()
        .parse()
        .unwrap();
    assert!(score >= latest.saturating_sub(5), "{score} vs {latest}");

    // Two replicas with shared de-duplication: the second write inside the window is skipped.
    let handle = library_handle(&redis);
    let a = RedisActivitySink::new(handle.clone(), &activity_config(true));
    let b = RedisActivitySink::new(handle, &activity_config(true));
    let a_marks = Activity::new(&activity_config(true));
    let b_marks = Activity::new(&activity_config(true));
    a_marks.mark("shared");
    a_marks.flush(&a).await.unwrap();
    let first = redis.cli(&["ZSCORE", "sandbox:activity", "shared"]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    b_marks.mark("shared");
    b_marks.flush(&b).await.unwrap();
    assert_eq!(redis.cli(&["ZSCORE", "sandbox:activity", "shared"]), first);
    let lock = redis.cli(&["EXISTS", "sandgate:activity-lock:shared"]);
    assert_eq!(lock.trim(), "1");
}

#[tokio::test]
async fn activity_idle_and_show_commands() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let now = sandgate::activity::now_ms();
    let old = (now - 20 * 60 * 1000).to_string();
    let fresh = (now - 60 * 1000).to_string();
    redis.cli(&["ZADD", "sandbox:activity", &old, "sleepy", &fresh, "busy"]);

    let text = ok(&cli.path, &["activity", "idle", "--older-than", "15m"]);
    assert!(
        text.starts_with("sleepy\t") && text.contains("idle 20m"),
        "{text}"
    );
    assert!(!text.contains("busy"), "{text}");
    let json = ok(
        &cli.path,
        &["activity", "idle", "--older-than", "15m", "--json"],
    );
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["sandbox"], "sleepy");
    assert_eq!(json[0]["last_activity_ms"].to_string(), old);
    assert!(json[0]["last_activity"].as_str().unwrap().ends_with('Z'));
    let both = ok(&cli.path, &["activity", "idle", "--older-than", "30s"]);
    assert_eq!(both.lines().count(), 2, "{both}");

    let show = ok(&cli.path, &["activity", "show", "busy"]);
    assert!(
        show.starts_with("busy\t") && show.contains("idle 1m"),
        "{show}"
    );
    let show = ok(&cli.path, &["activity", "show", "busy", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["last_activity_ms"].to_string(), fresh);
    let (success, _, stderr) = sandgate(&cli.path, &["activity", "show", "nobody"]);
    assert!(!success && stderr.contains("no activity"), "{stderr}");
}

#[tokio::test]
async fn the_proxy_starts_without_redis_and_becomes_ready_when_it_comes() {
    let mut redis = RedisServer::start();
    redis.stop();
    let proxy = Proxy::start(&redis_toml(&redis, ""));
    assert_eq!(get(proxy.addr, "127.0.0.1", "/ready").await.status, 503);
    assert_eq!(get(proxy.addr, "127.0.0.1", "/health").await.status, 200);
    let reply = get(proxy.addr, &host("any"), "/").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["code"], "REGISTRY_UNAVAILABLE");

    redis.restart();
    let cli = cli_config(&redis);
    let runner = demo_runner("k").await;
    put_runner(&cli.path, "runner-1", runner, "k");
    put_sandbox(&cli.path, "late", "runner-1", &[]);
    let took = within(Duration::from_secs(5), "ready and serving", || async {
        get(proxy.addr, "127.0.0.1", "/ready").await.status == 200
            && get(proxy.addr, &host("late"), "/").await.status == 200
    })
    .await;
    println!("ready {took:?} after redis started");
}

/// Registry round trip (write, serve, push invalidation) with a given `[redis]` section.
async fn mode_round_trip(redis_section: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.toml");
    let config = format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [registry]\nbackend = \"redis\"\n[registry.cache]\nttl = \"10m\"\n\
         [activity]\nsink = \"redis\"\nthrottle = \"0s\"\nflush_interval = \"50ms\"\n\
         dedupe_across_replicas = true\n\
         [redis]\ntimeout = \"1s\"\n{redis_section}\n"
    );
    std::fs::write(&path, &config).unwrap();
    let runner = demo_runner("k").await;
    put_runner(&path, "runner-1", runner, "k");
    // Ids chosen to land in different cluster slots.
    for id in ["sbx-a", "sbx-b", "sbx-c"] {
        put_sandbox(&path, id, "runner-1", &[]);
    }
    let proxy = start_proxy(&config);
    for id in ["sbx-a", "sbx-b", "sbx-c"] {
        let reply = get(proxy.addr, &host(id), "/x").await;
        assert_eq!(reply.status, 200, "{id}: {}", reply.text());
    }
    assert_eq!(get(proxy.addr, "127.0.0.1", "/ready").await.status, 200);
    let shown = ok(&path, &["registry", "get", "--sandbox", "sbx-b"]);
    assert!(shown.contains("runner-1"), "{shown}");
    within(Duration::from_secs(3), "activity recorded", || async {
        let (success, _, _) = sandgate(&path, &["activity", "show", "sbx-c"]);
        success
    })
    .await;
    ok(&path, &["registry", "rm", "--sandbox", "sbx-b"]);
    let took = within(Duration::from_secs(2), "rm pushed", || async {
        get(proxy.addr, &host("sbx-b"), "/").await.status == 404
    })
    .await;
    println!("rm visible after {took:?}");
    assert_eq!(get(proxy.addr, &host("sbx-a"), "/").await.status, 200);
    let url = ok(
        &path,
        &[
            "preview-url",
            "sign",
            "--sandbox",
            "sbx-a",
            "--port",
            "3000",
        ],
    );
    let token = &url["http://3000-".len().."http://3000-".len() + 16];
    // The link's use and the sandbox's link index live on other keys (other Cluster slots).
    let reply = get(proxy.addr, &format!("3000-{token}.preview.localhost"), "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let listed = ok(&path, &["preview-url", "list", "--sandbox", "sbx-a"]);
    assert!(listed.contains("\"port\":3000"), "{listed}");
    ok(
        &path,
        &["preview-url", "revoke", "--token", token, "--port", "3000"],
    );
    let listed = ok(&path, &["preview-url", "list", "--sandbox", "sbx-a"]);
    assert_eq!(listed, "[]");
    assert!(!proxy.stderr().contains("recording signed link uses failed"));
}

#[tokio::test]
async fn cluster_mode_round_trip() {
    let nodes = RedisServer::cluster();
    let seeds: Vec<String> = nodes
        .iter()
        .take(2)
        .map(|n| format!("\"{}\"", n.url()))
        .collect();
    mode_round_trip(&format!("cluster_nodes = [{}]", seeds.join(", "))).await;
}

#[tokio::test]
async fn sentinel_mode_round_trip() {
    let master = RedisServer::start();
    let sentinel = RedisServer::sentinel_for(&master);
    mode_round_trip(&format!(
        "sentinel_master = \"mymaster\"\nsentinel_nodes = [\"{}\"]",
        sentinel.url()
    ))
    .await;
    let keys = master.cli(&["KEYS", "sandgate:sandbox:*"]);
    assert!(keys.contains("sbx-a"), "written through the master: {keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_marks_made_during_a_sink_outage_land_when_redis_returns() {
    let mut redis = RedisServer::start();
    let runner = demo_runner("k").await;
    // Static registry: requests keep being served while the sink is down.
    let proxy = Proxy::start(&support::runner_config(
        runner,
        "k",
        &format!(
            "[[registry.sandboxes]]\nid = \"busy\"\nrunner = \"runner-1\"\npublic = true\n\
             [activity]\nsink = \"redis\"\nthrottle = \"0s\"\nflush_interval = \"50ms\"\n\
             [redis]\nurl = \"{}\"\ntimeout = \"300ms\"\n",
            redis.url()
        ),
    ));
    assert_eq!(get(proxy.addr, &host("busy"), "/").await.status, 200);
    within(Duration::from_secs(3), "first mark", || async {
        !redis
            .cli(&["ZSCORE", "sandbox:activity", "busy"])
            .trim()
            .is_empty()
    })
    .await;

    // 10 s of sink outage under steady load from 4 clients: every request is served and none
    // waits on the sink (2 s is a hang detector, not a performance bound).
    redis.stop();
    let outage = Instant::now();
    let addr = proxy.addr;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while outage.elapsed() < Duration::from_secs(10) {
                    let started = Instant::now();
                    assert_eq!(get(addr, &host("busy"), "/").await.status, 200);
                    latencies.push(started.elapsed());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for c in clients {
        latencies.extend(c.await.unwrap());
    }
    let last_request = sandgate::activity::now_ms();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = *latencies.last().unwrap();
    println!(
        "{} requests during a 10 s sink outage: p99 {p99:?}, max {max:?}",
        latencies.len()
    );
    assert!(
        max < Duration::from_secs(2),
        "a request waited on the sink: {max:?}"
    );
    redis.restart(); // empty: no persistence
                     // A busy sandbox's mark moves at most once a second (`Activity::mark_if_counts`), so the
                     // newest mark is up to a second (plus scheduling) older than the last request; a mark from
                     // before the outage would be 10 s older.
    let took = within(Duration::from_secs(5), "latest mark lands", || async {
        redis
            .cli(&["ZSCORE", "sandbox:activity", "busy"])
            .trim()
            .parse::<u64>()
            .is_ok_and(|ms| ms + 2000 >= last_request)
    })
    .await;
    println!("latest mark landed {took:?} after the sink returned");
    assert!(proxy.stderr().contains("activity flush failed"));
}

/// API keys in Redis (`put-api-key` stores only the hash): a key opens the sandboxes of its
/// organisation, another organisation's are 403, and the key never reaches the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_open_their_organisation() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let runner = demo_runner("rk").await;
    put_runner(&cli.path, "r1", runner, "rk");
    put_sandbox(&cli.path, "mine", "r1", &["--organization", "org-a"]);
    put_sandbox(&cli.path, "theirs", "r1", &["--organization", "org-b"]);
    let stored = ok(
        &cli.path,
        &[
            "registry",
            "put-api-key",
            "--key",
            "sk-live-123",
            "--organization",
            "org-a",
        ],
    );
    assert!(!stored.contains("sk-live-123"), "{stored}");
    let raw_keys: Vec<String> = redis
        .cli(&["KEYS", "*"])
        .lines()
        .map(String::from)
        .collect();
    assert!(
        raw_keys.iter().all(|k| !k.contains("sk-live-123")),
        "{raw_keys:?}"
    );

    let proxy = start_proxy(&redis_toml(&redis, ""));
    let auth = [("authorization", "Bearer sk-live-123")];
    let mine = send(
        proxy.addr,
        "GET",
        "127.0.0.1",
        "/toolbox/mine/version",
        &auth,
        b"",
    )
    .await;
    assert_eq!(mine.status, 200, "{}", mine.text());
    let theirs = send(
        proxy.addr,
        "GET",
        "127.0.0.1",
        "/toolbox/theirs/version",
        &auth,
        b"",
    )
    .await;
    assert_eq!(
        (theirs.status, theirs.json()["code"].clone()),
        (403, "FORBIDDEN".into())
    );
    let wrong = [("authorization", "Bearer sk-live-999")];
    let unknown = send(
        proxy.addr,
        "GET",
        "127.0.0.1",
        "/toolbox/mine/version",
        &wrong,
        b"",
    )
    .await;
    assert_eq!(unknown.status, 401);

    ok(
        &cli.path,
        &["registry", "rm-api-key", "--key", "sk-live-123"],
    );
    let (removed_again, _, stderr) = sandgate(
        &cli.path,
        &["registry", "rm-api-key", "--key", "sk-live-123"],
    );
    assert!(
        !removed_again && stderr.contains("no such API key"),
        "{stderr}"
    );
}

/// The final activity flush at shutdown reaches Redis whatever the number of serving threads:
/// the Redis connection's driver may run on a serving thread's runtime, which lives until the
/// flush is done.
#[tokio::test]
async fn the_final_activity_flush_lands_with_any_number_of_serving_threads() {
    for threads in [1, 2] {
        let redis = RedisServer::start();
        let cli = cli_config(&redis);
        let runner = demo_runner("k").await;
        put_runner(&cli.path, "runner-1", runner, "k");
        put_sandbox(&cli.path, "sbx-1", "runner-1", &[]);
        let mut proxy = start_proxy(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nthreads = {threads}\n{}",
            redis_toml(
                &redis,
                "[activity]\nsink = \"redis\"\nthrottle = \"0s\"\nflush_interval = \"60s\"",
            )
        ));
        let reply = get(proxy.addr, &host("sbx-1"), "/hi").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        proxy.signal("TERM");
        assert!(proxy.wait_exit(Duration::from_secs(15)).is_some());
        let score = redis.cli(&["ZSCORE", "sandbox:activity", "sbx-1"]);
        assert!(
            !score.trim().is_empty(),
            "{threads} threads: no final flush: {}",
            proxy.stderr()
        );
    }
}
