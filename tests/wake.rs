//! Wake on request (issue #16) through the real binary, on each start backend: the static
//! registry with the start hook, Redis with an orchestrator on the wake channel, and the Daytona
//! control plane's `POST /sandbox/{id}/start`. A request for a stopped sandbox is held and
//! answered by the app once the sandbox is up; one start call however many requests wait (and
//! however many replicas); every bound and failure is a prompt 503 with `Retry-After`; a
//! stranger, an opted-out sandbox or an excluded request never wakes anything.
//!
//! The fixtures' [`Gate`]s keep a start in progress until the test has seen every request held
//! (the `sandgate_wake_held` gauge), so "held during one start" is a fact, not a timing hope.
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use sha2::{Digest, Sha256};
use support::admin_cli::{cli_config, ok, redis_toml, sandgate, start_proxy};
use support::chromium::Chromium;
use support::control_plane::{ControlPlane, FakeSandbox, StartOutcome, START};
use support::gate::Gate;
use support::hook::Hook;
use support::redis::{Orchestrator, Outcome, RedisServer, KEY_PREFIX};
use support::runner::Runner;
use support::{get, send, ws_connect, Proxy, Reply};
use tokio_tungstenite::tungstenite::Message;

const RUNNER_KEY: &str = "runner-key-1";
const SERVICE_KEY: &str = "svc-key-1";
const HOOK_KEY: &str = "wake-key";
/// The fixtures' start delay.
const DELAY: Duration = Duration::from_millis(400);
/// Longer than any answer that must come "at once" here, far shorter than `max_wait`.
const PROMPT: Duration = Duration::from_secs(10);
/// Fast polling, so the Daytona backend (no pushed invalidation here) notices a start quickly.
const POLLING: &str = "poll_min = \"50ms\"\npoll_max = \"200ms\"\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Hook,
    Redis,
    Daytona,
}

const BACKENDS: [Backend; 3] = [Backend::Hook, Backend::Redis, Backend::Daytona];

/// One sandbox of a test world: public unless it has a token; stopped unless told otherwise.
#[derive(Clone, Copy)]
struct Sbx {
    id: &'static str,
    token: Option<&'static str>,
    wake: bool,
    state: &'static str,
}

fn stopped(id: &'static str) -> Sbx {
    Sbx {
        id,
        token: None,
        wake: true,
        state: "stopped",
    }
}

impl Sbx {
    fn private(self, token: &'static str) -> Sbx {
        Sbx {
            token: Some(token),
            ..self
        }
    }

    fn opted_out(self) -> Sbx {
        Sbx {
            wake: false,
            ..self
        }
    }

    fn in_state(self, state: &'static str) -> Sbx {
        Sbx { state, ..self }
    }
}

/// A runner emulator, the backend's fixtures and a proxy (with an admin listener) in front.
struct World {
    backend: Backend,
    runner: Runner,
    config: String,
    proxy: Proxy,
    admin: SocketAddr,
    hook: Option<Hook>,
    cp: Option<ControlPlane>,
    orchestrator: Option<Orchestrator>,
    _redis: Option<RedisServer>,
}

impl World {
    /// `wake` is extra TOML for `[registry.wake]`.
    async fn start(backend: Backend, sandboxes: &[Sbx], wake: &str) -> World {
        let runner = Runner::start(RUNNER_KEY).await;
        let wake = format!("{POLLING}{wake}");
        let (mut hook, mut cp, mut orchestrator, mut redis) = (None, None, None, None);
        let config = match backend {
            Backend::Hook => {
                let fixture = Hook::start(DELAY).await;
                let config = runner.config(&format!(
                    "[registry.wake]\nurl = \"{}\"\napi_key = \"{HOOK_KEY}\"\n{wake}\n{}",
                    fixture.url(),
                    static_sandboxes(sandboxes)
                ));
                hook = Some(fixture);
                config
            }
            Backend::Redis => {
                let server = RedisServer::start();
                redis_sandboxes(&server, runner.addr, sandboxes);
                orchestrator = Some(Orchestrator::start(&server, DELAY).await);
                let config = format!(
                    "{}[registry.wake]\nbackend = \"redis\"\n{wake}\n",
                    redis_toml(&server, "")
                );
                redis = Some(server);
                config
            }
            Backend::Daytona => {
                let fixture = ControlPlane::start(SERVICE_KEY).await;
                fixture.add_runner("runner-1", &format!("http://{}", runner.addr), RUNNER_KEY);
                for s in sandboxes {
                    fixture.add_sandbox(s.id, daytona_sandbox(s));
                }
                fixture.on_start(DELAY, StartOutcome::Starts);
                let config = format!(
                    "[proxy]\ndomains = [\"preview.localhost\"]\n\
                     [registry]\nbackend = \"daytona\"\n\
                     [daytona]\napi_url = \"{}\"\napi_key = \"{SERVICE_KEY}\"\ntimeout = \"1s\"\n\
                     [registry.wake]\nbackend = \"daytona\"\n{wake}\n",
                    fixture.api_url()
                );
                cp = Some(fixture);
                config
            }
        };
        // Port 3001 is a health-check port: its requests never count as activity.
        let config = format!(
            "{config}[admin]\nlisten = \"127.0.0.1:0\"\n[activity]\nignore_ports = [3001]\n"
        );
        let proxy = replica(backend, &config);
        let admin = proxy.admin_addr();
        World {
            backend,
            runner,
            config,
            proxy,
            admin,
            hook,
            cp,
            orchestrator,
            _redis: redis,
        }
    }

