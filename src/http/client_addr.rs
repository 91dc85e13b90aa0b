//! Who the client really is: `server.trusted_proxies` decides whose word about it is believed.
//!
//! - From a peer inside a trusted CIDR, `X-Forwarded-For` (else `Forwarded: for=`) is walked
//!   right to left, skipping trusted addresses: the first untrusted one is the client. The chain
//!   sent upstream is that client, the trusted hops after it, and the peer.
//! - From any other peer, the peer is the client: its `X-Forwarded-For` is replaced by the peer's
//!   address and its `Forwarded` dropped, so no client can plant an address in the runner's view.
//! - The PROXY protocol (v1 text, v2 binary), opt-in per listener and accepted only from trusted
//!   peers, replaces the TCP peer before TLS or HTTP: see [`read_proxy_header`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use tokio::io::AsyncReadExt;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// `server.trusted_proxies`, parsed once.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// The client of one request, as far as the proxy can tell.
#[derive(Debug)]
pub struct ClientAddr {
    pub ip: IpAddr,
    /// The `X-Forwarded-For` to send upstream when it is more than the peer's address (a
    /// trusted proxy's chain); `None`: just the peer.
    pub forwarded_for: Option<HeaderValue>,
    /// The peer is a trusted proxy (its `Forwarded` header may go on).
    pub via_trusted_proxy: bool,
}

impl TrustedProxies {
    /// Parses CIDRs (`10.0.0.0/8`, `fd00::/8`) or single addresses; errors name the key.
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        crate::config::server::parse_trusted_proxies(entries).map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer` (the TCP peer, or the PROXY protocol's source address).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddr {
        if !self.contains(peer) {
            return ClientAddr {
                ip: peer,
                forwarded_for: None,
                via_trusted_proxy: false,
            };
        }
        let mut hops: Vec<IpAddr> = forwarded_for_hops(headers);
        if hops.is_empty() {
            hops = forwarded_hops(headers);
        }
        // Right to left: the first address no trusted proxy vouches for is the client. An entry
        // that is not an address stops the walk at the last trusted hop.
        let mut client = hops.len();
        while client > 0 {
            match hops[client - 1] {
                IpAddr::V4(v4) if v4.is_unspecified() => break,
                ip if self.contains(ip) => client -= 1,
                _ => {
                    client -= 1;
                    break;
                }
            }
        }
        let chain = hops.get(client..).unwrap_or_default();
        let ip = chain.first().copied().unwrap_or(peer);
        let mut value = String::with_capacity(16 * (chain.len() + 1));
        for hop in chain.iter().chain(std::iter::once(&peer)) {
            if !value.is_empty() {
                value.push_str(", ");
            }
            value.push_str(&hop.to_string());
        }
        ClientAddr {
            ip,
            forwarded_for: HeaderValue::try_from(value).ok(),
            via_trusted_proxy: true,
        }
    }
}

/// Every `X-Forwarded-For` entry in order; an entry that is not an address becomes
/// `0.0.0.0` (a wall the walk stops at).
fn forwarded_for_hops(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(|entry| parse_hop(entry.trim()))
        .collect()
}

/// The `for=` of every `Forwarded` element in order (RFC 7239).
fn forwarded_hops(headers: &HeaderMap) -> Vec<IpAddr> {
    headers
        .get_all(FORWARDED)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("for=?").split(','))
        .map(|element| {
            let node = element.split(';').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("for")
                    .then_some(value.trim())
            });
            parse_hop(node.unwrap_or("?").trim_matches('"'))
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`; anything else is `0.0.0.0`.
fn parse_hop(entry: &str) -> IpAddr {
    let wall = IpAddr::from([0, 0, 0, 0]);
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return ip.to_canonical();
    }
    if let Ok(addr) = entry.parse::<SocketAddr>() {
        return addr.ip().to_canonical();
    }
    entry
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inner| inner.parse::<IpAddr>().ok())
        .map_or(wall, |ip| ip.to_canonical())
}

/// Why a PROXY protocol header was refused (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("connection ended before the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY header")]
    Malformed,
}

/// The v2 signature; a v1 header starts with `PROXY `.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 header is at most 107 bytes; v2 headers are bounded here (addresses and some TLVs).
const V1_MAX: usize = 107;
const V2_MAX: usize = 16 + 1024;

/// Reads one PROXY protocol header (v1 or v2) from the start of `stream`, byte-exact (nothing
/// after it is consumed), within `timeout`. The source address it carries, or `None` for
/// `UNKNOWN`/`LOCAL` (health checks from the balancer itself: the TCP peer stays).
pub async fn read_proxy_header<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    tokio::time::timeout(timeout, read_header(stream))
        .await
        .map_err(|_| ProxyHeaderError::Timeout(timeout))?
}

