//! A fake Daytona control-plane API (contract §7) on a free loopback port: real hyper HTTP,
//! in-memory state the test changes, per-endpoint call counters and injectable failures.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::gate::Gate;

/// Endpoint names for counters and faults.
pub const RUNNER_BY_SANDBOX: &str = "runners/by-sandbox";
pub const PUBLIC: &str = "preview/public";
pub const VALIDATE: &str = "preview/validate";
pub const ACCESS: &str = "preview/access";
pub const SIGNED: &str = "preview/sandbox-id";
pub const LAST_ACTIVITY: &str = "sandbox/last-activity";
pub const SSH: &str = "sandbox/ssh-access/validate";
pub const SANDBOX: &str = "sandbox";
pub const CONFIG: &str = "config";
pub const START: &str = "sandbox/start";
pub const DOMAIN: &str = "preview/domains";

/// What `POST /sandbox/{id}/start` does.
#[derive(Debug, Clone)]
pub enum StartOutcome {
    /// Answers 200 with the sandbox in `starting`; it is `started` after the delay.
    Starts,
    /// Answers this status with a JSON `message` (Daytona's error shape); no state change.
    Refused(u16, String),
    /// Answers 200 with the sandbox in `starting`; it is in `error` after the delay.
    Errors,
}

/// How starts behave: the delay before the sandbox leaves `starting`, and the outcome.
#[derive(Debug, Clone)]
pub struct StartBehaviour {
    pub delay: Duration,
    pub outcome: StartOutcome,
}

/// What the next call(s) to an endpoint suffer.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Answer this status (plain-text body) instead.
    Status(u16),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Close the connection without an answer.
    Reset,
}

#[derive(Debug, Clone)]
pub struct FakeRunner {
    pub id: String,
    pub proxy_url: Option<String>,
    pub api_url: String,
    pub api_key: String,
    pub domain: String,
}

#[derive(Debug, Clone)]
pub struct FakeSandbox {
    pub runner: String,
    pub public: bool,
    pub state: String,
    pub organization: Option<String>,
    pub preview_token: Option<String>,
    /// The sandbox's labels (`GET /sandbox/{id}`), e.g. sandgate's port labels.
    pub labels: HashMap<String, String>,
}

impl FakeSandbox {
    pub fn new(runner: &str, public: bool) -> FakeSandbox {
        FakeSandbox {
            runner: runner.into(),
            public,
            state: "started".into(),
            organization: Some("org-1".into()),
            preview_token: None,
            labels: HashMap::new(),
        }
    }
}

#[derive(Default)]
pub struct World {
    pub runners: HashMap<String, FakeRunner>,
    pub sandboxes: HashMap<String, FakeSandbox>,
    /// Signed preview token → (sandbox id, port, expiry).
    pub signed: HashMap<String, (String, u16, Instant)>,
    /// SSH token → (sandbox id, valid).
    pub ssh: HashMap<String, (String, bool)>,
    /// User bearer → sandboxes it may access.
    pub users: HashMap<String, Vec<String>>,
    /// Custom domain host → its `GET /preview/domains/{host}` answer (sandgate's extension).
    pub domains: HashMap<String, serde_json::Value>,
}

#[derive(Default)]
struct Stats {
    calls: HashMap<&'static str, usize>,
    in_flight: HashMap<&'static str, usize>,
    max_in_flight: HashMap<&'static str, usize>,
}

pub struct State {
    pub api_key: String,
    pub world: Mutex<World>,
    stats: Mutex<Stats>,
    faults: Mutex<HashMap<&'static str, VecDeque<Fault>>>,
    /// Every call is answered by closing the connection (an API that is down).
    down: AtomicBool,
    /// Delay added to every call of these endpoints (to observe concurrency).
    slow: Mutex<HashMap<&'static str, Duration>>,
    start: Mutex<StartBehaviour>,
    /// Started sandboxes stay `starting` until this is open (after the delay).
    start_gate: Gate,
}

pub struct ControlPlane {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ControlPlane {
    pub async fn start(api_key: &str) -> ControlPlane {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            api_key: api_key.into(),
            world: Mutex::new(World::default()),
            stats: Mutex::new(Stats::default()),
            faults: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
            slow: Mutex::new(HashMap::new()),
            start: Mutex::new(StartBehaviour {
                delay: Duration::ZERO,
                outcome: StartOutcome::Starts,
            }),
            start_gate: Gate::default(),
        });
        let served = state.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let state = served.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { state.handle(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        ControlPlane { addr, state, task }
    }

    /// `http://127.0.0.1:<port>/api`
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }

    pub fn add_runner(&self, id: &str, proxy_url: &str, api_key: &str) {
        self.world().runners.insert(
            id.into(),
            FakeRunner {
                id: id.into(),
                proxy_url: Some(proxy_url.into()),
                api_url: proxy_url.into(),
                api_key: api_key.into(),
                domain: "runner.local".into(),
            },
        );
    }

