//! A tiny JSON-over-HTTP(S) client for OIDC discovery, JWKS and the token endpoint. HTTPS trusts
//! the public web roots (webpki-roots) plus an optional extra CA file for private providers.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
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
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    pub fn new(timeout: Duration) -> Self {
        Self::with_extra_ca(timeout, &[])
    }

    /// Trusts `extra_ca` (DER certificates) besides the public web roots.
    pub fn with_extra_ca(
        timeout: Duration,
        extra_ca: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Self {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let (added, ignored) = roots.add_parsable_certificates(extra_ca.iter().cloned());
        if ignored > 0 {
            tracing::warn!(
                added,
                ignored,
                "some extra CA certificates could not be used"
            );
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(timeout));
        http.enforce_http(false);
        let connector = match tls {
            Ok(tls) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http),
            // Unreachable with the default provider; without TLS, https URLs fail per request.
            Err(e) => {
                tracing::error!(error = %e, "TLS client setup failed; https identity providers are unreachable");
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_webpki_roots()
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http)
            }
        };
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
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
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

#[cfg(test)]
mod https_tests {
    use super::*;
    use crate::cli::certs::generate_dev_certs;
    use crate::tls::{server_config, CertPair, CertResolver, TlsConfig};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use std::sync::Arc;

    /// A TLS server answering `{"ok":true}` with a certificate for `localhost` from a dev CA.
    async fn https_idp(dir: &std::path::Path) -> (u16, Vec<CertificateDer<'static>>) {
        let [ca, cert, key] = generate_dev_certs(dir, "localhost").unwrap();
        let config = TlsConfig {
            certs: vec![CertPair { cert, key }],
            ..TlsConfig::default()
        };
        let resolver = Arc::new(CertResolver::new(&config, None).unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(server_config(resolver).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from_static(b"{\"ok\":true}"),
                        )))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        let cas = CertificateDer::pem_file_iter(ca)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        (port, cas)
    }

    #[tokio::test]
    async fn https_providers_are_trusted_through_the_extra_ca_only() {
        let dir = tempfile::tempdir().unwrap();
        let (port, ca) = https_idp(dir.path()).await;
        let url = format!("https://localhost:{port}/.well-known/openid-configuration");
        let trusted = HttpClient::with_extra_ca(Duration::from_secs(5), &ca);
        assert_eq!(trusted.get_json(&url).await.unwrap()["ok"], true);
        let public_roots_only = HttpClient::new(Duration::from_secs(5));
        let refused = public_roots_only
            .get_json(&url)
            .await
            .unwrap_err()
            .to_string();
        assert!(refused.contains("request failed"), "{refused}");
    }
}