async fn read_header<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut buf = vec![0u8; 16];
    stream.read_exact(&mut buf[..6]).await?;
    if &buf[..6] == b"PROXY " {
        buf.truncate(6);
        // Byte by byte up to the line end, so nothing of the next protocol is read.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= V1_MAX {
                return Err(ProxyHeaderError::Malformed);
            }
            buf.push(stream.read_u8().await?);
        }
        let header =
            ppp::v1::Header::try_from(&buf[..]).map_err(|_| ProxyHeaderError::Malformed)?;
        return Ok(match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if buf[..6] != V2_SIGNATURE[..6] {
        return Err(ProxyHeaderError::Missing);
    }
    stream.read_exact(&mut buf[6..16]).await?;
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if buf[..12] != V2_SIGNATURE[..] || 16 + length > V2_MAX {
        return Err(ProxyHeaderError::Malformed);
    }
    buf.resize(16 + length, 0);
    stream.read_exact(&mut buf[16..]).await?;
    let header = ppp::v2::Header::try_from(&buf[..]).map_err(|_| ProxyHeaderError::Malformed)?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&nets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn trusted_proxies_parse_cidrs_and_addresses_and_name_the_key() {
        let t = trusted(&["10.0.0.0/8", "192.168.1.7", "fd00::/8"]);
        assert!(t.contains("10.1.2.3".parse().unwrap()));
        assert!(t.contains("::ffff:10.1.2.3".parse().unwrap()), "mapped v4");
        assert!(t.contains("192.168.1.7".parse().unwrap()));
        assert!(!t.contains("192.168.1.8".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        let err = TrustedProxies::parse(&["10.0.0.0/8".into(), "ten".into()]).unwrap_err();
        assert!(err.contains("server.trusted_proxies[1]"), "{err}");
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop_from_trusted_peers_only() {
        let t = trusted(&["10.0.0.0/8"]);
        let lb: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        // (peer, headers, client, X-Forwarded-For sent upstream)
        let cases: [(IpAddr, HeaderMap, &str, Option<&str>); 8] = [
            (
                stranger,
                headers(&[("x-forwarded-for", "1.1.1.1")]),
                "203.0.113.9",
                None,
            ),
            (lb, headers(&[]), "10.0.0.1", Some("10.0.0.1")),
            (
                lb,
                headers(&[("x-forwarded-for", "1.1.1.1")]),
                "1.1.1.1",
                Some("1.1.1.1, 10.0.0.1"),
            ),
            (
                lb,
                headers(&[("x-forwarded-for", "6.6.6.6, 1.1.1.1, 10.0.0.2")]),
                "1.1.1.1",
                Some("1.1.1.1, 10.0.0.2, 10.0.0.1"),
            ),
            (
                lb,
                headers(&[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "[2001:db8::1]:443"),
                ]),
                "2001:db8::1",
                Some("2001:db8::1, 10.0.0.1"),
            ),
            (
                lb,
                headers(&[("x-forwarded-for", "1.1.1.1, garbage, 10.0.0.2")]),
                "10.0.0.2",
                Some("10.0.0.2, 10.0.0.1"),
            ),
            (
                lb,
                headers(&[(
                    "forwarded",
                    "for=6.6.6.6, for=\"[2001:db8::2]:80\";proto=https",
                )]),
                "2001:db8::2",
                Some("2001:db8::2, 10.0.0.1"),
            ),
            (
                lb,
                headers(&[("x-forwarded-for", "10.0.0.3")]),
                "10.0.0.3",
                Some("10.0.0.3, 10.0.0.1"),
            ),
        ];
        for (peer, h, client, chain) in cases {
            let got = t.client(peer, &h);
            assert_eq!(got.ip.to_string(), client, "{h:?}");
            assert_eq!(
                got.forwarded_for.as_ref().map(|v| v.to_str().unwrap()),
                chain,
                "{h:?}"
            );
            assert_eq!(got.via_trusted_proxy, peer == lb);
        }
    }

    #[tokio::test]
    async fn proxy_headers_are_read_exactly_and_bad_ones_refused() {
        let v2 = |command: u8, family: u8, addresses: &[u8]| {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[command, family]);
            h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
            h.extend_from_slice(addresses);
            h
        };
        let v4_addresses = [192, 0, 2, 7, 10, 0, 0, 1, 0x1f, 0x90, 0, 80];
        // (input, expected source address or error, must leave "GET" unread)
        type Expected = Result<Option<&'static str>, &'static str>;
        let cases: Vec<(Vec<u8>, Expected)> = vec![
            (
                b"PROXY TCP4 192.0.2.7 10.0.0.1 8080 80\r\nGET".to_vec(),
                Ok(Some("192.0.2.7:8080")),
            ),
            (
                b"PROXY TCP6 2001:db8::7 ::1 8080 80\r\nGET".to_vec(),
                Ok(Some("[2001:db8::7]:8080")),
            ),
            (b"PROXY UNKNOWN\r\nGET".to_vec(), Ok(None)),
            (
                [v2(0x21, 0x11, &v4_addresses), b"GET".to_vec()].concat(),
                Ok(Some("192.0.2.7:8080")),
            ),
            ([v2(0x20, 0x00, &[]), b"GET".to_vec()].concat(), Ok(None)),
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), Err("not a PROXY")),
            (b"PROXY TCP4 nonsense\r\nGET".to_vec(), Err("malformed")),
            (
                [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat(),
                Err("malformed"),
            ),
            (v2(0x21, 0x11, &[1, 2, 3]), Err("malformed")),
            (b"PROXY TCP4 192.0.2.7".to_vec(), Err("ended")),
        ];
        for (input, expected) in cases {
            let mut reader = std::io::Cursor::new(input.clone());
            let got = read_proxy_header(&mut reader, Duration::from_secs(1)).await;
            let shown = String::from_utf8_lossy(&input);
            match (got, expected) {
                (Ok(addr), Ok(want)) => {
                    assert_eq!(addr.map(|a| a.to_string()).as_deref(), want, "{shown}");
                    let mut rest = String::new();
                    reader.read_to_string(&mut rest).await.unwrap();
                    assert_eq!(rest, "GET", "{shown}: nothing after the header is consumed");
                }
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{shown}: {e}"),
                (got, want) => panic!("{shown}: got {got:?}, want {want:?}"),
            }
        }
    }
}
