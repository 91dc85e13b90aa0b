//! The `daytona` registry backend and activity sink against a real HTTP control-plane fixture,
//! through the real binary where the proxy's behaviour is the point, and a real `redis-server`
//! for the shared L2.
mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandgate::activity::daytona::DaytonaActivitySink;
use sandgate::activity::{Activity, ActivityConfig, ActivitySink};
use sandgate::config::DaytonaConfig;
use sandgate::registry::{DaytonaRegistry, Registry, RegistryError};
use support::control_plane::{
    ControlPlane, FakeSandbox, Fault, LAST_ACTIVITY, PUBLIC, RUNNER_BY_SANDBOX, SANDBOX, SIGNED,
    VALIDATE,
};
use support::{get, send, Proxy};

const SERVICE_KEY: &str = "svc-key-1";
const RUNNER_KEY: &str = "runner-key-1";

/// A control plane with one runner (the demo runner, which answers previews).
async fn control_plane() -> ControlPlane {
    let runner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runner_addr = runner.local_addr().unwrap();
    tokio::spawn(sandgate::cli::demo::run_demo_runner(
        runner,
        RUNNER_KEY.into(),
    ));
    let cp = ControlPlane::start(SERVICE_KEY).await;
    cp.add_runner("runner-1", &format!("http://{runner_addr}"), RUNNER_KEY);
    cp
}

fn proxy_config(cp: &ControlPlane, extra: &str) -> String {
    format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [registry]\nbackend = \"daytona\"\n\
         [daytona]\napi_url = \"{}\"\napi_key = \"{SERVICE_KEY}\"\ntimeout = \"1s\"\n{extra}",
        cp.api_url()
    )
}

fn host(id: &str) -> String {
    format!("3000-{id}.preview.localhost")
}

fn hello(id: &str) -> String {
    format!("hello from sandbox {id}, port 3000, path /hi\n")
}

fn daytona(cp: &ControlPlane, timeout: Duration) -> DaytonaConfig {
    DaytonaConfig {
        api_url: cp.api_url(),
        api_key: SERVICE_KEY.into(),
        timeout,
        l2_redis: false,
    }
}

#[tokio::test]
async fn public_private_unknown_and_stopped_sandboxes() {
    let cp = control_plane().await;
    cp.add_sandbox("pub-1", FakeSandbox::new("runner-1", true));
    cp.add_sandbox(
        "priv-1",
        FakeSandbox {
            preview_token: Some("tok-priv-1".into()),
            ..FakeSandbox::new("runner-1", false)
        },
    );
    cp.add_sandbox(
        "stopped-1",
        FakeSandbox {
            state: "stopped".into(),
            ..FakeSandbox::new("runner-1", true)
        },
    );
    let proxy = Proxy::start(&proxy_config(&cp, ""));

    let reply = get(proxy.addr, &host("pub-1"), "/hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), hello("pub-1"));

    // `GET /preview/priv-1/public` answers a plain-text 404: private, not an error.
    let reply = get(proxy.addr, &host("priv-1"), "/hi").await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    let with_token = [("x-daytona-preview-token", "tok-priv-1")];
    for _ in 0..2 {
        let reply = send(proxy.addr, "GET", &host("priv-1"), "/hi", &with_token, b"").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), hello("priv-1"));
    }
    assert_eq!(cp.calls(VALIDATE), 1, "the validation is cached");
    let wrong = [("x-daytona-preview-token", "tok-wrong")];
    let reply = send(proxy.addr, "GET", &host("priv-1"), "/hi", &wrong, b"").await;
    assert_eq!(reply.status, 401);

    let reply = get(proxy.addr, &host("nope-1"), "/hi").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert_eq!(reply.json()["code"], "SANDBOX_NOT_FOUND");

    let reply = get(proxy.addr, &host("stopped-1"), "/hi").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["code"], "SANDBOX_NOT_RUNNING");

    // One lookup per sandbox: the in-process cache answers the repeats.
    assert_eq!(cp.calls(RUNNER_BY_SANDBOX), 4);
    assert_eq!(cp.calls(PUBLIC), 4);
    assert_eq!(cp.calls(SANDBOX), 4);
    assert!(!proxy.stderr().contains(SERVICE_KEY), "API key in the logs");
    assert!(!proxy.stderr().contains("tok-priv-1"), "token in the logs");
}

