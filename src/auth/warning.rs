//! The optional preview warning: an interstitial for browsers that have not accepted it yet,
//! and the `POST /accept-daytona-preview-warning` handler (CSRF-checked) on the preview host.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, UPGRADE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::cookie::{CookieFlags, WARNING_COOKIE};
use super::return_to::same_host_path;
use super::sign::{now_unix, Signer};
use super::Answer;
use crate::base::header_scan::{Present, Tracked};
use crate::base::html::escape_html;
use crate::base::ports::is_reserved_port;

pub const ACCEPT_PATH: &str = "/accept-daytona-preview-warning";
pub const SKIP_HEADER: HeaderName = HeaderName::from_static("x-daytona-skip-preview-warning");
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'";
const CSRF_PURPOSE: &str = "warning-csrf";
const CSRF_TTL: u64 = 3600;
const ACCEPTED_MAX_AGE: u64 = 86_400;
const NOT_SENT: &str = "<p>The form you submitted was not sent: after you continue, the page \
opens and you can submit it again.</p>";

#[derive(Serialize, Deserialize)]
struct Csrf {
    h: String,
    e: u64,
}

const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
const SEC_FETCH_DEST: HeaderName = HeaderName::from_static("sec-fetch-dest");

/// A browser navigation, whatever the method (a cross-site form `POST` is one): by
/// `Sec-Fetch-Mode: navigate`, else by `Sec-Fetch-Dest: document|iframe|frame`; from a browser
/// that sends neither, by `html` (it asks for HTML). Never a WebSocket upgrade.
pub fn is_navigation(headers: &HeaderMap, present: Present, html: bool) -> bool {
    if present.may_have(Tracked::Upgrade) && headers.contains_key(UPGRADE) {
        return false;
    }
    let mode = present.may_have(Tracked::SecFetchMode);
    if let Some(mode) = mode.then(|| headers.get(SEC_FETCH_MODE)).flatten() {
        return mode.as_bytes().eq_ignore_ascii_case(b"navigate");
    }
    let dest = present.may_have(Tracked::SecFetchDest);
    if let Some(dest) = dest.then(|| headers.get(SEC_FETCH_DEST)).flatten() {
        let dest = dest.as_bytes();
        return [&b"document"[..], b"iframe", b"frame"]
            .iter()
            .any(|d| dest.eq_ignore_ascii_case(d));
    }
    html
}

/// Should this navigation get the interstitial? (Call after authentication.)
pub fn applies(
    port: Option<u16>,
    headers: &HeaderMap,
    present: Present,
    flags: CookieFlags,
) -> bool {
    let Some(port) = port else { return false };
    let skip = present.may_have(Tracked::SkipWarning)
        && headers
            .get(SKIP_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let upgrade = present.may_have(Tracked::Upgrade) && headers.contains_key(UPGRADE);
    !is_reserved_port(port)
        && !upgrade
        && !skip
        && headers
            .get(USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ua| ua.contains("Mozilla"))
        && !accepted(headers, flags)
}

/// Any accepted cookie counts (a planted one sorted first does not hide the real one).
fn accepted(headers: &HeaderMap, flags: CookieFlags) -> bool {
    flags.values(headers, WARNING_COOKIE).any(|v| v == "true")
}

/// The interstitial for `host`, returning to `path_and_query` (with `GET`) once accepted.
/// `replayable`: the navigation was a `GET`/`HEAD`; else the page says its form was not sent.
pub fn page(signer: &Signer, host: &str, path_and_query: &str, replayable: bool) -> Answer {
    let csrf = signer
        .sign(
            CSRF_PURPOSE,
            &Csrf {
                h: host.to_ascii_lowercase(),
                e: now_unix() + CSRF_TTL,
            },
        )
        .unwrap_or_default();
    let action = format!(
        "{ACCEPT_PATH}?redirect={}",
        super::http_client::encode(&same_host_path(path_and_query, host))
    );
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>Preview warning</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
button{{font:inherit;padding:.4em 1.2em}}</style></head><body>\
<h1>You are about to open a sandbox preview</h1>\
<p><code>{host}</code> serves content from a development sandbox. It is not operated or vetted \
by this platform: do not enter passwords or personal data unless you trust its owner.</p>{resend}\
<form method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<button type=\"submit\">Continue</button></form></body></html>",
        host = escape_html(host),
        resend = if replayable { "" } else { NOT_SENT },
        action = escape_html(&action),
        csrf = escape_html(&csrf),
    );
    let mut h = HeaderMap::new();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    Answer {
        status: StatusCode::OK,
        headers: h,
        body: Some(body),
    }
}

