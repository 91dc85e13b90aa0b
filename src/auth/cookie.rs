//! The sandbox cookie `daytona-sandbox-auth-<idOrToken>`, the proxy's cookie names, and the
//! filter that keeps sandboxes from planting cookies through their `Set-Cookie`s.
//!
//! Value: a [`Signer`] token for purpose `sandbox-cookie` with payload
//! `{"s": sandbox id, "t": idOrToken, "e": expiry (unix seconds)}`, plus after an OIDC login
//! `"u"` (the user's `sub`) and `"o"` (their organisation), for the identity header. A cookie
//! only opens the sandbox it names, under the host label it was issued for, until its expiry.
//! The two optional fields keep old cookies valid, and old replicas accept new ones. A cookie
//! bound to one port (`"p"`) is signed for purpose `sandbox-cookie-port`, which older replicas
//! (unaware of `p`) refuse.
//!
//! Every preview is a sibling origin of every other, so a sandbox can set cookies for the whole
//! preview domain (`Domain=`), from its responses or from JavaScript. Hence: upstream
//! `Set-Cookie`s lose their `Domain` and never carry one of the proxy's names
//! ([`filter_response_cookies`]); a request may carry several cookies of the proxy's name (a
//! planted one sorted first), so every one is tried; and under https the proxy's cookies are
//! `__Host-` cookies, which no other host can set.

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::sign::{now_unix, Signer};
use super::PROXY_COOKIE_PREFIXES;

pub use super::set_cookie::{filter_response_cookies, filter_set_cookie, SetCookieVerdict};

pub const SANDBOX_COOKIE_PREFIX: &str = "daytona-sandbox-auth-";
pub const WARNING_COOKIE: &str = "daytona-preview-page-accepted";
pub const OIDC_COOKIE: &str = "sandgate-oidc";
/// The prefix of the proxy's cookie names under https: `Secure`, `Path=/`, no `Domain`.
pub const HOST_PREFIX: &str = "__Host-";
const SECURE_PREFIX: &str = "__Secure-";
const PURPOSE: &str = "sandbox-cookie";
/// A cookie bound to one port is signed for its own purpose: a replica from before port
/// binding (which ignores `p`) must refuse it rather than open every port with it.
const PORT_BOUND_PURPOSE: &str = "sandbox-cookie-port";
/// Most cookies of the sandbox cookie's name tried per request: each costs an HMAC, and a
/// planted one is tried after the `__Host-` ones, which nobody else can plant.
const MAX_SANDBOX_COOKIES: usize = 16;

#[derive(Serialize, Deserialize)]
struct Payload {
    s: String,
    t: String,
    e: u64,
    /// The one port it opens (granted by a port-scoped token); absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    u: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
}

/// The user an OIDC login's cookie names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieUser {
    pub sub: String,
    pub org: Option<String>,
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

/// A sandbox cookie; `port`: it opens that port only (the grant was port-scoped).
pub fn issue(
    signer: &Signer,
    sandbox_id: &str,
    id_or_token: &str,
    port: Option<u16>,
    max_age: u64,
) -> Option<String> {
    issue_for(signer, sandbox_id, id_or_token, port, max_age, None)
}

/// A sandbox cookie naming the user who logged in (`None`: no user, e.g. a preview token).
pub fn issue_for(
    signer: &Signer,
    sandbox_id: &str,
    id_or_token: &str,
    port: Option<u16>,
    max_age: u64,
    user: Option<&CookieUser>,
) -> Option<String> {
    let purpose = match port {
        Some(_) => PORT_BOUND_PURPOSE,
        None => PURPOSE,
    };
    signer.sign(
        purpose,
        &Payload {
            s: sandbox_id.into(),
            t: id_or_token.into(),
            e: now_unix() + max_age,
            p: port,
            u: user.map(|u| u.sub.clone()),
            o: user.and_then(|u| u.org.clone()),
        },
    )
}

/// `port`: the request's (`None`: toolbox), which a port-bound cookie must match.
pub fn check(
    signer: &Signer,
    sandbox_id: &str,
    id_or_token: &str,
    port: Option<u16>,
    value: &str,
) -> CookieCheck {
    match open(signer, sandbox_id, id_or_token, port, value) {
        Ok(_) => CookieCheck::Valid,
        Err(check) => check,
    }
}

