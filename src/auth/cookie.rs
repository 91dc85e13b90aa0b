//! The sandbox cookie `daytona-sandbox-auth-<idOrToken>`, the proxy's cookie names, and the
//! filter that keeps sandboxes from planting cookies through their `Set-Cookie`s.
//!
//! Value: a [`Signer`] token for purpose `sandbox-cookie` with payload
//! `{"s": sandbox id, "t": idOrToken, "e": expiry (unix seconds)}`. A cookie only opens the
//! sandbox it names, under the host label it was issued for, until its expiry.
//!
//! Every preview is a sibling origin of every other, so a sandbox can set cookies for the whole
//! preview domain (`Domain=`), from its responses or from JavaScript. Hence: upstream
//! `Set-Cookie`s lose their `Domain` and never carry one of the proxy's names
//! ([`filter_response_cookies`]); a request may carry several cookies of the proxy's name (a
//! planted one sorted first), so every one is tried; and under https the proxy's cookies are
//! `__Host-` cookies, which no other host can set.

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::sign::{now_unix, Signer};
use super::PROXY_COOKIE_PREFIXES;

pub const SANDBOX_COOKIE_PREFIX: &str = "daytona-sandbox-auth-";
pub const WARNING_COOKIE: &str = "daytona-preview-page-accepted";
pub const OIDC_COOKIE: &str = "sandgate-oidc";
/// The prefix of the proxy's cookie names under https: `Secure`, `Path=/`, no `Domain`.
pub const HOST_PREFIX: &str = "__Host-";
const SECURE_PREFIX: &str = "__Secure-";
const PURPOSE: &str = "sandbox-cookie";
/// Most cookies of the sandbox cookie's name tried per request: each costs an HMAC, and a
/// planted one is tried after the `__Host-` ones, which nobody else can plant.
const MAX_SANDBOX_COOKIES: usize = 16;
const SET_COOKIE2: HeaderName = HeaderName::from_static("set-cookie2");

#[derive(Serialize, Deserialize)]
struct Payload {
    s: String,
    t: String,
    e: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieCheck {
    Valid,
    Expired,
    Invalid,
}

/// Attributes every cookie of the proxy gets.
#[derive(Debug, Clone, Copy)]
pub struct CookieFlags {
    /// `proxy.public_scheme = "https"`: `Secure; SameSite=None`, else `SameSite=Lax`.
    pub secure: bool,
}

impl CookieFlags {
    /// `__Host-` under https, where every cookie of the proxy qualifies (host-only, `Path=/`,
    /// `Secure`): browsers then refuse the name from any other host.
    pub fn name_prefix(&self) -> &'static str {
        if self.secure {
            HOST_PREFIX
        } else {
            ""
        }
    }

    /// A `Set-Cookie` value (host-only, `Path=/`, `HttpOnly`) for `name` with [`Self::name_prefix`].
    pub fn set_cookie(&self, name: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
        let site = if self.secure {
            "; Secure; SameSite=None"
        } else {
            "; SameSite=Lax"
        };
        let prefix = self.name_prefix();
        HeaderValue::try_from(format!(
            "{prefix}{name}={value}; Max-Age={max_age}; Path=/; HttpOnly{site}"
        ))
        .ok()
    }

    /// Like [`CookieFlags::set_cookie`] but always `SameSite=Lax` (login-flow cookies must
    /// survive the top-level redirect back from the identity provider).
    pub fn set_lax_cookie(&self, name: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
        let secure = if self.secure { "; Secure" } else { "" };
        let prefix = self.name_prefix();
        HeaderValue::try_from(format!(
            "{prefix}{name}={value}; Max-Age={max_age}; Path=/; HttpOnly{secure}; SameSite=Lax"
        ))
        .ok()
    }

