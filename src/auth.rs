//! Authenticate phase: may this request enter this sandbox? And which credentials must be removed
//! before the request reaches the sandbox (they never do).

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::registry::{Resolver, SandboxRecord};
use crate::respond::ProxyError;
use crate::route::is_reserved_port;

pub const PREVIEW_TOKEN_HEADER: &str = "x-daytona-preview-token";
pub const PREVIEW_TOKEN_QUERY: &str = "DAYTONA_SANDBOX_AUTH_KEY";
const PROXY_COOKIE_PREFIXES: [&str; 3] = [
    "daytona-sandbox-auth-",
    "daytona-preview-page-accepted",
    "sandgate-",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "authentication required: send a preview token (X-Daytona-Preview-Token) or a bearer token"
    )]
    Required,
    #[error("the credential is not valid for this sandbox")]
    TokenInvalid,
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Required => "AUTH_REQUIRED",
            AuthError::TokenInvalid => "TOKEN_INVALID",
        }
    }

    pub fn challenge(&self) -> Option<&'static str> {
        Some("Bearer")
    }
}

/// Who is entering. (Principals from API keys, JWTs and cookies arrive with the auth issue.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    PreviewToken,
}

/// Decides access. `port` is `None` for toolbox traffic (always authenticated).
pub async fn authenticate(
    resolver: &Resolver,
    sandbox: &SandboxRecord,
    port: Option<u16>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Access, ProxyError> {
    let needs_auth = !sandbox.public || port.is_none_or(is_reserved_port);
    if !needs_auth {
        return Ok(Access::Public);
    }
    let presented = headers
        .get(PREVIEW_TOKEN_HEADER)
        .map(HeaderValue::as_bytes)
        .or_else(|| {
            query
                .and_then(|q| query_param(q, PREVIEW_TOKEN_QUERY))
                .map(str::as_bytes)
        });
    let Some(presented) = presented else {
        return Err(AuthError::Required.into());
    };
    let Ok(token) = std::str::from_utf8(presented) else {
        return Err(AuthError::TokenInvalid.into());
    };
    if resolver.preview_token_valid(sandbox, token).await? {
        Ok(Access::PreviewToken)
    } else {
        Err(AuthError::TokenInvalid.into())
    }
}

/// Removes every credential the proxy consumes from the headers, and returns the query without
/// the token parameter (`None` when the query needs no change).
pub fn strip_credentials(headers: &mut HeaderMap, query: Option<&str>) -> Option<String> {
    headers.remove(PREVIEW_TOKEN_HEADER);
    strip_proxy_cookies(headers);
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
    PROXY_COOKIE_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn strip_proxy_cookies(headers: &mut HeaderMap) {
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
    use crate::registry::{CacheTtls, StaticRegistry, Upstream};
    use std::sync::Arc;

    fn resolver() -> Resolver {
        let backend = StaticRegistry::from_config(&Default::default()).unwrap();
        Resolver::new(Arc::new(backend), CacheTtls::default())
    }

    async fn check(
        s: &SandboxRecord,
        port: Option<u16>,
        h: &HeaderMap,
        q: Option<&str>,
    ) -> Result<Access, String> {
        authenticate(&resolver(), s, port, h, q)
            .await
            .map_err(|e| match e {
                ProxyError::Auth(a) => a.code().to_string(),
                other => other.to_string(),
            })
    }

    fn sandbox(public: bool) -> SandboxRecord {
        SandboxRecord::new(
            "sbx",
            Upstream::Direct {
                address: "127.0.0.1".into(),
            },
            public,
            "started",
            Some("tok-123"),
        )
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn public_sandboxes_are_open_except_reserved_ports_and_toolbox() {
        let s = sandbox(true);
        let none = headers(&[]);
        assert_eq!(check(&s, Some(3000), &none, None).await, Ok(Access::Public));
        assert_eq!(
            check(&s, Some(22222), &none, None).await,
            Err("AUTH_REQUIRED".into())
        );
        assert_eq!(
            check(&s, None, &none, None).await,
            Err("AUTH_REQUIRED".into())
        );
    }

    #[tokio::test]
    async fn preview_token_by_header_or_query() {
        let s = sandbox(false);
        let good = headers(&[(PREVIEW_TOKEN_HEADER, "tok-123")]);
        assert_eq!(
            check(&s, Some(3000), &good, None).await,
            Ok(Access::PreviewToken)
        );
        let bad = headers(&[(PREVIEW_TOKEN_HEADER, "tok-124")]);
        assert_eq!(
            check(&s, Some(3000), &bad, None).await,
            Err("TOKEN_INVALID".into())
        );
        let none = headers(&[]);
        let q = Some("a=1&DAYTONA_SANDBOX_AUTH_KEY=tok-123");
        assert_eq!(
            check(&s, Some(3000), &none, q).await,
            Ok(Access::PreviewToken)
        );
        let other = Some("x=tok-123");
        assert_eq!(
            check(&s, Some(3000), &none, other).await,
            Err("AUTH_REQUIRED".into())
        );
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
                "app=1; daytona-sandbox-auth-sbx=sig; daytona-preview-page-accepted=true",
            ),
            ("cookie", "other=2"),
        ]);
        strip_credentials(&mut h, None);
        assert!(h.get(PREVIEW_TOKEN_HEADER).is_none());
        assert_eq!(h.get(COOKIE).unwrap(), "app=1; other=2");
        let mut only_ours = headers(&[("cookie", "daytona-sandbox-auth-x=1")]);
        strip_credentials(&mut only_ours, None);
        assert!(only_ours.get(COOKIE).is_none());
    }
}
