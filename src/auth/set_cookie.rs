//! Cookies a sandbox sets: every upstream `Set-Cookie` is filtered so that no sandbox plants a
//! cookie with one of the proxy's names or for a domain wider than its own host.

use http::header::SET_COOKIE;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::cookie::is_reserved_name;

const SET_COOKIE2: HeaderName = HeaderName::from_static("set-cookie2");

/// What the proxy does with one upstream `Set-Cookie`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetCookieVerdict {
    Keep,
    /// It uses one of the proxy's reserved names.
    Drop,
    /// Without its `Domain` attribute(s): host-only; every other byte as it was.
    Rewrite(HeaderValue),
}

/// Judges one upstream `Set-Cookie` value (pure; allocates only for a rewrite).
pub fn filter_set_cookie(value: &HeaderValue) -> SetCookieVerdict {
    let mut parts = value.as_bytes().split(|&b| b == b';');
    let pair = parts.next().unwrap_or_default();
    if is_reserved_name(effective_name(pair)) {
        return SetCookieVerdict::Drop;
    }
    if !parts.clone().any(is_domain_attribute) {
        return SetCookieVerdict::Keep;
    }
    let mut out = Vec::with_capacity(value.len());
    out.extend_from_slice(pair);
    for attribute in parts.filter(|a| !is_domain_attribute(a)) {
        out.push(b';');
        out.extend_from_slice(attribute);
    }
    // A subset of a valid value's bytes is valid; fail closed all the same.
    HeaderValue::from_bytes(&out).map_or(SetCookieVerdict::Drop, SetCookieVerdict::Rewrite)
}

/// The name browsers will send this cookie under. A nameless cookie (`=a=b`, or no `=` at all)
/// is sent as its bare value, which servers read as `a=b`: its name is the value's.
fn effective_name(pair: &[u8]) -> &[u8] {
    let name = name_part(pair);
    if !name.is_empty() {
        return name;
    }
    let value = match pair.iter().position(|&b| b == b'=') {
        Some(i) => &pair[i + 1..],
        None => pair,
    };
    name_part(value.trim_ascii())
}

/// What precedes the first `=` (all of it without one), without surrounding whitespace.
fn name_part(s: &[u8]) -> &[u8] {
    s.iter()
        .position(|&b| b == b'=')
        .map_or(s, |i| &s[..i])
        .trim_ascii()
}

fn is_domain_attribute(attribute: &[u8]) -> bool {
    name_part(attribute).eq_ignore_ascii_case(b"domain")
}

