//! One request, one straight path: route → authenticate → resolve → activity → forward, with
//! every error turned into a response by `respond`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::activity::Activity;
use crate::auth::gate::{self, Admission};
use crate::auth::Auth;
use crate::body::ProxyBody;
use crate::forward::{Destination, Forwarder, Target};
use crate::registry::{Resolver, StaticRegistry};
use crate::respond::{error_response, wants_html, ProxyError};
use crate::route::{self, Domains, OwnPath, Route, RouteError};

const SKIP_ACTIVITY_HEADER: HeaderName =
    HeaderName::from_static("x-daytona-skip-last-activity-update");
const STALE_HEADER: HeaderName = HeaderName::from_static("x-sandgate-stale");

/// Shared state of the proxy; built once by `main`, read by every request.
pub struct App {
    pub domains: Domains,
    pub resolver: Resolver,
    /// Kept for reloads when the backend is the static registry.
    pub static_registry: Option<Arc<StaticRegistry>>,
    pub activity: Arc<Activity>,
    pub forwarder: Forwarder,
    pub auth: Auth,
}

/// The request handler given to the server: never fails, every error becomes a response.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let uri = req.uri().clone();
    let method = req.method().clone();
    let html = wants_html(req.headers());
    let response = match pipeline(&app, req, peer).await {
        Ok(response) => response,
        Err(error) => {
            log_error(&error, uri.path());
            error_response(&error, uri.path(), html)
        }
    };
    tracing::debug!(
        target: "sandgate::access",
        %method,
        path = uri.path(),
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        peer = %peer.ip(),
    );
    response
}

async fn pipeline(
    app: &App,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<ProxyBody>, ProxyError> {
    let host = authority_value(&req)?;
    let host_str = host
        .to_str()
        .map_err(|_| RouteError::BadHost("Host is not ASCII"))?;
    let uri = req.uri().clone();
    let (sandbox_id, port, target) = match route::route(host_str, uri.path(), &app.domains)? {
        Route::Own(own) => return own_host(app, own, &req).await,
        Route::Preview { port, id_or_token } => (id_or_token, Some(port), Target::Preview { port }),
        Route::Toolbox { sandbox_id, rest } => (sandbox_id.into(), None, Target::Toolbox { rest }),
    };

    let entry = match gate::admit(app, &mut req, host_str, &sandbox_id, port, peer).await? {
        Admission::Respond(response) => return Ok(response),
        Admission::Enter(entry) => entry,
    };
    let sandbox = &entry.sandbox;
    let stripped_query = entry.query.as_deref();

    let skip_activity = req
        .headers_mut()
        .remove(SKIP_ACTIVITY_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    if !skip_activity {
        app.activity.mark(&sandbox.id);
    }
    let activity = &app.activity;
    let guard = || {
        (!skip_activity)
            .then(|| activity.stream(&sandbox.id))
            .flatten()
    };

    let destination = Destination {
        sandbox,
        target,
        original_host: host_str,
        client_ip: peer.ip(),
        query: stripped_query,
    };
    let mut response = app.forwarder.forward(req, destination, guard).await?;
    entry.decorate(&mut response);
    if entry.stale {
        response
            .headers_mut()
            .insert(STALE_HEADER, HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// The authority as an owned header value (a cheap clone for HTTP/1).
fn authority_value<B>(req: &Request<B>) -> Result<HeaderValue, RouteError> {
    let authority = route::authority(req.version(), req.uri(), req.headers())?;
    match req.headers().get(HOST) {
        Some(h) if h.as_bytes() == authority.as_bytes() => Ok(h.clone()),
        _ => HeaderValue::from_str(authority)
            .map_err(|_| RouteError::BadHost("Host is not a header value")),
    }
}

async fn own_host(
    app: &App,
    path: OwnPath,
    req: &Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    match path {
        OwnPath::Health => Ok(json_ok(concat!(
            "{\"status\":\"ok\",\"version\":\"",
            env!("CARGO_PKG_VERSION"),
            "\"}"
        ))),
        OwnPath::Ready if app.resolver.ready().await => Ok(json_ok("{\"status\":\"ready\"}")),
        OwnPath::Ready => Err(ProxyError::NotReady),
        OwnPath::Login | OwnPath::Callback => gate::own_host(app, path, req).await,
        OwnPath::AcceptPreviewWarning | OwnPath::NotFound => Err(ProxyError::NotFound),
    }
}

fn json_ok(body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn log_error(error: &ProxyError, path: &str) {
    let status = error.status();
    if status.is_server_error() {
        tracing::warn!(code = error.code(), %status, path, error = %error, "request failed");
    } else {
        tracing::debug!(code = error.code(), %status, path, "request refused");
    }
}
