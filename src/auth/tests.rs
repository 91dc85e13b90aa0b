//! Authentication decisions, end to end over a static registry.

use super::*;
use crate::config::CacheConfig;
use crate::registry::{StaticRegistry, Upstream};
use std::sync::Arc;

fn setup() -> (Auth, Resolver) {
    let mut config = crate::config::Config::default();
    config.auth.cookie_keys = vec!["k".repeat(32)];
    config.registry.api_keys = vec![crate::config::ApiKeyEntry {
        key: Some("key-org-a".into()),
        key_sha256: None,
        organization: "org-a".into(),
    }];
    let backend = StaticRegistry::from_config(&config.registry).unwrap();
    (
        Auth::from_config(&config).unwrap(),
        Resolver::new(Arc::new(backend), CacheConfig::default()),
    )
}

async fn check(
    s: &Arc<SandboxRecord>,
    port: Option<u16>,
    h: &HeaderMap,
    q: Option<&str>,
) -> Result<Access, String> {
    let (auth, resolver) = setup();
    let req = AuthRequest {
        sandbox: s,
        port,
        id_or_token: "sbx",
        signed: false,
        headers: h,
        present: Present::scan(h),
        query: q,
        path: "/",
        host: "3000-sbx.preview.localhost",
        peer: "127.0.0.1".parse().unwrap(),
        navigation: false,
        safe_method: true,
        memo: None,
        header_credentials_only: false,
    };
    auth.authenticate(&resolver, &req)
        .await
        .map(|a| grant(a).access.unwrap())
        .map_err(|e| match e {
            Denied::Auth(a) => crate::http::respond::auth_code(&a).to_string(),
            other => other.to_string(),
        })
}

fn sandbox(public: bool) -> Arc<SandboxRecord> {
    Arc::new(record(public))
}