#[tokio::test]
async fn transient_failures_are_retried_and_answers_are_not() {
    let cp = control_plane().await;
    for id in ["retry-1", "bad-1", "reset-1"] {
        cp.add_sandbox(id, FakeSandbox::new("runner-1", true));
    }
    let proxy = Proxy::start(&proxy_config(&cp, "").replace("\"1s\"", "\"300ms\""));

    cp.fail_next(RUNNER_BY_SANDBOX, 2, Fault::Status(503));
    let reply = get(proxy.addr, &host("retry-1"), "/hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(cp.calls(RUNNER_BY_SANDBOX), 3, "two 503s, then the answer");

    cp.fail_next(RUNNER_BY_SANDBOX, 1, Fault::Status(400));
    let reply = get(proxy.addr, &host("bad-1"), "/hi").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["code"], "REGISTRY_UNAVAILABLE");
    assert_eq!(
        cp.calls(RUNNER_BY_SANDBOX),
        4,
        "a 400 is an answer: no retry"
    );
    let reply = get(proxy.addr, &host("bad-1"), "/hi").await;
    assert_eq!(reply.status, 200, "errors are not cached");

    // A reset connection and a try that outlives the timeout are retried too.
    cp.fail_next(PUBLIC, 1, Fault::Reset);
    cp.fail_next(SANDBOX, 1, Fault::Delay(Duration::from_secs(1)));
    let (public_before, sandbox_before) = (cp.calls(PUBLIC), cp.calls(SANDBOX));
    let reply = get(proxy.addr, &host("reset-1"), "/hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(cp.calls(PUBLIC) - public_before, 2);
    assert_eq!(cp.calls(SANDBOX) - sandbox_before, 2);
}

#[tokio::test]
async fn api_down_fails_cold_lookups_and_serves_cached_ones_stale() {
    let cp = control_plane().await;
    for id in ["warm-1", "cold-1"] {
        cp.add_sandbox(id, FakeSandbox::new("runner-1", true));
    }
    let extra = "[registry.cache]\nttl = \"200ms\"\nstale_if_error = \"1m\"\n";
    let proxy = Proxy::start(&proxy_config(&cp, extra).replace("\"1s\"", "\"300ms\""));
    let reply = get(proxy.addr, &host("warm-1"), "/hi").await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get("x-sandgate-stale").is_none());

    cp.set_down(true);
    let reply = get(proxy.addr, &host("cold-1"), "/hi").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["code"], "REGISTRY_UNAVAILABLE");
    assert!(!reply.text().contains(SERVICE_KEY));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = get(proxy.addr, &host("warm-1"), "/hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), hello("warm-1"));
    assert_eq!(reply.headers["x-sandgate-stale"], "1");

    let ready = get(proxy.addr, "127.0.0.1", "/ready").await;
    assert_eq!(ready.status, 503, "not ready while the API is down");
    cp.set_down(false);
    let ready = get(proxy.addr, "127.0.0.1", "/ready").await;
    assert_eq!(ready.status, 200);
}

#[tokio::test]
async fn a_thousand_cold_requests_make_one_lookup() {
    let cp = control_plane().await;
    cp.add_sandbox("hot-1", FakeSandbox::new("runner-1", true));
    cp.set_slow(RUNNER_BY_SANDBOX, Duration::from_millis(200));
    let proxy = Proxy::start(&proxy_config(&cp, ""));
    let addr: SocketAddr = proxy.addr;
    let tasks: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(async move { get(addr, &host("hot-1"), "/hi").await.status }))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }
    assert_eq!(cp.calls(RUNNER_BY_SANDBOX), 1);
    assert_eq!(cp.calls(PUBLIC), 1);
    assert_eq!(cp.calls(SANDBOX), 1);
}

