//! Per-port access through the real binary: port policies (public, private, not exposed) and
//! port-scoped preview tokens on the static backend, and their Redis encoding changed by the
//! admin CLI reaching two running proxies at once.
mod support;

use std::time::{Duration, Instant};

use support::admin_cli::*;
use support::redis::RedisServer;
use support::runner::Runner;
use support::table::*;
use support::{get, raw_until_idle, send, statuses, Proxy};

const SANDBOXES: &str = r#"
[[registry.sandboxes]]
id = "open"
runner = "runner-1"
public = true
auth_token = "tok-open"
ports = "declared"
port_access = { "3000" = "public", "8080" = "private" }

[[registry.sandboxes]]
id = "closed"
runner = "runner-1"
auth_token = "tok-closed"
ports = "declared"
port_access = { "3000" = "public" }

[[registry.sandboxes]]
id = "scoped"
runner = "runner-1"
auth_token = "tok-all-ports"
preview_tokens = [{ token = "tok-3000", ports = [3000, 3001] }]
"#;

fn host(port: u16, id: &str) -> String {
    format!("{port}-{id}.preview.localhost")
}

#[tokio::test]
async fn ports_are_public_private_or_not_exposed_by_the_policy() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(SANDBOXES));
    let token = |t: &'static str| [("x-daytona-preview-token", t)];
    #[rustfmt::skip]
    let rows = [
        Row::get("public sandbox, public port", &host(3000, "open"), "/", &[], [status(200)]),
        Row::get("public sandbox, private port: no credential", &host(8080, "open"), "/", &[],
            [status(401), code("AUTH_REQUIRED")]),
        Row::get("public sandbox, private port: its token", &host(8080, "open"), "/", &token("tok-open"),
            [status(200)]),
        Row::get("attack: an undeclared port of a public sandbox", &host(5000, "open"), "/", &[],
            [status(404), code("PORT_NOT_EXPOSED")]),
        Row::get("an undeclared port stays 404 with a valid token", &host(5000, "open"), "/", &token("tok-open"),
            [status(404), code("PORT_NOT_EXPOSED")]),
        Row::get("a reserved port needs a credential even in declared mode", &host(2280, "open"), "/", &[],
            [status(401)]),
        Row::get("toolbox routes are unaffected", "127.0.0.1", "/toolbox/open/files", &token("tok-open"),
            [status(200)]),
        Row::get("private sandbox, undeclared port: strangers learn nothing (401)", &host(5000, "closed"), "/", &[],
            [status(401), code("AUTH_REQUIRED")]),
        Row::get("private sandbox, undeclared port: a credential holder gets 404", &host(5000, "closed"), "/",
            &token("tok-closed"), [status(404), code("PORT_NOT_EXPOSED")]),
        Row::get("private sandbox, public port", &host(3000, "closed"), "/", &[], [status(200)]),
        Row::get("sandboxes without a policy: every port follows public", &host(9999, "scoped"), "/",
            &token("tok-all-ports"), [status(200)]),
    ];
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

#[tokio::test]
async fn a_port_scoped_token_opens_its_ports_only() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(SANDBOXES));
    let token = |t: &'static str| [("x-daytona-preview-token", t)];
    #[rustfmt::skip]
    let rows = [
        Row::get("its port", &host(3000, "scoped"), "/", &token("tok-3000"), [status(200)]),
        Row::get("its other port", &host(3001, "scoped"), "/", &token("tok-3000"), [status(200)]),
        Row::get("attack: 3000- changed to 8080-", &host(8080, "scoped"), "/", &token("tok-3000"),
            [status(401), code("TOKEN_INVALID")]),
        Row::get("attack: by query, on another port", &host(8080, "scoped"),
            "/?DAYTONA_SANDBOX_AUTH_KEY=tok-3000", &[], [status(401), code("TOKEN_INVALID")]),
        Row::get("attack: a scoped token on the toolbox", "127.0.0.1", "/toolbox/scoped/files",
            &token("tok-3000"), [status(401)]),
        Row::get("the all-ports token still opens every port", &host(8080, "scoped"), "/",
            &token("tok-all-ports"), [status(200)]),
    ];
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