fn record(public: bool) -> SandboxRecord {
    SandboxRecord::new(
        "sbx",
        Upstream::Direct {
            address: "127.0.0.1".into(),
        },
        public,
        "started",
        Some("tok-123"),
    )
    .with_organization(Some("org-a"))
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

#[tokio::test]
async fn api_keys_open_their_organisation_and_a_bad_bearer_falls_through() {
    let s = sandbox(false);
    let key = headers(&[("authorization", "Bearer key-org-a")]);
    assert_eq!(check(&s, None, &key, None).await, Ok(Access::Bearer));
    let other_org = SandboxRecord::new(
        "sbx",
        Upstream::Direct {
            address: "127.0.0.1".into(),
        },
        false,
        "started",
        None,
    )
    .with_organization(Some("org-b"));
    assert_eq!(
        check(&Arc::new(other_org), None, &key, None).await,
        Err("FORBIDDEN".into())
    );
    let app_auth = headers(&[
        ("authorization", "Bearer the-apps-own-token"),
        (PREVIEW_TOKEN_HEADER, "tok-123"),
    ]);
    assert_eq!(
        check(&s, Some(3000), &app_auth, None).await,
        Ok(Access::PreviewToken)
    );
    let basic = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
    assert_eq!(
        check(&s, Some(3000), &basic, None).await,
        Err("AUTH_REQUIRED".into())
    );
}

#[tokio::test]
async fn navigations_by_query_token_get_a_cookie_and_a_clean_redirect() {
    let (auth, resolver) = setup();
    let s = sandbox(false);
    let h = headers(&[]);
    let req = AuthRequest {
        sandbox: &s,
        port: Some(3000),
        id_or_token: "sbx",
        signed: false,
        headers: &h,
        present: Present::scan(&h),
        query: Some("b=%2F&DAYTONA_SANDBOX_AUTH_KEY=tok-123&a=1"),
        path: "/p",
        host: "3000-sbx.preview.localhost",
        peer: "127.0.0.1".parse().unwrap(),
        navigation: true,
        safe_method: true,
        memo: None,
        header_credentials_only: false,
    };
    let g = grant(auth.authenticate(&resolver, &req).await.unwrap());
    assert_eq!(g.redirect.as_deref(), Some("/p?b=%2F&a=1"));
    let cookie = g.set_cookie.unwrap();
    let cookie = cookie.to_str().unwrap();
    assert!(cookie.starts_with("daytona-sandbox-auth-sbx="), "{cookie}");
    let value = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
    let with_cookie = headers(&[("cookie", &format!("daytona-sandbox-auth-sbx={value}"))]);
    let again = AuthRequest {
        headers: &with_cookie,
        present: Present::scan(&with_cookie),
        query: None,
        ..req
    };
    let g = grant(auth.authenticate(&resolver, &again).await.unwrap());
    assert_eq!(g.access, Some(Access::Cookie));

    // On the proxy's own host (header routing) neither the query token nor the cookie counts.
    for shared in [
        AuthRequest {
            header_credentials_only: true,
            ..again
        },
        AuthRequest {
            header_credentials_only: true,
            navigation: false,
            ..req
        },
    ] {
        let refused = auth.authenticate(&resolver, &shared).await;
        assert!(
            matches!(refused, Err(Denied::Auth(AuthError::Required))),
            "{refused:?}"
        );
    }
}

#[tokio::test]
async fn a_connection_remembers_its_preview_token_for_that_record_only() {
    let (auth, resolver) = setup();
    let s = sandbox(false);
    let memo = TokenMemo::default();
    let good = headers(&[(PREVIEW_TOKEN_HEADER, "tok-123")]);
    let bad = headers(&[(PREVIEW_TOKEN_HEADER, "tok-124")]);
    let ask = |sandbox, h| AuthRequest {
        sandbox,
        port: Some(3000),
        id_or_token: "sbx",
        signed: false,
        headers: h,
        present: Present::scan(h),
        query: None,
        path: "/",
        host: "3000-sbx.preview.localhost",
        peer: "127.0.0.1".parse().unwrap(),
        navigation: false,
        safe_method: true,
        memo: Some(&memo),
        header_credentials_only: false,
    };
    assert!(!memo.matches(&s, "tok-123"));
    let first = grant(auth.authenticate(&resolver, &ask(&s, &good)).await.unwrap());
    assert_eq!(first.access, Some(Access::PreviewToken));
    assert!(
        memo.matches(&s, "tok-123"),
        "remembered after a local check"
    );
    assert!(!memo.matches(&s, "tok-12"), "a prefix is not the token");
    assert!(!memo.matches(&s, "tok-124"));
    // A wrong token is still checked (and refused), and does not replace the memo.
    let refused = auth.authenticate(&resolver, &ask(&s, &bad)).await;
    assert!(matches!(refused, Err(Denied::Auth(_))));
    assert!(memo.matches(&s, "tok-123"));
    // The same sandbox as a new record (a refresh, a rotated token) is checked afresh.
    let refreshed = sandbox(false);
    assert!(!memo.matches(&refreshed, "tok-123"));
    let rotated = Arc::new(SandboxRecord::new(
        "sbx",
        Upstream::Direct {
            address: "127.0.0.1".into(),
        },
        false,
        "started",
        Some("tok-new"),
    ));
    let old_token = auth.authenticate(&resolver, &ask(&rotated, &good)).await;
    assert!(matches!(old_token, Err(Denied::Auth(_))), "rotated out");
}

/// The grant of an authentication that must have granted.
fn grant(decided: Authenticated) -> Granted {
    match decided {
        Authenticated::Granted(granted) => granted,
        other => panic!("not granted: {other:?}"),
    }
}

#[test]
fn a_user_too_long_for_a_cookie_still_gets_a_session() {
    let (auth, _) = setup();
    let user = cookie::CookieUser {
        sub: "u".repeat(5000),
        org: None,
    };
    let set_cookie = auth
        .sandbox_cookie_for("sbx", "sbx", None, Some(&user))
        .unwrap();
    let value = set_cookie.to_str().unwrap();
    let token = value.split_once('=').unwrap().1.split(';').next().unwrap();
    assert_eq!(
        cookie::open(&auth.signer, "sbx", "sbx", Some(3000), token),
        Ok(None)
    );
}