#[tokio::test]
async fn signed_preview_ssh_tokens_and_readiness_through_the_library() {
    let cp = control_plane().await;
    cp.add_sandbox("sbx-1", FakeSandbox::new("runner-1", false));
    let now = Instant::now();
    {
        let mut world = cp.world();
        world.signed.insert(
            "abcdefgh12345678".into(),
            ("sbx-1".into(), 3000, now + Duration::from_secs(60)),
        );
        world.signed.insert(
            "expired000000000".into(),
            (
                "sbx-1".into(),
                3000,
                now.checked_sub(Duration::from_secs(1)).unwrap_or(now),
            ),
        );
        world.ssh.insert("sshtoken1".into(), ("sbx-1".into(), true));
        world
            .ssh
            .insert("sshtoken2".into(), ("sbx-1".into(), false));
    }
    let registry = DaytonaRegistry::new(&daytona(&cp, Duration::from_secs(1)), None).unwrap();

    let id = registry
        .signed_preview("abcdefgh12345678", 3000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*id.sandbox, "sbx-1");
    assert_eq!(
        id.lifetime,
        sandgate::registry::Lifetime::Unknown,
        "the API does not say when a token expires"
    );
    assert_eq!(
        registry
            .signed_preview("abcdefgh12345678", 3001)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        registry
            .signed_preview("expired000000000", 3000)
            .await
            .unwrap(),
        None
    );
    let calls = cp.calls(SIGNED);
    assert_eq!(
        registry.signed_preview("../../config", 3000).await.unwrap(),
        None
    );
    assert_eq!(cp.calls(SIGNED), calls, "odd tokens never reach the API");

    assert_eq!(
        registry
            .ssh_token("sshtoken1")
            .await
            .unwrap()
            .map(|g| g.sandbox)
            .as_deref(),
        Some("sbx-1")
    );
    assert_eq!(registry.ssh_token("sshtoken2").await.unwrap(), None);
    assert_eq!(registry.ssh_token("unknown").await.unwrap(), None);

    let record = registry.sandbox("sbx-1").await.unwrap().unwrap();
    assert!(!record.public && record.is_running());
    assert_eq!(record.organization.as_deref(), Some("org-1"));
    let runner = match &record.upstream {
        sandgate::registry::Upstream::Runner(r) => r.clone(),
        other => panic!("runner mode expected, got {other:?}"),
    };
    assert_eq!(&*runner.id, "runner-1");
    assert_eq!(runner.ssh_endpoint.as_deref(), Some("runner.local:2220"));
    assert!(!registry
        .preview_token_valid(&record, "tok-x")
        .await
        .unwrap());

    assert!(registry.ready().await);
    cp.set_down(true);
    assert!(!registry.ready().await);
    cp.set_down(false);

    let wrong_key = DaytonaConfig {
        api_key: "not-the-key".into(),
        ..daytona(&cp, Duration::from_secs(1))
    };
    let registry = DaytonaRegistry::new(&wrong_key, None).unwrap();
    match registry.sandbox("sbx-1").await {
        Err(RegistryError::Unavailable(message)) => {
            assert!(message.contains("401"), "{message}");
            assert!(!message.contains("not-the-key"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn activity_sink_posts_with_bounded_concurrency_and_keeps_failed_marks() {
    let cp = control_plane().await;
    let ids: Vec<String> = (0..40).map(|i| format!("act-{i}")).collect();
    for id in &ids {
        cp.add_sandbox(id, FakeSandbox::new("runner-1", true));
    }
    cp.set_slow(LAST_ACTIVITY, Duration::from_millis(20));
    let sink = DaytonaActivitySink::new(&daytona(&cp, Duration::from_secs(1)), 4).unwrap();
    let activity = Activity::new(&ActivityConfig {
        throttle: Duration::ZERO,
        ..ActivityConfig::default()
    });
    for id in &ids {
        activity.mark(id);
    }
    assert_eq!(activity.flush(&sink).await.unwrap(), 40);
    assert_eq!(cp.calls(LAST_ACTIVITY), 40);
    let peak = cp.max_in_flight(LAST_ACTIVITY);
    assert!((2..=4).contains(&peak), "peak concurrency {peak}");

    // Three writes fail (500 is not retried): only those three stay pending.
    tokio::time::sleep(Duration::from_millis(5)).await;
    for id in &ids {
        activity.mark(id);
    }
    cp.fail_next(LAST_ACTIVITY, 3, Fault::Status(500));
    assert!(activity.flush(&sink).await.is_err());
    assert_eq!(cp.calls(LAST_ACTIVITY), 80);
    assert_eq!(activity.flush(&sink).await.unwrap(), 3);
    assert_eq!(cp.calls(LAST_ACTIVITY), 83);

    // The all-or-nothing entry point reports the failure too.
    cp.fail_next(LAST_ACTIVITY, 1, Fault::Status(500));
    let batch = [(Arc::<str>::from("act-0"), 1)];
    assert!(sink.write(&batch).await.is_err());
}

#[tokio::test]
async fn activity_reaches_the_api_through_the_binary() {
    let cp = control_plane().await;
    cp.add_sandbox("live-1", FakeSandbox::new("runner-1", true));
    let extra = "[activity]\nsink = \"daytona\"\nflush_interval = \"50ms\"\nthrottle = \"0s\"\n";
    let proxy = Proxy::start(&proxy_config(&cp, extra));
    assert_eq!(get(proxy.addr, &host("live-1"), "/hi").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while cp.calls(LAST_ACTIVITY) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cp.calls(LAST_ACTIVITY), 1);
}

/// A throwaway `redis-server` on a free port; killed on drop.
struct RedisL2 {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisL2 {
    fn start() -> RedisL2 {
        Self::start_on(support::free_port())
    }

    fn start_on(port: u16) -> RedisL2 {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        let redis = RedisL2 {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisL2 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redis_l2_is_shared_between_processes_and_follows_daytona_deletions() {
    let cp = control_plane().await;
    cp.add_sandbox("l2-1", FakeSandbox::new("runner-1", true));
    let redis = RedisL2::start();
    let config = proxy_config(
        &cp,
        &format!("l2_redis = true\n[redis]\nurl = \"{}\"\n", redis.url()),
    );

    let first = Proxy::start(&config);
    assert_eq!(get(first.addr, &host("l2-1"), "/hi").await.status, 200);
    assert_eq!(cp.calls(RUNNER_BY_SANDBOX), 1);

    // Daytona's key names and envelopes, with Daytona's TTLs.
    let info: serde_json::Value =
        serde_json::from_str(&redis.cli(&["GET", "proxy:sandbox-runner-info:l2-1"])).unwrap();
    let runner_url = cp.world().runners["runner-1"].api_url.clone();
    assert_eq!(info["value"]["apiUrl"], runner_url.as_str());
    assert_eq!(info["value"]["apiKey"], RUNNER_KEY);
    let ttl: i64 = redis
        .cli(&["TTL", "proxy:sandbox-runner-info:l2-1"])
        .parse()
        .unwrap();
    assert!((1..=120).contains(&ttl), "runner info TTL {ttl}");
    assert_eq!(
        redis.cli(&["GET", "proxy:sandbox-public:l2-1"]),
        r#"{"value":true}"#
    );
    let ttl: i64 = redis
        .cli(&["TTL", "proxy:sandbox-public:l2-1"])
        .parse()
        .unwrap();
    assert!((3000..=3600).contains(&ttl), "public TTL {ttl}");

    // A second process has a cold in-process cache: it resolves from Redis alone.
    let second = Proxy::start(&config);
    let reply = get(second.addr, &host("l2-1"), "/hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), hello("l2-1"));
    assert_eq!(cp.calls(RUNNER_BY_SANDBOX), 1);
    assert_eq!(cp.calls(PUBLIC), 1);
    assert_eq!(cp.calls(SANDBOX), 1);

    // The Daytona API deletes the key on archive: the next cold lookup asks the API again.
    redis.cli(&["DEL", "proxy:sandbox-runner-info:l2-1"]);
    let third = Proxy::start(&config);
    assert_eq!(get(third.addr, &host("l2-1"), "/hi").await.status, 200);
    assert_eq!(cp.calls(RUNNER_BY_SANDBOX), 2);

    // An entry written by Daytona's own proxy (no extra fields) lacks the sandbox's labels
    // (its port policy): the API is asked, and our entry replaces it.
    cp.add_sandbox("l2-2", FakeSandbox::new("runner-1", false));
    let theirs = format!(r#"{{"value":{{"apiUrl":"{runner_url}","apiKey":"{RUNNER_KEY}"}}}}"#);
    redis.cli(&["SET", "proxy:sandbox-runner-info:l2-2", &theirs]);
    redis.cli(&["SET", "proxy:sandbox-public:l2-2", r#"{"value":false}"#]);
    assert_eq!(get(third.addr, &host("l2-2"), "/hi").await.status, 401);
    assert_eq!(
        cp.calls(RUNNER_BY_SANDBOX),
        3,
        "not served from their entry"
    );
    let ours: serde_json::Value =
        serde_json::from_str(&redis.cli(&["GET", "proxy:sandbox-runner-info:l2-2"])).unwrap();
    assert_eq!(ours["value"]["labels"], true, "{ours}");
}

#[tokio::test]
async fn redis_down_falls_back_to_the_api() {
    let cp = control_plane().await;
    cp.add_sandbox("nol2-1", FakeSandbox::new("runner-1", true));
    cp.add_sandbox("nol2-2", FakeSandbox::new("runner-1", true));
    let dead = support::free_port();
    let config = proxy_config(
        &cp,
        &format!(
            "l2_redis = true\n[redis]\nurl = \"redis://127.0.0.1:{dead}\"\ntimeout = \"200ms\"\n"
        ),
    );
    let proxy = Proxy::start(&config);
    for id in ["nol2-1", "nol2-2"] {
        let reply = get(proxy.addr, &host(id), "/hi").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(cp.calls(RUNNER_BY_SANDBOX), 2);
    let warnings = proxy.stderr().matches("Redis L2 unavailable").count();
    assert_eq!(warnings, 1, "one warning per outage:\n{}", proxy.stderr());

    // Redis comes up: the L2 is used again without a restart.
    let redis = RedisL2::start_on(dead);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while redis.cli(&["EXISTS", &format!("proxy:sandbox-runner-info:back-{n}")]) != "1" {
        assert!(
            Instant::now() < deadline,
            "L2 not used after Redis came back"
        );
        n += 1;
        let id = format!("back-{n}");
        cp.add_sandbox(&id, FakeSandbox::new("runner-1", true));
        assert_eq!(get(proxy.addr, &host(&id), "/hi").await.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(proxy.stderr().contains("Redis L2 reachable again"));
}

/// How Daytona SDKs authenticate: `Authorization: Bearer <user token>`, decided by the control
/// plane's `GET /preview/{id}/access` (200 yes, 404 no, 401 bad token), and cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_bearers_are_checked_by_the_access_endpoint() {
    let cp = control_plane().await;
    cp.add_sandbox("priv-1", FakeSandbox::new("runner-1", false));
    cp.world()
        .users
        .insert("user-ok".into(), vec!["priv-1".into()]);
    cp.world()
        .users
        .insert("user-other".into(), vec!["elsewhere".into()]);
    let proxy = Proxy::start(&proxy_config(&cp, ""));
    let call = |bearer: &'static str| {
        let addr = proxy.addr;
        async move {
            let auth = format!("Bearer {bearer}");
            support::send(
                addr,
                "GET",
                "127.0.0.1",
                "/toolbox/priv-1/version",
                &[("authorization", &auth)],
                b"",
            )
            .await
        }
    };
    let ok = call("user-ok").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["version"], "demo");
    assert_eq!(call("user-ok").await.status, 200);
    assert_eq!(
        cp.calls(support::control_plane::ACCESS),
        1,
        "the verdict is cached"
    );
    let other = call("user-other").await;
    assert_eq!(
        (other.status, other.json()["code"].clone()),
        (403, "FORBIDDEN".into())
    );
    let bad = call("nobody").await;
    assert_eq!(
        (bad.status, bad.json()["code"].clone()),
        (401, "TOKEN_INVALID".into())
    );
}
