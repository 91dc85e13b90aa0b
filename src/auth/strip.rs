//! What never reaches a sandbox: the proxy's own credentials (preview token header and query
//! parameter, the proxy's cookies) and the platform's `Authorization` headers.

use std::net::IpAddr;

use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderValue};

use super::{cookie, Auth, AuthError, PREVIEW_TOKEN_NAME, PREVIEW_TOKEN_QUERY};
use crate::base::header_scan::{Present, Tracked};
use crate::registry::{Resolver, SandboxRecord};

impl Auth {
    /// Removes every `Authorization` header carrying a platform credential (an API key the
    /// registry knows or a JWT signed with our keys, of any organisation, valid or not), whether
    /// it granted access, was refused or was not needed; the app's own ones (any other scheme,
    /// or a bearer the platform does not know) pass byte for byte, in order. Verdicts come from
    /// the credential cache; a backend error strips (fail closed).
    pub async fn remove_platform_authorization(
        &self,
        resolver: &Resolver,
        sandbox: &SandboxRecord,
        headers: &mut HeaderMap,
        first_is_platform: bool,
        peer: IpAddr,
    ) {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        if values.next().is_none() {
            return;
        }
        if first_is_platform && values.next().is_none() {
            headers.remove(AUTHORIZATION);
            return;
        }
        let mut kept = Vec::new();
        let mut removed = false;
        for (i, value) in headers.get_all(AUTHORIZATION).iter().enumerate() {
            let platform = (i == 0 && first_is_platform)
                || match bearer_of(value) {
                    Some(token) => {
                        self.is_platform_bearer(resolver, sandbox, token, peer)
                            .await
                    }
                    None => false,
                };
            if platform {
                removed = true;
            } else {
                kept.push(value.clone());
            }
        }
        if removed {
            headers.remove(AUTHORIZATION);
            for value in kept {
                headers.append(AUTHORIZATION, value);
            }
        }
    }

    /// Is `token` one of the platform's credentials? Only a bearer nobody on the platform
    /// knows (`TokenInvalid`) is the app's own.
    async fn is_platform_bearer(
        &self,
        resolver: &Resolver,
        sandbox: &SandboxRecord,
        token: &str,
        peer: IpAddr,
    ) -> bool {
        match self.check_bearer(resolver, sandbox, token, peer).await {
            Ok(verdict) => !matches!(verdict, Err(AuthError::TokenInvalid)),
            Err(_) => true,
        }
    }
}

/// The token of the first `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    bearer_of(headers.get(AUTHORIZATION)?)
}

pub(super) fn bearer_of(value: &HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Removes every credential the proxy consumes from the headers, and returns the query without
/// the token parameter (`None` when the query needs no change).
pub fn strip_credentials(
    headers: &mut HeaderMap,
    present: Present,
    query: Option<&str>,
) -> Option<String> {
    if present.may_have(Tracked::PreviewToken) {
        headers.remove(PREVIEW_TOKEN_NAME);
    }
    if present.may_have(Tracked::Cookie) {
        strip_proxy_cookies(headers);
    }
    query.and_then(|q| remove_query_param(q, PREVIEW_TOKEN_QUERY))
}

/// The raw value of the first `name=value` pair in a query string (no decoding).
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// The query without any `name` parameter; other parameters keep their bytes and order.
pub fn remove_query_param(query: &str, name: &str) -> Option<String> {
    let is_target = |pair: &&str| pair.split_once('=').map_or(*pair, |(k, _)| k) == name;
    if !query.split('&').any(|p| is_target(&p)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_target(p)).collect();
    Some(kept.join("&"))
}

fn is_proxy_cookie(name: &str) -> bool {
    cookie::is_reserved_name(name.as_bytes())
}

pub(crate) fn strip_proxy_cookies(headers: &mut HeaderMap) {
    let has_ours = headers.get_all(COOKIE).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(';').any(|c| is_proxy_cookie(c.trim_start())))
            .unwrap_or(false)
    });
    if !has_ours {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !is_proxy_cookie(c))
        .map(str::to_owned)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::try_from(kept.join("; ")) {
            headers.insert(COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::PREVIEW_TOKEN_HEADER;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn stripping_keeps_other_params_and_cookies_exactly() {
        assert_eq!(
            remove_query_param(
                "b=%2F&DAYTONA_SANDBOX_AUTH_KEY=t&a=1&a=2",
                PREVIEW_TOKEN_QUERY
            )
            .as_deref(),
            Some("b=%2F&a=1&a=2")
        );
        assert_eq!(
            remove_query_param("DAYTONA_SANDBOX_AUTH_KEY=t", PREVIEW_TOKEN_QUERY).as_deref(),
            Some("")
        );
        assert_eq!(remove_query_param("a=1", PREVIEW_TOKEN_QUERY), None);
        let mut h = headers(&[
            (PREVIEW_TOKEN_HEADER, "t"),
            (
                "cookie",
                "app=1; daytona-sandbox-auth-sbx=sig; daytona-preview-page-accepted=true; sandgate-oidc=x",
            ),
            (
                "cookie",
                "__Host-daytona-sandbox-auth-sbx=sig; other=2; __Host-Daytona-Preview-Page-Accepted=true",
            ),
        ]);
        let present = Present::scan(&h);
        strip_credentials(&mut h, present, None);
        assert!(h.get(PREVIEW_TOKEN_HEADER).is_none());
        assert_eq!(Tracked::PreviewToken.name(), PREVIEW_TOKEN_HEADER);
        assert_eq!(PREVIEW_TOKEN_NAME.as_str(), PREVIEW_TOKEN_HEADER);
        assert_eq!(h.get(COOKIE).unwrap(), "app=1; other=2");
        let mut only_ours = headers(&[("cookie", "daytona-sandbox-auth-x=1")]);
        let present = Present::scan(&only_ours);
        strip_credentials(&mut only_ours, present, None);
        assert!(only_ours.get(COOKIE).is_none());
    }
}
