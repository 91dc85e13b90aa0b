//! The `daytona` backend: a Daytona-compatible control-plane API (contract §7) is the source of
//! truth; optionally, Daytona's own `proxy:*` keys in a shared Redis act as an L2 cache.
//!
//! Also home of the `daytona` activity sink (`POST /sandbox/{id}/last-activity`), which shares
//! the API client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{AUTHORIZATION, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};

use super::{
    BearerVerdict, BoxFuture, CorsMode, Lifetime, Registry, RegistryError, RunnerRecord,
    SandboxRecord, TokenGrant, Upstream,
};
use crate::activity::{ActivitySink, PartialWrite, SinkError};
use crate::config::{DaytonaConfig, RedisConfig};

/// Tries per call, and the pauses between them.
const TRIES: usize = 3;
const BACKOFF: [Duration; TRIES - 1] = [Duration::from_millis(150), Duration::from_millis(300)];
/// Answers larger than this are not read (the API's answers are a few hundred bytes).
const MAX_BODY: usize = 256 * 1024;
/// Most API requests in flight per client, whatever the traffic (protects the control plane).
const MAX_IN_FLIGHT: usize = 256;
/// Ceiling of the readiness probe's timeout.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// Daytona's proxy keeps runner info 2 minutes and the public flag 1 hour (its
/// `get_sandbox_target.go`); the API deletes both keys when they change.
const L2_RUNNER_TTL_SECS: u64 = 120;
const L2_PUBLIC_TTL_SECS: u64 = 3600;
/// Port of a runner's SSH endpoint (contract §8).
const RUNNER_SSH_PORT: u16 = 2220;

/// One HTTP answer from the API, read whole (small, bounded).
struct Answer {
    status: StatusCode,
    body: Bytes,
}

/// A minimal client for the control-plane API: bearer auth, per-try timeout, retries.
pub struct DaytonaApi {
    client: Client<HttpConnector, Empty<Bytes>>,
    /// `http://host:port/api`, without a trailing slash.
    base: String,
    auth: HeaderValue,
    timeout: Duration,
    in_flight: tokio::sync::Semaphore,
}

impl DaytonaApi {
    pub fn new(config: &DaytonaConfig) -> Result<DaytonaApi, String> {
        let base = config.api_url.trim_end_matches('/').to_string();
        let parsed: Uri = base
            .parse()
            .map_err(|_| format!("daytona.api_url {base:?} is not a URL"))?;
        if parsed.scheme_str() != Some("http") || parsed.authority().is_none() {
            return Err(format!(
                "daytona.api_url {base:?} must be http://host[:port]/api (TLS to the API needs a local sidecar)"
            ));
        }
        if !base.ends_with("/api") {
            return Err(format!("daytona.api_url {base:?} must end in /api"));
        }
        if config.api_key.is_empty() {
            return Err("daytona.api_key is empty".into());
        }
        let mut auth = HeaderValue::try_from(format!("Bearer {}", config.api_key))
            .map_err(|_| "daytona.api_key has characters not allowed in a header".to_string())?;
        auth.set_sensitive(true);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(DaytonaApi {
            client,
            base,
            auth,
            timeout: config.timeout,
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        })
    }

    /// Calls `path` (relative to the base) with retries: transport errors, timeouts and
    /// 408/429/502/503/504 are retried ([`TRIES`] tries); any other status is the answer.
    /// `what` names the endpoint in errors and logs; paths may hold tokens, so they are never
    /// logged.
    async fn call(&self, method: Method, path: &str, what: &str) -> Result<Answer, RegistryError> {
        self.call_as(method, path, what, &self.auth, None).await
    }

    /// [`Self::call`] with another bearer (a user's) and the client's address.
    async fn call_as(
        &self,
        method: Method,
        path: &str,
        what: &str,
        auth: &HeaderValue,
        forwarded_for: Option<&HeaderValue>,
    ) -> Result<Answer, RegistryError> {
        let mut last = String::new();
        for attempt in 0..TRIES {
            if attempt > 0 {
                tokio::time::sleep(BACKOFF[attempt - 1]).await;
            }
            let permit = self.in_flight.acquire().await;
            let result =
                tokio::time::timeout(self.timeout, self.once(&method, path, auth, forwarded_for))
                    .await;
            drop(permit);
            match result {
                Err(_) => last = format!("no answer within {:?}", self.timeout),
                Ok(Err(e)) => last = e,
                Ok(Ok(answer)) if is_retryable(answer.status) => {
                    last = format!("status {}", answer.status.as_u16())
                }
                Ok(Ok(answer)) => return Ok(answer),
            }
            tracing::debug!(call = what, attempt = attempt + 1, error = %last, "daytona API try failed");
        }
        Err(RegistryError::Unavailable(format!(
            "daytona API {what}: {last} (after {TRIES} tries)"
        )))
    }

