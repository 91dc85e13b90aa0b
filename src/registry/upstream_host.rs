//! `upstream_host`: the `Host` the app sees, per sandbox and per port, from a template with
//! `${PORT}` and `${SANDBOX}` (e.g. `localhost:${PORT}`), so dev servers that check `Host`
//! (Vite's `allowedHosts`, Django's `ALLOWED_HOSTS`) accept proxied requests.
//!
//! Checked when the record is built: only those placeholders, and the result must be a valid
//! authority. A template without `${PORT}` and every per-port entry is rendered then, once; a
//! `${PORT}` template is rendered per request into one small buffer (like direct mode's
//! authority).

use std::collections::HashMap;

use http::uri::Authority;
use http::HeaderValue;

const PORT: &str = "${PORT}";
const SANDBOX: &str = "${SANDBOX}";

/// One sandbox's upstream hosts.
#[derive(Debug, Clone, Default)]
pub struct UpstreamHosts {
    /// Every port without an entry of its own.
    default: Option<Template>,
    /// Per port, rendered.
    ports: HashMap<u16, HeaderValue>,
}

#[derive(Debug, Clone)]
enum Template {
    Fixed(HeaderValue),
    /// `${SANDBOX}` already substituted; `${PORT}` left.
    PerPort(Box<str>),
}

impl UpstreamHosts {
    /// `default`: the sandbox's template; `ports`: per-port templates. Errors say which one.
    pub fn new<'a>(
        sandbox_id: &str,
        default: Option<&str>,
        ports: impl IntoIterator<Item = (u16, &'a str)>,
    ) -> Result<UpstreamHosts, String> {
        let default = default
            .map(|t| {
                let with_sandbox = substitute_sandbox(t, sandbox_id)?;
                check(&with_sandbox.replace(PORT, "65535"), t)?;
                Ok::<_, String>(if with_sandbox.contains(PORT) {
                    Template::PerPort(with_sandbox.into())
                } else {
                    Template::Fixed(header(&with_sandbox, t)?)
                })
            })
            .transpose()?;
        let mut rendered = HashMap::new();
        for (port, t) in ports {
            if port == 0 {
                return Err(format!("upstream host for port 0: {t:?}"));
            }
            let with_sandbox = substitute_sandbox(t, sandbox_id)?;
            let value = with_sandbox.replace(PORT, itoa::Buffer::new().format(port));
            check(&value, t)?;
            rendered.insert(port, header(&value, t)?);
        }
        Ok(UpstreamHosts {
            default,
            ports: rendered,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.ports.is_empty()
    }

    /// The `Host` for `port` (`None`: the proxy's default).
    pub fn for_port(&self, port: u16) -> Option<HeaderValue> {
        if let Some(v) = self.ports.get(&port) {
            return Some(v.clone());
        }
        match self.default.as_ref()? {
            Template::Fixed(v) => Some(v.clone()),
            Template::PerPort(t) => {
                // One buffer, handed to the header value without a copy.
                let mut digits = itoa::Buffer::new();
                let port = digits.format(port).as_bytes();
                let mut buf = bytes::BytesMut::with_capacity(t.len() + 5);
                for (i, piece) in t.split(PORT).enumerate() {
                    if i > 0 {
                        buf.extend_from_slice(port);
                    }
                    buf.extend_from_slice(piece.as_bytes());
                }
                HeaderValue::from_maybe_shared(buf.freeze()).ok()
            }
        }
    }
}

/// `${SANDBOX}` replaced; any other `${…}` is an error.
fn substitute_sandbox(template: &str, sandbox_id: &str) -> Result<String, String> {
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        let tail = &rest[at..];
        if !(tail.starts_with(PORT) || tail.starts_with(SANDBOX)) {
            return Err(format!(
                "upstream host {template:?}: only ${{PORT}} and ${{SANDBOX}} may be used"
            ));
        }
        rest = &tail[2..];
    }
    Ok(template.replace(SANDBOX, &sandbox_id.to_ascii_lowercase()))
}

/// A host or `host:port`, nothing else (no userinfo, path or spaces).
fn check(rendered: &str, template: &str) -> Result<(), String> {
    let authority: Authority = rendered
        .parse()
        .map_err(|_| format!("upstream host {template:?} does not give a host[:port]"))?;
    let port_ok = match authority.as_str().rsplit_once(':') {
        // `[::1]` has colons but no port; `host:` has an empty one.
        Some((_, port)) if !authority.as_str().ends_with(']') => port.parse::<u16>().is_ok(),
        _ => true,
    };
    if rendered.contains('@') || authority.host().is_empty() || !port_ok {
        return Err(format!(
            "upstream host {template:?} does not give a host[:port]"
        ));
    }
    Ok(())
}

fn header(value: &str, template: &str) -> Result<HeaderValue, String> {
    HeaderValue::try_from(value)
        .map_err(|_| format!("upstream host {template:?} is not a header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_per_port_and_per_sandbox() {
        let hosts = UpstreamHosts::new(
            "Sbx-1",
            Some("localhost:${PORT}"),
            [(8080, "${SANDBOX}.internal")],
        )
        .unwrap();
        assert_eq!(hosts.for_port(3000).unwrap(), "localhost:3000");
        let twice = UpstreamHosts::new("s", Some("p${PORT}.x:${PORT}"), []).unwrap();
        assert_eq!(twice.for_port(81).unwrap(), "p81.x:81");
        assert_eq!(hosts.for_port(8080).unwrap(), "sbx-1.internal");
        let fixed = UpstreamHosts::new("s", Some("app.local"), []).unwrap();
        assert_eq!(fixed.for_port(1).unwrap(), "app.local");
        assert!(UpstreamHosts::new("s", None, []).unwrap().is_empty());
        assert_eq!(UpstreamHosts::default().for_port(3000), None);
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "${HOST}",
            "localhost:${port}",
            "a b",
            "",
            "user@host",
            "host/path",
            "host:notaport",
            "${PORT}${",
            "h\r\nx: y",
        ] {
            assert!(
                UpstreamHosts::new("s", Some(bad), []).is_err(),
                "{bad:?} was accepted"
            );
        }
        assert!(UpstreamHosts::new("s", None, [(0, "x")]).is_err());
        assert!(UpstreamHosts::new("s", Some("[::1]:${PORT}"), []).is_ok());
    }
}
