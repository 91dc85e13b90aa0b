//! CORS by the proxy: preflights answered before auth (they carry no credentials), credentialed
//! CORS headers only for allowed origins, never duplicated when the app sets its own, and
//! hands-off when the request says `X-Daytona-Disable-CORS: true` or the sandbox's mode is
//! `passthrough`.
//!
//! Allowed origins: the *same sandbox's* previews (`http(s)://<anyPort>-<label>.<domain>[:port]`
//! where `<label>` is the request host's label or the sandbox id) and the configured
//! `auth.cors_allowed_origins`. Every sibling sandbox is another tenant's origin on the same
//! site, so it is never allowed by default.

use std::time::Duration;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};

use super::Answer;
use crate::base::header_scan::{Present, Tracked};
use crate::registry::CorsMode;

pub const DISABLE_CORS_HEADER: HeaderName = HeaderName::from_static("x-daytona-disable-cors");
/// Longest `Access-Control-Request-Headers` echoed back.
const MAX_ECHO_BYTES: usize = 1024;

/// What CORS means for one request.
#[derive(Debug, Clone, Default)]
pub enum CorsDecision {
    /// No `Origin`, a disallowed origin, or CORS left to the app: touch nothing.
    #[default]
    None,
    /// An allowed origin: reflect it.
    Allow(HeaderValue),
}

pub struct Cors {
    /// Configured origins (lower-case, no trailing slash), allowed for every sandbox.
    allowed: Vec<String>,
    domains: Vec<String>,
    max_age: HeaderValue,
}

impl Cors {
    pub fn new(allowed: &[String], domains: &[String], max_age: Duration) -> Self {
        Cors {
            allowed: allowed
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            domains: domains
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            max_age: HeaderValue::from(max_age.as_secs()),
        }
    }

    /// `own`: the preview labels of the requested sandbox (empty for toolbox requests, which
    /// only configured origins may call).
    pub fn origin_allowed(&self, origin: &str, own: &[&str]) -> bool {
        self.allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
            || self
                .preview_label(origin)
                .is_some_and(|label| own.iter().any(|o| o.eq_ignore_ascii_case(label)))
    }

    /// The `<idOrToken>` of a `http(s)://<port>-<idOrToken>.<domain>[:port]` origin.
    fn preview_label<'o>(&self, origin: &'o str) -> Option<&'o str> {
        let rest =
            strip_prefix_ci(origin, "https://").or_else(|| strip_prefix_ci(origin, "http://"))?;
        if rest.contains(['/', '@', '?', '#', '\\']) {
            return None;
        }
        let host = match rest.rsplit_once(':') {
            Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => rest,
        };
        let (label, domain) = host.split_once('.')?;
        if !self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return None;
        }
        let (port, id) = label.split_once('-')?;
        (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !id.is_empty())
            .then_some(id)
    }

    /// Decides for a request, removing `X-Daytona-Disable-CORS` (it never reaches the app);
    /// the flag tells whether the proxy keeps its hands off (that header, or a `passthrough`
    /// sandbox): no preflight answer, no headers added.
    pub fn decide(
        &self,
        headers: &mut HeaderMap,
        present: Present,
        mode: CorsMode,
        own: &[&str],
    ) -> (CorsDecision, bool) {
        let disabled = present.may_have(Tracked::DisableCors)
            && headers
                .remove(DISABLE_CORS_HEADER)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        if disabled || mode == CorsMode::Passthrough {
            return (CorsDecision::None, true);
        }
        let origin = present.may_have(Tracked::Origin);
        let decision = match origin.then(|| headers.get(ORIGIN)).flatten() {
            Some(o) if o.to_str().is_ok_and(|s| self.origin_allowed(s, own)) => {
                CorsDecision::Allow(o.clone())
            }
            _ => CorsDecision::None,
        };
        (decision, false)
    }

    /// The proxy's answer to a preflight (a `204`), or `None` when it is not one (or CORS is
    /// disabled).
    pub fn preflight(
        &self,
        method: &Method,
        headers: &HeaderMap,
        decision: &CorsDecision,
        disabled: bool,
    ) -> Option<Answer> {
        if disabled
            || method != Method::OPTIONS
            || !headers.contains_key(ORIGIN)
            || !headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut out = HeaderMap::new();
        out.insert(VARY, HeaderValue::from_static("Origin"));
        let CorsDecision::Allow(origin) = decision else {
            // Disallowed origin: a 204 without `Access-Control-Allow-Origin` fails the browser's
            // CORS check, so the real request is never sent; the app never sees the preflight.
            return Some(Answer::empty(StatusCode::NO_CONTENT, out));
        };
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        if let Some(m) = headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .filter(|m| is_token_list(m.as_bytes()))
        {
            out.insert(ACCESS_CONTROL_ALLOW_METHODS, m.clone());
        }
        if let Some(h) = headers
            .get(ACCESS_CONTROL_REQUEST_HEADERS)
            .filter(|h| is_token_list(h.as_bytes()))
        {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, h.clone());
        }
        out.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Some(Answer::empty(StatusCode::NO_CONTENT, out))
    }
}