    async fn once(
        &self,
        method: &Method,
        path: &str,
        auth: &HeaderValue,
        forwarded_for: Option<&HeaderValue>,
    ) -> Result<Answer, String> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header(AUTHORIZATION, auth.clone())
            .header(USER_AGENT, concat!("sandgate/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|_| "request could not be built".to_string())?;
        if let Some(ip) = forwarded_for {
            request.headers_mut().insert("x-forwarded-for", ip.clone());
        }
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| error_chain(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok(Answer { status, body })
    }
}

fn is_retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504)
}

/// `error: cause: cause` (hyper-util's top-level error alone says only "client error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Ids and tokens come from the network and are interpolated into API paths: only
/// `[A-Za-z0-9_-]` (what Daytona's ids and tokens use) passes, so nothing needs escaping.
fn segment(value: &str) -> Option<&str> {
    (!value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then_some(value)
}

fn unexpected(what: &str, status: StatusCode) -> RegistryError {
    RegistryError::Unavailable(format!(
        "daytona API {what}: unexpected status {}",
        status.as_u16()
    ))
}

fn bad_data(key: String, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::BadData {
        key,
        reason: e.to_string(),
    }
}

/// `GET /runners/by-sandbox/{id}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunnerDto {
    id: String,
    #[serde(default)]
    proxy_url: Option<String>,
    #[serde(default)]
    api_url: Option<String>,
    api_key: String,
    #[serde(default)]
    domain: Option<String>,
}

/// `GET /sandbox/{id}` (only what the proxy needs).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SandboxDto {
    state: String,
    #[serde(default)]
    organization_id: Option<String>,
    /// The sandbox's labels; [`CORS_LABEL`] chooses its CORS mode.
    #[serde(default)]
    labels: std::collections::HashMap<String, String>,
}

/// The sandbox label that sets the CORS mode (`managed` when absent).
const CORS_LABEL: &str = "sandgate.io/cors";

impl SandboxDto {
    /// The CORS mode of the label; a value that is not a mode falls back to `managed` (the
    /// proxy's protection stays on) with a warning.
    fn cors(&self, id: &str) -> CorsMode {
        let Some(value) = self.labels.get(CORS_LABEL) else {
            return CorsMode::Managed;
        };
        value.parse().unwrap_or_else(|why: String| {
            tracing::warn!(sandbox = id, label = CORS_LABEL, %why, "ignoring the label");
            CorsMode::Managed
        })
    }
}

/// `GET /sandbox/ssh-access/validate`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SshDto {
    valid: bool,
    #[serde(default)]
    sandbox_id: Option<String>,
}

/// Daytona's Redis cache envelope: `{"value": ...}`.
#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    value: T,
}

/// Daytona's `RunnerInfo` (`apiUrl` holds the runner's proxy URL, `apiKey` its key). Daytona's
/// proxy ignores unknown fields, so ours ride along; values it wrote lack them.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct L2RunnerInfo {
    api_url: String,
    api_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    organization_id: Option<String>,
    /// Entries Daytona wrote lack it: `managed`.
    #[serde(default, skip_serializing_if = "is_managed")]
    cors: CorsMode,
}

fn is_managed(mode: &CorsMode) -> bool {
    *mode == CorsMode::Managed
}

pub struct DaytonaRegistry {
    api: DaytonaApi,
    l2: Option<L2>,
}

impl DaytonaRegistry {
    /// `redis`: the shared Redis for the L2 cache (`[daytona] l2_redis`), or `None`.
    pub fn new(
        config: &DaytonaConfig,
        redis: Option<&RedisConfig>,
    ) -> Result<DaytonaRegistry, String> {
        let l2 = redis.map(L2::new).transpose()?;
        Ok(DaytonaRegistry {
            api: DaytonaApi::new(config)?,
            l2,
        })
    }

