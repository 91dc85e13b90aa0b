//! Start backends: who is asked to start a sandbox. Each answers whether the sandbox is up now
//! (`Running`), is being started (`Accepted`: wait for the registry), or why it will not start.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::base::BoxFuture;
use crate::config::{DaytonaConfig, WakeConfig};
use crate::registry::daytona::api::{segment, DaytonaApi};
use crate::registry::redis::RedisHandle;

/// What a start backend said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    /// The sandbox runs now (a synchronous hook answered 200).
    Running,
    /// The start is under way: the registry will report the sandbox running.
    Accepted,
}

/// Why a start call failed; the message is shown to the caller who woke the sandbox.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    /// The backend answered and refused.
    #[error("{0}")]
    Refused(String),
    /// The same, with the backend's own message (for callers who may see it).
    #[error("{0}: {1}")]
    RefusedSaying(String, String),
    /// The backend could not be reached or did not answer in time.
    #[error("{0}")]
    Unreachable(String),
}

pub trait Starter: Send + Sync + 'static {
    fn start<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<Started, StartError>>;
}

/// At most this much of a refusal's own message is quoted.
const MESSAGE_LIMIT: usize = 200;
/// Answers are read up to this size.
const BODY_LIMIT: usize = 16 * 1024;

/// `POST` to the configured URL with `{id}` filled in, with the configured bearer.
pub struct HookStarter {
    url: String,
    auth: Option<HeaderValue>,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl HookStarter {
    pub fn new(config: &WakeConfig) -> HookStarter {
        let auth = (!config.api_key.is_empty())
            .then(|| HeaderValue::try_from(format!("Bearer {}", config.api_key)).ok())
            .flatten()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        HookStarter {
            url: config.url.clone(),
            auth,
            timeout: config.timeout,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn call(&self, sandbox_id: &str) -> Result<Started, StartError> {
        let Some(sandbox_id) = segment(sandbox_id) else {
            return Err(StartError::Refused(
                "the sandbox id cannot be started".into(),
            ));
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.url.replace("{id}", sandbox_id))
            .header(USER_AGENT, concat!("sandgate/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|_| StartError::Refused("the start hook URL is invalid".into()))?;
        if let Some(auth) = &self.auth {
            request.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let json = is_json(response.headers().get(CONTENT_TYPE));
            let body = Limited::new(response.into_body(), BODY_LIMIT)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, json.then_some(body)))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(StartError::Unreachable(format!(
                "the start hook did not answer within {}",
                humantime::format_duration(self.timeout)
            ))),
            Ok(Err(e)) => Err(StartError::Unreachable(format!(
                "the start hook is unreachable ({e})"
            ))),
            Ok(Ok((status, body))) => hook_answer(status, body.as_deref()),
        }
    }
}

impl Starter for HookStarter {
    fn start<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<Started, StartError>> {
        Box::pin(self.call(sandbox_id))
    }
}

/// 202: accepted, wait for the registry; another 2xx: the sandbox is up, unless a JSON body
/// names another state; anything else: refused.
fn hook_answer(status: StatusCode, json: Option<&[u8]>) -> Result<Started, StartError> {
    if !status.is_success() {
        return Err(refusal("the start hook", status, json));
    }
    if status == StatusCode::ACCEPTED {
        return Ok(Started::Accepted);
    }
    let state = json.and_then(|b| json_field(b, "state"));
    match state.as_deref() {
        None | Some("started" | "running") => Ok(Started::Running),
        Some(_) => Ok(Started::Accepted),
    }
}

/// `POST {api}/sandbox/{id}/start` on the control plane, with the proxy's API key.
pub struct DaytonaStarter {
    api: DaytonaApi,
}

impl DaytonaStarter {
    pub fn new(config: &DaytonaConfig) -> Result<DaytonaStarter, String> {
        Ok(DaytonaStarter {
            api: DaytonaApi::new(config)?,
        })
    }

    async fn call(&self, sandbox_id: &str) -> Result<Started, StartError> {
        let Some(id) = segment(sandbox_id) else {
            return Err(StartError::Refused(
                "the sandbox id cannot be started".into(),
            ));
        };
        let what = "POST /sandbox/{id}/start";
        let answer = self
            .api
            .call(Method::POST, &format!("/sandbox/{id}/start"), what)
            .await
            .map_err(|e| StartError::Unreachable(e.to_string()))?;
        if !answer.status.is_success() {
            return Err(refusal(
                "the control plane",
                answer.status,
                Some(&answer.body),
            ));
        }
        // Its answer is the sandbox, usually `starting`: the registry reports `started` later.
        Ok(Started::Accepted)
    }
}

impl Starter for DaytonaStarter {
    fn start<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<Started, StartError>> {
        Box::pin(self.call(sandbox_id))
    }
}

/// `PUBLISH {channel} {id}`: the orchestrator that runs the sandboxes listens, starts it, sets the
/// sandbox hash's `state` and publishes the invalidation.
pub struct RedisStarter {
    redis: Arc<RedisHandle>,
    channel: String,
}

impl RedisStarter {
    pub fn new(redis: Arc<RedisHandle>, config: &WakeConfig) -> RedisStarter {
        RedisStarter {
            redis,
            channel: config.channel.clone(),
        }
    }

    async fn call(&self, sandbox_id: &str) -> Result<Started, StartError> {
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(&self.channel).arg(sandbox_id);
        let receivers: i64 = self
            .redis
            .query(&publish)
            .await
            .map_err(|e| StartError::Unreachable(e.to_string()))?;
        // A cluster counts only the node's own subscribers: no verdict there.
        if receivers == 0 && !self.redis.is_cluster() {
            return Err(StartError::Refused(format!(
                "no orchestrator listens on the start channel {:?}",
                self.channel
            )));
        }
        Ok(Started::Accepted)
    }
}

impl Starter for RedisStarter {
    fn start<'a>(&'a self, sandbox_id: &'a str) -> BoxFuture<'a, Result<Started, StartError>> {
        Box::pin(self.call(sandbox_id))
    }
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"))
}

/// A refusal naming who refused and the status, with the backend's own `message` if any.
fn refusal(who: &str, status: StatusCode, body: Option<&[u8]>) -> StartError {
    let summary = format!("{who} refused to start it ({})", status.as_u16());
    match body.and_then(|b| json_field(b, "message")) {
        Some(message) => StartError::RefusedSaying(summary, message),
        None => StartError::Refused(summary),
    }
}

/// A string field of a JSON object, trimmed to [`MESSAGE_LIMIT`] characters of printable text.
fn json_field(body: &[u8], field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = match value.get(field)? {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        _ => return None,
    };
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MESSAGE_LIMIT)
        .collect();
    (!clean.is_empty()).then_some(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_answers_map_to_started_accepted_or_refused() {
        let rows: [(u16, Option<&str>, Result<Started, &str>); 7] = [
            (200, None, Ok(Started::Running)),
            (204, None, Ok(Started::Running)),
            (200, Some(r#"{"state":"started"}"#), Ok(Started::Running)),
            (200, Some(r#"{"state":"starting"}"#), Ok(Started::Accepted)),
            (202, None, Ok(Started::Accepted)),
            (
                409,
                Some(r#"{"message":"quota exceeded\u0007"}"#),
                Err("the start hook refused to start it (409): quota exceeded"),
            ),
            (
                500,
                Some("not json"),
                Err("the start hook refused to start it (500)"),
            ),
        ];
        for (status, body, expected) in rows {
            let status = StatusCode::from_u16(status).unwrap();
            let got = hook_answer(status, body.map(str::as_bytes)).map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(String::from), "{status} {body:?}");
        }
    }

    #[test]
    fn quoted_messages_are_bounded() {
        let long = format!(r#"{{"message":"{}"}}"#, "x".repeat(1000));
        assert_eq!(json_field(long.as_bytes(), "message").unwrap().len(), 200);
        let list = br#"{"message":["a","b"]}"#;
        assert_eq!(json_field(list, "message").as_deref(), Some("a; b"));
    }
}
