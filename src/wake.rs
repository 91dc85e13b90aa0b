//! Auto-wake: a request for a sandbox that is not running may call a configurable "start" hook
//! (e.g. the control plane's `POST /sandbox/{id}/start`), at most once per sandbox per interval.
//! The request itself still gets 503 with `Retry-After`; the hook runs in the background.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Method, Request};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use crate::config::WakeConfig;

pub struct Waker {
    config: WakeConfig,
    auth: Option<HeaderValue>,
    client: Client<HttpConnector, Empty<Bytes>>,
    last_call: DashMap<Box<str>, Instant>,
}

impl Waker {
    /// `None` when no hook is configured.
    pub fn new(config: &WakeConfig) -> Option<Arc<Waker>> {
        if config.url.is_empty() {
            return None;
        }
        let auth = (!config.api_key.is_empty())
            .then(|| HeaderValue::try_from(format!("Bearer {}", config.api_key)).ok())
            .flatten()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Some(Arc::new(Waker {
            config: config.clone(),
            auth,
            client,
            last_call: DashMap::new(),
        }))
    }

    /// Calls the hook for `sandbox_id` unless it was called within the interval. Returns
    /// whether a call was started (or is recent), i.e. the sandbox is being woken.
    pub fn wake(self: &Arc<Self>, sandbox_id: &str) -> bool {
        let now = Instant::now();
        if let Some(last) = self.last_call.get(sandbox_id) {
            if now.duration_since(*last) < self.config.interval {
                return true;
            }
        }
        if self.last_call.len() > 100_000 {
            let interval = self.config.interval;
            self.last_call
                .retain(|_, t| now.duration_since(*t) < interval);
        }
        self.last_call.insert(sandbox_id.into(), now);
        let waker = self.clone();
        let id = sandbox_id.to_string();
        tokio::spawn(async move { waker.call(&id).await });
        true
    }

    async fn call(&self, sandbox_id: &str) {
        let url = self.config.url.replace("{id}", sandbox_id);
        let mut request = match Request::builder()
            .method(Method::POST)
            .uri(&url)
            .body(Empty::new())
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(sandbox = sandbox_id, error = %e, "auto-wake: bad hook URL");
                return;
            }
        };
        if let Some(auth) = &self.auth {
            request.headers_mut().insert(AUTHORIZATION, auth.clone());
        }
        match tokio::time::timeout(self.config.timeout, self.client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => {
                tracing::info!(sandbox = sandbox_id, "auto-wake requested");
            }
            Ok(Ok(response)) => {
                tracing::warn!(sandbox = sandbox_id, status = %response.status(), "auto-wake hook refused");
            }
            Ok(Err(e)) => {
                tracing::warn!(sandbox = sandbox_id, error = %e, "auto-wake hook unreachable")
            }
            Err(_) => tracing::warn!(sandbox = sandbox_id, "auto-wake hook timed out"),
        }
    }
}
