//! Issue #15, the app's own view of the request: `upstream_host` (per sandbox and per port, with
//! `${PORT}` and `${SANDBOX}`) is the `Host` the app sees, through a runner, straight to the
//! sandbox and from Redis, while `X-Forwarded-Host` keeps the public host. The attack: a
//! client's own `X-Forwarded-Host` reaches the app only from a trusted proxy, and only when
//! `proxy.preserve_forwarded_host` is on.
mod support;

use support::admin_cli::*;
use support::control_plane::{ControlPlane, FakeSandbox};
use support::redis::RedisServer;
use support::runner::{Runner, Seen};
use support::{recorder, send, Proxy};

/// What the runner saw of one GET through `proxy`.
async fn seen(proxy: &Proxy, runner: &Runner, host: &str, headers: &[(&str, &str)]) -> Seen {
    let before = runner.seen().len();
    let reply = send(proxy.addr, "GET", host, "/echo", headers, b"").await;
    assert_eq!(reply.status, 200, "{host}: {}", reply.text());
    runner.wait_requests(before + 1).await;
    runner.last()
}

const SANDBOXES: &str = r#"
[[registry.sandboxes]]
id = "Sbx-A"
runner = "runner-1"
public = true
upstream_host = "localhost:${PORT}"
upstream_hosts = { "8080" = "${SANDBOX}.internal:8080", "9000" = "fixed.example" }
[[registry.sandboxes]]
id = "plain"
runner = "runner-1"
public = true
"#;

#[tokio::test]
async fn the_app_sees_its_upstream_host_and_x_forwarded_host_keeps_the_public_one() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(SANDBOXES));
    let runner_host = runner.addr.to_string();
    // (public host, Host the runner (and through it the app) sees)
    let cases = [
        ("3000-sbx-a.preview.localhost", "localhost:3000"),
        ("5173-sbx-a.preview.localhost", "localhost:5173"),
        ("8080-sbx-a.preview.localhost", "sbx-a.internal:8080"),
        ("9000-sbx-a.preview.localhost", "fixed.example"),
        ("3000-plain.preview.localhost", runner_host.as_str()),
    ];
    for (public, expected) in cases {
        let s = seen(&proxy, &runner, public, &[]).await;
        assert_eq!(s.all("host"), [expected], "{public}");
        assert_eq!(s.all("x-forwarded-host"), [public], "{public}");
        // The connection and the path still address the runner's proxy for that port.
        let port = public.split('-').next().unwrap();
        assert!(
            s.target.contains(&format!("/toolbox/proxy/{port}/")),
            "{}",
            s.target
        );
    }
}

#[tokio::test]
async fn direct_mode_sends_the_upstream_host_to_the_sandbox() {
    let rec = recorder::start().await;
    let proxy = Proxy::start(
        r#"
[proxy]
domains = ["preview.localhost"]
[[registry.sandboxes]]
id = "direct"
address = "127.0.0.1"
public = true
upstream_host = "app.local:${PORT}"
"#,
    );
    let public = format!("{}-direct.preview.localhost", rec.port());
    let reply = send(proxy.addr, "GET", &public, "/", &[], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let record = reply.json();
    assert_eq!(
        record["headers"]["host"],
        serde_json::json!([format!("app.local:{}", rec.port())])
    );
    assert_eq!(
        record["headers"]["x-forwarded-host"],
        serde_json::json!([public])
    );
}

#[tokio::test]
async fn redis_records_carry_upstream_hosts_and_bad_ones_are_refused() {
    let redis = RedisServer::start();
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n[registry]\nbackend = \"redis\"\n\
         [redis]\nurl = \"{}\"\ntimeout = \"500ms\"\n",
        redis.url()
    ));
    let runner_url = format!("http://{}", runner.addr);
    redis.cli(&[
        "HSET",
        "sandgate:runner:r1",
        "url",
        &runner_url,
        "api_key",
        "runner-key",
    ]);
    redis.cli(&[
        "HSET",
        "sandgate:sandbox:red",
        "runner",
        "r1",
        "public",
        "true",
        "upstream_host",
        "localhost:${PORT}",
        "upstream_host:8080",
        "${SANDBOX}:8080",
    ]);
    redis.cli(&[
        "HSET",
        "sandgate:sandbox:bad",
        "runner",
        "r1",
        "public",
        "true",
        "upstream_host",
        "${HOST}",
    ]);
    for (public, expected) in [
        ("3000-red.preview.localhost", "localhost:3000"),
        ("8080-red.preview.localhost", "red:8080"),
    ] {
        let s = seen(&proxy, &runner, public, &[]).await;
        assert_eq!(s.all("host"), [expected], "{public}");
        assert_eq!(s.all("x-forwarded-host"), [public]);
    }
    let before = runner.seen().len();
    let reply = send(
        proxy.addr,
        "GET",
        "3000-bad.preview.localhost",
        "/",
        &[],
        b"",
    )
    .await;
    assert_eq!(reply.status, 502, "bad registry data: {}", reply.text());
    assert_eq!(runner.seen().len(), before, "nothing reached the runner");
}

