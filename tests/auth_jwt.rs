//! Bearer JWTs through the real binary: RS256/ES256 via a live JWKS endpoint (with rotation
//! picked up without restart), and the attacks: alg none, HS/RS confusion, wrong aud/iss,
//! expired, another organisation.
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use support::oidc::{fixture, jwk, now, sign_es256, sign_hs256, sign_rs256, Idp};
use support::recorder::{self, assert_no_credentials};
use support::{send, Proxy, Reply};

fn claims(org: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": "https://issuer.test", "aud": "sandgate", "sub": "u1",
        "exp": now() + 300, "organization_id": org,
    })
}

#[tokio::test]
async fn jwks_tokens_open_their_organisation_and_attacks_fail() {
    let idp = Idp::start("unused").await;
    idp.state.jwks.lock().unwrap().push(jwk("ec"));
    let rec = recorder::start().await;
    let proxy = Proxy::start(&format!(
        r#"
[proxy]
domains = ["preview.localhost"]
[auth]
cookie_keys = ["0123456789abcdef0123456789abcdef"]
max_failures_per_minute = 1000
[auth.jwt]
jwks_url = "{}"
issuer = "https://issuer.test"
audience = "sandgate"
jwks_min_refetch = "200ms"
[[registry.sandboxes]]
id = "priv"
address = "127.0.0.1"
organization = "org-1"
"#,
        idp.jwks_url()
    ));
    let host = format!("{}-priv.preview.localhost", rec.port());
    let call = |token: String| {
        let addr = proxy.addr;
        let host = host.clone();
        async move {
            send(
                addr,
                "GET",
                &host,
                "/",
                &[("authorization", &format!("Bearer {token}"))],
                b"",
            )
            .await
        }
    };
    let code = |r: &Reply| r.json()["code"].as_str().unwrap_or("").to_string();

    let good = sign_rs256("a", &claims("org-1"));
    let r = call(good.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["headers"].get("authorization").is_none());
    assert_no_credentials(&r.json(), &[&good]);
    let r = call(sign_es256(&claims("org-1"))).await;
    assert_eq!(r.status, 200, "ES256: {}", r.text());

    let r = call(sign_rs256("a", &claims("org-2"))).await;
    assert_eq!((r.status, code(&r)), (403, "FORBIDDEN".into()));

    let mut expired = claims("org-1");
    expired["exp"] = (now() - 120).into();
    let r = call(sign_rs256("a", &expired)).await;
    assert_eq!((r.status, code(&r)), (401, "TOKEN_EXPIRED".into()));

    let mut wrong_aud = claims("org-1");
    wrong_aud["aud"] = "someone-else".into();
    let r = call(sign_rs256("a", &wrong_aud)).await;
    assert_eq!((r.status, code(&r)), (401, "TOKEN_INVALID".into()));
    let mut wrong_iss = claims("org-1");
    wrong_iss["iss"] = "https://evil.test".into();
    let r = call(sign_rs256("a", &wrong_iss)).await;
    assert_eq!((r.status, code(&r)), (401, "TOKEN_INVALID".into()));

    // alg: none, with the real claims and no signature.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims("org-1").to_string());
    let r = call(format!("{header}.{body}.")).await;
    assert_eq!((r.status, code(&r)), (401, "TOKEN_INVALID".into()));

    // HS/RS confusion: HS256 "signed" with the RSA public key PEM as the secret.
    for pem in [fixture("rsa_a_pub.pem"), fixture("rsa_a.jwk.json")] {
        let r = call(sign_hs256(pem.as_bytes(), &claims("org-1"))).await;
        assert_eq!((r.status, code(&r)), (401, "TOKEN_INVALID".into()));
    }

    // A token with a kid the JWKS does not have yet: rejected; after the JWKS rotates to the
    // new key, a fresh token with it is accepted without a restart.
    let before_rotation = sign_rs256("b", &claims("org-1"));
    let r = call(before_rotation.clone()).await;
    assert_eq!((r.status, code(&r)), (401, "TOKEN_INVALID".into()));
    *idp.state.jwks.lock().unwrap() = vec![jwk("rsa_b")];
    let fetches = idp.state.jwks_fetches.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut rotated = claims("org-1");
    rotated["jti"] = "after-rotation".into();
    let r = call(sign_rs256("b", &rotated)).await;
    assert_eq!(r.status, 200, "rotated key picked up: {}", r.text());
    // The verdict for the same token seen before the rotation was not cached as invalid.
    let r = call(before_rotation).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(idp.state.jwks_fetches.load(Ordering::SeqCst) > fetches);
    // Unknown kids do not hammer the JWKS endpoint: refetches are rate-limited.
    let before = idp.state.jwks_fetches.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    for i in 0..10 {
        let mut c = claims("org-1");
        c["jti"] = format!("unknown-{i}").into();
        let r = call(sign_rs256("a", &c)).await;
        assert_eq!(r.status, 401);
    }
    let fetched = idp.state.jwks_fetches.load(Ordering::SeqCst) - before;
    let allowed = started.elapsed().as_millis() as usize / 200 + 1;
    assert!(
        fetched <= allowed,
        "{fetched} JWKS fetches, at most {allowed} allowed"
    );
    assert!(fetched < 10);
}

#[tokio::test]
async fn hs256_only_when_a_secret_is_configured_and_never_rs256_then() {
    let rec = recorder::start().await;
    let secret = "hs256-shared-secret-0123456789abcdef";
    let proxy = Proxy::start(&format!(
        r#"
[proxy]
domains = ["preview.localhost"]
[auth.jwt]
hs256_secret = "{secret}"
organization_claim = "org"
[[registry.sandboxes]]
id = "priv"
address = "127.0.0.1"
organization = "org-1"
"#
    ));
    let host = format!("{}-priv.preview.localhost", rec.port());
    let token = sign_hs256(
        secret.as_bytes(),
        &serde_json::json!({"exp": now() + 60, "org": "org-1"}),
    );
    let r = send(
        proxy.addr,
        "GET",
        &host,
        "/",
        &[("authorization", &format!("Bearer {token}"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rs = sign_rs256("a", &serde_json::json!({"exp": now() + 60, "org": "org-1"}));
    let r = send(
        proxy.addr,
        "GET",
        &host,
        "/",
        &[("authorization", &format!("Bearer {rs}"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 401, "no JWKS configured: RS256 refused");
}
