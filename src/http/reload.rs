//! Reloads asked over the admin listener (`POST /reload`, `Authorization: Bearer <admin.token>`).
//! The listener does not know how to reload (the command line that started the proxy does):
//! it sends a request down a channel and answers with the report that comes back.

use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::http::body::ProxyBody;

/// What one reload did: the parts swapped in, the changed keys that need a restart (by name,
/// e.g. `server.listen`), and why a part was refused (the previous one stays in force).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
    pub errors: Vec<String>,
}

/// One reload asked for: the report goes back on it.
pub type ReloadRequest = oneshot::Sender<ReloadReport>;

/// The admin listener's side of the reload channel, with the token it requires.
#[derive(Clone)]
pub struct AdminReload {
    token: Option<Box<str>>,
    requests: mpsc::Sender<ReloadRequest>,
}

/// A reload channel: the admin listener's end (with `admin.token`) and the receiving end for
/// whoever performs reloads.
pub fn channel(token: Option<&str>) -> (AdminReload, mpsc::Receiver<ReloadRequest>) {
    let (requests, receiver) = mpsc::channel(4);
    let token = token.filter(|t| !t.is_empty()).map(Box::from);
    (AdminReload { token, requests }, receiver)
}

impl AdminReload {
    /// The answer to `method /reload`.
    pub async fn answer(&self, method: &Method, headers: &HeaderMap) -> Response<ProxyBody> {
        if method != Method::POST {
            let mut response = json(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"use POST /reload"}"#.into(),
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("POST"));
            return response;
        }
        let Some(token) = &self.token else {
            return json(
                StatusCode::FORBIDDEN,
                r#"{"error":"reloads over the admin listener are off: set admin.token"}"#.into(),
            );
        };
        if !bearer_matches(headers, token) {
            let mut response = json(
                StatusCode::UNAUTHORIZED,
                r#"{"error":"send Authorization: Bearer <admin.token>"}"#.into(),
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        let (reply, report) = oneshot::channel();
        let unavailable = || {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"this process does not reload"}"#.into(),
            )
        };
        // Bounded: a process whose reload handler is not running (a library embedding `start`
        // without draining `reload_requests`) answers 503 instead of holding the caller.
        let asked = async {
            self.requests.send(reply).await.ok()?;
            report.await.ok()
        };
        let Ok(Some(report)) = tokio::time::timeout(RELOAD_WAIT, asked).await else {
            return unavailable();
        };
        let status = match report.errors.is_empty() {
            true => StatusCode::OK,
            false => StatusCode::UNPROCESSABLE_ENTITY,
        };
        json(status, serde_json::to_string(&report).unwrap_or_default())
    }
}

/// How long `POST /reload` waits for the reload to be done (a reload reads a few files).
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let sent = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    sent.is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(token.as_bytes())))
}

fn json(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_matches() {
        let cases = [
            (Some("Bearer s3cret"), true),
            (Some("Bearer s3cret2"), false),
            (Some("Bearer s3cre"), false),
            (Some("bearer s3cret"), false),
            (Some("s3cret"), false),
            (None, false),
        ];
        for (header, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(h) = header {
                headers.insert(AUTHORIZATION, HeaderValue::from_static(h));
            }
            assert_eq!(bearer_matches(&headers, "s3cret"), expected, "{header:?}");
        }
    }
}