    pub fn add_sandbox(&self, id: &str, sandbox: FakeSandbox) {
        self.world().sandboxes.insert(id.into(), sandbox);
    }

    /// Serves `host` as a custom domain of `sandbox` on `port`; `state` is `verified` or
    /// `pending` (pending by the control plane).
    pub fn add_domain(&self, host: &str, sandbox: &str, port: u16, state: &str) {
        let answer = serde_json::json!({
            "host": host, "sandboxId": sandbox, "port": port, "pathPrefix": null,
            "state": state, "verification": "control-plane", "token": null,
        });
        self.world().domains.insert(host.into(), answer);
    }

    pub fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.state.world.lock().expect("world")
    }

    pub fn calls(&self, endpoint: &str) -> usize {
        let stats = self.state.stats.lock().expect("stats");
        stats.calls.get(endpoint).copied().unwrap_or(0)
    }

    pub fn max_in_flight(&self, endpoint: &str) -> usize {
        let stats = self.state.stats.lock().expect("stats");
        stats.max_in_flight.get(endpoint).copied().unwrap_or(0)
    }

    /// The next `n` calls to `endpoint` suffer `fault`.
    pub fn fail_next(&self, endpoint: &'static str, n: usize, fault: Fault) {
        let mut faults = self.state.faults.lock().expect("faults");
        let queue = faults.entry(endpoint).or_default();
        queue.extend(std::iter::repeat_n(fault, n));
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// How `POST /sandbox/{id}/start` behaves from now on (default: started at once).
    pub fn on_start(&self, delay: Duration, outcome: StartOutcome) {
        *self.state.start.lock().expect("start") = StartBehaviour { delay, outcome };
    }

    pub fn start_gate(&self) -> &Gate {
        &self.state.start_gate
    }

    /// The state of sandbox `id` now.
    pub fn state_of(&self, id: &str) -> String {
        self.world().sandboxes[id].state.clone()
    }

    pub fn set_slow(&self, endpoint: &'static str, delay: Duration) {
        self.state
            .slow
            .lock()
            .expect("slow")
            .insert(endpoint, delay);
    }
}

/// Closes the connection without answering (hyper drops it when the service fails).
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected connection reset")
    }
}

impl std::error::Error for Reset {}

type Reply = Response<Full<Bytes>>;

fn text(status: u16, body: &str) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

fn json(status: u16, value: serde_json::Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("response")
}

/// Daytona's API answers unknown things with a NestJS-style 404; the proxy must use only the
/// status (for `preview/{id}/public` the body is not meaningful).
fn not_found() -> Reply {
    text(404, "Not Found")
}

fn sandbox_dto(id: &str, s: &FakeSandbox) -> serde_json::Value {
    serde_json::json!({
        "id": id, "state": s.state, "organizationId": s.organization,
        "public": s.public, "runnerId": s.runner, "labels": s.labels,
    })
}

