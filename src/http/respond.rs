//! Respond phase: every error kind maps to a status, a machine code, and a JSON body for API
//! clients or a readable HTML page for browsers, here and nowhere else.

use std::time::{Duration, SystemTime};

use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::auth::{Answer, AuthError, Denied};
use crate::base::header_scan::{Present, Tracked};
pub use crate::base::html::escape_html;
use crate::http::body::ProxyBody;
use crate::http::header_route::HeaderRouteError;
use crate::http::route::RouteError;
use crate::registry::RegistryError;
use crate::wake::WakeError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("no such path on this host")]
    NotFound,
    #[error("sandbox not found")]
    SandboxNotFound,
    #[error("port {0} of this sandbox is not exposed")]
    PortNotExposed(u16),
    #[error("{}", not_running_message(state, *waking))]
    SandboxNotRunning { state: Box<str>, waking: bool },
    #[error("{0}")]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the sandbox's runner is unreachable")]
    RunnerUnreachable,
    #[error("nothing is listening on port {0} inside the sandbox")]
    PortNotListening(u16),
    #[error("the upstream did not send response headers within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("the upstream connection failed before a response")]
    UpstreamFailed,
    #[error("the proxy is shutting down")]
    ShuttingDown,
    #[error("the registry backend is not reachable")]
    NotReady,
    #[error("too many requests in flight for this sandbox; retry shortly")]
    SandboxBusy,
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("the request body is malformed or incomplete")]
    BadRequestBody,
    #[error("{0}")]
    Wake(#[from] WakeError),
    #[error("the sandbox is being started; request bodies over {0} bytes (or of unknown length) are not held: retry in a few seconds")]
    BodyNotHeld(u64),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Route(_) | ProxyError::BadRequestBody => StatusCode::BAD_REQUEST,
            ProxyError::NotFound | ProxyError::SandboxNotFound | ProxyError::PortNotExposed(_) => {
                StatusCode::NOT_FOUND
            }
            ProxyError::SandboxNotRunning { .. }
            | ProxyError::Wake(_)
            | ProxyError::BodyNotHeld(_)
            | ProxyError::ShuttingDown
            | ProxyError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Registry(RegistryError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Registry(RegistryError::BadData { .. }) => StatusCode::BAD_GATEWAY,
            ProxyError::Auth(e) => auth_status(e),
            ProxyError::RunnerUnreachable
            | ProxyError::PortNotListening(_)
            | ProxyError::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::SandboxBusy => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Route(RouteError::BadToolboxPath(_)) => "BAD_REQUEST",
            ProxyError::Route(RouteError::AbsoluteForm | RouteError::AsteriskForm) => "BAD_REQUEST",
            ProxyError::Route(RouteError::BadPath(_)) => "BAD_PATH",
            ProxyError::Route(RouteError::RoutingHeader(e)) => routing_header_code(e),
            ProxyError::Route(_) => "BAD_HOST",
            ProxyError::NotFound => "NOT_FOUND",
            ProxyError::SandboxNotFound => "SANDBOX_NOT_FOUND",
            ProxyError::PortNotExposed(_) => "PORT_NOT_EXPOSED",
            ProxyError::SandboxNotRunning { .. }
            | ProxyError::BodyNotHeld(_)
            | ProxyError::Wake(WakeError::TooMany | WakeError::Asked) => "SANDBOX_NOT_RUNNING",
            ProxyError::Wake(WakeError::ShuttingDown) => "SHUTTING_DOWN",
            ProxyError::Wake(WakeError::StillStarting { .. }) => "SANDBOX_STARTING",
            ProxyError::Wake(WakeError::Failed { .. }) => "SANDBOX_START_FAILED",
            ProxyError::Registry(RegistryError::Unavailable(_)) => "REGISTRY_UNAVAILABLE",
            ProxyError::Registry(RegistryError::BadData { .. }) => "REGISTRY_BAD_DATA",
            ProxyError::Auth(e) => auth_code(e),
            ProxyError::RunnerUnreachable => "RUNNER_UNREACHABLE",
            ProxyError::PortNotListening(_) => "PORT_NOT_LISTENING",
            ProxyError::UpstreamTimeout(_) => "UPSTREAM_TIMEOUT",
            ProxyError::UpstreamFailed => "UPSTREAM_FAILED",
            ProxyError::ShuttingDown => "SHUTTING_DOWN",
            ProxyError::NotReady => "NOT_READY",
            ProxyError::SandboxBusy => "SANDBOX_BUSY",
            ProxyError::BodyTooLarge(_) => "BODY_TOO_LARGE",
            ProxyError::BadRequestBody => "BAD_REQUEST_BODY",
        }
    }

    /// A message safe to show a client: backend details stay in the logs.
    fn public_message(&self) -> String {
        match self {
            ProxyError::Registry(RegistryError::Unavailable(_)) => {
                "the sandbox registry is unavailable; retry shortly".into()
            }
            ProxyError::Registry(RegistryError::BadData { .. }) => {
                "the registry holds invalid data for this sandbox".into()
            }
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<u32> {
        match self {
            ProxyError::SandboxNotRunning { .. }
            | ProxyError::BodyNotHeld(_)
            | ProxyError::Wake(WakeError::StillStarting { .. } | WakeError::Asked) => Some(5),
            ProxyError::Wake(WakeError::TooMany | WakeError::ShuttingDown) => Some(2),
            ProxyError::Wake(WakeError::Failed { .. }) => Some(30),
            ProxyError::SandboxBusy => Some(1),
            ProxyError::Registry(RegistryError::Unavailable(_)) | ProxyError::ShuttingDown => {
                Some(2)
            }
            ProxyError::Auth(AuthError::RateLimited(seconds)) => Some(*seconds),
            _ => None,
        }
    }
}

impl From<Denied> for ProxyError {
    fn from(denied: Denied) -> ProxyError {
        match denied {
            Denied::Auth(e) => ProxyError::Auth(e),
            Denied::Registry(e) => ProxyError::Registry(e),
        }
    }
}

fn routing_header_code(error: &HeaderRouteError) -> &'static str {
    match error {
        HeaderRouteError::Incomplete => "ROUTING_HEADERS_INCOMPLETE",
        HeaderRouteError::BadPort => "BAD_SANDBOX_PORT",
        HeaderRouteError::BadId => "BAD_SANDBOX_ID",
        HeaderRouteError::Conflict => "ROUTING_HEADERS_CONFLICT",
    }
}