    async fn sandbox_from_api(&self, id: &str) -> Result<Option<SandboxRecord>, RegistryError> {
        let runner_path = format!("/runners/by-sandbox/{id}");
        let public_path = format!("/preview/{id}/public");
        let sandbox_path = format!("/sandbox/{id}");
        let (runner, public, sandbox) = tokio::join!(
            self.api
                .call(Method::GET, &runner_path, "GET /runners/by-sandbox/{id}"),
            self.api
                .call(Method::GET, &public_path, "GET /preview/{id}/public"),
            self.api
                .call(Method::GET, &sandbox_path, "GET /sandbox/{id}"),
        );
        let runner = runner?;
        let runner: RunnerDto = match runner.status {
            StatusCode::OK => serde_json::from_slice(&runner.body)
                .map_err(|e| bad_data(format!("runners/by-sandbox/{id}"), e))?,
            StatusCode::NOT_FOUND => return Ok(None),
            status => return Err(unexpected("GET /runners/by-sandbox/{id}", status)),
        };
        // 404 means private *or* unknown, and its body is not JSON: only the status counts.
        let public = match public?.status {
            StatusCode::OK => true,
            status if status.is_client_error() => false,
            status => return Err(unexpected("GET /preview/{id}/public", status)),
        };
        let sandbox = sandbox?;
        let sandbox: SandboxDto = match sandbox.status {
            StatusCode::OK => serde_json::from_slice(&sandbox.body)
                .map_err(|e| bad_data(format!("sandbox/{id}"), e))?,
            StatusCode::NOT_FOUND => return Ok(None),
            status => return Err(unexpected("GET /sandbox/{id}", status)),
        };
        let url = runner
            .proxy_url
            .as_deref()
            .filter(|u| !u.is_empty())
            .or(runner.api_url.as_deref())
            .ok_or_else(|| {
                bad_data(
                    format!("runners/by-sandbox/{id}"),
                    "neither proxyUrl nor apiUrl",
                )
            })?;
        let info = L2RunnerInfo {
            api_url: url.to_string(),
            api_key: runner.api_key,
            id: Some(runner.id),
            domain: runner.domain,
            cors: sandbox.cors(id),
            organization_id: sandbox.organization_id,
        };
        let record = record_from(id, &info, public, &sandbox.state)?;
        if let Some(l2) = &self.l2 {
            l2.put(id, &info, public, record.is_running()).await;
        }
        Ok(Some(record))
    }
}

fn record_from(
    id: &str,
    info: &L2RunnerInfo,
    public: bool,
    state: &str,
) -> Result<SandboxRecord, RegistryError> {
    let runner_id = info.id.as_deref().unwrap_or("daytona-runner");
    let mut runner = RunnerRecord::new(runner_id, &info.api_url, &info.api_key)
        .map_err(|e| bad_data(format!("runner of {id}"), e))?;
    runner.ssh_endpoint = info
        .domain
        .as_deref()
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}:{RUNNER_SSH_PORT}").into());
    let upstream = Upstream::Runner(Arc::new(runner));
    Ok(SandboxRecord::new(id, upstream, public, state, None)
        .with_organization(info.organization_id.as_deref())
        .with_cors(info.cors))
}

impl Registry for DaytonaRegistry {
    fn sandbox<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<SandboxRecord>>, RegistryError>> {
        Box::pin(async move {
            let Some(id) = segment(id) else {
                return Ok(None);
            };
            if let Some(l2) = &self.l2 {
                if let Some(record) = l2.get(id).await {
                    return Ok(Some(Arc::new(record)));
                }
            }
            Ok(self.sandbox_from_api(id).await?.map(Arc::new))
        })
    }

