//! Route phase: request head → [`Route`]. Pure parsing; borrows from the request, allocates only
//! when a preview label has upper-case letters.

use std::borrow::Cow;

use http::{header::HOST, HeaderMap, Uri, Version};

pub use super::path::check_path;
pub use crate::base::ports::{is_reserved_port, RESERVED_PORTS, TOOLBOX_PORT};
const MAX_LABEL_BYTES: usize = 63;
const MAX_HOST_BYTES: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `<port>-<idOrToken>.<domain>`; `id_or_token` is lower-case.
    Preview {
        port: u16,
        id_or_token: Cow<'a, str>,
    },
    /// `/toolbox/<sandboxId><rest>` on the proxy's own host; `rest` is empty or starts with `/`.
    Toolbox { sandbox_id: &'a str, rest: &'a str },
    /// Any other request on the proxy's own host.
    Own(OwnPath),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnPath {
    Health,
    Ready,
    /// `/login`: starts the OIDC browser login.
    Login,
    Callback,
    AcceptPreviewWarning,
    /// `/.well-known/sandgate-jwks.json`: the identity header's public keys.
    IdentityJwks,
    NotFound,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("absolute-form request targets are not accepted")]
    AbsoluteForm,
    #[error("the request has no Host header")]
    MissingHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
    #[error("the :authority and Host headers disagree")]
    AuthorityMismatch,
    #[error("bad host: {0}")]
    BadHost(&'static str),
    #[error("bad toolbox path: {0}")]
    BadToolboxPath(&'static str),
    #[error("bad path: {0}")]
    BadPath(&'static str),
    #[error("the asterisk-form request target is only valid with OPTIONS")]
    AsteriskForm,
    #[error(transparent)]
    RoutingHeader(#[from] super::header_route::HeaderRouteError),
}

/// Preview domains, lower-cased once at startup.
#[derive(Debug, Clone)]
pub struct Domains(Vec<Box<str>>);

impl Domains {
    pub fn new<S: AsRef<str>>(domains: &[S]) -> Self {
        Domains(
            domains
                .iter()
                .map(|d| d.as_ref().trim_end_matches('.').to_ascii_lowercase().into())
                .collect(),
        )
    }

    /// The first configured domain (used to build URLs shown to people).
    pub fn primary(&self) -> &str {
        self.0.first().map(|d| &**d).unwrap_or("localhost")
    }

    /// Is `host` (no port) a preview domain or under one?
    pub fn covers(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.0.iter().any(|domain| {
            host.eq_ignore_ascii_case(domain)
                || host.len() > domain.len()
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
                    && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
        })
    }

    /// If `host` (no port) is `<label>.<domain>` for a configured domain, the label part.
    /// `Some(Err)` when the host is under a preview domain but nested deeper than one label.
    fn preview_label<'h>(&self, host: &'h str) -> Option<Result<&'h str, RouteError>> {
        for domain in &self.0 {
            let Some(cut) = host.len().checked_sub(domain.len() + 1) else {
                continue;
            };
            if host.as_bytes()[cut] == b'.' && host[cut + 1..].eq_ignore_ascii_case(domain) {
                let label = &host[..cut];
                if label.contains('.') {
                    return Some(Err(RouteError::BadHost(
                        "preview hosts have exactly one label before the domain",
                    )));
                }
                return Some(Ok(label));
            }
        }
        None
    }
}

/// The host (no port, no trailing dot) of `authority` when it may be a custom domain: a DNS
/// name under none of the preview domains. Lower-cased (allocates only for upper-case input).
pub fn custom_domain_host<'a>(authority: &'a str, domains: &Domains) -> Option<Cow<'a, str>> {
    let host = strip_port(authority).ok()?;
    if host.starts_with('[') || !host.contains('.') || domains.covers(host) {
        return None;
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Some(match host.bytes().any(|b| b.is_ascii_uppercase()) {
        true => Cow::Owned(host.to_ascii_lowercase()),
        false => Cow::Borrowed(host),
    })
}

