//! Header routing on the proxy's own host: `X-Daytona-Sandbox-Id` + `X-Daytona-Sandbox-Port`
//! (or sandgate's `X-Sandgate-Sandbox-Id` + `X-Sandgate-Sandbox-Port`) name the sandbox and port
//! a preview host would, so an SDK can multiplex many sandboxes over one HTTP/2 connection to
//! one host. Pure parsing, like `route`; a request without any of the names costs one bit test.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::base::header_scan::{Present, Tracked};

/// Longest id accepted: a DNS label, so every id a preview host can carry and no longer.
const MAX_ID_BYTES: usize = 63;

/// The names, as `HeaderName`s (a lookup by `&str` parses it first).
pub const DAYTONA_ID: HeaderName = HeaderName::from_static(Tracked::DaytonaSandboxId.name());
pub const DAYTONA_PORT: HeaderName = HeaderName::from_static(Tracked::DaytonaSandboxPort.name());
pub const SANDGATE_ID: HeaderName = HeaderName::from_static(Tracked::SandgateSandboxId.name());
pub const SANDGATE_PORT: HeaderName = HeaderName::from_static(Tracked::SandgateSandboxPort.name());

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderRouteError {
    #[error(
        "send both X-Daytona-Sandbox-Id and X-Daytona-Sandbox-Port (or both \
         X-Sandgate-Sandbox-Id and X-Sandgate-Sandbox-Port)"
    )]
    Incomplete,
    #[error("the sandbox port header must be a decimal number from 1 to 65535")]
    BadPort,
    #[error("the sandbox id header must be 1 to 63 characters from [A-Za-z0-9_-]")]
    BadId,
    #[error(
        "the routing headers disagree: a name sent twice, or the X-Daytona-* and X-Sandgate-* \
         pairs naming different sandboxes or ports"
    )]
    Conflict,
}

/// The sandbox and port the headers name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRoute {
    pub port: u16,
    /// Validated and lower-case, as a preview host's label is.
    id: HeaderValue,
}

impl HeaderRoute {
    pub fn sandbox_id(&self) -> &str {
        // Validated ASCII at parse time; the fallback is unreachable.
        self.id.to_str().unwrap_or_default()
    }

    /// `<port>-<id>.<domain>[:<port of the request's authority>]`: the preview host that names
    /// the same sandbox and port, sent to the app as `X-Forwarded-Host`.
    pub fn preview_host(&self, domain: &str, authority: &str) -> Option<HeaderValue> {
        let listener_port = match authority.rsplit_once(':') {
            Some((_, port)) if !port.contains(']') => port,
            _ => "",
        };
        let mut digits = itoa::Buffer::new();
        let port = digits.format(self.port);
        let id = self.id.as_bytes();
        // One buffer of the exact size, handed to the header value without a copy.
        let mut host = bytes::BytesMut::with_capacity(
            port.len() + 1 + id.len() + 1 + domain.len() + 1 + listener_port.len(),
        );
        for piece in [port.as_bytes(), b"-", id, b".", domain.as_bytes()] {
            host.extend_from_slice(piece);
        }
        if !listener_port.is_empty() {
            host.extend_from_slice(b":");
            host.extend_from_slice(listener_port.as_bytes());
        }
        HeaderValue::from_maybe_shared(host.freeze()).ok()
    }
}

/// The route the headers name; `Ok(None)` when the request carries none of them.
pub fn parse(
    headers: &HeaderMap,
    present: Present,
) -> Result<Option<HeaderRoute>, HeaderRouteError> {
    if !present.may_have_any(&Tracked::ROUTING) {
        return Ok(None);
    }
    let daytona = pair(headers, &DAYTONA_ID, &DAYTONA_PORT)?;
    let sandgate = pair(headers, &SANDGATE_ID, &SANDGATE_PORT)?;
    match (daytona, sandgate) {
        (None, None) => Ok(None),
        (Some(route), None) | (None, Some(route)) => Ok(Some(route)),
        (Some(a), Some(b)) if a == b => Ok(Some(a)),
        _ => Err(HeaderRouteError::Conflict),
    }
}

/// Removes every routing header (they are the proxy's, never the app's); only the names the
/// scan saw are looked up.
pub fn remove(headers: &mut HeaderMap, present: Present) {
    if !present.may_have_any(&Tracked::ROUTING) {
        return;
    }
    for tracked in Tracked::ROUTING {
        if present.may_have(tracked) {
            headers.remove(tracked.name());
        }
    }
}

fn pair(
    headers: &HeaderMap,
    id: &HeaderName,
    port: &HeaderName,
) -> Result<Option<HeaderRoute>, HeaderRouteError> {
    match (single(headers, id)?, single(headers, port)?) {
        (None, None) => Ok(None),
        (Some(id), Some(port)) => Ok(Some(HeaderRoute {
            port: parse_port(port.as_bytes())?,
            id: parse_id(id)?,
        })),
        _ => Err(HeaderRouteError::Incomplete),
    }
}

fn single<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h HeaderValue>, HeaderRouteError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(HeaderRouteError::Conflict);
    }
    Ok(first)
}

fn parse_port(text: &[u8]) -> Result<u16, HeaderRouteError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.iter().all(u8::is_ascii_digit);
    if !digits || text[0] == b'0' {
        return Err(HeaderRouteError::BadPort);
    }
    let port = text.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(port).map_err(|_| HeaderRouteError::BadPort)
}

