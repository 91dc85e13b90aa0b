//! The client for a Daytona-compatible control-plane API (contract §7) and the answers it
//! reads: bearer auth, per-try timeout, retries, bounded bodies. The `daytona` registry backend
//! and the `daytona` activity sink both call the API through it.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;

use std::collections::BTreeMap;

use crate::base::ports::is_reserved_port;
use crate::config::DaytonaConfig;
use crate::registry::ports::check_port;
use crate::registry::{CorsMode, PortAccess, PortsMode, RegistryError};

/// Tries per call, and the pauses between them.
const TRIES: usize = 3;
const BACKOFF: [Duration; TRIES - 1] = [Duration::from_millis(150), Duration::from_millis(300)];
/// Answers larger than this are not read (the API's answers are a few hundred bytes).
const MAX_BODY: usize = 256 * 1024;
/// Most API requests in flight per client, whatever the traffic (protects the control plane).
const MAX_IN_FLIGHT: usize = 256;
/// Ceiling of the readiness probe's timeout.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// One HTTP answer from the API, read whole (small, bounded).
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
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
        let shown = || crate::config::redact::shown_url(&base);
        let parsed: Uri = base
            .parse()
            .map_err(|_| format!("daytona.api_url {:?} is not a URL", shown()))?;
        if parsed.scheme_str() != Some("http") || parsed.authority().is_none() {
            return Err(format!(
                "daytona.api_url {:?} must be http://host[:port]/api (TLS to the API needs a local sidecar)",
                shown()
            ));
        }
        if !base.ends_with("/api") {
            return Err(format!("daytona.api_url {:?} must end in /api", shown()));
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
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        what: &str,
    ) -> Result<Answer, RegistryError> {
        self.call_as(method, path, what, &self.auth, None).await
    }

    /// [`Self::call`] with another bearer (a user's) and the client's address.
    pub(crate) async fn call_as(
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

    /// The readiness probe: `GET /config` answers 2xx within the timeout (at most
    /// [`READY_TIMEOUT`]), one try.
    pub(crate) async fn ready(&self) -> bool {
        let timeout = self.timeout.min(READY_TIMEOUT);
        matches!(
            tokio::time::timeout(timeout, self.once(&Method::GET, "/config", &self.auth, None)).await,
            Ok(Ok(answer)) if answer.status.is_success()
        )
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
pub(crate) fn segment(value: &str) -> Option<&str> {
    (!value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then_some(value)
}

pub(crate) fn unexpected(what: &str, status: StatusCode) -> RegistryError {
    RegistryError::Unavailable(format!(
        "daytona API {what}: unexpected status {}",
        status.as_u16()
    ))
}

pub(crate) fn bad_data(key: String, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::BadData {
        key,
        reason: e.to_string(),
    }
}

/// `GET /runners/by-sandbox/{id}`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RunnerDto {
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) proxy_url: Option<String>,
    #[serde(default)]
    pub(crate) api_url: Option<String>,
    pub(crate) api_key: String,
    #[serde(default)]
    pub(crate) domain: Option<String>,
}

/// `GET /sandbox/{id}` (only what the proxy needs).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SandboxDto {
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) organization_id: Option<String>,
    /// The sandbox's labels; [`CORS_LABEL`] chooses its CORS mode.
    #[serde(default)]
    pub(crate) labels: std::collections::HashMap<String, String>,
}

/// The sandbox label that sets the CORS mode (`managed` when absent).
const CORS_LABEL: &str = "sandgate.io/cors";
/// The sandbox label that sets the ports mode (`all` when absent) ...
const PORTS_LABEL: &str = "sandgate.io/ports";
/// ... and the prefix of one label per port: `sandgate.io/port.3000` = `public` | `private`.
const PORT_LABEL_PREFIX: &str = "sandgate.io/port.";

impl SandboxDto {
    /// The CORS mode of the label; a value that is not a mode falls back to `managed` (the
    /// proxy's protection stays on) with a warning.
    pub(crate) fn cors(&self, id: &str) -> CorsMode {
        let Some(value) = self.labels.get(CORS_LABEL) else {
            return CorsMode::Managed;
        };
        value.parse().unwrap_or_else(|why: String| {
            tracing::warn!(sandbox = id, label = CORS_LABEL, %why, "ignoring the label");
            CorsMode::Managed
        })
    }
}

