//! Header rewrite between client and sandbox: hop-by-hop removal, the runner's credential, the
//! `X-Forwarded-*` fields, client trailer scrubbing, and the toolbox `Location` prefix.

use http::header::{self, HeaderName, HeaderValue, CONNECTION, LOCATION, UPGRADE};
use http::{HeaderMap, Request};

use crate::registry::SandboxRecord;

pub const RUNNER_AUTH_HEADER: HeaderName = HeaderName::from_static("x-daytona-authorization");
use super::client_addr::{FORWARDED, X_FORWARDED_FOR};
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(super) const HTTPS: HeaderValue = HeaderValue::from_static("https");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Hop-by-hop headers (RFC 9110 §7.6.1), plus the non-standard ones seen in the wild.
/// `Trailer` is not one of them: it declares the trailer fields end to end, and hyper only sends
/// the trailer fields a message's `Trailer` header declares, so removing it drops the trailers.
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    UPGRADE,
    // Belongs to an `Upgrade: h2c` request, which is never relayed (RFC 7540 §3.2.1).
    HeaderName::from_static("http2-settings"),
];

/// Only WebSocket upgrades are relayed; any other `Upgrade` token (`h2c`, ...) is dropped with
/// the hop-by-hop headers and the request goes on as a plain one.
pub(super) fn wants_upgrade<B>(req: &Request<B>) -> bool {
    has_token(req.headers(), UPGRADE, "websocket")
        && has_token(req.headers(), CONNECTION, "upgrade")
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including those named by `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (cheap comparisons of standard
    // headers) instead of a hashed removal per hop-by-hop name.
    let any = headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(name) || name == header::TE);
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// Names a client trailer never carries to the sandbox: the proxy's and the runner's
/// credentials (an `Authorization` trailer is dropped whatever it holds: trailers are not
/// authenticated, so the platform's could not be told from the app's) and the fields the proxy
/// sets itself.
const TRAILER_DENY: [HeaderName; 15] = [
    header::AUTHORIZATION,
    RUNNER_AUTH_HEADER,
    HeaderName::from_static(crate::auth::PREVIEW_TOKEN_HEADER),
    header::HOST,
    X_FORWARDED_FOR,
    FORWARDED,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    header::TE,
    header::TRAILER,
    crate::auth::identity::IDENTITY_HEADER,
    super::header_route::DAYTONA_ID,
    super::header_route::DAYTONA_PORT,
    super::header_route::SANDGATE_ID,
    super::header_route::SANDGATE_PORT,
];

/// Filters client request trailers as the headers are: credentials, the proxy's cookies and
/// hop-by-hop names never reach the sandbox.
pub fn scrub_trailers(trailers: &mut HeaderMap) {
    remove_hop_by_hop(trailers);
    for name in &TRAILER_DENY {
        trailers.remove(name);
    }
    crate::auth::strip_proxy_cookies(trailers);
}

pub(super) fn rewrite_request_headers(
    headers: &mut HeaderMap,
    sandbox: &SandboxRecord,
    upstream_host: &HeaderValue,
    original_host: Option<&HeaderValue>,
    client_ip: &HeaderValue,
    proto: &HeaderValue,
    upgrade: bool,
) {
    remove_hop_by_hop(headers);
    if upgrade {
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // The upstream's own authority; the original goes in X-Forwarded-Host.
    headers.insert(header::HOST, upstream_host.clone());
    match sandbox.runner_auth() {
        Some(auth) => headers.insert(RUNNER_AUTH_HEADER, auth.clone()),
        None => headers.remove(RUNNER_AUTH_HEADER),
    };
    // `None`: a trusted proxy's `X-Forwarded-Host` stays (`proxy.preserve_forwarded_host`).
    if let Some(original_host) = original_host {
        headers.insert(X_FORWARDED_HOST, original_host.clone());
    }
    headers.insert(X_FORWARDED_PROTO, proto.clone());
    headers.insert(X_FORWARDED_FOR, client_ip.clone());
}

/// A relative redirect from the toolbox gets the `/toolbox/<id>` prefix back. Absolute URLs and
/// scheme-relative `//host` ones are left alone.
pub(super) fn prefix_toolbox_location(headers: &mut HeaderMap, sandbox_id: &str) {
    let Some(location) = headers.get(LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    if !location.starts_with('/') || location.starts_with("//") {
        return;
    }
    let prefix_len = "/toolbox/".len() + sandbox_id.len();
    let already = location.len() >= prefix_len
        && location.starts_with("/toolbox/")
        && location[9..prefix_len].eq_ignore_ascii_case(sandbox_id)
        && matches!(
            location.as_bytes().get(prefix_len),
            None | Some(b'/' | b'?')
        );
    if already {
        return;
    }
    if let Ok(v) = HeaderValue::try_from(format!("/toolbox/{sandbox_id}{location}")) {
        headers.insert(LOCATION, v);
    }
}

/// A custom domain with a path prefix: the app redirects to `/x/next` (its own path), the
/// browser must go to `/next` on the domain. Locations elsewhere are left alone.
pub(super) fn strip_location_prefix(headers: &mut HeaderMap, prefix: &str) {
    let Some(location) = headers.get(LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Some(rest) = location.strip_prefix(prefix) else {
        return;
    };
    let bytes = rest.as_bytes();
    let stripped = match (bytes.first(), bytes.get(1)) {
        (None, _) => "/".to_string(),
        (Some(b'?' | b'#'), _) => format!("/{rest}"),
        // Browsers read `/\x` (and `/<tab>/x`) as `//x`, another site: such a location keeps
        // its prefix (and stays on this one).
        (Some(b'/'), Some(b'/' | b'\\' | b'\t' | b'\r' | b'\n')) => return,
        (Some(b'/'), _) => rest.to_string(),
        _ => return,
    };
    if let Ok(v) = HeaderValue::try_from(stripped) {
        headers.insert(LOCATION, v);
    }
}

/// Streams that stay open: server-sent events and bodies of unknown length.
pub(super) fn is_long_lived(headers: &HeaderMap) -> bool {
    let event_stream = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    event_stream || !headers.contains_key(header::CONTENT_LENGTH)
}

/// The request's declared body length (`Content-Length`), when it is a number.
pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::forward::tests::{direct_sandbox, runner_sandbox};

    #[test]
    fn a_custom_domains_prefix_leaves_its_redirects_and_nothing_else() {
        for (location, expected) in [
            ("/app/next", "/next"),
            ("/app", "/"),
            ("/app?x=1", "/?x=1"),
            ("/apple", "/apple"),
            ("/other", "/other"),
            ("/app//evil.example", "/app//evil.example"),
            ("/app/\\evil.example", "/app/\\evil.example"),
            ("/app/", "/"),
            ("/app#top", "/#top"),
            (
                "https://elsewhere.example/app/x",
                "https://elsewhere.example/app/x",
            ),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(LOCATION, HeaderValue::from_static(location));
            strip_location_prefix(&mut headers, "/app");
            assert_eq!(headers[LOCATION], expected, "{location}");
        }
    }

    #[test]
    fn client_trailers_lose_credentials_and_hop_by_hop_names() {
        let mut t = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer apikey"),
            ("authorization", "Basic dTpw"),
            ("x-daytona-authorization", "Bearer forged"),
            ("x-daytona-preview-token", "tok"),
            ("proxy-authorization", "Basic x"),
            ("connection", "x-named"),
            ("x-named", "1"),
            ("x-forwarded-host", "evil"),
            ("x-sandgate-identity", "forged.jwt.value"),
            ("cookie", "app=1; daytona-sandbox-auth-sbx=sig"),
            ("x-checksum", "abc"),
        ] {
            t.append(name, value.parse().unwrap());
        }
        scrub_trailers(&mut t);
        let mut left: Vec<_> = t
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        left.sort();
        assert_eq!(left, [("cookie", "app=1"), ("x-checksum", "abc")]);
    }

    #[test]
    fn trailer_declarations_survive() {
        let mut h = HeaderMap::new();
        h.insert(header::TRAILER, "x-checksum".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h[header::TRAILER], "x-checksum");
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
    }

    #[test]
    fn request_headers_are_rewritten() {
        let s = runner_sandbox();
        let mut h = HeaderMap::new();
        h.insert(RUNNER_AUTH_HEADER, "Bearer forged".parse().unwrap());
        h.insert(CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(
            header::HOST,
            "3000-sbx-1.preview.localhost".parse().unwrap(),
        );
        h.insert(X_FORWARDED_FOR, "1.2.3.4".parse().unwrap());
        let proto = HeaderValue::from_static("https");
        let host = HeaderValue::from_static("3000-sbx-1.preview.localhost");
        let ip = HeaderValue::from_static("127.0.0.9");
        let upstream_host = HeaderValue::from_static("127.0.0.1:9000");
        rewrite_request_headers(&mut h, &s, &upstream_host, Some(&host), &ip, &proto, false);
        assert_eq!(h[RUNNER_AUTH_HEADER], "Bearer key");
        assert!(
            h.get("x-secret").is_none()
                && h.get(CONNECTION).is_none()
                && h.get("keep-alive").is_none()
        );
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h[header::HOST], "127.0.0.1:9000");
        assert_eq!(h[X_FORWARDED_HOST], "3000-sbx-1.preview.localhost");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(
            h[X_FORWARDED_FOR], "127.0.0.9",
            "replaced: the client's own list could be forged"
        );

        let mut forged = HeaderMap::new();
        forged.insert(RUNNER_AUTH_HEADER, "Bearer forged".parse().unwrap());
        rewrite_request_headers(
            &mut forged,
            &direct_sandbox(),
            &upstream_host,
            Some(&host),
            &ip,
            &proto,
            false,
        );
        assert!(
            forged.get(RUNNER_AUTH_HEADER).is_none(),
            "direct mode never forwards a runner key"
        );
    }

    #[test]
    fn upgrade_headers_survive_only_for_upgrades() {
        let s = runner_sandbox();
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        h.insert("sec-websocket-protocol", "chat, v2".parse().unwrap());
        let proto = HeaderValue::from_static("http");
        let (host, ip) = (
            HeaderValue::from_static("h"),
            HeaderValue::from_static("127.0.0.1"),
        );
        rewrite_request_headers(&mut h, &s, &host, Some(&host), &ip, &proto, true);
        assert_eq!(h[UPGRADE], "websocket");
        assert_eq!(h[CONNECTION], "upgrade");
        assert_eq!(h["sec-websocket-protocol"], "chat, v2");
    }

    #[test]
    fn toolbox_locations_get_their_prefix() {
        let cases = [
            ("/files?a=1", "/toolbox/sbx-1/files?a=1"),
            ("/toolbox/sbx-1/x", "/toolbox/sbx-1/x"),
            ("/toolbox/sbx-10/x", "/toolbox/sbx-1/toolbox/sbx-10/x"),
            ("https://elsewhere/x", "https://elsewhere/x"),
            ("//elsewhere/x", "//elsewhere/x"),
            ("relative", "relative"),
        ];
        for (before, after) in cases {
            let mut h = HeaderMap::new();
            h.insert(LOCATION, before.parse().unwrap());
            prefix_toolbox_location(&mut h, "sbx-1");
            assert_eq!(h[LOCATION], after, "{before}");
        }
    }
}