    /// Another proxy with the same config (for Redis: on the same Redis).
    fn replica(&self) -> Proxy {
        replica(self.backend, &self.config)
    }

    fn addr(&self) -> SocketAddr {
        self.proxy.addr
    }

    /// Start calls received by the backend's fixture, for any sandbox.
    fn start_calls(&self) -> usize {
        match self.backend {
            Backend::Hook => self.hook().calls().len(),
            Backend::Redis => self.orchestrator().requests().len(),
            Backend::Daytona => self.cp().calls(START),
        }
    }

    /// The sandboxes the backend was asked to start, in order.
    fn started_ids(&self) -> Vec<String> {
        match self.backend {
            Backend::Hook => self
                .hook()
                .calls()
                .iter()
                .map(|c| c.path.split('/').nth(3).unwrap_or_default().to_string())
                .collect(),
            Backend::Redis => self.orchestrator().requests(),
            Backend::Daytona => panic!("the control plane fixture counts calls, not ids"),
        }
    }

    /// Keeps starts in progress while closed.
    fn gate(&self) -> &Gate {
        match self.backend {
            Backend::Hook => self.hook().gate(),
            Backend::Redis => self.orchestrator().gate(),
            Backend::Daytona => self.cp().start_gate(),
        }
    }

    /// From now on, starts fail; the proxy's message must contain the fragment returned.
    fn fail_starts(&self) -> &'static str {
        match self.backend {
            Backend::Hook => {
                self.hook()
                    .answer(DELAY, 500, "quota exceeded for organisation org-1");
                "quota exceeded for organisation org-1"
            }
            Backend::Redis => {
                self.orchestrator().on_start(DELAY, Outcome::Errors);
                "error"
            }
            Backend::Daytona => {
                self.cp().on_start(
                    DELAY,
                    StartOutcome::Refused(400, "Sandbox is in error state".into()),
                );
                "Sandbox is in error state"
            }
        }
    }

    fn hook(&self) -> &Hook {
        self.hook.as_ref().expect("hook backend")
    }

    fn orchestrator(&self) -> &Orchestrator {
        self.orchestrator.as_ref().expect("redis backend")
    }

    fn cp(&self) -> &ControlPlane {
        self.cp.as_ref().expect("daytona backend")
    }

    /// The `sandgate_wake_held` gauge.
    async fn held(&self) -> f64 {
        held(self.admin).await
    }

    /// One sample of the proxy's metrics (`name{labels}`), 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        let metrics = get(self.admin, "127.0.0.1", "/metrics").await;
        support::sample(&metrics.text(), series)
    }

    /// Waits (bounded) until `n` requests are held.
    async fn wait_held(&self, n: usize) {
        wait_held(self.admin, n).await;
    }
}

fn replica(backend: Backend, config: &str) -> Proxy {
    match backend {
        // Subscribed before the first request, so the orchestrator's invalidations arrive.
        Backend::Redis => start_proxy(config),
        _ => Proxy::start(config),
    }
}

fn static_sandboxes(sandboxes: &[Sbx]) -> String {
    let mut toml = String::new();
    for s in sandboxes {
        toml += &format!(
            "[[registry.sandboxes]]\nid = \"{}\"\nrunner = \"runner-1\"\npublic = {}\nstate = \"{}\"\n",
            s.id,
            s.token.is_none(),
            s.state
        );
        if let Some(token) = s.token {
            toml += &format!("auth_token = \"{token}\"\n");
        }
        if !s.wake {
            toml += "wake = false\n";
        }
    }
    toml
}

/// Writes the runner and the sandboxes as the Redis backend reads them (and as the admin CLI
/// writes them: the token only as its SHA-256).
fn redis_sandboxes(redis: &RedisServer, runner: SocketAddr, sandboxes: &[Sbx]) {
    let runner_key = format!("{KEY_PREFIX}runner:runner-1");
    let url = format!("http://{runner}");
    redis.cli(&["HSET", &runner_key, "url", &url, "api_key", RUNNER_KEY]);
    for s in sandboxes {
        let key = format!("{KEY_PREFIX}sandbox:{}", s.id);
        let public = if s.token.is_none() { "true" } else { "false" };
        redis.cli(&[
            "HSET", &key, "runner", "runner-1", "public", public, "state", s.state,
        ]);
        if let Some(token) = s.token {
            let hash = hex::encode(Sha256::digest(token.as_bytes()));
            redis.cli(&["HSET", &key, "auth_token_sha256", &hash]);
        }
        if !s.wake {
            redis.cli(&["HSET", &key, "wake", "false"]);
        }
    }
}