/// Adds CORS headers for an allowed origin unless the app already set its own.
pub fn decorate(headers: &mut HeaderMap, decision: &CorsDecision) {
    let CorsDecision::Allow(origin) = decision else {
        return;
    };
    if headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
        return;
    }
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.append(VARY, HeaderValue::from_static("Origin"));
}

fn strip_prefix_ci<'s>(s: &'s str, prefix: &str) -> Option<&'s str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// A bounded, comma-separated list of HTTP tokens (safe to echo).
fn is_token_list(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_ECHO_BYTES
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~, ".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(allowed: &[&str]) -> Cors {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        Cors::new(
            &allowed,
            &["preview.localhost".into(), "alt.example".into()],
            Duration::from_secs(600),
        )
    }

    #[test]
    fn only_the_same_sandbox_and_listed_origins_are_allowed() {
        let c = cors(&["https://dash.example.com/"]);
        let own = ["sbx", "sbx-id"];
        let cases = [
            ("http://3000-sbx.preview.localhost:8080", true),
            ("https://8080-SBX.preview.localhost", true),
            ("https://5173-sbx-id.alt.example", true),
            ("https://DASH.example.com", true),
            ("https://3000-other.preview.localhost", false),
            ("https://3000-sbx.evil.preview.localhost", false),
            ("https://3000-sbx.preview.localhost.evil.com", false),
            ("https://preview.localhost", false),
            ("https://x-sbx.preview.localhost", false),
            ("https://3000-sbx.preview.localhost/", false),
            ("https://a@3000-sbx.preview.localhost", false),
            ("https://dash.example.com.evil.com", false),
            ("null", false),
            ("", false),
        ];
        for (origin, allowed) in cases {
            assert_eq!(c.origin_allowed(origin, &own), allowed, "{origin}");
        }
        assert!(!c.origin_allowed("http://3000-sbx.preview.localhost", &[]));
        assert!(c.origin_allowed("https://dash.example.com", &[]));
    }

    #[test]
    fn preflights_reflect_allowed_origins_only() {
        let c = cors(&[]);
        let own = ["a"];
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, "http://1-a.preview.localhost".parse().unwrap());
        h.insert(ACCESS_CONTROL_REQUEST_METHOD, "PUT".parse().unwrap());
        h.insert(
            ACCESS_CONTROL_REQUEST_HEADERS,
            "content-type, x-y".parse().unwrap(),
        );
        let (d, off) = {
            let p = Present::scan(&h);
            c.decide(&mut h, p, CorsMode::Managed, &own)
        };
        let r = c.preflight(&Method::OPTIONS, &h, &d, off).unwrap();
        assert_eq!(r.status, 204);
        assert_eq!(
            r.headers[ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://1-a.preview.localhost"
        );
        assert_eq!(r.headers[ACCESS_CONTROL_ALLOW_HEADERS], "content-type, x-y");
        assert_eq!(r.headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(c.preflight(&Method::GET, &h, &d, off).is_none());
        let (d, off) = {
            let p = Present::scan(&h);
            c.decide(&mut h, p, CorsMode::Passthrough, &own)
        };
        assert!(matches!(d, CorsDecision::None) && off);
        assert!(c.preflight(&Method::OPTIONS, &h, &d, off).is_none());
        h.insert(ORIGIN, "http://1-b.preview.localhost".parse().unwrap());
        let (d, off) = {
            let p = Present::scan(&h);
            c.decide(&mut h, p, CorsMode::Managed, &own)
        };
        let r = c.preflight(&Method::OPTIONS, &h, &d, off).unwrap();
        assert!(r.headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        h.insert(DISABLE_CORS_HEADER, "true".parse().unwrap());
        assert!(matches!(
            {
                let p = Present::scan(&h);
                c.decide(&mut h, p, CorsMode::Managed, &own)
            },
            (CorsDecision::None, true)
        ));
        assert!(h.get(DISABLE_CORS_HEADER).is_none());
        assert_eq!(Tracked::DisableCors.name(), DISABLE_CORS_HEADER.as_str());
    }

    #[test]
    fn decoration_never_duplicates_the_apps_headers() {
        let d = CorsDecision::Allow("http://a.preview.localhost".parse().unwrap());
        let mut own = HeaderMap::new();
        own.insert(ACCESS_CONTROL_ALLOW_ORIGIN, "*".parse().unwrap());
        decorate(&mut own, &d);
        assert_eq!(own.get_all(ACCESS_CONTROL_ALLOW_ORIGIN).iter().count(), 1);
        assert!(own.get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());
        let mut none = HeaderMap::new();
        decorate(&mut none, &d);
        assert_eq!(
            none[ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://a.preview.localhost"
        );
    }
}
