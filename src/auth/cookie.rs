//! The sandbox cookie `daytona-sandbox-auth-<idOrToken>` and small cookie helpers.
//!
//! Value: a [`Signer`] token for purpose `sandbox-cookie` with payload
//! `{"s": sandbox id, "t": idOrToken, "e": expiry (unix seconds)}`. A cookie only opens the
//! sandbox it names, under the host label it was issued for, until its expiry.

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};

use super::sign::{now_unix, Signer};

pub const SANDBOX_COOKIE_PREFIX: &str = "daytona-sandbox-auth-";
pub const WARNING_COOKIE: &str = "daytona-preview-page-accepted";
pub const OIDC_COOKIE: &str = "sandgate-oidc";
const PURPOSE: &str = "sandbox-cookie";

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
    /// A `Set-Cookie` value (host-only, `Path=/`, `HttpOnly`).
    pub fn set_cookie(&self, name: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
        let site = if self.secure {
            "; Secure; SameSite=None"
        } else {
            "; SameSite=Lax"
        };
        HeaderValue::try_from(format!(
            "{name}={value}; Max-Age={max_age}; Path=/; HttpOnly{site}"
        ))
        .ok()
    }

    /// Like [`CookieFlags::set_cookie`] but always `SameSite=Lax` (login-flow cookies must
    /// survive the top-level redirect back from the identity provider).
    pub fn set_lax_cookie(&self, name: &str, value: &str, max_age: u64) -> Option<HeaderValue> {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::try_from(format!(
            "{name}={value}; Max-Age={max_age}; Path=/; HttpOnly{secure}; SameSite=Lax"
        ))
        .ok()
    }
}

pub fn sandbox_cookie_name(id_or_token: &str) -> String {
    format!("{SANDBOX_COOKIE_PREFIX}{id_or_token}")
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
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
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
            "a=b; Max-Age=3600; Path=/; HttpOnly; Secure; SameSite=None"
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
}