/// A valid cookie's user (`Ok(None)`: valid, no user), or why it is not valid.
pub fn open(
    signer: &Signer,
    sandbox_id: &str,
    id_or_token: &str,
    port: Option<u16>,
    value: &str,
) -> Result<Option<CookieUser>, CookieCheck> {
    let bound = || {
        signer
            .verify::<Payload>(PORT_BOUND_PURPOSE, value)
            .filter(|p| p.p.is_some())
    };
    let Some(p) = signer.verify::<Payload>(PURPOSE, value).or_else(bound) else {
        return Err(CookieCheck::Invalid);
    };
    if p.s != sandbox_id || p.t != id_or_token || p.p.is_some_and(|bound| Some(bound) != port) {
        return Err(CookieCheck::Invalid);
    }
    if p.e <= now_unix() {
        return Err(CookieCheck::Expired);
    }
    Ok(p.u.map(|sub| CookieUser { sub, org: p.o }))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(vec![b"c".repeat(32)])
    }

    #[test]
    fn cookies_open_only_their_sandbox_and_label() {
        let s = signer();
        let v = issue(&s, "sbx", "sbx", None, 60).unwrap();
        assert_eq!(check(&s, "sbx", "sbx", Some(3000), &v), CookieCheck::Valid);
        assert_eq!(check(&s, "sbx", "sbx", None, &v), CookieCheck::Valid);
        assert_eq!(
            check(&s, "other", "sbx", Some(3000), &v),
            CookieCheck::Invalid
        );
        assert_eq!(
            check(&s, "sbx", "abcdefgh12345678", Some(3000), &v),
            CookieCheck::Invalid
        );
        let mut tampered = v.clone();
        tampered.insert(3, 'x');
        assert_eq!(
            check(&s, "sbx", "sbx", Some(3000), &tampered),
            CookieCheck::Invalid
        );
        // A port-scoped grant's cookie opens its port only (never the toolbox).
        let bound = issue(&s, "sbx", "sbx", Some(3000), 60).unwrap();
        assert_eq!(
            check(&s, "sbx", "sbx", Some(3000), &bound),
            CookieCheck::Valid
        );
        assert_eq!(
            check(&s, "sbx", "sbx", Some(8080), &bound),
            CookieCheck::Invalid
        );
        assert_eq!(check(&s, "sbx", "sbx", None, &bound), CookieCheck::Invalid);
        // The attack: a replica from before port binding reads `{s, t, e}` under the old
        // purpose only, so it never takes a bound cookie for an every-port one.
        #[derive(Deserialize)]
        struct Unbound {
            #[allow(dead_code)]
            s: String,
        }
        assert!(s.verify::<Unbound>(PURPOSE, &bound).is_none());
        assert!(s.verify::<Unbound>(PURPOSE, &v).is_some());
        let expired = s
            .sign(
                PURPOSE,
                &Payload {
                    s: "sbx".into(),
                    t: "sbx".into(),
                    e: now_unix() - 1,
                    p: None,
                    u: None,
                    o: None,
                },
            )
            .unwrap();
        assert_eq!(
            check(&s, "sbx", "sbx", Some(1), &expired),
            CookieCheck::Expired
        );
    }

    #[test]
    fn login_cookies_name_their_user_and_stay_bound_to_their_sandbox() {
        let s = signer();
        let user = CookieUser {
            sub: "alice".into(),
            org: Some("org-1".into()),
        };
        let v = issue_for(&s, "sbx", "sbx", None, 60, Some(&user)).unwrap();
        assert_eq!(open(&s, "sbx", "sbx", Some(3000), &v), Ok(Some(user)));
        assert_eq!(
            open(&s, "other", "sbx", Some(3000), &v),
            Err(CookieCheck::Invalid)
        );
        let plain = issue(&s, "sbx", "sbx", None, 60).unwrap();
        assert_eq!(open(&s, "sbx", "sbx", Some(3000), &plain), Ok(None));
        // A cookie from before the user fields opens as before.
        let old = s
            .sign(
                PURPOSE,
                &serde_json::json!({"s": "sbx", "t": "sbx", "e": now_unix() + 60}),
            )
            .unwrap();
        assert_eq!(open(&s, "sbx", "sbx", Some(3000), &old), Ok(None));
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
}
