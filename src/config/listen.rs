//! Listen addresses as operators write them: `127.0.0.1:8080`, `[::1]:8080`, `:8080` (every
//! IPv4 address) or `localhost:8080` (a host name, resolved once at load). After load they are
//! plain `SocketAddr`s, so nothing past the config sees the difference.

use std::net::{SocketAddr, ToSocketAddrs};

use serde::de::Error;
use serde::{Deserialize, Deserializer, Serializer};

/// `text` as a listen address; the error says what forms are accepted.
pub fn parse(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let forms = "write host:port, e.g. \"127.0.0.1:8080\", \":8080\" or \"localhost:8080\"";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} is not an address: {forms}"));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(format!("{text:?}: {port:?} is not a port: {forms}"));
    };
    if host.is_empty() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let resolved = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{text:?}: cannot resolve {host:?}: {e}"))?;
    let mut addrs: Vec<SocketAddr> = resolved.collect();
    // `localhost` lists ::1 first on many systems; IPv4 is what clients try first with it.
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| format!("{text:?}: {host:?} has no address"))
}

/// `#[serde(with = "listen")]` for a `SocketAddr`.
pub fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(addr)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(D::Error::custom)
}

/// `#[serde(with = "listen::empty_is_off")]`: an address, or empty for "no listener".
pub mod empty_is_off {
    use std::net::SocketAddr;

    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        super::parse(&text).map(Some).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_forms_operators_write() {
        for (text, want) in [
            ("127.0.0.1:8080", Some("127.0.0.1:8080")),
            ("[::1]:8080", Some("[::1]:8080")),
            (":8080", Some("0.0.0.0:8080")),
            ("localhost:8080", Some("127.0.0.1:8080")),
            ("localhost", None),
            (":http", None),
            ("no-such-host.invalid:80", None),
        ] {
            let got = parse(text).ok().map(|a| a.to_string());
            assert_eq!(got.as_deref(), want, "{text}");
        }
    }
}
