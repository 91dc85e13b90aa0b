//! Issue #12 class 2: no platform credential reaches a sandbox, whichever credential opened it.
//! Every row sends one request through the real binary to the runner emulator and asserts on
//! exactly what the runner received: the `Authorization` values left (the app's own, byte for
//! byte, in order), the proxy's headers gone, and `X-Forwarded-Host`.
mod support;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use support::oidc::{now, sign_hs256};
use support::runner::Runner;
use support::{raw, send, Proxy};

const COOKIE_KEY: &str = "test-cookie-key-0123456789abcdef0123";
const JWT_SECRET: &str = "jwt-secret-0123456789abcdef0123456789";
const TOKEN: &str = "tok-victim-0123456789";
const SIGNED: &str = "signedtoken00001";
const BASIC: &str = "Basic dXNlcjpwdw==";

fn config(runner: &Runner) -> String {
    runner.config(&format!(
        r#"
[auth]
cookie_keys = ["{COOKIE_KEY}"]
max_failures_per_minute = 1000
[auth.jwt]
hs256_secret = "{JWT_SECRET}"
issuer = "https://issuer.test"
[[registry.sandboxes]]
id = "victim"
runner = "runner-1"
auth_token = "{TOKEN}"
organization = "org-1"
[[registry.sandboxes]]
id = "pub"
runner = "runner-1"
public = true
organization = "org-1"
[[registry.api_keys]]
key = "apikey-org-1"
organization = "org-1"
[[registry.api_keys]]
key = "apikey-org-2"
organization = "org-2"
[[registry.signed_previews]]
token = "{SIGNED}"
port = 3000
sandbox = "victim"
"#
    ))
}

fn jwt(secret: &str, org: &str, iss: &str, exp_from_now: i64) -> String {
    let claims = serde_json::json!({
        "iss": iss, "sub": "u1", "organization_id": org,
        "exp": now() as i64 + exp_from_now,
    });
    format!("Bearer {}", sign_hs256(secret.as_bytes(), &claims))
}

/// A sandbox cookie in the proxy's format (see `auth_credentials.rs`).
fn sandbox_cookie(sandbox: &str) -> String {
    let body = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"s":"{sandbox}","t":"{sandbox}","e":{}}}"#,
        now() + 600
    ));
    let mut mac = Hmac::<Sha256>::new_from_slice(COOKIE_KEY.as_bytes()).unwrap();
    mac.update(b"sandbox-cookie\0");
    mac.update(body.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("daytona-sandbox-auth-{sandbox}={body}.{sig}; app=1")
}

struct Case {
    name: &'static str,
    /// The host label: a sandbox id or a signed token (port 3000).
    label: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    /// `Authorization` values the runner must receive, in order.
    authorization: Vec<String>,
    x_forwarded_host: &'static str,
}

