//! Respond phase: every error kind maps to a status, a machine code, and a JSON body for API
//! clients or a readable HTML page for browsers, here and nowhere else.

use std::time::{Duration, SystemTime};

use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use std::borrow::Cow;

use crate::auth::{Answer, AuthError, Denied};
use crate::base::header_scan::{Present, Tracked};
pub use crate::base::html::escape_html;
use crate::base::ports::{is_reserved_port, TOOLBOX_PORT};
use crate::http::body::ProxyBody;
use crate::http::header_route::HeaderRouteError;
use crate::http::pages::{self, PageFacts, Pages};
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
    #[error("{0} is waiting for verification: its owner creates the DNS TXT record _sandgate-challenge.{0} with the value they were given (or the platform verifies it); retry after that")]
    DomainPending(Box<str>),
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
            ProxyError::DomainPending(_) => StatusCode::FORBIDDEN,
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
            ProxyError::DomainPending(_) => "DOMAIN_PENDING",
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

/// What an error page or JSON error needs besides the error itself.
pub struct PageContext<'a> {
    pub pages: &'a Pages,
    /// The request's id, when request ids are on.
    pub request_id: Option<&'a HeaderValue>,
    /// The sandbox port asked for, once routed.
    pub port: Option<u16>,
    /// Where a browser signs in, when OIDC is configured and the refusal is a 401.
    pub login_url: Option<String>,
}

pub fn error_response(
    error: &ProxyError,
    path: &str,
    html: bool,
    context: &PageContext<'_>,
) -> Response<ProxyBody> {
    let status = error.status();
    let retry_after = error.retry_after();
    let request_id = context
        .request_id
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Only a 503 retries by itself: the sandbox or the proxy will be back, nothing for the user
    // to change first.
    let refresh = retry_after.filter(|_| html && status == StatusCode::SERVICE_UNAVAILABLE);
    let (body, content_type) = if html {
        let message = browser_message(error, context.port);
        let facts = PageFacts {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            code: error.code(),
            message: &message,
            request_id,
            retry_after,
            path,
        };
        let login = context
            .login_url
            .as_deref()
            .filter(|_| is_unauthorized(error));
        let body = context
            .pages
            .render(&facts)
            .unwrap_or_else(|| html_page(&facts, refresh, login));
        (body, "text/html; charset=utf-8")
    } else {
        let message = api_message(error, context.port);
        let body = json_body(status, error.code(), &message, path, context.request_id);
        (body, "application/json")
    };
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    pages::secure(headers);
    if let Some(seconds) = retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(seconds) = refresh {
        // Also for an operator's template that has no `<meta http-equiv=refresh>`.
        headers.insert(http::header::REFRESH, HeaderValue::from(seconds));
    }
    if is_unauthorized(error) {
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    response
}

fn is_unauthorized(error: &ProxyError) -> bool {
    matches!(error, ProxyError::Auth(auth) if auth_status(auth) == StatusCode::UNAUTHORIZED)
}

/// The message for API clients: the error's own, naming a reserved port as such.
fn api_message(error: &ProxyError, port: Option<u16>) -> Cow<'static, str> {
    match (error, port) {
        (ProxyError::Auth(AuthError::Required), Some(port)) if is_reserved_port(port) => format!(
            "port {port} is reserved by the platform and always requires a credential: \
                 send a preview token (X-Daytona-Preview-Token) or a bearer token"
        )
        .into(),
        _ => error.public_message().into(),
    }
}

/// The message for a person in a browser: what they can do, not which header to send.
fn browser_message(error: &ProxyError, port: Option<u16>) -> Cow<'static, str> {
    let reserved = port.filter(|p| is_reserved_port(*p));
    match (error, reserved) {
        (ProxyError::Auth(AuthError::Required | AuthError::TokenInvalid), Some(port)) => {
            let what = if port == TOOLBOX_PORT {
                "the sandbox's own daemon"
            } else {
                "the platform's own services"
            };
            format!(
                "Port {port} is reserved by the platform ({what}): it is never a public preview \
                 and always needs the owner's credential. Apps you run in the sandbox are on \
                 other ports."
            )
            .into()
        }
        (ProxyError::Auth(AuthError::Required), None) => "This sandbox is private. To open it \
            in your browser, ask its owner for a share link (a preview link that carries an \
            access token) and open that link; this browser then remembers it."
            .into(),
        (ProxyError::Auth(AuthError::TokenInvalid | AuthError::PlatformTokenInvalid), None) => {
            "The link or credential you used does not open this sandbox (it may have been \
             revoked, or be for another sandbox or port). Ask the sandbox's owner for a new \
             share link."
                .into()
        }
        (ProxyError::Auth(AuthError::TokenExpired), _) => {
            "Your access to this sandbox has expired. Ask the sandbox's owner for a new share \
             link, or open the link you were given again."
                .into()
        }
        _ => api_message(error, port),
    }
}