    /// The values of the cookies the proxy reads as `name`: under https only `__Host-<name>`
    /// (the plain name can be planted for every preview by any sibling's JavaScript), else
    /// `<name>`. For short-lived or one-click cookies; the sandbox cookie accepts both names
    /// ([`sandbox_cookie_values`]).
    pub fn values<'a>(
        &self,
        headers: &'a HeaderMap,
        name: &'a str,
    ) -> impl Iterator<Item = &'a str> {
        let prefix = self.name_prefix();
        values(headers, move |n| {
            n.strip_prefix(prefix).is_some_and(|rest| rest == name)
        })
    }
}

pub fn sandbox_cookie_name(id_or_token: &str) -> String {
    format!("{SANDBOX_COOKIE_PREFIX}{id_or_token}")
}

/// The values of every sandbox cookie for `id_or_token` in the request, `__Host-` ones first
/// (no other host can set those), then the plain name (cookies from before the switch to
/// `__Host-` names keep working), at most [`MAX_SANDBOX_COOKIES`].
pub fn sandbox_cookie_values<'a>(
    headers: &'a HeaderMap,
    id_or_token: &'a str,
) -> impl Iterator<Item = &'a str> {
    let named = move |prefix: &'static str| {
        move |n: &str| {
            n.strip_prefix(prefix)
                .and_then(|n| n.strip_prefix(SANDBOX_COOKIE_PREFIX))
                .is_some_and(|label| label == id_or_token)
        }
    };
    values(headers, named(HOST_PREFIX))
        .chain(values(headers, named("")))
        .take(MAX_SANDBOX_COOKIES)
}

pub fn issue(signer: &Signer, sandbox_id: &str, id_or_token: &str, max_age: u64) -> Option<String> {
    signer.sign(
        PURPOSE,
        &Payload {
            s: sandbox_id.into(),
            t: id_or_token.into(),
            e: now_unix() + max_age,
        },
    )
}

pub fn check(signer: &Signer, sandbox_id: &str, id_or_token: &str, value: &str) -> CookieCheck {
    let Some(p) = signer.verify::<Payload>(PURPOSE, value) else {
        return CookieCheck::Invalid;
    };
    if p.s != sandbox_id || p.t != id_or_token {
        return CookieCheck::Invalid;
    }
    if p.e <= now_unix() {
        return CookieCheck::Expired;
    }
    CookieCheck::Valid
}

/// The value of the first cookie called `name` in the request's `Cookie` headers.
pub fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    values(headers, |n| n == name).next()
}

/// The values of every cookie whose name satisfies `is_name`, in the order sent.
pub fn values(
    headers: &HeaderMap,
    mut is_name: impl FnMut(&str) -> bool,
) -> impl Iterator<Item = &str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .filter_map(move |pair| {
            let (k, v) = pair.trim().split_once('=')?;
            is_name(k).then_some(v)
        })
}