impl State {
    /// `POST /sandbox/{id}/start`: `starting` now, then (after the delay and the gate) the
    /// outcome's state; or a refusal (after the delay and the gate).
    async fn start_sandbox(self: &Arc<Self>, id: &str) -> Reply {
        let behaviour = self.start.lock().expect("start").clone();
        let end = match behaviour.outcome {
            StartOutcome::Refused(status, message) => {
                tokio::time::sleep(behaviour.delay).await;
                self.start_gate.passed().await;
                return json(
                    status,
                    serde_json::json!({"statusCode": status, "message": message}),
                );
            }
            StartOutcome::Starts => "started",
            StartOutcome::Errors => "error",
        };
        let mut world = self.world.lock().expect("world");
        let Some(sandbox) = world.sandboxes.get_mut(id) else {
            return not_found();
        };
        sandbox.state = "starting".into();
        let reply = json(200, sandbox_dto(id, sandbox));
        let state = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(behaviour.delay).await;
            state.start_gate.passed().await;
            if let Some(s) = state.world.lock().expect("world").sandboxes.get_mut(&id) {
                s.state = end.into();
            }
        });
        reply
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Reply, Reset> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Reset);
        }
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let Some(rest) = path.strip_prefix("/api/") else {
            return Ok(not_found());
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let method = req.method().as_str().to_string();
        let endpoint = match (method.as_str(), segments.as_slice()) {
            ("GET", ["config"]) => CONFIG,
            ("GET", ["preview", "domains", _]) => DOMAIN,
            ("GET", ["runners", "by-sandbox", _]) => RUNNER_BY_SANDBOX,
            ("GET", ["preview", _, "public"]) => PUBLIC,
            ("GET", ["preview", _, "validate", _]) => VALIDATE,
            ("GET", ["preview", _, "access"]) => ACCESS,
            ("GET", ["preview", _, _, "sandbox-id"]) => SIGNED,
            ("POST", ["sandbox", _, "last-activity"]) => LAST_ACTIVITY,
            ("GET", ["sandbox", "ssh-access", "validate"]) => SSH,
            ("GET", ["sandbox", _]) => SANDBOX,
            ("POST", ["sandbox", _, "start"]) => START,
            _ => return Ok(not_found()),
        };
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("")
            .to_string();
        drop(req);
        self.enter(endpoint);
        let reply = self.answer(endpoint, &bearer, &segments, &query).await;
        self.leave(endpoint);
        reply
    }

    fn enter(&self, endpoint: &'static str) {
        let mut stats = self.stats.lock().expect("stats");
        *stats.calls.entry(endpoint).or_default() += 1;
        let now = {
            let n = stats.in_flight.entry(endpoint).or_default();
            *n += 1;
            *n
        };
        let max = stats.max_in_flight.entry(endpoint).or_default();
        *max = (*max).max(now);
    }

    fn leave(&self, endpoint: &'static str) {
        let mut stats = self.stats.lock().expect("stats");
        if let Some(n) = stats.in_flight.get_mut(endpoint) {
            *n = n.saturating_sub(1);
        }
    }

    async fn answer(
        self: &Arc<Self>,
        endpoint: &'static str,
        bearer: &str,
        segments: &[&str],
        query: &str,
    ) -> Result<Reply, Reset> {
        let fault = self
            .faults
            .lock()
            .expect("faults")
            .get_mut(endpoint)
            .and_then(VecDeque::pop_front);
        let slow = self.slow.lock().expect("slow").get(endpoint).copied();
        if let Some(delay) = slow {
            tokio::time::sleep(delay).await;
        }
        match fault {
            Some(Fault::Status(status)) => return Ok(text(status, "injected failure")),
            Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
            Some(Fault::Reset) => return Err(Reset),
            None => {}
        }
        if endpoint == CONFIG {
            return Ok(json(
                200,
                serde_json::json!({"oidc": {"issuer": "http://issuer.invalid", "clientId": "proxy", "audience": "daytona"}}),
            ));
        }
        if endpoint == ACCESS {
            let world = self.world.lock().expect("world");
            return Ok(match world.users.get(bearer) {
                None => text(401, "Unauthorized"),
                Some(ids) if ids.iter().any(|id| id == segments[1]) => text(200, ""),
                Some(_) => not_found(),
            });
        }
        if bearer != self.api_key {
            return Ok(json(
                401,
                serde_json::json!({"statusCode": 401, "message": "Unauthorized"}),
            ));
        }
        if endpoint == START {
            return Ok(self.start_sandbox(segments[1]).await);
        }
        let world = self.world.lock().expect("world");
        let reply = match endpoint {
            RUNNER_BY_SANDBOX => match world
                .sandboxes
                .get(segments[2])
                .and_then(|s| world.runners.get(&s.runner))
            {
                Some(r) => json(
                    200,
                    serde_json::json!({
                        "id": r.id, "proxyUrl": r.proxy_url, "apiUrl": r.api_url,
                        "apiKey": r.api_key, "domain": r.domain, "state": "ready",
                    }),
                ),
                None => not_found(),
            },
            PUBLIC => match world.sandboxes.get(segments[1]) {
                Some(s) if s.public => text(200, "true"),
                _ => not_found(),
            },
            VALIDATE => match world.sandboxes.get(segments[1]) {
                Some(s) if s.preview_token.as_deref() == Some(segments[3]) => text(200, "true"),
                _ => not_found(),
            },
            SIGNED => {
                let port: u16 = segments[2].parse().unwrap_or(0);
                match world.signed.get(segments[1]) {
                    Some((id, bound, expiry)) if *bound == port && *expiry > Instant::now() => {
                        text(200, id)
                    }
                    _ => json(
                        403,
                        serde_json::json!({"statusCode": 403, "message": "Invalid or expired token"}),
                    ),
                }
            }
            LAST_ACTIVITY => match world.sandboxes.get(segments[1]) {
                Some(_) => text(201, ""),
                None => not_found(),
            },
            SSH => {
                let token = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("token="))
                    .unwrap_or("");
                match world.ssh.get(token) {
                    Some((id, valid)) => {
                        json(200, serde_json::json!({"valid": valid, "sandboxId": id}))
                    }
                    None => json(200, serde_json::json!({"valid": false, "sandboxId": null})),
                }
            }
            DOMAIN => match world.domains.get(segments[2]) {
                Some(domain) => json(200, domain.clone()),
                None => not_found(),
            },
            SANDBOX => match world.sandboxes.get(segments[1]) {
                Some(s) => json(200, sandbox_dto(segments[1], s)),
                None => not_found(),
            },
            _ => not_found(),
        };
        Ok(reply)
    }
}