#[tokio::test]
async fn a_scoped_grant_does_not_carry_to_another_port_by_cookie_or_connection() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(SANDBOXES));
    // A browser logs in on port 3000 with the scoped token in the query: it gets a cookie.
    let login = send(
        proxy.addr,
        "GET",
        &host(3000, "scoped"),
        "/?DAYTONA_SANDBOX_AUTH_KEY=tok-3000",
        &[("sec-fetch-mode", "navigate"), ("accept", "text/html")],
        b"",
    )
    .await;
    let set_cookie = login
        .headers
        .get("set-cookie")
        .unwrap_or_else(|| panic!("no cookie: {} {}", login.status, login.text()))
        .to_str()
        .unwrap();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    assert!(
        cookie.starts_with("daytona-sandbox-auth-scoped="),
        "{cookie}"
    );
    let with_cookie = [("cookie", cookie.as_str())];
    #[rustfmt::skip]
    let rows = [
        Row::get("the cookie opens its port", &host(3000, "scoped"), "/", &with_cookie, [status(200)]),
        Row::get("attack: the cookie replayed on 8080", &host(8080, "scoped"), "/", &with_cookie,
            [status(401), code("TOKEN_INVALID")]),
    ];
    run(proxy.addr, Upstream::Runner(&runner), rows).await;

    // One keep-alive connection: a token accepted on 3000 is not remembered for 8080.
    let request = |port: u16| {
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nx-daytona-preview-token: tok-3000\r\n\r\n",
            host(port, "scoped")
        )
    };
    let both = format!("{}{}{}", request(3000), request(3000), request(8080));
    let raw = raw_until_idle(proxy.addr, both, Duration::from_millis(500)).await;
    assert_eq!(statuses(&raw), vec![200, 200, 401], "{raw}");
}

// ---- Redis: the encoding, the CLI, and invalidation reaching every proxy ----