/// The one authority of a request: absolute-form targets, missing, duplicate, or conflicting
/// Host values are refused, so the host we route by is the host we forward and log.
pub fn authority<'a>(
    version: Version,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<&'a str, RouteError> {
    let mut hosts = headers.get_all(HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(RouteError::DuplicateHost);
    }
    let host_header = match host_header {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| RouteError::BadHost("Host is not ASCII"))?,
        ),
        None => None,
    };
    if version >= Version::HTTP_2 {
        let from_uri = uri.authority().map(|a| a.as_str());
        return match (from_uri, host_header) {
            (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => Err(RouteError::AuthorityMismatch),
            (Some(a), _) => Ok(a),
            (None, Some(h)) => Ok(h),
            (None, None) => Err(RouteError::MissingHost),
        };
    }
    if uri.authority().is_some() || uri.scheme().is_some() {
        return Err(RouteError::AbsoluteForm);
    }
    host_header.ok_or(RouteError::MissingHost)
}

/// Routes a request by its authority (`host[:port]`) and raw path.
pub fn route<'a>(
    authority: &'a str,
    path: &'a str,
    domains: &Domains,
) -> Result<Route<'a>, RouteError> {
    let host = strip_port(authority)?;
    let route = match domains.preview_label(host) {
        Some(label) => parse_preview_label(label?)?,
        None => own_host_route(path)?,
    };
    if !matches!(route, Route::Own(_)) {
        check_path(path)?;
    }
    Ok(route)
}

fn strip_port(authority: &str) -> Result<&str, RouteError> {
    if authority.len() > MAX_HOST_BYTES + 6 {
        return Err(RouteError::BadHost("host is too long"));
    }
    let host = if authority.starts_with('[') {
        // IPv6 literal: `[::1]:8080`
        match authority.find(']') {
            Some(end) => &authority[..=end],
            None => return Err(RouteError::BadHost("unterminated IPv6 literal")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) => {
                if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(RouteError::BadHost("the port after ':' is not a number"));
                }
                h
            }
            None => authority,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err(RouteError::BadHost("empty host"));
    }
    if !host.starts_with('[') && !host.bytes().all(|b| HOST_BYTES[b as usize]) {
        return Err(RouteError::BadHost(
            "host has characters not allowed in a DNS name",
        ));
    }
    Ok(host)
}

fn parse_preview_label(label: &str) -> Result<Route<'_>, RouteError> {
    if label.len() > MAX_LABEL_BYTES {
        return Err(RouteError::BadHost("a DNS label is at most 63 bytes"));
    }
    let Some((port, id)) = label.split_once('-') else {
        return Err(RouteError::BadHost(
            "expected <port>-<sandboxId> before the domain",
        ));
    };
    let port = parse_port(port)?;
    if id.is_empty() {
        return Err(RouteError::BadHost("empty sandbox id"));
    }
    if !id.bytes().all(is_id_byte) {
        return Err(RouteError::BadHost(
            "sandbox id has characters outside [a-z0-9_-]",
        ));
    }
    let id_or_token = if id.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(id.to_ascii_lowercase())
    } else {
        Cow::Borrowed(id)
    };
    Ok(Route::Preview { port, id_or_token })
}

fn parse_port(text: &str) -> Result<u16, RouteError> {
    let bad = RouteError::BadHost("port must be a decimal number from 1 to 65535");
    if text.is_empty() || text.len() > 5 || text.starts_with('0') {
        return Err(bad);
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad);
    }
    match text.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(bad),
    }
}

fn is_id_byte(b: u8) -> bool {
    ID_BYTES[b as usize]
}