fn auth_status(error: &AuthError) -> StatusCode {
    match error {
        AuthError::Required
        | AuthError::TokenInvalid
        | AuthError::PlatformTokenInvalid
        | AuthError::TokenExpired => StatusCode::UNAUTHORIZED,
        AuthError::Forbidden | AuthError::Csrf => StatusCode::FORBIDDEN,
        AuthError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        AuthError::BadLogin(_) => StatusCode::BAD_REQUEST,
        AuthError::IdpUnavailable => StatusCode::BAD_GATEWAY,
    }
}

/// The machine code of an authentication refusal (also the `reason` label of the auth-failure
/// metric).
pub fn auth_code(error: &AuthError) -> &'static str {
    match error {
        AuthError::Required => "AUTH_REQUIRED",
        AuthError::TokenInvalid | AuthError::PlatformTokenInvalid => "TOKEN_INVALID",
        AuthError::TokenExpired => "TOKEN_EXPIRED",
        AuthError::Forbidden => "FORBIDDEN",
        AuthError::RateLimited(_) => "RATE_LIMITED",
        AuthError::BadLogin(_) => "LOGIN_FAILED",
        AuthError::IdpUnavailable => "IDP_UNAVAILABLE",
        AuthError::Csrf => "CSRF_INVALID",
    }
}

fn not_running_message(state: &str, waking: bool) -> String {
    if waking {
        format!("the sandbox is not running (state: {state}); it is being started, retry in a few seconds")
    } else {
        format!("the sandbox is not running (state: {state}); start it and retry")
    }
}

/// The health and readiness bodies of the proxy's own host, the admin listener and the
/// plaintext redirector, in one place.
pub mod health {
    use http::header::CONTENT_TYPE;
    use http::{HeaderValue, Response};

    use crate::http::body::ProxyBody;

    /// `/health` on the admin listener and the HTTPS redirector.
    pub const OK: &str = "{\"status\":\"ok\"}";
    /// `/health` on the proxy's own host.
    pub const OK_WITH_VERSION: &str = concat!(
        "{\"status\":\"ok\",\"version\":\"",
        env!("CARGO_PKG_VERSION"),
        "\"}"
    );
    pub const READY: &str = "{\"status\":\"ready\"}";
    pub const NOT_READY: &str =
        "{\"status\":\"not ready\",\"reason\":\"the registry backend is not reachable\"}";
    pub const NOT_FOUND: &str = "{\"status\":\"not found\"}";

