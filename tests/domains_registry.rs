//! Custom domain records (#19) in the three registry backends, behind `CustomDomains` (its
//! cache, its DNS TXT verification against pebble-challtestsrv's real DNS server), and the
//! `sandgate domain` CLI as a process against a real `redis-server`.
mod support;

use std::sync::Arc;
use std::time::Duration;

use sandgate::config::{Config, DomainsConfig};
use sandgate::registry::domains::{CustomDomains, DomainLookup};
use sandgate::registry::redis::{RedisHandle, RedisRegistry};
use sandgate::registry::{DaytonaRegistry, Registry, StaticRegistry};
use support::admin_cli::{ok, redis_toml, sandgate};
use support::control_plane::{ControlPlane, DOMAIN};
use support::pebble::{Pebble, PebbleOptions};
use support::redis::RedisServer;

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn domains_config(dns: Option<std::net::SocketAddr>, verify_interval: Duration) -> DomainsConfig {
    DomainsConfig {
        enabled: true,
        dns_resolver: dns.map_or("system".into(), |a| a.to_string()),
        cache_ttl: Duration::from_millis(200),
        verify_interval,
        cache_entries: 1000,
    }
}

/// A pebble-challtestsrv DNS server (pebble itself is unused here).
fn dns() -> Pebble {
    Pebble::start(PebbleOptions::new(
        support::free_port(),
        support::free_port(),
    ))
}

fn static_registry(domains: &str) -> Result<StaticRegistry, String> {
    let toml = format!(
        "[[registry.sandboxes]]\nid = \"sbx-1\"\naddress = \"127.0.0.1\"\n\
         [[registry.sandboxes]]\nid = \"sbx-2\"\naddress = \"127.0.0.1\"\n{domains}"
    );
    let config = Config::from_toml_str(&toml).map_err(|e| e.to_string())?;
    StaticRegistry::from_config(&config.registry)
}

fn entry(fields: &str) -> String {
    format!("[[registry.domains]]\n{fields}\n")
}