#[tokio::test]
async fn a_clients_x_forwarded_host_reaches_the_app_only_from_a_trusted_proxy_when_asked() {
    let runner = Runner::start("runner-key").await;
    let public = "3000-plain.preview.localhost";
    let claimed = "app.customer.example";
    // (trusted proxies, preserve_forwarded_host, X-Forwarded-Host the app sees)
    let cases = [
        ("192.0.2.0/24", false, public),
        ("192.0.2.0/24", true, public),
        ("127.0.0.0/8", false, public),
        ("127.0.0.0/8", true, claimed),
    ];
    for (trusted, preserve, expected) in cases {
        let proxy = Proxy::start(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"{trusted}\"]\n\
             [proxy]\ndomains = [\"preview.localhost\"]\npreserve_forwarded_host = {preserve}\n\
             [[registry.runners]]\nid = \"runner-1\"\nurl = \"http://{}\"\napi_key = \"runner-key\"\n\
             {SANDBOXES}",
            runner.addr
        ));
        let s = seen(&proxy, &runner, public, &[("x-forwarded-host", claimed)]).await;
        assert_eq!(
            s.all("x-forwarded-host"),
            [expected],
            "trusted {trusted}, preserve {preserve}"
        );
    }
}

#[tokio::test]
async fn daytona_labels_set_the_upstream_host() {
    let runner = Runner::start("runner-key").await;
    let cp = ControlPlane::start("svc-key").await;
    cp.add_runner("runner-1", &format!("http://{}", runner.addr), "runner-key");
    let mut sandbox = FakeSandbox::new("runner-1", true);
    for (label, value) in [
        ("sandgate.io/upstream-host", "localhost:${PORT}"),
        ("sandgate.io/upstream-host.8080", "${SANDBOX}.internal"),
    ] {
        sandbox.labels.insert(label.into(), value.into());
    }
    cp.add_sandbox("day", sandbox);
    let proxy = Proxy::start(&format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n[registry]\nbackend = \"daytona\"\n\
         [daytona]\napi_url = \"{}\"\napi_key = \"svc-key\"\ntimeout = \"1s\"\n",
        cp.api_url()
    ));
    for (public, expected) in [
        ("3000-day.preview.localhost", "localhost:3000"),
        ("8080-day.preview.localhost", "day.internal"),
    ] {
        let s = seen(&proxy, &runner, public, &[]).await;
        assert_eq!(s.all("host"), [expected], "{public}");
        assert_eq!(s.all("x-forwarded-host"), [public]);
    }
}

/// An h2c runner recording each request's version and `:authority` (h2) or `Host` (HTTP/1.1).
async fn h2c_runner() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(http::Version, String)>>>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<_>| {
                    let authority = req
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .or_else(|| {
                            let host = req.headers().get("host")?;
                            Some(host.to_str().ok()?.to_string())
                        })
                        .unwrap_or_default();
                    state.lock().unwrap().push((req.version(), authority));
                    let _: &hyper::body::Incoming = req.body();
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn an_h2c_runner_gets_the_upstream_host_as_authority() {
    let (addr, seen) = h2c_runner().await;
    let proxy = Proxy::start(&format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [[registry.runners]]\nid = \"h2\"\nurl = \"http://{addr}\"\napi_key = \"k\"\nprotocol = \"h2c\"\n\
         [[registry.sandboxes]]\nid = \"grpc\"\nrunner = \"h2\"\npublic = true\n\
         upstream_host = \"localhost:${{PORT}}\"\n\
         [[registry.sandboxes]]\nid = \"plain\"\nrunner = \"h2\"\npublic = true\n"
    ));
    for (public, expected) in [
        ("3000-grpc.preview.localhost", "localhost:3000".to_string()),
        ("3000-plain.preview.localhost", addr.to_string()),
    ] {
        let reply = send(proxy.addr, "GET", public, "/", &[], b"").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last, (http::Version::HTTP_2, expected), "{public}");
    }
}

// ---- The admin CLI: `registry identity` and `registry upstream-host` reach running proxies ----

/// A Redis-backed proxy with identity on and a ten-minute cache (only a pushed invalidation
/// can make a change visible within the second `both_see` allows), once it has subscribed.
fn subscribed_proxy(redis: &RedisServer) -> Proxy {
    let key = format!(
        "{}/tests/fixtures/identity_ed25519.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    start_proxy(&format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n[registry]\nbackend = \"redis\"\n\
         [registry.cache]\nttl = \"10m\"\n[redis]\nurl = \"{}\"\ntimeout = \"500ms\"\n\
         [identity]\nenabled = true\n[[identity.keys]]\nkid = \"ed-1\"\nalgorithm = \"EdDSA\"\n\
         private_key_file = \"{key}\"\n",
        redis.url()
    ))
}