/// Applies [`filter_set_cookie`] to a sandbox's response and drops the obsolete `Set-Cookie2`.
/// Costs one pass over the response's names, no lookup or allocation, when it sets no cookie
/// (the common case).
pub fn filter_response_cookies(headers: &mut HeaderMap) {
    let (mut cookie, mut cookie2) = (false, false);
    for name in headers.keys() {
        cookie |= name == SET_COOKIE;
        cookie2 |= name == SET_COOKIE2;
    }
    if cookie2 {
        headers.remove(SET_COOKIE2);
    }
    if !cookie {
        return;
    }
    let all_kept = headers
        .get_all(SET_COOKIE)
        .iter()
        .all(|v| filter_set_cookie(v) == SetCookieVerdict::Keep);
    if all_kept {
        return;
    }
    let sent: Vec<HeaderValue> = headers.get_all(SET_COOKIE).iter().cloned().collect();
    headers.remove(SET_COOKIE);
    for value in sent {
        match filter_set_cookie(&value) {
            SetCookieVerdict::Keep => headers.append(SET_COOKIE, value),
            SetCookieVerdict::Rewrite(rewritten) => headers.append(SET_COOKIE, rewritten),
            SetCookieVerdict::Drop => false,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookie_filter_rows() {
        use SetCookieVerdict::{Drop, Keep};
        let rewrite = |s: &'static str| SetCookieVerdict::Rewrite(HeaderValue::from_static(s));
        let rows = [
            ("app=1; Path=/; HttpOnly", Keep),
            ("app=1", Keep),
            ("a=b; domainx=1; Path=/", Keep),
            (
                "daytona-sandbox-auth-victim=x; Domain=preview.localhost",
                Drop,
            ),
            ("daytona-preview-page-accepted=true", Drop),
            (
                "__Host-daytona-preview-page-accepted=true; Secure; Path=/",
                Drop,
            ),
            ("  Sandgate-OIDC =x", Drop),
            ("=daytona-sandbox-auth-v=x", Drop),
            ("daytona-preview-page-accepted", Drop),
            (" = daytona-preview-page-accepted ; Path=/", Drop),
            (
                "s=f; Domain=.preview.localhost; Path=/",
                rewrite("s=f; Path=/"),
            ),
            (
                "s=f;domain=X;Path=/;DOMAIN ;Secure",
                rewrite("s=f;Path=/;Secure"),
            ),
            ("s=f; Domain", rewrite("s=f")),
            (
                "s=f;  Path=/a ;\tdomain\t=\tx; HttpOnly",
                rewrite("s=f;  Path=/a ; HttpOnly"),
            ),
            ("=f; Domain=x", rewrite("=f")),
        ];
        for (input, verdict) in rows {
            let value = HeaderValue::from_str(input).unwrap();
            assert_eq!(filter_set_cookie(&value), verdict, "{input}");
        }
    }

    #[test]
    fn responses_without_offending_cookies_are_untouched() {
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, "a=1; Path=/".parse().unwrap());
        h.append(
            SET_COOKIE,
            "daytona-preview-page-accepted=true".parse().unwrap(),
        );
        h.append(SET_COOKIE, "b=2; Domain=x.y; Secure".parse().unwrap());
        h.append(SET_COOKIE2, "c=3; Version=1".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        filter_response_cookies(&mut h);
        let kept: Vec<_> = h.get_all(SET_COOKIE).iter().collect();
        assert_eq!(kept, ["a=1; Path=/", "b=2; Secure"]);
        assert!(h.get(SET_COOKIE2).is_none());
        assert_eq!(h.len(), 3);
        let mut clean = HeaderMap::new();
        clean.append(SET_COOKIE, "a=1".parse().unwrap());
        clean.append(SET_COOKIE, "b=2".parse().unwrap());
        let before = clean.clone();
        filter_response_cookies(&mut clean);
        assert_eq!(clean, before);
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        const RESERVED: [&str; 5] = [
            "daytona-sandbox-auth-",
            "daytona-sandbox-auth-victim",
            "daytona-preview-page-accepted",
            "sandgate-",
            "sandgate-oidc",
        ];

        fn flip_case(s: &str, mask: u64) -> String {
            s.chars()
                .enumerate()
                .map(|(i, c)| {
                    if mask >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect()
        }

        /// (cookie-pair, reserved?): reserved names in any case and prefix, nameless
        /// cookies hiding one, and ordinary names.
        fn pair() -> impl Strategy<Value = (String, bool)> {
            let value = "[ -:<-~]{0,12}";
            let reserved = (
                prop::sample::select(&["", "__Host-", "__host-", "__Secure-"][..]),
                prop::sample::select(&RESERVED[..]),
                any::<u64>(),
                "[a-z0-9-]{0,6}",
                value,
                prop::sample::select(&["", " ", "\t"][..]),
            )
                .prop_map(|(prefix, name, mask, tail, value, ws)| {
                    let name = flip_case(&format!("{prefix}{name}{tail}"), mask);
                    (format!("{ws}{name}{ws}={value}"), true)
                });
            let nameless = (prop::sample::select(&RESERVED[..]), value)
                .prop_map(|(name, value)| (format!("={name}={value}"), true));
            let ordinary = ("[A-Za-z0-9_.!#$%&'*+^`|~-]{1,12}", value)
                .prop_filter("not one of ours", |(name, _)| {
                    let n = name.to_ascii_lowercase();
                    !n.contains("daytona") && !n.contains("sandgate")
                })
                .prop_map(|(name, value)| (format!("{name}={value}"), false));
            prop_oneof![reserved, nameless, ordinary.clone(), ordinary]
        }

        /// (attribute, is a Domain attribute?)
        fn attribute() -> impl Strategy<Value = (String, bool)> {
            let domain = (
                any::<u64>(),
                prop::sample::select(&["", " ", "  ", "\t"][..]),
                prop::option::of("[ -:<-~]{0,20}"),
            )
                .prop_map(|(mask, ws, value)| {
                    let name = flip_case("domain", mask);
                    let attr = match value {
                        Some(v) => format!("{ws}{name}{ws}={v}"),
                        None => format!("{ws}{name}"),
                    };
                    (attr, true)
                });
            let other = "[ -:<-~]{0,20}"
                .prop_filter("not a Domain", |a| {
                    let name = a.split('=').next().unwrap_or("");
                    !name
                        .trim_matches([' ', '\t'])
                        .eq_ignore_ascii_case("domain")
                })
                .prop_map(|a| (a, false));
            prop_oneof![domain, other.clone(), other]
        }

        fn output(value: &HeaderValue) -> Option<Vec<u8>> {
            match filter_set_cookie(value) {
                SetCookieVerdict::Keep => Some(value.as_bytes().to_vec()),
                SetCookieVerdict::Drop => None,
                SetCookieVerdict::Rewrite(v) => Some(v.as_bytes().to_vec()),
            }
        }

        /// What the browser would store has no Domain and none of the proxy's names (an
        /// oracle written apart from the filter: lower-cased text, trimmed names).
        fn assert_safe(out: &[u8]) {
            let text = String::from_utf8_lossy(out).to_ascii_lowercase();
            let mut parts = text.split(';');
            let pair = parts.next().unwrap_or_default();
            let name = |s: &str| {
                s.split('=')
                    .next()
                    .unwrap_or("")
                    .trim_matches([' ', '\t'])
                    .to_string()
            };
            let mut stored = name(pair);
            if stored.is_empty() {
                stored = name(pair.split_once('=').map_or(pair, |(_, v)| v));
            }
            let stored = ["__host-", "__secure-"]
                .iter()
                .find_map(|p| stored.strip_prefix(p))
                .unwrap_or(&stored);
            assert!(
                !RESERVED.iter().any(|r| stored.starts_with(r)),
                "{text:?} stores {stored:?}"
            );
            assert!(!parts.any(|a| name(a) == "domain"), "{text:?}");
        }

        proptest! {
            #[test]
            fn filtered_cookies_are_host_only_and_never_ours(
                (pair, reserved) in pair(),
                attributes in prop::collection::vec(attribute(), 0..6),
            ) {
                let mut input = pair.clone();
                let mut expected = pair;
                for (attr, is_domain) in &attributes {
                    input.push(';');
                    input.push_str(attr);
                    if !is_domain {
                        expected.push(';');
                        expected.push_str(attr);
                    }
                }
                let value = HeaderValue::from_str(&input).unwrap();
                match output(&value) {
                    None => prop_assert!(reserved, "dropped {input:?}"),
                    Some(out) => {
                        prop_assert!(!reserved, "kept {input:?}");
                        assert_safe(&out);
                        // Every other attribute survives, byte for byte and in order.
                        prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
                    }
                }
            }

            #[test]
            fn any_header_value_comes_out_safe(
                bytes in prop::collection::vec(
                    prop_oneof![
                        0x20u8..0x7f,
                        Just(b'\t'),
                        0x80u8..=0xff,
                        Just(b';'),
                        Just(b'='),
                    ],
                    0..80,
                ),
                inject in prop::sample::select(&[
                    "", "Domain=x", "; domain", "daytona-preview-page-accepted=", "=sandgate-",
                ][..]),
                at in any::<prop::sample::Index>(),
            ) {
                let mut bytes = bytes;
                let i = at.index(bytes.len() + 1);
                bytes.splice(i..i, inject.bytes());
                let value = HeaderValue::from_bytes(&bytes).unwrap();
                if let Some(out) = output(&value) {
                    assert_safe(&out);
                }
            }
        }
    }
}