/// Both proxies answer `want` for `port` (with `headers`) within a second: the cache TTL is
/// ten minutes, so only the pushed invalidation can make it.
async fn both_answer(proxies: [&Proxy; 2], port: u16, headers: &[(&str, &str)], want: u16) {
    let deadline = Instant::now() + Duration::from_secs(1);
    for proxy in proxies {
        loop {
            let reply = send(proxy.addr, "GET", &host(port, "sbx"), "/", headers, b"").await;
            if reply.status == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "port {port}: {} (expected {want}): {}",
                reply.status,
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn cli_port_changes_reach_two_running_proxies_at_once() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let runner = Runner::start("k").await;
    put_runner(&cli.path, "r1", runner.addr, "k");
    let sandbox = |extra: &[&str]| {
        let mut args = vec![
            "registry",
            "put-sandbox",
            "--id",
            "sbx",
            "--runner",
            "r1",
            "--public",
        ];
        args.extend_from_slice(extra);
        ok(&cli.path, &args);
    };
    sandbox(&["--auth-token", "tok-all"]);
    let config = redis_toml(&redis, "[registry.cache]\nttl = \"10m\"");
    let (first, second) = (start_proxy(&config), start_proxy(&config));
    let proxies = [&first, &second];
    both_answer(proxies, 5000, &[], 200).await;

    let cli_step = |args: &[&str]| ok(&cli.path, args);
    cli_step(&[
        "registry",
        "ports",
        "--sandbox",
        "sbx",
        "--mode",
        "declared",
    ]);
    both_answer(proxies, 5000, &[], 404).await;
    let reply = get(first.addr, &host(5000, "sbx"), "/").await;
    assert_eq!(reply.json()["code"], "PORT_NOT_EXPOSED");

    cli_step(&[
        "registry",
        "expose",
        "--sandbox",
        "sbx",
        "--port",
        "5000",
        "--private",
    ]);
    both_answer(proxies, 5000, &[], 401).await;
    both_answer(
        proxies,
        5000,
        &[("x-daytona-preview-token", "tok-all")],
        200,
    )
    .await;
    cli_step(&[
        "registry",
        "expose",
        "--sandbox",
        "sbx",
        "--port",
        "5000",
        "--public",
    ]);
    both_answer(proxies, 5000, &[], 200).await;
    cli_step(&["registry", "unexpose", "--sandbox", "sbx", "--port", "5000"]);
    both_answer(proxies, 5000, &[], 404).await;
    cli_step(&["registry", "ports", "--sandbox", "sbx", "--mode", "all"]);
    both_answer(proxies, 5000, &[], 200).await;

    // Port-scoped tokens: stored by hash, revoked at once.
    cli_step(&[
        "registry",
        "expose",
        "--sandbox",
        "sbx",
        "--port",
        "3000",
        "--private",
    ]);
    cli_step(&[
        "registry",
        "expose",
        "--sandbox",
        "sbx",
        "--port",
        "8080",
        "--private",
    ]);
    let scoped = [("x-daytona-preview-token", "tok-3000")];
    both_answer(proxies, 3000, &scoped, 401).await;
    let out = cli_step(&[
        "registry",
        "put-token",
        "--sandbox",
        "sbx",
        "--token",
        "tok-3000",
        "--port",
        "3000",
    ]);
    assert!(
        !out.contains("tok-3000"),
        "the raw token is never printed: {out}"
    );
    both_answer(proxies, 3000, &scoped, 200).await;
    both_answer(proxies, 8080, &scoped, 401).await;
    let shown = cli_step(&["registry", "get", "--sandbox", "sbx"]);
    assert!(shown.contains("\"port:3000\":\"private\""), "{shown}");
    cli_step(&[
        "registry",
        "rm-token",
        "--sandbox",
        "sbx",
        "--token",
        "tok-3000",
    ]);
    both_answer(proxies, 3000, &scoped, 401).await;

    // The CLI refuses what a record must not say; nothing is written.
    for args in [
        &[
            "registry",
            "expose",
            "--sandbox",
            "sbx",
            "--port",
            "2280",
            "--public",
        ][..],
        &["registry", "ports", "--sandbox", "sbx", "--mode", "some"],
        &[
            "registry",
            "expose",
            "--sandbox",
            "nope",
            "--port",
            "3000",
            "--public",
        ],
        &[
            "registry",
            "put-sandbox",
            "--id",
            "x",
            "--address",
            "h",
            "--ports",
            "most",
        ],
    ] {
        let (success, _, stderr) = sandgate(&cli.path, args);
        assert!(!success, "{args:?} was accepted");
        assert!(!stderr.is_empty(), "{args:?}: no reason given");
    }
}

#[tokio::test]
async fn a_redis_record_cannot_make_a_reserved_port_public() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let runner = Runner::start("k").await;
    put_runner(&cli.path, "r1", runner.addr, "k");
    ok(
        &cli.path,
        &[
            "registry",
            "put-sandbox",
            "--id",
            "sbx",
            "--runner",
            "r1",
            "--public",
            "--auth-token",
            "tok",
        ],
    );
    // Written around the CLI, which refuses it.
    redis.cli(&[
        "HSET",
        "sandgate:sandbox:sbx",
        "port:2280",
        "public",
        "port:3000",
        "public",
    ]);
    let proxy = start_proxy(&redis_toml(&redis, ""));
    let token = [("x-daytona-preview-token", "tok")];
    #[rustfmt::skip]
    let rows = [
        Row::get("the reserved port still needs a credential", &host(2280, "sbx"), "/", &[],
            [status(401), code("AUTH_REQUIRED")]),
        Row::get("and opens with one", &host(2280, "sbx"), "/", &token, [status(200)]),
        Row::get("the rest of the record is in force", &host(3000, "sbx"), "/", &[], [status(200)]),
    ];
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
    assert!(
        proxy
            .stderr()
            .contains("ignoring an entry for a reserved port"),
        "{}",
        proxy.stderr()
    );
}

#[tokio::test]
async fn malformed_port_fields_are_bad_data_naming_the_field() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    ok(
        &cli.path,
        &[
            "registry",
            "put-sandbox",
            "--id",
            "sbx",
            "--address",
            "127.0.0.1",
            "--public",
        ],
    );
    redis.cli(&["HSET", "sandgate:sandbox:sbx", "port:3000", "open"]);
    let proxy = start_proxy(&redis_toml(&redis, ""));
    let reply = get(proxy.addr, &host(3000, "sbx"), "/").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["code"], "REGISTRY_BAD_DATA");
    assert!(proxy.stderr().contains("port:3000"), "{}", proxy.stderr());
}

// ---- Daytona: the policy from the sandbox's labels, kept through the shared L2 ----

