//! CORS by the proxy: preflights answered before auth (they carry no credentials), credentialed
//! CORS headers only for allowed origins, never duplicated when the app sets its own, and
//! hands-off when the request says `X-Daytona-Disable-CORS: true`.

use std::time::Duration;

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use crate::body::ProxyBody;

pub const DISABLE_CORS_HEADER: HeaderName = HeaderName::from_static("x-daytona-disable-cors");
/// Longest `Access-Control-Request-Headers` echoed back.
const MAX_ECHO_BYTES: usize = 1024;

/// What CORS means for one request.
#[derive(Debug, Clone, Default)]
pub enum CorsDecision {
    /// No `Origin`, a disallowed origin, or CORS disabled by the request: touch nothing.
    #[default]
    None,
    /// An allowed origin: reflect it.
    Allow(HeaderValue),
}

pub struct Cors {
    /// Explicit allow-list (lower-case, no trailing slash); empty = under `domains`.
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

    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        if !self.allowed.is_empty() {
            return self.allowed.contains(&origin);
        }
        let Some(rest) = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
        else {
            return false;
        };
        if rest.contains(['/', '@', '?', '#']) {
            return false;
        }
        let host = match rest.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => rest,
        };
        self.domains.iter().any(|d| {
            host == d
                || host
                    .strip_suffix(d.as_str())
                    .is_some_and(|h| h.ends_with('.'))
        })
    }

    /// Decides for a request, removing `X-Daytona-Disable-CORS` (it never reaches the app);
    /// the flag tells whether that header disabled CORS handling.
    pub fn decide(&self, headers: &mut HeaderMap) -> (CorsDecision, bool) {
        let disabled = headers
            .remove(DISABLE_CORS_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        if disabled {
            return (CorsDecision::None, true);
        }
        let decision = match headers.get(ORIGIN) {
            Some(o) if o.to_str().is_ok_and(|s| self.origin_allowed(s)) => {
                CorsDecision::Allow(o.clone())
            }
            _ => CorsDecision::None,
        };
        (decision, false)
    }

    /// The proxy's answer to a preflight, or `None` when it is not one (or CORS is disabled).
    pub fn preflight(
        &self,
        method: &Method,
        headers: &HeaderMap,
        decision: &CorsDecision,
        disabled: bool,
    ) -> Option<Response<ProxyBody>> {
        if disabled
            || method != Method::OPTIONS
            || !headers.contains_key(ORIGIN)
            || !headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            return None;
        }
        let mut response = Response::new(ProxyBody::Empty);
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(VARY, HeaderValue::from_static("Origin"));
        let CorsDecision::Allow(origin) = decision else {
            // Disallowed origin: no CORS headers, the browser blocks the real request.
            return Some(response);
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
        Some(response)
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
            &["preview.localhost".into()],
            Duration::from_secs(600),
        )
    }

    #[test]
    fn default_origins_are_under_the_preview_domains() {
        let c = cors(&[]);
        assert!(c.origin_allowed("http://3000-sbx.preview.localhost:8080"));
        assert!(c.origin_allowed("https://preview.localhost"));
        assert!(!c.origin_allowed("https://evilpreview.localhost"));
        assert!(!c.origin_allowed("https://preview.localhost.evil.com"));
        assert!(!c.origin_allowed("null"));
        assert!(!c.origin_allowed("https://a.preview.localhost@evil.com"));
        let listed = cors(&["https://app.example.com/"]);
        assert!(listed.origin_allowed("https://APP.example.com"));
        assert!(!listed.origin_allowed("http://3000-sbx.preview.localhost"));
    }

    #[test]
    fn preflights_reflect_allowed_origins_only() {
        let c = cors(&[]);
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, "http://a.preview.localhost".parse().unwrap());
        h.insert(ACCESS_CONTROL_REQUEST_METHOD, "PUT".parse().unwrap());
        h.insert(
            ACCESS_CONTROL_REQUEST_HEADERS,
            "content-type, x-y".parse().unwrap(),
        );
        let (d, _) = c.decide(&mut h);
        let r = c.preflight(&Method::OPTIONS, &h, &d, false).unwrap();
        assert_eq!(r.status(), 204);
        assert_eq!(
            r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "http://a.preview.localhost"
        );
        assert_eq!(
            r.headers()[ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, x-y"
        );
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert!(c.preflight(&Method::GET, &h, &d, false).is_none());
        h.insert(ORIGIN, "http://evil.com".parse().unwrap());
        let (d, _) = c.decide(&mut h);
        let r = c.preflight(&Method::OPTIONS, &h, &d, false).unwrap();
        assert!(r.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        h.insert(DISABLE_CORS_HEADER, "true".parse().unwrap());
        assert!(matches!(c.decide(&mut h), (CorsDecision::None, true)));
        assert!(h.get(DISABLE_CORS_HEADER).is_none());
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
