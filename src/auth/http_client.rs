//! A tiny JSON-over-HTTP client for OIDC discovery, JWKS and the token endpoint.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const MAX_BODY: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad URL {0:?}")]
    BadUrl(String),
    #[error("request failed: {0}")]
    Failed(String),
    #[error("timed out")]
    Timeout,
    #[error("status {0}")]
    Status(u16),
    #[error("bad JSON: {0}")]
    Json(String),
}

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, FetchError> {
        self.send(Method::GET, url, None).await
    }

    /// POSTs `application/x-www-form-urlencoded` pairs (values are percent-encoded here).
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
    ) -> Result<serde_json::Value, FetchError> {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send(Method::POST, url, Some(body)).await
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        form: Option<String>,
    ) -> Result<serde_json::Value, FetchError> {
        let uri: http::Uri = url.parse().map_err(|_| FetchError::BadUrl(url.into()))?;
        if uri.scheme_str() != Some("http") {
            return Err(FetchError::BadUrl(url.into()));
        }
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(ACCEPT, "application/json");
        if form.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = builder
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .map_err(|e| FetchError::Failed(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| FetchError::Failed(e.to_string()))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| FetchError::Failed(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                return Err(FetchError::Status(status.as_u16()));
            }
            serde_json::from_slice(&body).map_err(|e| FetchError::Json(e.to_string()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| FetchError::Timeout)?
    }
}

/// Everything but RFC 3986 unreserved characters (`A-Za-z0-9-._~`).
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a query or form component.
pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, COMPONENT).to_string()
}