#[test]
fn static_domain_entries_are_checked_at_load_naming_the_key() {
    let good = "host = \"app.example.com\"\nsandbox = \"sbx-1\"\nport = 3000";
    let rows: [(&str, String, &str); 11] = [
        ("no token", entry(good), "registry.domains[0].token"),
        (
            "bad host",
            entry("host = \"*.example.com\"\nsandbox = \"sbx-1\"\nport = 1\nstate = \"verified\""),
            "registry.domains[0].host",
        ),
        (
            "bad host, no token",
            entry("host = \"a..example.com\"\nsandbox = \"sbx-1\"\nport = 1"),
            "registry.domains[0].host",
        ),
        (
            "ip host",
            entry("host = \"10.0.0.1\"\nsandbox = \"sbx-1\"\nport = 1\nstate = \"verified\""),
            "registry.domains[0].host",
        ),
        (
            "port 0",
            entry("host = \"a.example.com\"\nsandbox = \"sbx-1\"\nport = 0\nstate = \"verified\""),
            "registry.domains[0].port",
        ),
        (
            "prefix",
            entry(&format!("{good}\nstate = \"verified\"\npath_prefix = \"/a/../b\"")),
            "registry.domains[0].path_prefix",
        ),
        (
            "state",
            entry(&format!("{good}\nstate = \"ok\"")),
            "registry.domains[0].state",
        ),
        (
            "verification",
            entry(&format!("{good}\nverification = \"email\"")),
            "registry.domains[0].verification",
        ),
        (
            "short token",
            entry(&format!("{good}\ntoken = \"abc\"")),
            "registry.domains[0].token",
        ),
        (
            "unknown sandbox",
            entry("host = \"a.example.com\"\nsandbox = \"nope\"\nport = 1\nstate = \"verified\""),
            "registry.domains[0].sandbox",
        ),
        (
            "duplicate host",
            format!(
                "{}{}",
                entry(&format!("{good}\nstate = \"verified\"")),
                entry("host = \"APP.example.com\"\nsandbox = \"sbx-2\"\nport = 1\nstate = \"verified\"")
            ),
            "registry.domains[1].host",
        ),
    ];
    let mut failures = Vec::new();
    for (name, domains, expected) in &rows {
        match static_registry(domains) {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(e) if !e.contains(expected) => failures.push(format!("{name}: {e}")),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let accepted = entry(&format!(
        "{good}\ntoken = \"{TOKEN}\"\npath_prefix = \"/app\""
    ));
    assert!(static_registry(&accepted).is_ok());
}

/// The answer's kind, sandbox and port, for comparing rows.
fn summary(lookup: &DomainLookup) -> String {
    match lookup {
        DomainLookup::Unknown => "unknown".into(),
        DomainLookup::Pending(r) => format!("pending {} {}", r.sandbox, r.port),
        DomainLookup::Verified(r) => format!(
            "verified {} {}{}",
            r.sandbox,
            r.port,
            r.path_prefix.as_deref().unwrap_or("")
        ),
    }
}

async fn expect_lookups(domains: &CustomDomains, rows: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for (host, expected) in rows {
        match domains.lookup(host).await {
            Ok(found) if summary(&found) == *expected => {}
            other => failures.push(format!("{host}: {other:?}, expected {expected}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn static_backend_lookups_and_verification_until_reload() {
    let domains_toml = format!(
        "{}{}{}",
        entry("host = \"app.example.com\"\nsandbox = \"SBX-1\"\nport = 3000\nstate = \"verified\"\npath_prefix = \"/app\""),
        entry("host = \"cp.example.com\"\nsandbox = \"sbx-2\"\nport = 8080\nverification = \"control-plane\""),
        entry(&format!("host = \"dns.example.com\"\nsandbox = \"sbx-2\"\nport = 8080\ntoken = \"{TOKEN}\"")),
    );
    let registry = Arc::new(static_registry(&domains_toml).unwrap());
    let pebble = dns();
    let config = domains_config(Some(pebble.dns), Duration::from_secs(60));
    let domains = CustomDomains::new(registry.clone(), &config).unwrap();
    expect_lookups(
        &domains,
        &[
            ("app.example.com", "verified sbx-1 3000/app"),
            ("APP.Example.com.", "verified sbx-1 3000/app"),
            ("cp.example.com", "pending sbx-2 8080"),
            ("dns.example.com", "pending sbx-2 8080"),
            ("other.example.com", "unknown"),
            ("3000-sbx-1.preview.localhost", "unknown"),
            ("not a host", "unknown"),
            ("10.0.0.1", "unknown"),
        ],
    )
    .await;
    // The TXT record appears: a fresh proxy (no throttle yet) verifies it, and the static
    // registry keeps it verified in memory until its next reload.
    pebble.set_txt("dns.example.com", TOKEN).await;
    let fresh = CustomDomains::new(registry.clone(), &config).unwrap();
    expect_lookups(&fresh, &[("dns.example.com", "verified sbx-2 8080")]).await;
    support::within(Duration::from_secs(5), "the registry keeps it", || async {
        let held = registry.domain("dns.example.com").await.unwrap().unwrap();
        held.state == sandgate::registry::domains::DomainState::Verified
    })
    .await;
    let toml = format!(
        "[[registry.sandboxes]]\nid = \"sbx-1\"\naddress = \"127.0.0.1\"\n\
         [[registry.sandboxes]]\nid = \"sbx-2\"\naddress = \"127.0.0.1\"\n{domains_toml}"
    );
    registry
        .reload(&Config::from_toml_str(&toml).unwrap().registry)
        .unwrap();
    let reloaded = registry.domain("dns.example.com").await.unwrap().unwrap();
    assert_eq!(reloaded.state_name(), "pending", "a reload forgets it");
    // A host the file does not hold is never marked.
    registry
        .domain_verified("other.example.com", "sbx-2", TOKEN)
        .await
        .unwrap();
    // Nor one whose token is not the one checked.
    registry
        .domain_verified("dns.example.com", "sbx-2", "not-the-token-0123")
        .await
        .unwrap();
    let held = registry.domain("dns.example.com").await.unwrap().unwrap();
    assert_eq!(
        held.state_name(),
        "pending",
        "another token verifies nothing"
    );
    assert!(registry
        .domain("other.example.com")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn daytona_backend_lookups() {
    let cp = ControlPlane::start("svc-key").await;
    cp.add_domain("app.example.com", "sbx-1", 3000, "verified");
    cp.add_domain("cp.example.com", "sbx-2", 8080, "pending");
    // The control plane answering for another host than asked is bad data, never a route.
    cp.world().domains.insert(
        "liar.example.com".into(),
        serde_json::json!({"host": "victim.example.com", "sandboxId": "sbx-1", "port": 1,
            "state": "verified"}),
    );
    let daytona = sandgate::config::DaytonaConfig {
        api_url: cp.api_url(),
        api_key: "svc-key".into(),
        timeout: Duration::from_secs(1),
        l2_redis: false,
    };
    let registry = DaytonaRegistry::new(&daytona, None).unwrap();
    let liar = registry.domain("liar.example.com").await;
    assert!(liar.is_err(), "{liar:?}");
    let config = domains_config(None, Duration::from_secs(60));
    let domains = CustomDomains::new(Arc::new(registry), &config).unwrap();
    expect_lookups(
        &domains,
        &[
            ("app.example.com", "verified sbx-1 3000"),
            ("cp.example.com", "pending sbx-2 8080"),
            ("none.example.com", "unknown"),
        ],
    )
    .await;
    let calls = cp.calls(DOMAIN);
    expect_lookups(&domains, &[("app.example.com", "verified sbx-1 3000")]).await;
    assert_eq!(cp.calls(DOMAIN), calls, "a cached answer asks nobody");
    // Hosts that could walk the API's path never reach it.
    expect_lookups(
        &domains,
        &[
            ("x.example.com/../../sandbox/sbx-1", "unknown"),
            ("x.example.com%2f..", "unknown"),
            ("x.example.com?token=1", "unknown"),
        ],
    )
    .await;
    assert_eq!(
        cp.calls(DOMAIN),
        calls,
        "no call for a name that is not a DNS name"
    );
    // What an ACME name authority asks: only a verified domain may get an order.
    for (host, may_order) in [
        ("app.example.com", true),
        ("cp.example.com", false),
        ("none.example.com", false),
        ("liar.example.com", false),
    ] {
        assert_eq!(domains.is_verified(host).await, may_order, "{host}");
    }
    // The control plane verifies it: the proxy sees it after cache_ttl.
    cp.add_domain("cp.example.com", "sbx-2", 8080, "verified");
    tokio::time::sleep(config.cache_ttl + Duration::from_millis(50)).await;
    expect_lookups(&domains, &[("cp.example.com", "verified sbx-2 8080")]).await;
}

fn redis_handle(redis: &RedisServer) -> Arc<RedisHandle> {
    let config = Config::from_toml_str(&redis_toml(redis, "")).unwrap();
    Arc::new(RedisHandle::new(&config.redis).unwrap())
}

/// A config for `redis`, with `[domains]` using `dns` (and `more` of its keys), written for the
/// CLI: the file (in the returned directory) and its text (a proxy's config too).
fn cli_config(
    redis: &RedisServer,
    dns: &Pebble,
    more: &str,
) -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.toml");
    let toml = format!(
        "{}[domains]\nenabled = true\ndns_resolver = \"{}\"\n{more}\n",
        redis_toml(redis, ""),
        dns.dns
    );
    std::fs::write(&path, &toml).unwrap();
    (dir, path, toml)
}

/// A runner, and public `sandboxes` on it, written with the CLI.
async fn public_sandboxes(cli: &std::path::Path, sandboxes: &[&str]) {
    let runner = support::demo_runner("k").await;
    support::admin_cli::put_runner(cli, "runner-1", runner, "k");
    for sandbox in sandboxes {
        support::admin_cli::put_public_sandbox(cli, sandbox, "runner-1");
    }
}

#[tokio::test]
async fn redis_backend_lookups_and_txt_verification() {
    let redis = RedisServer::start();
    let pebble = dns();
    let (_dir, cli, _) = cli_config(&redis, &pebble, "");
    let redis_config = cli.as_path();
    ok(
        redis_config,
        &[
            "domain",
            "add",
            "app.example.com",
            "--sandbox",
            "sbx-1",
            "--port",
            "3000",
            "--path-prefix",
            "/app",
            "--verify",
            "none",
        ],
    );
    ok(
        redis_config,
        &[
            "domain",
            "add",
            "cp.example.com",
            "--sandbox",
            "sbx-2",
            "--port",
            "8080",
            "--verify",
            "control-plane",
        ],
    );
    let added = ok(
        redis_config,
        &[
            "domain",
            "add",
            "dns.example.com",
            "--sandbox",
            "sbx-2",
            "--port",
            "8080",
        ],
    );
    let token = trimmed(
        &redis,
        &["HGET", "sandgate:domain:dns.example.com", "token"],
    );
    assert_eq!(token.len(), 32, "{token}");
    assert!(
        added.contains(&format!(
            "_sandgate-challenge.dns.example.com TXT \"{token}\""
        )),
        "add prints the record to create: {added}"
    );
    let registry = Arc::new(RedisRegistry::new(redis_handle(&redis)));
    let interval = Duration::from_secs(2);
    let config = domains_config(Some(pebble.dns), interval);
    let domains = CustomDomains::new(registry, &config).unwrap();
    expect_lookups(
        &domains,
        &[
            ("app.example.com", "verified sbx-1 3000/app"),
            ("cp.example.com", "pending sbx-2 8080"),
            ("dns.example.com", "pending sbx-2 8080"),
            ("none.example.com", "unknown"),
        ],
    )
    .await;
    // A wrong token stays pending; the right one, once the interval has passed, verifies.
    pebble
        .set_txt("dns.example.com", "not-the-token-0123456789")
        .await;
    tokio::time::sleep(interval).await;
    expect_lookups(&domains, &[("dns.example.com", "pending sbx-2 8080")]).await;
    pebble.set_txt("dns.example.com", &token).await;
    expect_lookups(&domains, &[("dns.example.com", "pending sbx-2 8080")]).await;
    let before = domains.txt_checks();
    for _ in 0..20 {
        expect_lookups(&domains, &[("dns.example.com", "pending sbx-2 8080")]).await;
    }
    assert_eq!(
        domains.txt_checks(),
        before,
        "verify_interval throttles TXT lookups"
    );
    let metrics = sandgate::metrics::metrics().render();
    let series = "sandgate_domain_txt_checks_total{result=\"mismatch\"}";
    assert!(sample(&metrics, series) >= 1.0, "{metrics}");
    tokio::time::sleep(interval).await;
    expect_lookups(&domains, &[("dns.example.com", "verified sbx-2 8080")]).await;
    // The registry learns it (in the background).
    support::within(
        Duration::from_secs(5),
        "state verified in Redis",
        || async {
            trimmed(
                &redis,
                &["HGET", "sandgate:domain:dns.example.com", "state"],
            ) == "verified"
        },
    )
    .await;
    // A control-plane domain is never verified by TXT, even with the record in place.
    pebble.set_txt("cp.example.com", &token).await;
    tokio::time::sleep(interval).await;
    expect_lookups(&domains, &[("cp.example.com", "pending sbx-2 8080")]).await;
    assert_eq!(
        trimmed(&redis, &["HGET", "sandgate:domain:cp.example.com", "state"]),
        "pending"
    );
    // The proxy's "verified" write never resurrects a removed domain nor verifies a
    // control-plane one.
    let registry = RedisRegistry::new(redis_handle(&redis));
    registry
        .domain_verified("gone.example.com", "sbx-2", &token)
        .await
        .unwrap();
    assert_eq!(
        trimmed(&redis, &["EXISTS", "sandgate:domain:gone.example.com"]),
        "0"
    );
    registry
        .domain_verified("cp.example.com", "sbx-2", &token)
        .await
        .unwrap();
    assert_eq!(
        trimmed(&redis, &["HGET", "sandgate:domain:cp.example.com", "state"]),
        "pending"
    );
    // The attack: the domain is removed and re-added by another tenant while a proxy still
    // holds the old record, whose owner's TXT record is still published. The proxy's write
    // names the old sandbox and token: the new owner's record stays pending.
    let key = "sandgate:domain:taken.example.com";
    for (sandbox, token) in [
        ("sbx-2", token.as_str()),
        ("sbx-1", "a-new-owners-token-0001"),
    ] {
        trimmed(&redis, &["DEL", key]);
        trimmed(
            &redis,
            &[
                "HSET",
                key,
                "sandbox",
                sandbox,
                "port",
                "8080",
                "state",
                "pending",
                "verification",
                "dns",
                "token",
                token,
            ],
        );
    }
    registry
        .domain_verified("taken.example.com", "sbx-2", &token)
        .await
        .unwrap();
    assert_eq!(trimmed(&redis, &["HGET", key, "state"]), "pending");
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn concurrent_misses_share_one_lookup_and_failures_serve_the_last_answer() {
    let mut redis = RedisServer::start();
    trimmed(
        &redis,
        &[
            "HSET",
            "sandgate:domain:app.example.com",
            "sandbox",
            "sbx-1",
            "port",
            "3000",
            "state",
            "verified",
        ],
    );
    let config = domains_config(None, Duration::from_secs(60));
    let domains = Arc::new(
        CustomDomains::new(Arc::new(RedisRegistry::new(redis_handle(&redis))), &config).unwrap(),
    );
    let before = redis.calls_of("hgetall");
    let lookups = (0..50).map(|_| {
        let domains = domains.clone();
        tokio::spawn(async move { domains.lookup("app.example.com").await })
    });
    for lookup in futures_util::future::join_all(lookups).await {
        let found = lookup.unwrap().unwrap();
        assert_eq!(summary(&found), "verified sbx-1 3000");
    }
    let calls = redis.calls_of("hgetall") - before;
    assert!(calls <= 2, "50 concurrent misses made {calls} HGETALLs");
    // Redis goes away: the cached answer keeps serving past its ttl; an uncached host fails.
    redis.stop();
    tokio::time::sleep(config.cache_ttl + Duration::from_millis(50)).await;
    let stale = domains.lookup("app.example.com").await.unwrap();
    assert_eq!(summary(&stale), "verified sbx-1 3000");
    assert!(domains.lookup("new.example.com").await.is_err());
}

#[tokio::test]
async fn a_flood_of_random_hosts_never_grows_the_cache_past_its_bound() {
    let redis = RedisServer::start();
    trimmed(
        &redis,
        &[
            "HSET",
            "sandgate:domain:app.example.com",
            "sandbox",
            "sbx-1",
            "port",
            "3000",
            "state",
            "verified",
        ],
    );
    let mut config = domains_config(None, Duration::from_secs(60));
    config.cache_entries = 64;
    config.cache_ttl = Duration::from_secs(60);
    let domains =
        CustomDomains::new(Arc::new(RedisRegistry::new(redis_handle(&redis))), &config).unwrap();
    let mut peak = 0;
    for i in 0..2000 {
        let host = format!("r{i}-{:x}.attacker.example", rand_u64());
        assert!(matches!(
            domains.lookup(&host).await,
            Ok(DomainLookup::Unknown)
        ));
        peak = peak.max(domains.entries());
    }
    println!("domain cache: peak {peak} entries after 2000 random hosts (bound 64)");
    assert!(peak <= 64, "peak {peak}");
    let found = domains.lookup("app.example.com").await.unwrap();
    assert_eq!(summary(&found), "verified sbx-1 3000");
    // A figure, not an assertion: cached lookups of a verified domain.
    let started = std::time::Instant::now();
    for _ in 0..100_000 {
        let _ = domains.lookup("app.example.com").await;
    }
    let per_lookup = started.elapsed() / 100_000;
    println!("domain cache: a cached verified lookup takes {per_lookup:?} (this build)");
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

#[tokio::test]
async fn the_cli_adds_lists_verifies_and_removes_domains_in_redis() {
    let redis = RedisServer::start();
    let pebble = dns();
    let (_dir, cli, _) = cli_config(&redis, &pebble, "");
    let config = cli.as_path();
    let added = ok(
        config,
        &[
            "domain",
            "add",
            "a.example.com",
            "--sandbox",
            "Sbx-1",
            "--port",
            "3000",
        ],
    );
    assert!(added.contains("no sandbox \"sbx-1\" yet"), "{added}");
    trimmed(
        &redis,
        &["HSET", "sandgate:sandbox:sbx-2", "address", "127.0.0.1"],
    );
    let added = ok(
        config,
        &[
            "domain",
            "add",
            "b.example.com",
            "--sandbox",
            "sbx-2",
            "--port",
            "80",
            "--path-prefix",
            "/x",
            "--verify",
            "none",
        ],
    );
    assert!(!added.contains("note:"), "sbx-2 exists: {added}");
    let rows: [(&[&str], &str); 7] = [
        (
            &[
                "domain",
                "add",
                "a.example.com",
                "--sandbox",
                "s",
                "--port",
                "1",
            ],
            "already added",
        ),
        (
            &[
                "domain",
                "add",
                "*.example.com",
                "--sandbox",
                "s",
                "--port",
                "1",
            ],
            "wildcards",
        ),
        (
            &[
                "domain",
                "add",
                "c.example.com",
                "--sandbox",
                "s",
                "--port",
                "0",
            ],
            "--port",
        ),
        (
            &[
                "domain",
                "add",
                "c.example.com",
                "--sandbox",
                "s",
                "--port",
                "1",
                "--path-prefix",
                "x/",
            ],
            "--path-prefix",
        ),
        (
            &[
                "domain",
                "add",
                "3000-sbx-1.preview.localhost",
                "--sandbox",
                "sbx-1",
                "--port",
                "1",
            ],
            "under the preview domain preview.localhost",
        ),
        (&["domain", "verify", "b.example.com"], "already verified"),
        (&["domain", "rm", "none.example.com"], "no domain"),
    ];
    for (args, expected) in rows {
        let (success, _, stderr) = sandgate(config, args);
        assert!(!success && stderr.contains(expected), "{args:?}: {stderr}");
    }
    let token = trimmed(&redis, &["HGET", "sandgate:domain:a.example.com", "token"]);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(config, &["domain", "list", "--json"])).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([
            {"host": "a.example.com", "sandbox": "sbx-1", "port": 3000, "path_prefix": null,
             "state": "pending", "verification": "dns",
             "txt_record": {"name": "_sandgate-challenge.a.example.com", "value": token},
             "certificate": "none (acme off)"},
            {"host": "b.example.com", "sandbox": "sbx-2", "port": 80, "path_prefix": "/x",
             "state": "verified", "verification": null, "txt_record": null,
             "certificate": "none (acme off)"},
        ])
    );
    let text = ok(config, &["domain", "list"]);
    assert!(
        text.contains("a.example.com\tsbx-1\t3000\t-\tpending (dns)")
            && text.contains(&format!(
                "create: _sandgate-challenge.a.example.com TXT \"{token}\""
            )),
        "{text}"
    );
    // verify: refused while the record is missing or wrong, accepted once it matches.
    let (success, _, stderr) = sandgate(config, &["domain", "verify", "a.example.com"]);
    assert!(!success && stderr.contains("has no TXT record"), "{stderr}");
    pebble
        .set_txt("a.example.com", "wrong-value-0123456789")
        .await;
    let (success, _, stderr) = sandgate(config, &["domain", "verify", "a.example.com"]);
    assert!(!success && stderr.contains("wrong-value"), "{stderr}");
    pebble.set_txt("a.example.com", &token).await;
    ok(config, &["domain", "verify", "a.example.com"]);
    assert_eq!(
        trimmed(&redis, &["HGET", "sandgate:domain:a.example.com", "state"]),
        "verified"
    );
    ok(config, &["domain", "rm", "a.example.com"]);
    assert_eq!(
        trimmed(&redis, &["EXISTS", "sandgate:domain:a.example.com"]),
        "0"
    );
    assert_eq!(
        trimmed(&redis, &["SMEMBERS", "sandgate:domains"]),
        "b.example.com"
    );
}

#[test]
fn the_cli_prints_static_blocks_and_refuses_daytona() {
    let dir = tempfile::tempdir().unwrap();
    let static_config = dir.path().join("static.toml");
    let block = "[[registry.sandboxes]]\nid = \"sbx-1\"\naddress = \"127.0.0.1\"\n\
        [[registry.domains]]\nhost = \"app.example.com\"\nsandbox = \"sbx-1\"\nport = 3000\nstate = \"verified\"\n";
    std::fs::write(&static_config, block).unwrap();
    let printed = ok(
        &static_config,
        &[
            "domain",
            "add",
            "new.example.com",
            "--sandbox",
            "sbx-1",
            "--port",
            "3000",
        ],
    );
    // The printed block, appended, is a config the proxy accepts.
    let appended: String = printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let both = format!("{block}{appended}\n");
    let config = Config::from_toml_str(&both).unwrap();
    StaticRegistry::from_config(&config.registry).unwrap();
    assert!(
        printed.contains("_sandgate-challenge.new.example.com TXT"),
        "{printed}"
    );
    let listed = ok(&static_config, &["domain", "list", "--json"]);
    assert!(listed.contains("\"host\":\"app.example.com\""), "{listed}");
    let daytona = dir.path().join("daytona.toml");
    std::fs::write(
        &daytona,
        "[registry]\nbackend = \"daytona\"\n[daytona]\napi_url = \"http://127.0.0.1:1/api\"\napi_key = \"k\"\n",
    )
    .unwrap();
    for args in [
        &["domain", "list"][..],
        &[
            "domain",
            "add",
            "a.example.com",
            "--sandbox",
            "s",
            "--port",
            "1",
        ],
    ] {
        let (success, _, stderr) = sandgate(&daytona, args);
        assert!(
            !success && stderr.contains("control plane owns"),
            "{args:?}: {stderr}"
        );
    }
}

/// `redis-cli` output without its trailing newline.
fn trimmed(redis: &RedisServer, args: &[&str]) -> String {
    redis.cli(args).trim().to_string()
}

/// On a Redis Cluster the domain hash and the index set live on different slots: every write
/// and the proxy's "verified" script land on the right node.
#[tokio::test]
async fn domains_on_a_redis_cluster() {
    let nodes = RedisServer::cluster();
    let pebble = dns();
    let seeds: Vec<String> = nodes.iter().map(|n| format!("\"{}\"", n.url())).collect();
    let toml = format!(
        "[registry]\nbackend = \"redis\"\n[redis]\ntimeout = \"1s\"\ncluster_nodes = [{}]\n\
         [domains]\nenabled = true\ndns_resolver = \"{}\"\n",
        seeds.join(", "),
        pebble.dns
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, &toml).unwrap();
    for host in ["a.example.com", "b.example.com", "c.example.com"] {
        ok(
            &path,
            &[
                "domain",
                "add",
                host,
                "--sandbox",
                "sbx-1",
                "--port",
                "3000",
            ],
        );
    }
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&path, &["domain", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    let config = Config::from_toml_str(&toml).unwrap();
    let handle = Arc::new(RedisHandle::new(&config.redis).unwrap());
    let registry = Arc::new(RedisRegistry::new(handle));
    let token = listed[1]["txt_record"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    pebble.set_txt("b.example.com", &token).await;
    let domains = CustomDomains::new(
        registry.clone(),
        &domains_config(Some(pebble.dns), Duration::from_secs(60)),
    )
    .unwrap();
    expect_lookups(
        &domains,
        &[
            ("a.example.com", "pending sbx-1 3000"),
            ("b.example.com", "verified sbx-1 3000"),
        ],
    )
    .await;
    support::within(
        Duration::from_secs(5),
        "state verified on the cluster",
        || async {
            let held = registry.domain("b.example.com").await.unwrap().unwrap();
            held.state_name() == "verified"
        },
    )
    .await;
    ok(&path, &["domain", "rm", "c.example.com"]);
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&path, &["domain", "list", "--json"])).unwrap();
    let hosts: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["host"].as_str())
        .collect();
    assert_eq!(hosts, ["a.example.com", "b.example.com"]);
}

/// The "done when" over plain HTTP: a domain added with the CLI is pending (403) until
/// its TXT record appears, then serves the sandbox like its preview host (path prefix
/// upstream), and is gone once removed; the preview host keeps working throughout.
#[tokio::test]
async fn a_domain_added_with_the_cli_serves_its_sandbox_once_verified() {
    let redis = RedisServer::start();
    let pebble = dns();
    let timing = "cache_ttl = \"200ms\"\nverify_interval = \"300ms\"";
    let (_dir, cli, toml) = cli_config(&redis, &pebble, timing);
    public_sandboxes(&cli, &["sbx-1"]).await;
    ok(
        &cli,
        &[
            "domain",
            "add",
            "app.customer.example",
            "--sandbox",
            "sbx-1",
            "--port",
            "3000",
            "--path-prefix",
            "/app",
        ],
    );
    let token = trimmed(
        &redis,
        &["HGET", "sandgate:domain:app.customer.example", "token"],
    );
    let proxy = support::admin_cli::start_proxy(&toml);
    let pending = support::get(proxy.addr, "app.customer.example", "/x").await;
    assert_eq!(pending.status, 403, "{}", pending.text());
    assert!(pending
        .text()
        .contains("_sandgate-challenge.app.customer.example"));
    pebble.set_txt("app.customer.example", &token).await;
    support::within(
        Duration::from_secs(5),
        "the domain serves once verified",
        || async {
            support::get(proxy.addr, "app.customer.example", "/x")
                .await
                .status
                == 200
        },
    )
    .await;
    let served = support::get(proxy.addr, "app.customer.example", "/x").await;
    assert_eq!(
        served.text(),
        "hello from sandbox sbx-1, port 3000, path /app/x\n"
    );
    assert_eq!(
        trimmed(
            &redis,
            &["HGET", "sandgate:domain:app.customer.example", "state"]
        ),
        "verified",
        "the proxy recorded it"
    );
    let preview = support::get(proxy.addr, "3000-sbx-1.preview.localhost", "/x").await;
    assert_eq!(
        preview.text(),
        "hello from sandbox sbx-1, port 3000, path /x\n"
    );
    ok(&cli, &["domain", "rm", "app.customer.example"]);
    support::within(
        Duration::from_secs(5),
        "the removed domain is gone",
        || async {
            support::get(proxy.addr, "app.customer.example", "/x")
                .await
                .status
                == 404
        },
    )
    .await;
}

/// The tenant wall when a domain changes hands: every `sandgate domain` write is announced on
/// the invalidation channel, so with answers cached for an hour a running proxy still follows
/// each change at once: a name added after it answered "unknown", moved from one tenant's
/// sandbox to another's, verified by the CLI, and removed.
#[tokio::test]
async fn a_domain_moved_to_another_tenant_reaches_only_the_new_one_at_once() {
    let redis = RedisServer::start();
    let pebble = dns();
    let timing = "cache_ttl = \"1h\"\nverify_interval = \"1h\"";
    let (_dir, cli, toml) = cli_config(&redis, &pebble, timing);
    public_sandboxes(&cli, &["sbx-a", "sbx-b"]).await;
    let proxy = support::admin_cli::start_proxy(&toml);
    let host = "app.customer.example";
    enum Change {
        None,
        Add(&'static str, &'static str),
        VerifyByCli,
        Rm,
    }
    let sandbox_a = "hello from sandbox sbx-a, port 3000, path /x\n";
    let sandbox_b = "hello from sandbox sbx-b, port 3000, path /x\n";
    // (step, the change, what the proxy must answer right after it)
    let steps = [
        ("nothing yet: unknown, and cached", Change::None, 404, ""),
        (
            "added for tenant A",
            Change::Add("sbx-a", "none"),
            200,
            sandbox_a,
        ),
        ("removed", Change::Rm, 404, ""),
        (
            "added for tenant B, pending",
            Change::Add("sbx-b", "dns"),
            403,
            "",
        ),
        ("verified by the CLI", Change::VerifyByCli, 200, sandbox_b),
        ("removed again", Change::Rm, 404, ""),
    ];
    for (step, change, status, body) in steps {
        match change {
            Change::None => {}
            Change::Add(sandbox, verify) => {
                let args = [
                    "add",
                    host,
                    "--sandbox",
                    sandbox,
                    "--port",
                    "3000",
                    "--verify",
                ];
                ok(&cli, &[&["domain"], &args[..], &[verify]].concat());
            }
            Change::VerifyByCli => {
                let token = trimmed(
                    &redis,
                    &["HGET", "sandgate:domain:app.customer.example", "token"],
                );
                pebble.set_txt(host, &token).await;
                ok(&cli, &["domain", "verify", host]);
            }
            Change::Rm => {
                ok(&cli, &["domain", "rm", host]);
            }
        }
        support::within(Duration::from_secs(3), step, || async {
            let answer = support::get(proxy.addr, host, "/x").await;
            answer.status == status && (body.is_empty() || answer.text() == body)
        })
        .await;
        if step.contains("tenant B") || step.contains("verified") {
            let answer = support::get(proxy.addr, host, "/x").await;
            assert_ne!(answer.text(), sandbox_a, "{step}: tenant A is not reached");
        }
    }
}