    fn preview_token_valid<'a>(
        &'a self,
        sandbox: &'a SandboxRecord,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        Box::pin(async move {
            let (Some(id), Some(token)) = (segment(&sandbox.id), segment(token)) else {
                return Ok(false);
            };
            let what = "GET /preview/{id}/validate/{token}";
            let answer = self
                .api
                .call(
                    Method::GET,
                    &format!("/preview/{id}/validate/{token}"),
                    what,
                )
                .await?;
            match answer.status {
                StatusCode::OK => Ok(true),
                status if status.is_client_error() => Ok(false),
                status => Err(unexpected(what, status)),
            }
        })
    }

    fn signed_preview<'a>(
        &'a self,
        token: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<Option<TokenGrant>, RegistryError>> {
        Box::pin(async move {
            let Some(token) = segment(token) else {
                return Ok(None);
            };
            let what = "GET /preview/{token}/{port}/sandbox-id";
            let answer = self
                .api
                .call(
                    Method::GET,
                    &format!("/preview/{token}/{port}/sandbox-id"),
                    what,
                )
                .await?;
            match answer.status {
                StatusCode::OK => {
                    let text = std::str::from_utf8(&answer.body)
                        .map_err(|e| bad_data("preview/{token}/{port}/sandbox-id".into(), e))?;
                    let id = segment(text.trim()).ok_or_else(|| {
                        bad_data(
                            "preview/{token}/{port}/sandbox-id".into(),
                            "answer is not a sandbox id",
                        )
                    })?;
                    // The API does not say when the token expires.
                    Ok(Some(TokenGrant {
                        sandbox: id.into(),
                        lifetime: Lifetime::Unknown,
                    }))
                }
                status if status.is_client_error() => Ok(None),
                status => Err(unexpected(what, status)),
            }
        })
    }

    fn bearer_access<'a>(
        &'a self,
        sandbox_id: &'a str,
        bearer: &'a str,
        client_ip: std::net::IpAddr,
    ) -> BoxFuture<'a, Result<Option<BearerVerdict>, RegistryError>> {
        Box::pin(async move {
            let Some(id) = segment(sandbox_id) else {
                return Ok(Some(BearerVerdict::Denied));
            };
            let Ok(mut auth) = HeaderValue::try_from(format!("Bearer {bearer}")) else {
                return Ok(Some(BearerVerdict::Invalid));
            };
            auth.set_sensitive(true);
            let ip = HeaderValue::try_from(client_ip.to_string()).ok();
            let what = "GET /preview/{id}/access";
            let path = format!("/preview/{id}/access");
            let answer = self
                .api
                .call_as(Method::GET, &path, what, &auth, ip.as_ref())
                .await?;
            match answer.status.as_u16() {
                200..=299 => Ok(Some(BearerVerdict::Allowed)),
                401 => Ok(Some(BearerVerdict::Invalid)),
                403 | 404 => Ok(Some(BearerVerdict::Denied)),
                _ => Err(unexpected(what, answer.status)),
            }
        })
    }

    fn ssh_token<'a>(
        &'a self,
        token: &'a str,
    ) -> BoxFuture<'a, Result<Option<TokenGrant>, RegistryError>> {
        Box::pin(async move {
            let Some(token) = segment(token) else {
                return Ok(None);
            };
            let what = "GET /sandbox/ssh-access/validate";
            let answer = self
                .api
                .call(
                    Method::GET,
                    &format!("/sandbox/ssh-access/validate?token={token}"),
                    what,
                )
                .await?;
            match answer.status {
                StatusCode::OK => {
                    let dto: SshDto = serde_json::from_slice(&answer.body)
                        .map_err(|e| bad_data("sandbox/ssh-access/validate".into(), e))?;
                    Ok(dto
                        .valid
                        .then_some(dto.sandbox_id)
                        .flatten()
                        .filter(|id| segment(id).is_some())
                        // The API does not say when the token expires.
                        .map(|id| TokenGrant {
                            sandbox: id.into(),
                            lifetime: Lifetime::Unknown,
                        }))
                }
                status if status.is_client_error() => Ok(None),
                status => Err(unexpected(what, status)),
            }
        })
    }

    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let timeout = self.api.timeout.min(READY_TIMEOUT);
            matches!(
                tokio::time::timeout(timeout, self.api.once(&Method::GET, "/config", &self.api.auth, None)).await,
                Ok(Ok(answer)) if answer.status.is_success()
            )
        })
    }
}

/// The shared Redis L2: Daytona's own keys and envelope, so the Daytona API's deletions (on
/// archive or a public-flag change) invalidate it. Any Redis failure falls through to the API.
struct L2 {
    redis: redis::aio::ConnectionManager,
    timeout: Duration,
    /// Set while Redis fails, so an outage is logged once, not per request.
    down: AtomicBool,
}

