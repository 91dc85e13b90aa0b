//! Issue #15, the app's own view of the request: `upstream_host` (per sandbox and per port, with
//! `${PORT}` and `${SANDBOX}`) is the `Host` the app sees, through a runner, straight to the
//! sandbox and from Redis, while `X-Forwarded-Host` keeps the public host. The attack: a
//! client's own `X-Forwarded-Host` reaches the app only from a trusted proxy, and only when
//! `proxy.preserve_forwarded_host` is on.
mod support;

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