/// Handles the accept form: `None` when the CSRF token is missing or not for this host.
pub fn accept(
    signer: &Signer,
    flags: CookieFlags,
    host: &str,
    query: Option<&str>,
    form: &[u8],
) -> Option<Answer> {
    let form = std::str::from_utf8(form).ok()?;
    let csrf = form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "csrf").then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })?;
    let token: Csrf = signer.verify(CSRF_PURPOSE, &csrf)?;
    if !token.h.eq_ignore_ascii_case(host) || token.e <= now_unix() {
        return None;
    }
    let raw = query
        .and_then(|q| super::query_param(q, "redirect"))
        .map(|r| {
            percent_encoding::percent_decode_str(r)
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_else(|| "/".into());
    let location = same_host_path(&raw, host);
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::try_from(location) {
        h.insert(LOCATION, v);
    }
    if let Some(c) = flags.set_cookie(WARNING_COOKIE, "true", ACCEPTED_MAX_AGE) {
        h.insert(http::header::SET_COOKIE, c);
    }
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(Answer::empty(StatusCode::SEE_OTHER, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(vec![b"w".repeat(32)])
    }

    fn with(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn applies_to_browsers_only() {
        let http = CookieFlags { secure: false };
        let h = with(&[("user-agent", "Mozilla/5.0")]);
        assert!(applies(Some(3000), &h, Present::scan(&h), http));
        assert!(!applies(Some(22222), &h, Present::scan(&h), http));
        assert!(!applies(None, &h, Present::scan(&h), http));
        let mut skip = h.clone();
        skip.insert(SKIP_HEADER, "true".parse().unwrap());
        assert!(!applies(Some(3000), &skip, Present::scan(&skip), http));
        let mut ws = h.clone();
        ws.insert(UPGRADE, "websocket".parse().unwrap());
        assert!(!applies(Some(3000), &ws, Present::scan(&ws), http));
        let mut accepted = h.clone();
        accepted.insert(
            http::header::COOKIE,
            "daytona-preview-page-accepted=no; a=1; daytona-preview-page-accepted=true"
                .parse()
                .unwrap(),
        );
        assert!(!applies(
            Some(3000),
            &accepted,
            Present::scan(&accepted),
            http
        ));
        let https = CookieFlags { secure: true };
        assert!(
            applies(Some(3000), &accepted, Present::scan(&accepted), https),
            "plantable name"
        );
        let mut host_only = h.clone();
        host_only.insert(
            http::header::COOKIE,
            "__Host-daytona-preview-page-accepted=true".parse().unwrap(),
        );
        assert!(!applies(
            Some(3000),
            &host_only,
            Present::scan(&host_only),
            https
        ));
        assert!(!applies(
            Some(3000),
            &HeaderMap::new(),
            Present::scan(&HeaderMap::new()),
            http
        ));
    }

    #[test]
    fn navigations_by_fetch_metadata_then_by_accept() {
        type Headers = &'static [(&'static str, &'static str)];
        // (request headers, wants HTML, is a navigation)
        let rows: &[(Headers, bool, bool)] = &[
            (&[("sec-fetch-mode", "navigate")], false, true),
            (&[("sec-fetch-mode", "cors")], true, false),
            (
                &[("sec-fetch-mode", "no-cors"), ("sec-fetch-dest", "iframe")],
                true,
                false,
            ),
            (&[("sec-fetch-dest", "document")], false, true),
            (&[("sec-fetch-dest", "iframe")], false, true),
            (&[("sec-fetch-dest", "frame")], false, true),
            (&[("sec-fetch-dest", "image")], true, false),
            (&[], true, true),
            (&[], false, false),
            (
                &[("upgrade", "websocket"), ("sec-fetch-mode", "navigate")],
                true,
                false,
            ),
        ];
        for (headers, html, navigation) in rows {
            assert_eq!(
                is_navigation(&with(headers), Present::scan(&with(headers)), *html),
                *navigation,
                "{headers:?} {html}"
            );
        }
        assert_eq!(Tracked::SecFetchMode.name(), SEC_FETCH_MODE.as_str());
        assert_eq!(Tracked::SecFetchDest.name(), SEC_FETCH_DEST.as_str());
        assert_eq!(Tracked::SkipWarning.name(), SKIP_HEADER.as_str());
    }

    #[test]
    fn page_escapes_and_accept_checks_csrf() {
        let s = signer();
        let host = "3000-sbx.preview.localhost";
        let r = page(&s, host, "/\"><script>alert(1)</script>", true);
        assert_eq!(r.headers[http::header::CONTENT_SECURITY_POLICY], CSP);
        let text = r.body.unwrap();
        assert!(!text.contains("<script>"));
        let csrf = text
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let flags = CookieFlags { secure: false };
        let form = format!("csrf={csrf}");
        let ok = accept(
            &s,
            flags,
            host,
            Some("redirect=%2Fapp%3Fx%3D1"),
            form.as_bytes(),
        )
        .unwrap();
        assert_eq!(ok.status, 303);
        assert_eq!(ok.headers[LOCATION], "/app?x=1");
        assert!(ok.headers[http::header::SET_COOKIE]
            .to_str()
            .unwrap()
            .starts_with("daytona-preview-page-accepted=true; Max-Age=86400"));
        let evil = accept(
            &s,
            flags,
            host,
            Some("redirect=%2F%2Fevil.com"),
            form.as_bytes(),
        );
        assert_eq!(evil.unwrap().headers[LOCATION], "/");
        assert!(accept(
            &s,
            flags,
            "3001-sbx.preview.localhost",
            None,
            form.as_bytes()
        )
        .is_none());
        assert!(accept(&s, flags, host, None, b"csrf=forged.token").is_none());
        assert!(accept(&s, flags, host, None, b"").is_none());
    }
}
