//! Wake phase: a request for a sandbox that is not running is held while the sandbox starts
//! (`crate::wake`), then goes on with the sandbox's fresh record; or it is answered at once
//! (503 with `Retry-After`) when it may not be held. Browsers still waiting after a moment get a
//! "Starting…" page that reloads itself.

use std::sync::Arc;
use std::time::Duration;

use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFRESH};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::gate::{self, Entry};
use super::headers::declared_length;
use super::respond::{escape_html, ProxyError};
use super::App;
use crate::metrics::metrics;
use crate::wake::{Context, WakeError};

/// Holds `req` until `entry`'s sandbox runs (then `entry.sandbox` is the fresh record, and the
/// answer `None`: go on), or answers a browser with the "Starting…" page.
/// `counts`: the request counts as activity (one that does not never wakes a sandbox).
pub async fn wake(
    app: &Arc<App>,
    entry: &mut Entry,
    req: &Request<Incoming>,
    port: Option<u16>,
    (counts, navigation, client_ip): (bool, bool, std::net::IpAddr),
) -> Result<Option<Response<ProxyBody>>, ProxyError> {
    let sandbox = &entry.sandbox;
    let not_running = |waking| ProxyError::SandboxNotRunning {
        state: sandbox.state.clone(),
        waking,
    };
    let waker = match &app.waker {
        Some(waker) if sandbox.wake && counts => waker,
        _ => return Err(not_running(false)),
    };
    let ctx: Arc<dyn Context> = app.clone();
    if !waker.holds() {
        waker.trigger(sandbox, &ctx);
        return Err(not_running(true));
    }
    if !body_may_wait(req, waker.max_body()) {
        waker.trigger(sandbox, &ctx);
        metrics().wake_dropped("body");
        return Err(ProxyError::BodyNotHeld(waker.max_body()));
    }
    let page = navigation && req.method() == Method::GET;
    let wait = page.then(|| waker.page_after());
    match waker.hold(sandbox, &ctx, wait, client_ip).await {
        Ok(record) => {
            // Its port policy may have changed while it slept.
            gate::not_exposed(&record, port)?;
            entry.sandbox = record;
            Ok(None)
        }
        Err(WakeError::StillStarting { state, elapsed }) if page => {
            let request_id = req.headers().get("x-request-id");
            // A signed link's holder is not told the sandbox's id (it opens every port of a
            // public sandbox).
            let name = match entry.forwarded_host {
                Some(_) => "your sandbox",
                None => &entry.sandbox.id,
            };
            let page = starting_page(name, &state, elapsed, request_id);
            Ok(Some(entry.finish(page)))
        }
        Err(WakeError::ShuttingDown) => Err(ProxyError::ShuttingDown),
        // Anyone may enter a public sandbox: the start backend's own words are not for all.
        Err(e) if entry.sandbox.public => Err(ProxyError::Wake(e.without_detail())),
        Err(e) => Err(ProxyError::Wake(e)),
    }
}

/// A body may wait unread while the sandbox starts when its declared length is within the
/// limit; one of unknown length may not, nor any over HTTP/2, whose flow-control window would
/// let the client push it into the proxy's memory while it waits.
fn body_may_wait(req: &Request<Incoming>, max_body: u64) -> bool {
    if req.body().is_end_stream() {
        return true;
    }
    if req.version() >= http::Version::HTTP_2 {
        return false;
    }
    declared_length(req.headers()).is_some_and(|length| length <= max_body)
}

/// The page's policy: no script, no fetch; inline style only. It may be framed: an embedded
/// preview pane shows it like a tab does.
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

/// "Starting <sandbox>…", reloading itself every second: the next load waits again, and gets
/// the app once the sandbox runs.
fn starting_page(
    sandbox: &str,
    state: &str,
    elapsed: Duration,
    request_id: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    let request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or("");
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"1\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>Starting {id}…</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
code{{background:#f3f3f3;padding:0 .3em}}small{{color:#777}}</style></head><body>\
<h1>Starting <code>{id}</code>…</h1><p>The sandbox was stopped; it is starting now \
(state: <code>{state}</code>, {seconds} s so far).{slow} This page reloads by itself.</p>\
<p><small>request id <code>{request_id}</code></small></p></body></html>",
        id = escape_html(sandbox),
        state = escape_html(state),
        seconds = elapsed.as_secs(),
        slow = if matches!(state, "archived" | "restoring") {
            " Restoring an archived sandbox can take a few minutes."
        } else {
            ""
        },
        request_id = escape_html(request_id),
    );
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(REFRESH, HeaderValue::from_static("1"));
    headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_what_it_shows() {
        let id = HeaderValue::from_static("<id>");
        let page = starting_page("a<b", "st\"ate", Duration::from_secs(3), Some(&id));
        assert_eq!(page.status(), 503);
        assert_eq!(page.headers()[CONTENT_SECURITY_POLICY], CSP);
        assert_eq!(
            page.headers()[http::header::X_CONTENT_TYPE_OPTIONS],
            "nosniff"
        );
        assert_eq!(page.headers()[REFRESH], "1");
        let ProxyBody::Full(Some(body)) = page.into_body() else {
            panic!("a full body");
        };
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("Starting <code>a&lt;b</code>"), "{text}");
        assert!(
            text.contains("st&quot;ate") && text.contains("&lt;id&gt;"),
            "{text}"
        );
        assert!(text.contains("3 s so far"), "{text}");
    }
}