#[tokio::test]
async fn daytona_labels_set_the_policy_and_the_l2_carries_it() {
    use support::control_plane::{ControlPlane, FakeSandbox, SANDBOX};
    let runner = Runner::start("runner-key").await;
    let cp = ControlPlane::start("svc-key").await;
    cp.add_runner("runner-1", &format!("http://{}", runner.addr), "runner-key");
    let labels = [
        ("sandgate.io/ports", "declared"),
        ("sandgate.io/port.3000", "public"),
        ("sandgate.io/port.8080", "private"),
        ("sandgate.io/port.2280", "public"),
    ];
    cp.add_sandbox(
        "sbx",
        FakeSandbox {
            preview_token: Some("tok".into()),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..FakeSandbox::new("runner-1", true)
        },
    );
    let mut bad = FakeSandbox::new("runner-1", true);
    bad.labels
        .insert("sandgate.io/port.3000".into(), "open".into());
    cp.add_sandbox("bad", bad);
    let redis = RedisServer::start();
    let config = format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [registry]\nbackend = \"daytona\"\n\
         [daytona]\napi_url = \"{}\"\napi_key = \"svc-key\"\ntimeout = \"1s\"\nl2_redis = true\n\
         [redis]\nurl = \"{}\"\n",
        cp.api_url(),
        redis.url()
    );
    let token = [("x-daytona-preview-token", "tok")];
    #[rustfmt::skip]
    let rows = || [
        Row::get("a public port", &host(3000, "sbx"), "/", &[], [status(200)]),
        Row::get("a private port of a public sandbox", &host(8080, "sbx"), "/", &[], [status(401)]),
        Row::get("a private port with the token", &host(8080, "sbx"), "/", &token, [status(200)]),
        Row::get("an undeclared port", &host(5000, "sbx"), "/", &[],
            [status(404), code("PORT_NOT_EXPOSED")]),
        Row::get("a label cannot make a reserved port public", &host(2280, "sbx"), "/", &[],
            [status(401)]),
    ];
    let first = Proxy::start(&config);
    run(first.addr, Upstream::Runner(&runner), rows()).await;
    let reply = get(first.addr, &host(3000, "bad"), "/").await;
    assert_eq!(
        reply.json()["code"],
        "REGISTRY_BAD_DATA",
        "a malformed label"
    );
    // A second process with a cold cache resolves from the L2 alone, policy included.
    let asked = cp.calls(SANDBOX);
    let second = Proxy::start(&config);
    run(second.addr, Upstream::Runner(&runner), rows()).await;
    assert_eq!(cp.calls(SANDBOX), asked, "served from the L2");

    // The attack: the L2 is shared with Daytona's own proxy, whose entries carry no labels.
    // Read as is, such an entry would open every port of this public sandbox to anyone.
    let theirs = format!(
        r#"{{"value":{{"apiUrl":"http://{}","apiKey":"runner-key"}}}}"#,
        runner.addr
    );
    redis.cli(&["SET", "proxy:sandbox-runner-info:sbx", &theirs]);
    let third = Proxy::start(&config);
    run(third.addr, Upstream::Runner(&runner), rows()).await;
    assert_eq!(
        cp.calls(SANDBOX),
        asked + 1,
        "an entry without the labels is not used: the API is asked"
    );
}

// ---- Signed preview links: cached per (token, port) ----

#[tokio::test]
async fn alternating_ports_of_a_signed_token_do_not_read_redis_each_time() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let runner = Runner::start("k").await;
    put_runner(&cli.path, "r1", runner.addr, "k");
    ok(
        &cli.path,
        &["registry", "put-sandbox", "--id", "sbx", "--runner", "r1"],
    );
    // One token signed for two ports (Daytona's key per port; the CLI mints a token per link).
    let token = "alternating00000";
    for port in ["3000", "3001"] {
        let key = format!("sandbox:signed-preview-url-token:{port}:{token}");
        redis.cli(&["SET", &key, "sbx", "EX", "600"]);
    }
    let proxy = start_proxy(&redis_toml(&redis, ""));
    let before = redis.calls_of("get");
    for _ in 0..10 {
        for port in [3000, 3001] {
            let reply = get(proxy.addr, &host(port, token), "/").await;
            assert_eq!(reply.status, 200, "{}", reply.text());
        }
    }
    assert_eq!(
        redis.calls_of("get") - before,
        2,
        "one read per (token, port)"
    );
}