impl L2 {
    fn new(config: &RedisConfig) -> Result<L2, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("redis.url is not usable: {e}"))?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1);
        // Lazy: Redis may be down at start; the proxy then works from the API alone.
        let redis = redis::aio::ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|e| format!("redis: {e}"))?;
        Ok(L2 {
            redis,
            timeout: config.timeout,
            down: AtomicBool::new(false),
        })
    }

    fn runner_key(id: &str) -> String {
        format!("proxy:sandbox-runner-info:{id}")
    }

    fn public_key(id: &str) -> String {
        format!("proxy:sandbox-public:{id}")
    }

    /// Both keys present and well-formed → a record. Daytona's keys carry no state; only
    /// running sandboxes are written by us, and Daytona's proxy never checks state either, so a
    /// hit is taken as `started` (the runner answers if it is not).
    async fn get(&self, id: &str) -> Option<SandboxRecord> {
        let mut redis = self.redis.clone();
        let mut mget = redis::cmd("MGET");
        mget.arg(Self::runner_key(id)).arg(Self::public_key(id));
        let query = mget.query_async::<Vec<Option<String>>>(&mut redis);
        let values = self.outcome(tokio::time::timeout(self.timeout, query).await)?;
        let (Some(Some(runner)), Some(Some(public))) = (values.first(), values.get(1)) else {
            return None;
        };
        let parsed = serde_json::from_str::<Envelope<L2RunnerInfo>>(runner).and_then(|r| {
            serde_json::from_str::<Envelope<bool>>(public).map(|p| (r.value, p.value))
        });
        let (info, public) = match parsed {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(sandbox = id, error = %e, "unreadable L2 entry; asking the API");
                return None;
            }
        };
        match record_from(id, &info, public, "started") {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::debug!(sandbox = id, error = %e, "unusable L2 entry; asking the API");
                None
            }
        }
    }

    async fn put(&self, id: &str, info: &L2RunnerInfo, public: bool, running: bool) {
        let mut pipe = redis::pipe();
        if let Ok(public) = serde_json::to_string(&Envelope { value: public }) {
            pipe.cmd("SET")
                .arg(Self::public_key(id))
                .arg(public)
                .arg("EX")
                .arg(L2_PUBLIC_TTL_SECS)
                .ignore();
        }
        if running {
            if let Ok(info) = serde_json::to_string(&Envelope { value: info }) {
                pipe.cmd("SET")
                    .arg(Self::runner_key(id))
                    .arg(info)
                    .arg("EX")
                    .arg(L2_RUNNER_TTL_SECS)
                    .ignore();
            }
        }
        let mut redis = self.redis.clone();
        let write = pipe.query_async::<()>(&mut redis);
        let _ = self.outcome(tokio::time::timeout(self.timeout, write).await);
    }

    fn outcome<T>(
        &self,
        result: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        let error = match result {
            Ok(Ok(value)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis L2 reachable again");
                }
                return Some(value);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.timeout),
        };
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %error, "Redis L2 unavailable; using the Daytona API alone");
        }
        None
    }
}

/// The `daytona` activity sink: one `POST /sandbox/{id}/last-activity` per sandbox, at most
/// `concurrency` at once, with the API client's retry rules.
pub struct DaytonaActivitySink {
    api: DaytonaApi,
    concurrency: usize,
}

impl DaytonaActivitySink {
    pub fn new(config: &DaytonaConfig, concurrency: usize) -> Result<DaytonaActivitySink, String> {
        Ok(DaytonaActivitySink {
            api: DaytonaApi::new(config)?,
            concurrency: concurrency.max(1),
        })
    }