fn daytona_sandbox(s: &Sbx) -> FakeSandbox {
    let mut sandbox = FakeSandbox::new("runner-1", s.token.is_none());
    sandbox.state = s.state.into();
    sandbox.preview_token = s.token.map(String::from);
    if !s.wake {
        sandbox
            .labels
            .insert("sandgate.io/wake".into(), "false".into());
    }
    sandbox
}

fn host(id: &str) -> String {
    format!("3000-{id}.preview.localhost")
}

async fn held(admin: SocketAddr) -> f64 {
    let metrics = get(admin, "127.0.0.1", "/metrics").await;
    support::sample(&metrics.text(), "sandgate_wake_held")
}

async fn wait_held(admin: SocketAddr, n: usize) {
    let deadline = Instant::now() + PROMPT;
    loop {
        let now = held(admin).await;
        if now >= n as f64 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {now} of {n} requests held (sandgate_wake_held)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PROMPT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {PROMPT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `send`, which must answer within [`PROMPT`].
async fn prompt(addr: SocketAddr, method: &str, id: &str, headers: &[(&str, &str)]) -> Reply {
    let host = host(id);
    let reply = send(addr, method, &host, "/hi", headers, b"");
    tokio::time::timeout(PROMPT, reply)
        .await
        .unwrap_or_else(|_| panic!("{method} {id} {headers:?} was held, not answered at once"))
}

/// A 503 with `Retry-After`, JSON `code` and a message containing `fragment`.
fn assert_refused(reply: &Reply, code: &str, fragment: &str, what: &str) {
    assert_eq!(reply.status, 503, "{what}: {}", reply.text());
    assert!(
        reply.headers.contains_key("retry-after"),
        "{what}: no Retry-After"
    );
    let json = reply.json();
    assert_eq!(json["code"], code, "{what}: {json}");
    let message = json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(fragment),
        "{what}: message {message:?} lacks {fragment:?}"
    );
}

#[tokio::test]
async fn the_first_request_after_a_stop_gets_the_apps_answer() {
    for backend in BACKENDS {
        let world = World::start(backend, &[stopped("sleepy")], "").await;
        let started = Instant::now();
        let reply = get(world.addr(), &host("sleepy"), "/hi?first=1").await;
        let took = started.elapsed();
        assert_eq!(reply.status, 200, "{backend:?}: {}", reply.text());
        assert_eq!(reply.json()["method"], "GET", "{backend:?}: the app's echo");
        assert!(world.runner.last().target.ends_with("/hi?first=1"));
        assert!(
            took >= DELAY,
            "{backend:?}: answered before the start ended"
        );
        println!("{backend:?}: first request answered after {took:?} (start delay {DELAY:?})");

        let again = get(world.addr(), &host("sleepy"), "/hi").await;
        assert_eq!(again.status, 200, "{backend:?}: {}", again.text());
        assert_eq!(world.start_calls(), 1, "{backend:?}: one start call");
        for series in [
            "sandgate_wakes_started_total",
            "sandgate_wakes_succeeded_total",
            "sandgate_wake_seconds_count",
        ] {
            assert_eq!(world.metric(series).await, 1.0, "{backend:?}: {series}");
        }
        if backend == Backend::Hook {
            let call = &world.hook().calls()[0];
            assert_eq!(call.method, "POST");
            assert_eq!(call.path, "/api/sandbox/sleepy/start");
            assert_eq!(call.authorization, format!("Bearer {HOOK_KEY}"));
        }
    }
}

/// What one of the concurrent clients did, for the assertion message.
type Outcomes = Vec<Result<(), String>>;

async fn held_get(addr: SocketAddr, i: usize) -> Result<(), String> {
    let reply = get(addr, &host("sleepy"), &format!("/get/{i}")).await;
    match reply.status {
        200 => Ok(()),
        other => Err(format!("GET {i}: {other} {}", reply.text())),
    }
}

async fn held_post(addr: SocketAddr, i: usize) -> Result<(), String> {
    let body = format!("body of post {i}");
    let reply = send(addr, "POST", &host("sleepy"), "/post", &[], body.as_bytes()).await;
    if reply.status != 200 {
        return Err(format!("POST {i}: {} {}", reply.status, reply.text()));
    }
    let echoed = reply.json();
    let sha = hex::encode(Sha256::digest(body.as_bytes()));
    match echoed["body_sha256"] == sha.as_str() {
        true => Ok(()),
        false => Err(format!("POST {i}: the app saw another body: {echoed}")),
    }
}

async fn held_websocket(addr: SocketAddr, i: usize) -> Result<(), String> {
    let (mut ws, _) = ws_connect(addr, &host("sleepy"), "/ws", &[])
        .await
        .map_err(|e| format!("WS {i}: {e}"))?;
    let text = format!("hello {i}");
    ws.send(Message::text(text.clone()))
        .await
        .map_err(|e| format!("WS {i}: {e}"))?;
    match ws.next().await {
        Some(Ok(Message::Text(echo))) if echo.as_str() == text => Ok(()),
        other => Err(format!("WS {i}: echo {other:?}")),
    }
}

/// 180 GETs, 20 POSTs with bodies and 20 WebSocket upgrades, spread over `proxies`.
fn spawn_clients(proxies: &[SocketAddr]) -> Vec<tokio::task::JoinHandle<Result<(), String>>> {
    let mut tasks = Vec::new();
    for i in 0..220 {
        let addr = proxies[i % proxies.len()];
        tasks.push(match i {
            0..180 => tokio::spawn(held_get(addr, i)),
            180..200 => tokio::spawn(held_post(addr, i)),
            _ => tokio::spawn(held_websocket(addr, i)),
        });
    }
    tasks
}

async fn join(tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>) -> Outcomes {
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    outcomes
}

fn assert_all_ok(outcomes: &Outcomes, what: &str) {
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} failed: {failed:?}",
        failed.len(),
        outcomes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_websockets_held_during_one_start_make_one_start_call() {
    for backend in BACKENDS {
        let world = World::start(backend, &[stopped("sleepy")], "").await;
        world.gate().close();
        let tasks = spawn_clients(&[world.addr()]);
        world.wait_held(220).await;
        // The start call may still be on its way (Daytona's refreshes the record first).
        eventually("the start call", || world.start_calls() == 1).await;
        world.gate().open();
        assert_all_ok(&join(tasks).await, &format!("{backend:?}"));
        assert_eq!(world.start_calls(), 1, "{backend:?}: one start call");
        assert!(world.held().await < 0.5, "{backend:?}: none left held");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_make_one_start_call() {
    let world = World::start(Backend::Redis, &[stopped("sleepy")], "").await;
    let second = world.replica();
    world.gate().close();
    let tasks = spawn_clients(&[world.addr(), second.addr]);
    world.wait_held(110).await;
    wait_held(second.admin_addr(), 110).await;
    world.gate().open();
    assert_all_ok(&join(tasks).await, "two replicas");
    assert_eq!(world.started_ids(), ["sleepy"], "one start request");
}

/// A POST whose body has no announced length (chunked).
async fn post_chunked(addr: SocketAddr, id: &str) -> Reply {
    let chunks = futures_util::stream::iter(
        [b"part one ".as_slice(), b"part two"]
            .map(|c| Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from(c)))),
    );
    let request = support::request("POST", &host(id), "/upload")
        .body(StreamBody::new(chunks))
        .unwrap();
    let response = tokio::time::timeout(PROMPT, support::send_streaming(addr, request))
        .await
        .expect("a chunked body was held, not answered at once")
        .expect("response");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

/// One bound: the `[registry.wake]` setting, how many requests are held on `sleepy` first, the
/// request past the bound, and what it must get.
struct Bound {
    name: &'static str,
    wake: &'static str,
    held_first: usize,
    past: Past,
    code: &'static str,
    fragment: &'static str,
    /// The `sandgate_wake_dropped_total` reason it counts as.
    dropped: &'static str,
}

enum Past {
    Get(&'static str),
    Post(usize),
    Chunked,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_a_bound_the_answer_is_503_with_retry_after() {
    let bounds = [
        Bound {
            name: "held per sandbox",
            wake: "max_held_per_sandbox = 2",
            held_first: 2,
            past: Past::Get("sleepy"),
            code: "SANDBOX_NOT_RUNNING",
            fragment: "too many requests are waiting",
            dropped: "sandbox_limit",
        },
        Bound {
            name: "held in total",
            wake: "max_held = 2",
            held_first: 2,
            past: Past::Get("dozy"),
            code: "SANDBOX_NOT_RUNNING",
            fragment: "too many requests are waiting",
            dropped: "total_limit",
        },
        Bound {
            name: "body over max_body",
            wake: "max_body = 1024",
            held_first: 0,
            past: Past::Post(2048),
            code: "SANDBOX_NOT_RUNNING",
            fragment: "not held",
            dropped: "body",
        },
        Bound {
            name: "body of unknown length",
            wake: "",
            held_first: 0,
            past: Past::Chunked,
            code: "SANDBOX_NOT_RUNNING",
            fragment: "not held",
            dropped: "body",
        },
        Bound {
            name: "max_wait",
            wake: "max_wait = \"300ms\"",
            held_first: 0,
            past: Past::Get("sleepy"),
            code: "SANDBOX_STARTING",
            fragment: "still starting",
            dropped: "timeout",
        },
    ];
    for bound in bounds {
        let world = World::start(
            Backend::Hook,
            &[stopped("sleepy"), stopped("dozy")],
            bound.wake,
        )
        .await;
        world.gate().close();
        let addr = world.addr();
        let first: Vec<_> = (0..bound.held_first)
            .map(|i| tokio::spawn(held_get(addr, i)))
            .collect();
        world.wait_held(bound.held_first).await;
        let reply = match bound.past {
            Past::Get(id) => prompt(addr, "GET", id, &[]).await,
            Past::Post(len) => {
                let (body, host) = (vec![b'x'; len], host("sleepy"));
                let reply = send(addr, "POST", &host, "/upload", &[], &body);
                tokio::time::timeout(PROMPT, reply)
                    .await
                    .expect("a large body was held, not answered at once")
            }
            Past::Chunked => post_chunked(addr, "sleepy").await,
        };
        assert_refused(&reply, bound.code, bound.fragment, bound.name);
        let series = format!(
            "sandgate_wake_dropped_total{{reason=\"{}\"}}",
            bound.dropped
        );
        assert_eq!(world.metric(&series).await, 1.0, "{}: {series}", bound.name);
        // The start is under way all the same (a refused body still triggers it).
        eventually(bound.name, || world.hook().calls_for("sleepy") == 1).await;
        world.gate().open();
        let outcomes: Outcomes = join(first).await;
        assert_all_ok(&outcomes, bound.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_answers_every_held_request_at_once() {
    for backend in BACKENDS {
        let sandboxes = [
            stopped("sleepy").private("tok-sleepy"),
            stopped("open-sleepy"),
        ];
        let world = World::start(backend, &sandboxes, "max_wait = \"60s\"").await;
        let fragment = world.fail_starts();
        world.gate().close();
        let addr = world.addr();
        let owner = [("x-daytona-preview-token", "tok-sleepy")];
        let tasks: Vec<_> = (0..20)
            .map(|_| tokio::spawn(async move { prompt(addr, "GET", "sleepy", &owner).await }))
            .collect();
        world.wait_held(20).await;
        world.gate().open();
        for task in tasks {
            let reply = task.await.unwrap();
            assert_refused(
                &reply,
                "SANDBOX_START_FAILED",
                fragment,
                &format!("{backend:?}"),
            );
        }
        // Within the interval, later requests get the same answer without a new start call.
        let later = prompt(addr, "GET", "sleepy", &owner).await;
        assert_refused(&later, "SANDBOX_START_FAILED", fragment, "later");
        assert_eq!(world.start_calls(), 1, "{backend:?}: no second start call");
        let failed = world.metric("sandgate_wakes_failed_total").await;
        assert_eq!(failed, 1.0, "{backend:?}: sandgate_wakes_failed_total");

        // A public sandbox's visitors (anyone) get the failure without the backend's own words.
        if backend != Backend::Redis {
            let public = prompt(addr, "GET", "open-sleepy", &[]).await;
            assert_refused(
                &public,
                "SANDBOX_START_FAILED",
                "refused to start it",
                "public",
            );
            assert!(
                !public.text().contains(fragment),
                "{backend:?}: a public sandbox shows the backend's message: {}",
                public.text()
            );
        }
    }
}

#[tokio::test]
async fn daytona_error_and_deleted_states_fail_fast_and_clearly() {
    let world = World::start(
        Backend::Daytona,
        &[
            stopped("broken").in_state("error"),
            stopped("gone").in_state("destroyed"),
            stopped("crashing"),
        ],
        "",
    )
    .await;
    let broken = prompt(world.addr(), "GET", "broken", &[]).await;
    assert_refused(&broken, "SANDBOX_START_FAILED", "error", "error state");
    let gone = prompt(world.addr(), "GET", "gone", &[]).await;
    assert_refused(&gone, "SANDBOX_START_FAILED", "deleted", "destroyed state");
    assert_eq!(
        world.start_calls(),
        0,
        "no start call for error or destroyed"
    );

    // Accepted, then the sandbox ends in `error` instead of `started`.
    world.cp().on_start(DELAY, StartOutcome::Errors);
    let crashing = prompt(world.addr(), "GET", "crashing", &[]).await;
    assert_refused(
        &crashing,
        "SANDBOX_START_FAILED",
        "error",
        "error after start",
    );
    assert_eq!(world.cp().state_of("crashing"), "error");
    assert_eq!(world.start_calls(), 1);
}

/// `starting` is waited for without a start call; `stopping` is waited out, then started.
#[tokio::test]
async fn daytona_transitions_are_waited_for_before_any_start_call() {
    let world = World::start(
        Backend::Daytona,
        &[
            stopped("coming").in_state("starting"),
            stopped("going").in_state("stopping"),
        ],
        "",
    )
    .await;
    let addr = world.addr();
    let coming = tokio::spawn(async move { get(addr, &host("coming"), "/hi").await });
    let going = tokio::spawn(async move { get(addr, &host("going"), "/hi").await });
    world.wait_held(2).await;
    world
        .cp()
        .world()
        .sandboxes
        .get_mut("coming")
        .unwrap()
        .state = "started".into();
    let coming = coming.await.unwrap();
    assert_eq!(coming.status, 200, "{}", coming.text());
    assert_eq!(
        world.start_calls(),
        0,
        "nothing to start while starting or stopping"
    );
    world.cp().world().sandboxes.get_mut("going").unwrap().state = "stopped".into();
    let going = going.await.unwrap();
    assert_eq!(going.status, 200, "{}", going.text());
    assert_eq!(world.start_calls(), 1, "started once the stop ended");
}

#[tokio::test]
async fn without_an_orchestrator_on_the_channel_the_start_fails_clearly() {
    let world = World::start(
        Backend::Redis,
        &[stopped("sleepy")],
        "channel = \"nobody-listens\"",
    )
    .await;
    let reply = prompt(world.addr(), "GET", "sleepy", &[]).await;
    assert_refused(
        &reply,
        "SANDBOX_START_FAILED",
        "no orchestrator listens on the start channel \"nobody-listens\"",
        "no subscriber",
    );
    assert!(world.orchestrator().requests().is_empty());
}

/// The attack: a stranger (no credential, a wrong one, or another sandbox's) must not be able
/// to wake someone's private sandbox or park requests on it; an opted-out sandbox and requests
/// that do not count as activity (skip header, uptime monitor, ignored port) never start
/// anything.
#[tokio::test]
async fn strangers_opted_out_sandboxes_and_excluded_requests_never_wake() {
    let sandboxes = [
        stopped("victim").private("tok-victim"),
        stopped("attacker").private("tok-attacker"),
        stopped("optout").opted_out(),
        stopped("sleepy"),
    ];
    for backend in BACKENDS {
        let world = World::start(backend, &sandboxes, "").await;
        let addr = world.addr();
        let stranger = [
            ("anonymous", vec![]),
            (
                "wrong token",
                vec![("x-daytona-preview-token", "tok-guess")],
            ),
            (
                "another sandbox's token",
                vec![("x-daytona-preview-token", "tok-attacker")],
            ),
        ];
        for (who, headers) in stranger {
            let reply = prompt(addr, "GET", "victim", &headers).await;
            assert_eq!(reply.status, 401, "{backend:?} {who}: {}", reply.text());
        }
        let reply = prompt(addr, "GET", "optout", &[]).await;
        assert_refused(&reply, "SANDBOX_NOT_RUNNING", "", "opted out");
        // Requests that do not count as activity: the skip header, an uptime monitor (one of
        // the default patterns), an ignored port.
        let skip = [("x-daytona-skip-last-activity-update", "true")];
        let reply = prompt(addr, "GET", "sleepy", &skip).await;
        assert_refused(&reply, "SANDBOX_NOT_RUNNING", "", "skip header");
        let monitor = [("user-agent", "Mozilla/5.0+(compatible; UptimeRobot/2.0)")];
        let reply = prompt(addr, "GET", "sleepy", &monitor).await;
        assert_refused(&reply, "SANDBOX_NOT_RUNNING", "", "uptime monitor");
        let health = send(addr, "GET", "3001-sleepy.preview.localhost", "/", &[], b"");
        let reply = tokio::time::timeout(PROMPT, health).await.expect("held");
        assert_refused(&reply, "SANDBOX_NOT_RUNNING", "", "ignored port");

        // Waking works (so the refusals above were not an accident of the setup): the owner
        // wakes the victim, and while that takes the start delay, a start call the refused
        // requests might have made would arrive too; only the victim's may.
        let owner = [("x-daytona-preview-token", "tok-victim")];
        let reply = prompt(addr, "GET", "victim", &owner).await;
        assert_eq!(reply.status, 200, "{backend:?} owner: {}", reply.text());
        assert_eq!(world.start_calls(), 1, "{backend:?}: the victim's only");
        let reply = prompt(addr, "GET", "sleepy", &[]).await;
        assert_eq!(reply.status, 200, "{backend:?} sleepy: {}", reply.text());
        assert_eq!(world.start_calls(), 2, "{backend:?}");
        if backend != Backend::Daytona {
            assert_eq!(world.started_ids(), ["victim", "sleepy"], "{backend:?}");
        }
    }
}

#[tokio::test]
async fn hold_false_answers_at_once_and_starts_in_the_background() {
    let world = World::start(
        Backend::Hook,
        &[
            stopped("sleepy"),
            stopped("other").in_state("archived"),
            stopped("private").private("tok"),
        ],
        "hold = false\ninterval = \"1h\"",
    )
    .await;
    world.gate().close();
    for _ in 0..5 {
        let reply = prompt(world.addr(), "GET", "sleepy", &[]).await;
        assert_refused(
            &reply,
            "SANDBOX_NOT_RUNNING",
            "being started",
            "hold = false",
        );
        assert_eq!(reply.headers["retry-after"], "5");
    }
    let page = send(
        world.addr(),
        "GET",
        &host("other"),
        "/",
        &[("accept", "text/html")],
        b"",
    )
    .await;
    assert_eq!(page.status, 503);
    assert!(page.text().contains("<html"), "browsers get a page");
    let anonymous = prompt(world.addr(), "GET", "private", &[]).await;
    assert_eq!(anonymous.status, 401);

    eventually("two start calls", || world.start_calls() >= 2).await;
    let mut ids = world.started_ids();
    ids.sort();
    assert_eq!(
        ids,
        ["other", "sleepy"],
        "once per interval, never the private one"
    );
    world.gate().open();
}

/// The static registry cannot learn a state: a hook that only accepts the start (202) gets
/// the request answered at once, as with `hold = false`.
#[tokio::test]
async fn a_hook_that_only_accepts_answers_at_once_with_the_static_registry() {
    let world = World::start(Backend::Hook, &[stopped("sleepy")], "").await;
    world.hook().answer(Duration::ZERO, 202, "");
    let reply = prompt(world.addr(), "GET", "sleepy", &[]).await;
    assert_refused(&reply, "SANDBOX_NOT_RUNNING", "being started", "202");
    assert_eq!(world.start_calls(), 1);
}

#[tokio::test]
async fn without_a_start_backend_the_page_says_to_start_it() {
    let proxy = Proxy::start(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [[registry.sandboxes]]\nid = \"sleepy\"\naddress = \"127.0.0.1\"\npublic = true\nstate = \"stopped\"\n",
    );
    let reply = prompt(proxy.addr, "GET", "sleepy", &[]).await;
    assert_refused(
        &reply,
        "SANDBOX_NOT_RUNNING",
        "start it and retry",
        "no backend",
    );
}

/// A browser's navigation request.
const NAVIGATION: [(&str, &str); 3] = [
    ("accept", "text/html,application/xhtml+xml"),
    ("sec-fetch-mode", "navigate"),
    ("user-agent", "Mozilla/5.0 (sandgate tests)"),
];

#[tokio::test]
async fn the_starting_page_is_escaped_uncacheable_and_refreshes() {
    // The state comes from the registry and the request id from the client: both hostile.
    let state = "stopped<script>alert(1)</script>";
    let world = World::start(
        Backend::Hook,
        &[stopped("sleepy").in_state(state)],
        "page_after = \"200ms\"",
    )
    .await;
    world.gate().close();
    let mut headers = NAVIGATION.to_vec();
    headers.push(("x-request-id", "<img/src=x/onerror=alert(2)>"));
    let page = prompt(world.addr(), "GET", "sleepy", &headers).await;
    assert_eq!(page.status, 503, "{}", page.text());
    let header = |name: &str| {
        page.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {name} header"))
    };
    assert!(header("content-type").starts_with("text/html"));
    assert!(header("cache-control").contains("no-store"));
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("script-src"), "no script may run: {csp}");
    assert!(header("retry-after").parse::<u64>().is_ok());
    let html = page.text();
    assert!(
        page.headers.contains_key("refresh") || html.contains("http-equiv=\"refresh\""),
        "the page refreshes itself"
    );
    assert!(
        html.contains("Starting") && html.contains("sleepy"),
        "{html}"
    );
    for raw in ["<script>alert(1)", "<img/src=x"] {
        assert!(!html.contains(raw), "{raw} reached the page unescaped");
    }
    assert!(
        html.contains("&lt;img/src=x/onerror=alert(2)&gt;"),
        "the request id: {html}"
    );

    // API clients are not shown the page: they simply wait.
    world.gate().open();
    let api = prompt(world.addr(), "GET", "sleepy", &[]).await;
    assert_eq!(api.status, 200, "{}", api.text());
    let app = prompt(world.addr(), "GET", "sleepy", &NAVIGATION).await;
    assert_eq!(app.status, 200, "after the wake, the app: {}", app.text());
}

#[tokio::test]
async fn chromium_sees_the_starting_page_then_the_app() {
    let Some((browser, mut cdp)) = Chromium::launch().await else {
        return;
    };
    let world = World::start(
        Backend::Hook,
        &[stopped("sleepy")],
        "page_after = \"300ms\"",
    )
    .await;
    world.gate().close();
    let url = format!("http://{}:{}/hi", host("sleepy"), world.addr().port());
    cdp.navigate(&url).await;
    let body = "document.body ? document.body.innerText : ''";
    let starting = cdp.wait_for(body, "Starting").await;
    assert!(starting.contains("sleepy"), "{starting}");
    world.gate().open();
    // The page refreshes itself until the app answers (the runner's JSON echo).
    let app = cdp.wait_for(body, "\"method\":\"GET\"").await;
    assert!(app.contains("/hi"), "{app}");
    assert_eq!(world.start_calls(), 1, "refreshes do not start it again");
    browser.close(&mut cdp).await;
}

/// A signed link hides its sandbox's id (on a public sandbox the id opens every port): the
/// "Starting…" page a signed host shows must not name it.
#[tokio::test]
async fn a_signed_links_starting_page_does_not_name_the_sandbox() {
    let token = "k3j5h2g8f7d6s5a4";
    let wake = format!(
        "page_after = \"200ms\"\n[[registry.signed_previews]]\ntoken = \"{token}\"\nport = 3000\nsandbox = \"hidden-id-42\"\n"
    );
    let world = World::start(Backend::Hook, &[stopped("hidden-id-42")], &wake).await;
    world.gate().close();
    let page = prompt(world.addr(), "GET", token, &NAVIGATION).await;
    assert_eq!(page.status, 503, "{}", page.text());
    let html = page.text();
    assert!(html.contains("Starting"), "{html}");
    assert!(
        !html.contains("hidden-id-42"),
        "the page names the hidden id: {html}"
    );
    // The same page on the sandbox's own host names it (the control).
    let own = prompt(world.addr(), "GET", "hidden-id-42", &NAVIGATION).await;
    assert!(own.text().contains("hidden-id-42"), "{}", own.text());
    world.gate().open();
}

/// Over HTTP/2 a held body would sit in the proxy's memory (the stream's flow-control window
/// lets the client send it all): a request with a body is answered at once, one without is held.
#[tokio::test]
async fn http2_requests_with_a_body_are_not_held() {
    let world = World::start(Backend::Hook, &[stopped("sleepy")], "").await;
    world.gate().close();
    let stream = tokio::net::TcpStream::connect(world.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = |method: &str, body: &'static [u8]| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://{}/hi", host("sleepy")))
            .header("content-length", body.len())
            .body(http_body_util::Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    let post = sender.send_request(request("POST", b"small body"));
    let answer = tokio::time::timeout(PROMPT, post)
        .await
        .expect("answered at once");
    let answer = answer.unwrap();
    assert_eq!(answer.status(), 503);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["code"], "SANDBOX_NOT_RUNNING", "{json}");
    let get = sender.send_request(request("GET", b""));
    world.wait_held(1).await;
    world.gate().open();
    let answer = tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        answer.status(),
        200,
        "the GET was held, then answered by the app"
    );
}

/// The admin CLI is what a shell orchestrator uses: `registry state` releases held requests at
/// once (its invalidation), `registry wake --off` opts a sandbox out; a bad state is refused.
#[tokio::test]
async fn the_admin_cli_sets_the_state_and_the_opt_out() {
    let world = World::start(
        Backend::Redis,
        &[stopped("cli-sbx"), stopped("cli-off")],
        "",
    )
    .await;
    let cli = cli_config(world._redis.as_ref().expect("redis"));
    // The orchestrator takes the start (`starting`) but never finishes it: the CLI does.
    world.gate().close();
    let addr = world.addr();
    let held =
        tokio::spawn(async move { send(addr, "GET", &host("cli-sbx"), "/hi", &[], b"").await });
    world.wait_held(1).await;
    ok(
        &cli.path,
        &[
            "registry",
            "state",
            "--sandbox",
            "cli-sbx",
            "--state",
            "started",
        ],
    );
    let reply = tokio::time::timeout(PROMPT, held)
        .await
        .expect("released at once")
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());

    let off = ok(
        &cli.path,
        &["registry", "wake", "--sandbox", "cli-off", "--off"],
    );
    assert!(off.contains("\"wake\":false"), "{off}");
    let refused = prompt(addr, "GET", "cli-off", &[]).await;
    assert_refused(
        &refused,
        "SANDBOX_NOT_RUNNING",
        "start it",
        "opted out by the CLI",
    );
    assert!(!world.started_ids().contains(&"cli-off".to_string()));

    let (accepted, _, stderr) = sandgate(
        &cli.path,
        &[
            "registry",
            "state",
            "--sandbox",
            "cli-sbx",
            "--state",
            "Up Now",
        ],
    );
    assert!(!accepted && stderr.contains("--state"), "{stderr}");
    world.gate().open();
}