/// Byte classes as tables: one load per byte on the hot path instead of a chain of range checks.
const fn byte_table(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// Bytes of a DNS host name as sandgate accepts it.
static HOST_BYTES: [bool; 256] = byte_table(b"-._");
/// Bytes of a sandbox id.
static ID_BYTES: [bool; 256] = byte_table(b"-_");

fn own_host_route(path: &str) -> Result<Route<'_>, RouteError> {
    if let Some(after) = path.strip_prefix("/toolbox/") {
        let (sandbox_id, rest) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        if sandbox_id.is_empty() {
            return Err(RouteError::BadToolboxPath("missing sandbox id"));
        }
        if sandbox_id.len() > 128 || !sandbox_id.bytes().all(is_id_byte) {
            return Err(RouteError::BadToolboxPath(
                "sandbox id has characters outside [A-Za-z0-9_-]",
            ));
        }
        return Ok(Route::Toolbox { sandbox_id, rest });
    }
    Ok(Route::Own(match path {
        "/health" => OwnPath::Health,
        "/ready" => OwnPath::Ready,
        "/login" => OwnPath::Login,
        "/callback" => OwnPath::Callback,
        "/accept-daytona-preview-warning" => OwnPath::AcceptPreviewWarning,
        crate::auth::identity::JWKS_PATH => OwnPath::IdentityJwks,
        _ => OwnPath::NotFound,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Domains {
        Domains::new(&["preview.localhost", "Proxy.Example.com"])
    }

    fn preview(port: u16, id: &str) -> Route<'_> {
        Route::Preview {
            port,
            id_or_token: Cow::Borrowed(id),
        }
    }

    #[test]
    fn preview_hosts_split_at_first_dash() {
        let d = domains();
        let id = "3000-7f3e2a1c-0b9d-4c1e-9f7a-1234567890ab.preview.localhost:8080";
        assert_eq!(
            route(id, "/", &d).unwrap(),
            preview(3000, "7f3e2a1c-0b9d-4c1e-9f7a-1234567890ab")
        );
        assert_eq!(
            route("1-a.PROXY.example.COM", "/x", &d).unwrap(),
            preview(1, "a")
        );
        assert_eq!(
            route("65535-a.preview.localhost.", "/", &d).unwrap(),
            preview(65535, "a")
        );
        match route("80-ABC.preview.localhost", "/", &d).unwrap() {
            Route::Preview { id_or_token, .. } => assert_eq!(id_or_token, "abc"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn custom_domain_hosts_are_dns_names_outside_the_preview_domains() {
        let d = domains();
        for (authority, expected) in [
            ("app.customer.com", Some("app.customer.com")),
            ("App.Customer.COM:443", Some("app.customer.com")),
            ("app.customer.com.", Some("app.customer.com")),
            ("3000-abc.preview.localhost", None),
            ("preview.localhost", None),
            ("x.y.preview.localhost", None),
            ("proxy.example.com", None),
            ("evilproxy.example.com", Some("evilproxy.example.com")),
            ("localhost", None),
            ("127.0.0.1:8080", None),
            ("[::1]:443", None),
            ("a b.com", None),
        ] {
            let got = custom_domain_host(authority, &d);
            assert_eq!(got.as_deref(), expected, "{authority}");
        }
    }

    #[test]
    fn bad_preview_hosts_are_refused() {
        let d = domains();
        let long = format!("3000-{}.preview.localhost", "a".repeat(60));
        for host in [
            "abc-sbx.preview.localhost",
            "0-sbx.preview.localhost",
            "03000-sbx.preview.localhost",
            "65536-sbx.preview.localhost",
            "99999999-sbx.preview.localhost",
            "3000-.preview.localhost",
            "3000.preview.localhost",
            "-sbx.preview.localhost",
            "3000-sb%78.preview.localhost",
            "a.3000-sbx.preview.localhost",
            "3000-sbx.preview.localhost:http",
            "3000-sbx.preview.localhost:",
            "bad host",
            "",
            long.as_str(),
        ] {
            assert!(
                matches!(route(host, "/", &d), Err(RouteError::BadHost(_))),
                "{host}"
            );
        }
    }

    #[test]
    fn other_hosts_are_the_proxys_own() {
        let d = domains();
        for host in [
            "preview.localhost",
            "127.0.0.1:8080",
            "[::1]:8080",
            "3000-sbx.evil.com",
            "localhost",
        ] {
            assert_eq!(
                route(host, "/health", &d).unwrap(),
                Route::Own(OwnPath::Health),
                "{host}"
            );
        }
        assert_eq!(
            route("proxy", "/nope", &d).unwrap(),
            Route::Own(OwnPath::NotFound)
        );
        assert_eq!(
            route("proxy", "/callback", &d).unwrap(),
            Route::Own(OwnPath::Callback)
        );
    }

    #[test]
    fn toolbox_paths() {
        let d = domains();
        assert_eq!(
            route("proxy", "/toolbox/sbx-1/files/a%20b", &d).unwrap(),
            Route::Toolbox {
                sandbox_id: "sbx-1",
                rest: "/files/a%20b"
            }
        );
        assert_eq!(
            route("proxy", "/toolbox/sbx-1/files/a%2Fb", &d),
            Err(RouteError::BadPath("encoded slash"))
        );
        assert_eq!(
            route("proxy", "/toolbox/sbx-1", &d).unwrap(),
            Route::Toolbox {
                sandbox_id: "sbx-1",
                rest: ""
            }
        );
        assert!(route("proxy", "/toolbox//files", &d).is_err());
        assert!(route("proxy", "/toolbox/a.b/files", &d).is_err());
    }

    #[test]
    fn one_authority_rule() {
        let h = |pairs: &[&str]| {
            let mut m = HeaderMap::new();
            for p in pairs {
                m.append(HOST, p.parse().unwrap());
            }
            m
        };
        let origin: Uri = "/x".parse().unwrap();
        let absolute: Uri = "http://other/x".parse().unwrap();
        let v11 = Version::HTTP_11;
        assert_eq!(authority(v11, &origin, &h(&["a"])), Ok("a"));
        assert_eq!(
            authority(v11, &origin, &h(&[])),
            Err(RouteError::MissingHost)
        );
        assert_eq!(
            authority(v11, &origin, &h(&["a", "a"])),
            Err(RouteError::DuplicateHost)
        );
        assert_eq!(
            authority(v11, &absolute, &h(&["a"])),
            Err(RouteError::AbsoluteForm)
        );
        let v2 = Version::HTTP_2;
        assert_eq!(authority(v2, &absolute, &h(&[])), Ok("other"));
        assert_eq!(authority(v2, &absolute, &h(&["OTHER"])), Ok("other"));
        assert_eq!(
            authority(v2, &absolute, &h(&["else"])),
            Err(RouteError::AuthorityMismatch)
        );
        assert_eq!(authority(v2, &origin, &h(&["a"])), Ok("a"));
    }

    #[test]
    fn forwarded_routes_check_their_path_and_own_routes_do_not() {
        let d = domains();
        let bad = |r| matches!(r, Err(RouteError::BadPath(_)));
        assert!(bad(route("3000-a.preview.localhost", "/../x", &d)));
        assert!(bad(route("proxy", "/toolbox/sbx-1/../../x", &d)));
        assert!(bad(route("proxy", "/toolbox/sbx-1/%2e%2e", &d)));
        assert_eq!(
            route("proxy", "/../health", &d),
            Ok(Route::Own(OwnPath::NotFound))
        );
    }
    proptest::proptest! {
        #[test]
        fn route_never_panics(host in "\\PC{0,80}", path in "\\PC{0,40}") {
            let _ = route(&host, &path, &domains());
        }

        #[test]
        fn route_never_panics_on_preview_like_hosts(
            label in "[0-9a-zA-Z_.:%-]{0,70}",
            suffix in "(\\.preview\\.localhost)?(:[0-9]{0,6})?",
        ) {
            let _ = route(&format!("{label}{suffix}"), "/", &domains());
        }
    }
}