/// One of the proxy's cookie names, in any case, with or without a `__Host-`/`__Secure-`
/// prefix: no sandbox may set one, and none reaches a sandbox. Matches a `name=value` pair too.
pub fn is_reserved_name(name: &[u8]) -> bool {
    let name = strip_prefix_ignore_case(name, HOST_PREFIX)
        .or_else(|| strip_prefix_ignore_case(name, SECURE_PREFIX))
        .unwrap_or(name);
    PROXY_COOKIE_PREFIXES
        .iter()
        .any(|p| strip_prefix_ignore_case(name, p).is_some())
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &str) -> Option<&'a [u8]> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix.as_bytes())
        .then(|| &s[prefix.len()..])
}

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
/// Costs two lookups, no allocation, when the response sets no cookie (the common case).
pub fn filter_response_cookies(headers: &mut HeaderMap) {
    headers.remove(SET_COOKIE2);
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

    fn signer() -> Signer {
        Signer::new(vec![b"c".repeat(32)])
    }

    #[test]
    fn cookies_open_only_their_sandbox_and_label() {
        let s = signer();
        let v = issue(&s, "sbx", "sbx", 60).unwrap();
        assert_eq!(check(&s, "sbx", "sbx", &v), CookieCheck::Valid);
        assert_eq!(check(&s, "other", "sbx", &v), CookieCheck::Invalid);
        assert_eq!(
            check(&s, "sbx", "abcdefgh12345678", &v),
            CookieCheck::Invalid
        );
        let mut tampered = v.clone();
        tampered.insert(3, 'x');
        assert_eq!(check(&s, "sbx", "sbx", &tampered), CookieCheck::Invalid);
        let expired = s
            .sign(
                PURPOSE,
                &Payload {
                    s: "sbx".into(),
                    t: "sbx".into(),
                    e: now_unix() - 1,
                },
            )
            .unwrap();
        assert_eq!(check(&s, "sbx", "sbx", &expired), CookieCheck::Expired);
    }

    #[test]
    fn flags_follow_the_scheme_and_cookies_parse() {
        let https = CookieFlags { secure: true };
        let v = https.set_cookie("a", "b", 3600).unwrap();
        assert_eq!(
            v,
            "__Host-a=b; Max-Age=3600; Path=/; HttpOnly; Secure; SameSite=None"
        );
        assert_eq!(
            https.set_lax_cookie("a", "b", 1).unwrap(),
            "__Host-a=b; Max-Age=1; Path=/; HttpOnly; Secure; SameSite=Lax"
        );
        let http = CookieFlags { secure: false };
        assert!(http
            .set_cookie("a", "b", 1)
            .unwrap()
            .to_str()
            .unwrap()
            .ends_with("HttpOnly; SameSite=Lax"));
        let mut h = HeaderMap::new();
        h.append(COOKIE, "x=1; daytona-sandbox-auth-s=v.w".parse().unwrap());
        h.append(COOKIE, "y=2".parse().unwrap());
        assert_eq!(get(&h, "daytona-sandbox-auth-s"), Some("v.w"));
        assert_eq!(get(&h, "y"), Some("2"));
        assert_eq!(get(&h, "z"), None);
    }

    #[test]
    fn every_sandbox_cookie_is_tried_host_prefixed_first() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            "daytona-sandbox-auth-s=planted; x=1; daytona-sandbox-auth-s2=other"
                .parse()
                .unwrap(),
        );
        h.append(
            COOKIE,
            "__Host-daytona-sandbox-auth-s=real; daytona-sandbox-auth-s=old"
                .parse()
                .unwrap(),
        );
        let found: Vec<&str> = sandbox_cookie_values(&h, "s").collect();
        assert_eq!(found, ["real", "planted", "old"]);
        let mut many = HeaderMap::new();
        let flood = vec!["daytona-sandbox-auth-s=x"; 100].join("; ");
        many.insert(COOKIE, flood.parse().unwrap());
        assert_eq!(
            sandbox_cookie_values(&many, "s").count(),
            MAX_SANDBOX_COOKIES
        );
        let https = CookieFlags { secure: true };
        let http = CookieFlags { secure: false };
        let both: Vec<&str> = https.values(&h, "daytona-sandbox-auth-s").collect();
        assert_eq!(both, ["real"]);
        let plain: Vec<&str> = http.values(&h, "daytona-sandbox-auth-s").collect();
        assert_eq!(plain, ["planted", "old"]);
    }

    #[test]
    fn reserved_names_in_any_case_and_prefix() {
        for name in [
            "daytona-sandbox-auth-x",
            "DAYTONA-SANDBOX-AUTH-",
            "daytona-preview-page-accepted",
            "Daytona-Preview-Page-Accepted2",
            "sandgate-oidc",
            "__Host-daytona-sandbox-auth-x",
            "__host-sandgate-x",
            "__SECURE-daytona-preview-page-accepted",
            "daytona-sandbox-auth-x=value",
        ] {
            assert!(is_reserved_name(name.as_bytes()), "{name}");
        }
        for name in [
            "",
            "app",
            "daytona",
            "__Host-app",
            "x-daytona-sandbox-auth-x",
            "sandgate",
        ] {
            assert!(!is_reserved_name(name.as_bytes()), "{name}");
        }
    }

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