fn parse_id(value: &HeaderValue) -> Result<HeaderValue, HeaderRouteError> {
    let bytes = value.as_bytes();
    let valid = (1..=MAX_ID_BYTES).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !valid {
        return Err(HeaderRouteError::BadId);
    }
    if !bytes.iter().any(u8::is_ascii_uppercase) {
        return Ok(value.clone());
    }
    HeaderValue::from_bytes(&bytes.to_ascii_lowercase()).map_err(|_| HeaderRouteError::BadId)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn route_of(pairs: &[(&str, &str)]) -> Result<Option<(u16, String)>, HeaderRouteError> {
        let map = headers(pairs);
        let found = parse(&map, Present::scan(&map))?;
        Ok(found.map(|r| (r.port, r.sandbox_id().to_string())))
    }

    #[test]
    fn either_pair_routes_and_agreeing_pairs_are_one_route() {
        let ok = |port, id: &str| Ok(Some((port, id.to_string())));
        let d = |id, port| {
            [
                ("x-daytona-sandbox-id", id),
                ("x-daytona-sandbox-port", port),
            ]
        };
        let s = |id, port| {
            [
                ("x-sandgate-sandbox-id", id),
                ("x-sandgate-sandbox-port", port),
            ]
        };
        assert_eq!(route_of(&[]), Ok(None));
        assert_eq!(route_of(&[("x-other", "1")]), Ok(None));
        assert_eq!(route_of(&d("sbx-1", "3000")), ok(3000, "sbx-1"));
        assert_eq!(route_of(&s("Sbx_1", "65535")), ok(65535, "sbx_1"));
        assert_eq!(route_of(&[d("a", "1"), s("A", "1")].concat()), ok(1, "a"));
        assert_eq!(
            route_of(&[d("a", "1"), s("b", "1")].concat()),
            Err(HeaderRouteError::Conflict)
        );
        assert_eq!(
            route_of(&[d("a", "1"), s("a", "2")].concat()),
            Err(HeaderRouteError::Conflict)
        );
    }

    #[test]
    fn bad_headers_are_refused_by_kind() {
        use HeaderRouteError::*;
        let long = "a".repeat(64);
        let cases: &[(&[(&str, &str)], HeaderRouteError)] = &[
            (&[("x-daytona-sandbox-id", "a")], Incomplete),
            (&[("x-daytona-sandbox-port", "3000")], Incomplete),
            (
                &[
                    ("x-sandgate-sandbox-id", "a"),
                    ("x-daytona-sandbox-port", "1"),
                ],
                Incomplete,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", "a"),
                    ("x-daytona-sandbox-port", "0"),
                ],
                BadPort,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", "a"),
                    ("x-daytona-sandbox-port", "65536"),
                ],
                BadPort,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", "a"),
                    ("x-daytona-sandbox-port", "03000"),
                ],
                BadPort,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", "a"),
                    ("x-daytona-sandbox-port", "+80"),
                ],
                BadPort,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", "a"),
                    ("x-daytona-sandbox-port", ""),
                ],
                BadPort,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", "a"),
                    ("x-daytona-sandbox-port", "999999"),
                ],
                BadPort,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", ""),
                    ("x-daytona-sandbox-port", "1"),
                ],
                BadId,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", "a.b"),
                    ("x-daytona-sandbox-port", "1"),
                ],
                BadId,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", "a b"),
                    ("x-daytona-sandbox-port", "1"),
                ],
                BadId,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", "../x"),
                    ("x-daytona-sandbox-port", "1"),
                ],
                BadId,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", &long),
                    ("x-daytona-sandbox-port", "1"),
                ],
                BadId,
            ),
            (
                &[
                    ("x-daytona-sandbox-id", "a"),
                    ("x-daytona-sandbox-id", "a"),
                    ("x-daytona-sandbox-port", "1"),
                ],
                Conflict,
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(route_of(pairs), Err(*want), "{pairs:?}");
        }
    }

    #[test]
    fn the_canonical_preview_host_keeps_the_listener_port() {
        let route = HeaderRoute {
            port: 3000,
            id: HeaderValue::from_static("sbx-1"),
        };
        let host = |authority| route.preview_host("preview.localhost", authority).unwrap();
        assert_eq!(host("127.0.0.1:8080"), "3000-sbx-1.preview.localhost:8080");
        assert_eq!(host("proxy.example.com"), "3000-sbx-1.preview.localhost");
        assert_eq!(host("[::1]:8443"), "3000-sbx-1.preview.localhost:8443");
        assert_eq!(host("[::1]"), "3000-sbx-1.preview.localhost");
    }

    #[test]
    fn removal_takes_every_routing_name_and_nothing_else() {
        let mut map = headers(&[
            ("x-daytona-sandbox-id", "a"),
            ("x-daytona-sandbox-port", "1"),
            ("x-sandgate-sandbox-id", "a"),
            ("x-sandgate-sandbox-port", "1"),
            ("x-daytona-sandbox-idx", "kept"),
        ]);
        let present = Present::scan(&map);
        remove(&mut map, present);
        assert_eq!(map.len(), 1);
        assert!(map.contains_key("x-daytona-sandbox-idx"));
    }
}