    /// `200` with a JSON body.
    pub fn json_ok(body: &'static str) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::full(body));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// True when the client is a browser navigating (it should get a page, not JSON).
pub fn wants_html(headers: &HeaderMap, present: Present) -> bool {
    const SEC_FETCH_MODE: http::HeaderName = http::HeaderName::from_static("sec-fetch-mode");
    if present.may_have(Tracked::Upgrade) && headers.contains_key(http::header::UPGRADE) {
        return false;
    }
    let mode = present.may_have(Tracked::SecFetchMode);
    if mode && headers.get(SEC_FETCH_MODE).is_some_and(|v| v == "navigate") {
        return true;
    }
    let accept = present.may_have(Tracked::Accept);
    accept
        .then(|| headers.get(http::header::ACCEPT))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

pub fn error_response(error: &ProxyError, path: &str, html: bool) -> Response<ProxyBody> {
    let status = error.status();
    let message = error.public_message();
    let (body, content_type) = if html {
        (
            html_page(status, error.code(), &message, path),
            "text/html; charset=utf-8",
        )
    } else {
        (
            json_body(status, error.code(), &message, path),
            "application/json",
        )
    };
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(seconds) = error.retry_after() {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let ProxyError::Auth(auth) = error {
        if auth_status(auth) == StatusCode::UNAUTHORIZED {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
    }
    response
}

/// The machine code of a login redirect (also the `reason` label of the auth-failure metric).
pub const LOGIN_REQUIRED: &str = "LOGIN_REQUIRED";

/// A browser without a working credential goes to the identity provider: `302` to `location`,
/// with the same facts as an error page for whoever does not follow it.
pub fn login_redirect(location: &str, path: &str, html: bool) -> Response<ProxyBody> {
    let status = StatusCode::FOUND;
    let message = "sign-in required";
    let (body, content_type) = if html {
        (
            html_page(status, LOGIN_REQUIRED, message, path),
            "text/html; charset=utf-8",
        )
    } else {
        (
            json_body(status, LOGIN_REQUIRED, message, path),
            "application/json",
        )
    };
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(location) = HeaderValue::try_from(location) {
        headers.insert(http::header::LOCATION, location);
    }
    response
}

/// Renders what auth answered by itself (a CORS preflight, the preview warning page or its
/// accept form, a login redirect): its status and headers as they are, its body if it has one.
pub fn answer(answer: Answer) -> Response<ProxyBody> {
    let body = match answer.body {
        Some(body) => ProxyBody::full(body),
        None => ProxyBody::Empty,
    };
    let mut response = Response::new(body);
    *response.status_mut() = answer.status;
    *response.headers_mut() = answer.headers;
    response
}

fn json_body(status: StatusCode, code: &str, message: &str, path: &str) -> String {
    serde_json::json!({
        "statusCode": status.as_u16(),
        "code": code,
        "message": message,
        "path": path,
        "timestamp": timestamp(),
    })
    .to_string()
}

fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn html_page(status: StatusCode, code: &str, message: &str, path: &str) -> String {
    let title = status.canonical_reason().unwrap_or("Error");
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{status} {title}</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
code{{background:#f3f3f3;padding:0 .3em}}small{{color:#777}}</style></head><body>\
<h1>{status_code} · {title}</h1><p>{message}</p><p><small>code <code>{code}</code> · path <code>{path}</code> · {time}</small></p>\
</body></html>",
        status = status.as_u16(),
        status_code = status.as_u16(),
        title = escape_html(title),
        message = escape_html(message),
        code = escape_html(code),
        path = escape_html(path),
        time = timestamp(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_text(r: Response<ProxyBody>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn json_errors_carry_status_code_and_path() {
        let r = error_response(&ProxyError::SandboxNotFound, "/a?b", false);
        assert_eq!(r.status(), 404);
        let v: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
        assert_eq!(v["statusCode"], 404);
        assert_eq!(v["code"], "SANDBOX_NOT_FOUND");
        assert_eq!(v["path"], "/a?b");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[tokio::test]
    async fn html_pages_escape_what_they_echo() {
        let r = error_response(&ProxyError::NotFound, "/<script>alert(1)</script>", true);
        let text = body_text(r).await;
        assert!(text.contains("&lt;script&gt;") && !text.contains("<script>"));
    }

    #[test]
    fn not_running_says_when_to_retry() {
        let r = error_response(
            &ProxyError::SandboxNotRunning {
                state: "stopped".into(),
                waking: false,
            },
            "/",
            false,
        );
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[RETRY_AFTER], "5");
    }
}