    /// Whether the API took (or has no use for) the mark.
    async fn post(&self, id: &str) -> Result<(), String> {
        let Some(id) = segment(id) else {
            return Ok(());
        };
        let what = "POST /sandbox/{id}/last-activity";
        let path = format!("/sandbox/{id}/last-activity");
        match self.api.call(Method::POST, &path, what).await {
            Ok(answer) if answer.status.is_success() => Ok(()),
            // A deleted sandbox: retrying would never succeed.
            Ok(answer) if answer.status == StatusCode::NOT_FOUND => Ok(()),
            Ok(answer) => Err(format!(
                "{what}: unexpected status {}",
                answer.status.as_u16()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl ActivitySink for DaytonaActivitySink {
    fn write<'a>(&'a self, batch: &'a [(Arc<str>, u64)]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { self.write_partial(batch).await.map_err(|p| p.error) })
    }

    fn write_partial<'a>(
        &'a self,
        batch: &'a [(Arc<str>, u64)],
    ) -> BoxFuture<'a, Result<(), PartialWrite>> {
        Box::pin(async move {
            let posts: Vec<_> = batch
                .iter()
                .enumerate()
                .map(|(i, (id, _))| async move { (i, self.post(id).await) })
                .collect();
            let results: Vec<(usize, Result<(), String>)> = futures_util::stream::iter(posts)
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            let mut written = Vec::with_capacity(results.len());
            let mut failed = 0;
            let mut first_error = None;
            for (i, result) in results {
                match result {
                    Ok(()) => written.push(i),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                None => Ok(()),
                Some(e) => Err(PartialWrite {
                    written,
                    error: SinkError(format!(
                        "{failed} of {} last-activity writes failed, first: {e}",
                        batch.len()
                    )),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_segments_are_interpolated() {
        assert_eq!(
            segment("0b2a1c3e-aaaa-bbbb-cccc-0123456789ab"),
            Some("0b2a1c3e-aaaa-bbbb-cccc-0123456789ab")
        );
        assert_eq!(segment("tok_123-x"), Some("tok_123-x"));
        for bad in ["", "a/b", "a?b", "..", "a%2F", "a b", "é"] {
            assert_eq!(segment(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_classes() {
        for s in [408, 429, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(s).unwrap()));
        }
        for s in [200, 201, 400, 401, 403, 404, 500] {
            assert!(!is_retryable(StatusCode::from_u16(s).unwrap()));
        }
    }

    #[test]
    fn l2_values_stay_compatible_with_daytona() {
        // What Daytona's proxy writes (RunnerInfo without our extra fields) must read back.
        let theirs = r#"{"value":{"apiUrl":"http://10.0.0.5:3003","apiKey":"k"}}"#;
        let info: Envelope<L2RunnerInfo> = serde_json::from_str(theirs).unwrap();
        let record = record_from("sbx", &info.value, false, "started").unwrap();
        assert_eq!(&*record.path_prefix, "/sandboxes/sbx/toolbox");
        let Upstream::Runner(runner) = &record.upstream else {
            panic!("runner mode expected")
        };
        assert_eq!(&*runner.authority, "10.0.0.5:3003");
        let public: Envelope<bool> = serde_json::from_str(r#"{"value":true}"#).unwrap();
        assert!(public.value);
        // What we write carries Daytona's two fields under Daytona's names.
        let ours = serde_json::to_value(Envelope { value: info.value }).unwrap();
        assert_eq!(ours["value"]["apiUrl"], "http://10.0.0.5:3003");
        assert_eq!(ours["value"]["apiKey"], "k");
        assert!(
            ours["value"].get("cors").is_none(),
            "managed is not written"
        );
        assert_eq!(record.cors, CorsMode::Managed, "absent: managed");
    }

    #[test]
    fn the_cors_label_picks_the_mode_and_bad_values_stay_managed() {
        let dto = |labels: &str| -> SandboxDto {
            serde_json::from_str(&format!(r#"{{"state":"started","labels":{labels}}}"#)).unwrap()
        };
        let cases = [
            ("{}", CorsMode::Managed),
            (
                r#"{"sandgate.io/cors":"passthrough"}"#,
                CorsMode::Passthrough,
            ),
            (r#"{"sandgate.io/cors":"managed"}"#, CorsMode::Managed),
            (r#"{"sandgate.io/cors":"PASSTHROUGH"}"#, CorsMode::Managed),
        ];
        for (labels, mode) in cases {
            assert_eq!(dto(labels).cors("sbx"), mode, "{labels}");
        }
        let info: L2RunnerInfo = serde_json::from_str(
            r#"{"apiUrl":"http://10.0.0.5:3003","apiKey":"k","cors":"passthrough"}"#,
        )
        .unwrap();
        let record = record_from("sbx", &info, false, "started").unwrap();
        assert_eq!(record.cors, CorsMode::Passthrough, "kept through the L2");
    }
}