/// The machine code of a login redirect (also the `reason` label of the auth-failure metric).
pub const LOGIN_REQUIRED: &str = "LOGIN_REQUIRED";

/// A browser without a working credential goes to the identity provider: `302` to `location`,
/// with the same facts as an error page for whoever does not follow it.
pub fn login_redirect(location: &str, path: &str, html: bool) -> Response<ProxyBody> {
    let status = StatusCode::FOUND;
    let message = "sign-in required";
    let (body, content_type) = if html {
        let facts = PageFacts {
            status: status.as_u16(),
            title: "Sign-in required",
            code: LOGIN_REQUIRED,
            message,
            request_id: "",
            retry_after: None,
            path,
        };
        (html_page(&facts, None, None), "text/html; charset=utf-8")
    } else {
        (
            json_body(status, LOGIN_REQUIRED, message, path, None),
            "application/json",
        )
    };
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    pages::secure(headers);
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
    // A page of auth's own (the preview warning) keeps its own policy.
    response
        .headers_mut()
        .entry(http::header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    response
}

fn json_body(
    status: StatusCode,
    code: &str,
    message: &str,
    path: &str,
    request_id: Option<&HeaderValue>,
) -> String {
    let mut body = serde_json::json!({
        "statusCode": status.as_u16(),
        "code": code,
        "message": message,
        "path": path,
        "timestamp": timestamp(),
    });
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        body["request_id"] = id.into();
    }
    body.to_string()
}

fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The built-in page. A 503 that retries (`refresh`) says so and counts down (CSS only: the
/// policy allows no script); a 401 with OIDC links to the sign-in.
fn html_page(facts: &PageFacts<'_>, refresh: Option<u32>, login: Option<&str>) -> String {
    let (meta, countdown_css, retry) = match refresh {
        Some(n) => (
            format!("<meta http-equiv=\"refresh\" content=\"{n}\">"),
            format!(
                "@property --n{{syntax:'<integer>';inherits:false;initial-value:{n}}}\
.n{{font-size:0;counter-reset:n var(--n);animation:n {n}s linear forwards}}\
.n::after{{font-size:1rem;content:counter(n)}}@keyframes n{{to{{--n:0}}}}"
            ),
            format!(
                "<p id=\"retry\">Retrying in <span class=\"n\">{n}</span> s: this page reloads by itself.</p>"
            ),
        ),
        None => (String::new(), String::new(), String::new()),
    };
    let login = login.map_or(String::new(), |url| {
        format!(
            "<p><a href=\"{}\">Sign in</a> to open it with your account.</p>",
            escape_html(url)
        )
    });
    let request_id = match facts.request_id {
        "" => String::new(),
        id => format!(" · request id <code>{}</code>", escape_html(id)),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{meta}\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{status} {title}</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
code{{background:#f3f3f3;padding:0 .3em}}small{{color:#777}}{countdown_css}</style></head><body>\
<h1>{status} · {title}</h1><p id=\"message\">{message}</p>{login}{retry}\
<p><small>code <code>{code}</code> · path <code>{path}</code>{request_id} · {time}</small></p>\
</body></html>",
        status = facts.status,
        title = escape_html(facts.title),
        message = escape_html(facts.message),
        code = escape_html(facts.code),
        path = escape_html(facts.path),
        time = timestamp(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn context(pages: &Pages) -> PageContext<'_> {
        PageContext {
            pages,
            request_id: None,
            port: None,
            login_url: None,
        }
    }

    async fn body_text(r: Response<ProxyBody>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn json_errors_carry_status_code_and_path() {
        let r = error_response(
            &ProxyError::SandboxNotFound,
            "/a?b",
            false,
            &context(&Pages::default()),
        );
        assert_eq!(r.status(), 404);
        let v: serde_json::Value = serde_json::from_str(&body_text(r).await).unwrap();
        assert_eq!(v["statusCode"], 404);
        assert_eq!(v["code"], "SANDBOX_NOT_FOUND");
        assert_eq!(v["path"], "/a?b");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[tokio::test]
    async fn html_pages_escape_what_they_echo() {
        let r = error_response(
            &ProxyError::NotFound,
            "/<script>alert(1)</script>",
            true,
            &context(&Pages::default()),
        );
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
            &context(&Pages::default()),
        );
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[RETRY_AFTER], "5");
    }
}