fn case(name: &'static str, label: &'static str, headers: Vec<(&'static str, String)>) -> Case {
    Case {
        name,
        label,
        path: "/echo".into(),
        headers,
        authorization: vec![],
        x_forwarded_host: "3000-victim.preview.localhost",
    }
}

impl Case {
    fn passes(mut self, values: &[&str]) -> Case {
        self.authorization = values.iter().map(|v| v.to_string()).collect();
        self
    }

    fn path(mut self, path: String) -> Case {
        self.path = path;
        self
    }

    fn forwarded_host(mut self, host: &'static str) -> Case {
        self.x_forwarded_host = host;
        self
    }
}

#[tokio::test]
async fn no_platform_credential_reaches_the_sandbox() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(&runner));
    let token = || ("x-daytona-preview-token", TOKEN.to_string());
    let auth = |v: &str| ("authorization", v.to_string());
    let own_jwt = jwt(JWT_SECRET, "org-1", "https://issuer.test", 300);
    let other_org_jwt = jwt(JWT_SECRET, "org-2", "https://issuer.test", 300);
    let expired_jwt = jwt(JWT_SECRET, "org-1", "https://issuer.test", -600);
    let wrong_issuer_jwt = jwt(JWT_SECRET, "org-1", "https://elsewhere.test", 300);
    let apps_jwt = jwt(
        "the-apps-own-secret-0123456789abcdef",
        "x",
        "https://app",
        300,
    );
    let cases = [
        case(
            "API key, own org",
            "victim",
            vec![auth("Bearer apikey-org-1")],
        ),
        case(
            "API key of another org, entry by preview token",
            "victim",
            vec![auth("Bearer apikey-org-2"), token()],
        ),
        case(
            "unknown bearer: the app's own",
            "victim",
            vec![auth("Bearer the-apps-token"), token()],
        )
        .passes(&["Bearer the-apps-token"]),
        case("JWT, own org", "victim", vec![auth(&own_jwt)]),
        case(
            "JWT of another org",
            "victim",
            vec![auth(&other_org_jwt), token()],
        ),
        case("expired JWT", "victim", vec![auth(&expired_jwt), token()]),
        case(
            "JWT signed by us for another issuer",
            "victim",
            vec![auth(&wrong_issuer_jwt), token()],
        ),
        case(
            "the app's own JWT (another key)",
            "victim",
            vec![auth(&apps_jwt), token()],
        )
        .passes(&[&apps_jwt]),
        case("Basic", "victim", vec![auth(BASIC), token()]).passes(&[BASIC]),
        case(
            "two headers, platform key second",
            "victim",
            vec![auth(BASIC), auth("Bearer apikey-org-2"), token()],
        )
        .passes(&[BASIC]),
        case(
            "two headers, granting key first, the app's second",
            "victim",
            vec![auth("Bearer apikey-org-1"), auth("Bearer the-apps-token")],
        )
        .passes(&["Bearer the-apps-token"]),
        case(
            "two app headers keep their order",
            "victim",
            vec![auth("Bearer app-b"), auth("Bearer app-a"), token()],
        )
        .passes(&["Bearer app-b", "Bearer app-a"]),
        case(
            "platform bearer on a public sandbox",
            "pub",
            vec![auth("Bearer apikey-org-2")],
        )
        .forwarded_host("3000-pub.preview.localhost"),
        case(
            "platform bearer second on a public sandbox",
            "pub",
            vec![auth(BASIC), auth(&own_jwt)],
        )
        .passes(&[BASIC])
        .forwarded_host("3000-pub.preview.localhost"),
        case("preview token header", "victim", vec![token()]),
        case("query token", "victim", vec![])
            .path(format!("/echo?a=1&DAYTONA_SANDBOX_AUTH_KEY={TOKEN}")),
        case(
            "cookie",
            "victim",
            vec![("cookie", sandbox_cookie("victim"))],
        ),
        case("signed host", SIGNED, vec![]),
        case(
            "signed host, the browser's Origin and Referer name it",
            SIGNED,
            vec![
                ("origin", format!("http://3000-{SIGNED}.preview.localhost")),
                (
                    "referer",
                    format!("http://3000-{SIGNED}.preview.localhost/page?x=1"),
                ),
            ],
        ),
        case(
            "X-Daytona-Authorization from the client",
            "victim",
            vec![("x-daytona-authorization", "Bearer forged".into()), token()],
        ),
    ];
    // Every row is checked and every failing row reported (not only the first).
    let mut failures = Vec::new();
    for c in cases {
        let host = format!("3000-{}.preview.localhost", c.label);
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = send(proxy.addr, "GET", &host, &c.path, &headers, b"").await;
        if r.status != 200 {
            failures.push(format!("{}: status {} {}", c.name, r.status, r.text()));
            continue;
        }
        let seen = runner.last();
        let headers: Vec<String> = seen
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v)))
            .collect();
        let everything = format!("{} {headers:?}", seen.target);
        let leaked: Vec<&str> = [TOKEN, SIGNED, "apikey-org", "daytona-sandbox-auth"]
            .into_iter()
            .filter(|secret| everything.contains(secret))
            .collect();
        let checks = [
            (
                "authorization",
                seen.all("authorization") == c.authorization,
            ),
            (
                "runner key",
                seen.all("x-daytona-authorization") == ["Bearer runner-key"],
            ),
            (
                "x-forwarded-host",
                seen.header("x-forwarded-host").as_deref() == Some(c.x_forwarded_host),
            ),
            (
                "preview token header",
                seen.header("x-daytona-preview-token").is_none(),
            ),
            ("no secret anywhere", leaked.is_empty()),
        ];
        for (what, ok) in checks {
            if !ok {
                failures.push(format!("{}: {what}: the runner saw {everything}", c.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn client_trailers_lose_credentials_and_hop_by_hop_names() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(&runner));
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: 3000-victim.preview.localhost\r\n\
         X-Daytona-Preview-Token: {TOKEN}\r\nTransfer-Encoding: chunked\r\n\
         Trailer: x-checksum, authorization, x-daytona-authorization, x-daytona-preview-token, \
         cookie, proxy-authorization, x-forwarded-host, forwarded\r\nConnection: close\r\n\r\n\
         4\r\nbody\r\n0\r\n\
         x-checksum: abc\r\n\
         authorization: Bearer apikey-org-1\r\n\
         x-daytona-authorization: Bearer forged\r\n\
         x-daytona-preview-token: {TOKEN}\r\n\
         cookie: app=1; daytona-sandbox-auth-victim=stolen\r\n\
         proxy-authorization: Basic eDp5\r\n\
         x-forwarded-host: 3000-other.preview.localhost\r\n\
         forwarded: for=10.9.9.9;host=3000-other.preview.localhost\r\n\r\n"
    );
    let reply = tokio::time::timeout(Duration::from_secs(20), raw(proxy.addr, request))
        .await
        .expect("an answer");
    assert_eq!(support::status_of(&reply), 200, "{reply}");
    let echo: serde_json::Value = serde_json::from_str(support::body_of(&reply)).unwrap();
    assert_eq!(echo["body_len"], 4);
    let mut trailers: Vec<(String, String)> = echo["trailers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t[0].as_str().unwrap().into(), t[1].as_str().unwrap().into()))
        .collect();
    trailers.sort();
    assert_eq!(
        trailers,
        [
            ("cookie".to_string(), "app=1".to_string()),
            ("x-checksum".into(), "abc".into())
        ],
        "only the app's trailers pass"
    );
}