/// (Host, has an identity header) the app sees on `port` of `cli-sbx`, through each proxy,
/// equals `want` within a second.
async fn both_see(proxies: [&Proxy; 2], runner: &Runner, port: u16, want: (&str, bool)) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let public = format!("{port}-cli-sbx.preview.localhost");
    let bearer = [("authorization", "Bearer cli-api-key")];
    for proxy in proxies {
        loop {
            let s = seen(proxy, runner, &public, &bearer).await;
            let got = (s.all("host"), s.header("x-sandgate-identity").is_some());
            if got == (vec![want.0.to_string()], want.1) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{public}: saw {got:?}, expected {want:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn cli_identity_and_upstream_host_changes_reach_two_running_proxies_at_once() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cli = dir.path().join("cli.toml");
    std::fs::write(
        &cli,
        format!("[redis]\nurl = \"{}\"\ntimeout = \"500ms\"\n", redis.url()),
    )
    .unwrap();
    let cli = cli.as_path();
    let runner = Runner::start("runner-key").await;
    let runner_host = runner.addr.to_string();
    let runner_url = format!("http://{runner_host}");
    let put_runner = ["registry", "put-runner", "--id", "r1", "--url", &runner_url];
    ok(
        cli,
        &[&put_runner[..], &["--api-key", "runner-key"]].concat(),
    );
    let put_sandbox = [
        "registry",
        "put-sandbox",
        "--id",
        "cli-sbx",
        "--runner",
        "r1",
        "--organization",
        "org-1",
    ];
    ok(cli, &put_sandbox);
    ok(
        cli,
        &[
            "registry",
            "put-api-key",
            "--key",
            "cli-api-key",
            "--organization",
            "org-1",
        ],
    );
    let (first, second) = (subscribed_proxy(&redis), subscribed_proxy(&redis));
    let proxies = [&first, &second];
    both_see(proxies, &runner, 3000, (&runner_host, false)).await;

    let step = |args: &[&str]| ok(cli, &[&["registry"][..], args].concat());
    let on = step(&["identity", "--sandbox", "cli-sbx", "--on"]);
    let on: serde_json::Value = serde_json::from_str(&on).unwrap();
    assert_eq!(
        on,
        serde_json::json!({"sandbox": "cli-sbx", "identity": true})
    );
    both_see(proxies, &runner, 3000, (&runner_host, true)).await;

    let every_port = ["upstream-host", "--sandbox", "cli-sbx"];
    step(&[&every_port[..], &["--template", "localhost:${PORT}"]].concat());
    both_see(proxies, &runner, 3000, ("localhost:3000", true)).await;
    let one_port = [&every_port[..], &["--port", "8080"]].concat();
    step(&[&one_port[..], &["--template", "${SANDBOX}.internal"]].concat());
    both_see(proxies, &runner, 8080, ("cli-sbx.internal", true)).await;
    both_see(proxies, &runner, 3000, ("localhost:3000", true)).await;

    // Clearing the sandbox's template leaves the port's own.
    step(&[&every_port[..], &["--clear"]].concat());
    both_see(proxies, &runner, 3000, (&runner_host, true)).await;
    both_see(proxies, &runner, 8080, ("cli-sbx.internal", true)).await;
    step(&["identity", "--sandbox", "cli-sbx", "--off"]);
    both_see(proxies, &runner, 8080, ("cli-sbx.internal", false)).await;

    // What the proxy would refuse is refused by the CLI, naming the flag; nothing is written.
    let before = step(&["get", "--sandbox", "cli-sbx"]);
    let refusals: [(&[&str], &str); 6] = [
        (&["--template", "${HOST}"], "--template"),
        (&["--template", "user@host"], "--template"),
        (&["--template", "a/b"], "--template"),
        (&["--port", "0", "--template", "x"], "--port"),
        (
            &["--port", "8080", "--template", "host:${PORT}x"],
            "--template",
        ),
        (&["--template", "x", "--clear"], "--clear"),
    ];
    for (extra, flag) in refusals {
        let args = [&["registry"][..], &every_port[..], extra].concat();
        let (success, _, stderr) = sandgate(cli, &args);
        assert!(!success, "{args:?} was accepted");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    let bad_put = [&put_sandbox[..], &["--upstream-host", "${PORT"]].concat();
    let (success, _, stderr) = sandgate(cli, &bad_put);
    assert!(!success && stderr.contains("--upstream-host"), "{stderr}");
    let (success, _, stderr) =
        sandgate(cli, &["registry", "identity", "--sandbox", "nope", "--on"]);
    assert!(!success && stderr.contains("not found"), "{stderr}");
    assert_eq!(step(&["get", "--sandbox", "cli-sbx"]), before);

    // put-sandbox sets both at once (and, replacing the record, drops the port's template).
    let put_both = ["--identity", "--upstream-host", "app.local:${PORT}"];
    ok(cli, &[&put_sandbox[..], &put_both[..]].concat());
    both_see(proxies, &runner, 8080, ("app.local:8080", true)).await;
}