#[tokio::test]
async fn preview_url_list_shows_port_expiry_and_throttled_last_use_never_the_token() {
    let redis = RedisServer::start();
    let cli = cli_config(&redis);
    let runner = Runner::start("k").await;
    put_runner(&cli.path, "r1", runner.addr, "k");
    ok(
        &cli.path,
        &["registry", "put-sandbox", "--id", "sbx", "--runner", "r1"],
    );
    let sign = |port: &str| {
        let url = ok(
            &cli.path,
            &[
                "preview-url",
                "sign",
                "--sandbox",
                "sbx",
                "--port",
                port,
                "--ttl",
                "1h",
                "--domain",
                "d",
            ],
        );
        let token = url.split_once('-').unwrap().1.split_once('.').unwrap().0;
        token.to_string()
    };
    let (used, unused) = (sign("3000"), sign("3001"));
    let config = redis_toml(
        &redis,
        "[activity]\nflush_interval = \"20ms\"\nthrottle = \"10m\"\n",
    );
    let proxy = start_proxy(&config);
    let uses_key = "sandgate:signed-link-uses:sbx";
    let before = redis.calls_of("hset");
    for _ in 0..20 {
        let reply = get(proxy.addr, &host(3000, &used), "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while redis.cli(&["HLEN", uses_key]).trim() != "1" {
        assert!(
            Instant::now() < deadline,
            "no last use written: {}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // More requests and flushes within the throttle interval write nothing more.
    for _ in 0..5 {
        get(proxy.addr, &host(3000, &used), "/").await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        redis.calls_of("hset") - before,
        1,
        "one write per link per interval"
    );

    let listed = ok(&cli.path, &["preview-url", "list", "--sandbox", "sbx"]);
    for token in [&used, &unused] {
        assert!(
            !listed.contains(token.as_str()),
            "a raw token is shown: {listed}"
        );
    }
    let links: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let by_port = |port: u64| {
        links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["port"] == port)
            .unwrap_or_else(|| panic!("no link for {port}: {listed}"))
            .clone()
    };
    let (first, second) = (by_port(3000), by_port(3001));
    assert!(first["last_used"].is_string(), "{listed}");
    assert!(second["last_used"].is_null(), "{listed}");
    let left = first["expires_in_ms"].as_u64().unwrap();
    assert!(left > 3_500_000 && left <= 3_600_000, "{listed}");
    assert!(first["token_sha256"].as_str().unwrap().ends_with('…'));

    ok(
        &cli.path,
        &["preview-url", "revoke", "--token", &used, "--port", "3000"],
    );
    let listed = ok(&cli.path, &["preview-url", "list", "--sandbox", "sbx"]);
    let links: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(links.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(links[0]["port"], 3001);
    assert_eq!(
        get(proxy.addr, &host(3000, &used), "/").await.status,
        404,
        "revoked"
    );
}

// ---- The policy through every other door (adversarial review of the merged parts) ----

#[tokio::test]
async fn the_port_policy_holds_through_header_routing_preflights_and_upgrades() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(SANDBOXES));
    const OWN: &str = "sandgate.localhost";
    let routed = |id: &'static str, port: &'static str| {
        vec![
            ("x-daytona-sandbox-id", id),
            ("x-daytona-sandbox-port", port),
        ]
    };
    let with = |mut h: Vec<(&'static str, &'static str)>, more: &[(&'static str, &'static str)]| {
        h.extend_from_slice(more);
        h
    };
    let token = |t: &'static str| ("x-daytona-preview-token", t);
    let preflight = [
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "GET"),
    ];
    let upgrade = [
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    #[rustfmt::skip]
    let rows = [
        Row::get("header-routed: a scoped token on its port", OWN, "/",
            &with(routed("scoped", "3000"), &[token("tok-3000")]), [status(200)]),
        Row::get("attack: header-routed, a scoped token with the port header changed", OWN, "/",
            &with(routed("scoped", "8080"), &[token("tok-3000")]), [status(401), code("TOKEN_INVALID")]),
        Row::get("attack: header-routed, an undeclared port of a public sandbox", OWN, "/",
            &routed("open", "5000"), [status(404), code("PORT_NOT_EXPOSED")]),
        Row::get("header-routed, a private sandbox's undeclared port: 401 to strangers", OWN, "/",
            &routed("closed", "5000"), [status(401)]),
        Row::get("header-routed, a private sandbox's public port", OWN, "/",
            &routed("closed", "3000"), [status(200)]),
        Row::get("header-routed, a reserved port needs a credential", OWN, "/",
            &routed("open", "2280"), [status(401)]),
        Row::new("attack: a preflight to an undeclared port of a public sandbox", "OPTIONS",
            &host(5000, "open"), "/", &preflight, [status(404), code("PORT_NOT_EXPOSED")]),
        Row::new("attack: a header-routed preflight to an undeclared port", "OPTIONS", OWN, "/",
            &with(routed("open", "5000"), &preflight), [status(404), code("PORT_NOT_EXPOSED")]),
        Row::get("attack: a WebSocket upgrade with a scoped token on another port", &host(8080, "scoped"),
            "/", &with(vec![token("tok-3000")], &upgrade), [status(401), code("TOKEN_INVALID")]),
        Row::get("attack: a header-routed upgrade with a scoped token on another port", OWN, "/",
            &with(routed("scoped", "8080"), &[&upgrade[..], &[token("tok-3000")]].concat()),
            [status(401), code("TOKEN_INVALID")]),
    ];
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
}