impl SandboxDto {
    /// The port policy of the labels (a sandgate extension): strict, a malformed label is bad
    /// data naming it; a reserved port's label is ignored (reserved ports always need a
    /// credential).
    pub(crate) fn port_policy(
        &self,
        id: &str,
    ) -> Result<(PortsMode, BTreeMap<u16, PortAccess>), RegistryError> {
        let bad = |label: &str, e: String| bad_data(format!("sandbox/{id} label {label}"), e);
        let mode = match self.labels.get(PORTS_LABEL) {
            None => PortsMode::All,
            Some(mode) => mode.parse().map_err(|e| bad(PORTS_LABEL, e))?,
        };
        let mut access = BTreeMap::new();
        for (label, value) in &self.labels {
            let Some(port) = label.strip_prefix(PORT_LABEL_PREFIX) else {
                continue;
            };
            let rule: PortAccess = value.parse().map_err(|e| bad(label, e))?;
            let port: u16 = port
                .parse()
                .map_err(|_| bad(label, format!("{port:?} is not a port")))?;
            if is_reserved_port(port) {
                tracing::warn!(sandbox = id, label, "ignoring a label for a reserved port");
                continue;
            }
            check_port(port).map_err(|e| bad(label, e))?;
            access.insert(port, rule);
        }
        Ok((mode, access))
    }
}

/// `"true"`: the sandbox gets the identity header (`[identity]`).
const IDENTITY_LABEL: &str = "sandgate.io/identity";
/// The `Host` the app sees on every port; `….<port>` for one port (`upstream_host`).
const UPSTREAM_HOST_LABEL: &str = "sandgate.io/upstream-host";

/// `"false"`: a request never wakes the sandbox (`[registry.wake]`).
const WAKE_LABEL: &str = "sandgate.io/wake";

impl SandboxDto {
    pub(crate) fn identity(&self) -> bool {
        self.labels.get(IDENTITY_LABEL).is_some_and(|v| v == "true")
    }

    pub(crate) fn wake(&self) -> bool {
        self.labels.get(WAKE_LABEL).is_none_or(|v| v != "false")
    }

    /// The `upstream_host` labels: every port's template, then per-port ones (a label whose
    /// suffix is not a port is ignored; templates are checked when the record is built).
    pub(crate) fn upstream_hosts(
        &self,
    ) -> (Option<String>, std::collections::BTreeMap<u16, String>) {
        let mut ports = std::collections::BTreeMap::new();
        for (name, value) in &self.labels {
            let port = name
                .strip_prefix(UPSTREAM_HOST_LABEL)
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|p| p.parse::<u16>().ok());
            if let Some(port) = port {
                ports.insert(port, value.clone());
            }
        }
        (self.labels.get(UPSTREAM_HOST_LABEL).cloned(), ports)
    }
}

/// `GET /sandbox/ssh-access/validate`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SshDto {
    pub(crate) valid: bool,
    #[serde(default)]
    pub(crate) sandbox_id: Option<String>,
}

/// `GET /preview/domains/{host}` (sandgate's extension: Daytona has no such endpoint).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DomainDto {
    pub(crate) host: String,
    pub(crate) sandbox_id: String,
    pub(crate) port: u16,
    #[serde(default)]
    pub(crate) path_prefix: Option<String>,
    #[serde(default)]
    pub(crate) state: Option<String>,
    #[serde(default)]
    pub(crate) verification: Option<String>,
    #[serde(default)]
    pub(crate) token: Option<String>,
}

impl DomainDto {
    pub(crate) fn record(
        &self,
    ) -> Result<crate::registry::domains::DomainRecord, crate::registry::domains::DomainError> {
        use crate::registry::domains::{parse_state, DomainRecord};
        let state = parse_state(
            self.state.as_deref(),
            self.verification.as_deref(),
            self.token.as_deref(),
        )?;
        let prefix = self.path_prefix.as_deref().filter(|p| !p.is_empty());
        DomainRecord::new(&self.host, &self.sandbox_id, self.port, prefix, state)
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
    fn port_labels_give_the_policy_strictly() {
        let dto = |labels: &str| -> SandboxDto {
            serde_json::from_str(&format!(r#"{{"state":"started","labels":{labels}}}"#)).unwrap()
        };
        let (mode, access) = dto(
            r#"{"sandgate.io/ports":"declared","sandgate.io/port.3000":"public","sandgate.io/port.2280":"public","other":"x"}"#,
        )
        .port_policy("sbx")
        .unwrap();
        assert_eq!(mode, PortsMode::Declared);
        assert_eq!(
            access.into_iter().collect::<Vec<_>>(),
            vec![(3000, PortAccess::Public)]
        );
        let (mode, access) = dto("{}").port_policy("sbx").unwrap();
        assert_eq!((mode, access.len()), (PortsMode::All, 0));
        for (labels, named) in [
            (r#"{"sandgate.io/ports":"some"}"#, "sandgate.io/ports"),
            (
                r#"{"sandgate.io/port.3000":"open"}"#,
                "sandgate.io/port.3000",
            ),
            (r#"{"sandgate.io/port.x":"public"}"#, "sandgate.io/port.x"),
        ] {
            match dto(labels).port_policy("sbx") {
                Err(RegistryError::BadData { key, .. }) => assert!(key.contains(named), "{key}"),
                other => panic!("{labels}: {other:?}"),
            }
        }
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
    }
}
