//! Credentials through the real binary against a recording upstream: every mode succeeding and
//! failing, and the sandbox never seeing any of them.
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use support::browser::Browser;
use support::recorder::{self, assert_no_credentials};
use support::{send, Proxy};

const KEY: &str = "test-cookie-key-0123456789abcdef0123";
const TOKEN: &str = "tok-priv-0123456789";

fn config(rport: u16, signed_port: u16, auth_extra: &str, extra: &str) -> String {
    let org2_hash = hex::encode(Sha256::digest(b"apikey-org-2"));
    format!(
        r#"
[proxy]
domains = ["preview.localhost"]
[auth]
cookie_keys = ["{KEY}"]
max_failures_per_minute = 1000
{auth_extra}
[[registry.sandboxes]]
id = "priv"
address = "127.0.0.1"
auth_token = "{TOKEN}"
organization = "org-1"
[[registry.sandboxes]]
id = "pub"
address = "127.0.0.1"
public = true
auth_token = "tok-pub"
organization = "org-1"
[[registry.sandboxes]]
id = "other"
address = "127.0.0.1"
auth_token = "tok-other"
organization = "org-2"
[[registry.api_keys]]
key = "apikey-org-1"
organization = "org-1"
[[registry.api_keys]]
key_sha256 = "{org2_hash}"
organization = "org-2"
[[registry.signed_previews]]
token = "signedtoken00001"
port = {rport}
sandbox = "priv"
[[registry.signed_previews]]
token = "signedtoken00002"
port = {signed_port}
sandbox = "priv"
[[registry.signed_previews]]
token = "expiredtoken0001"
port = {rport}
sandbox = "priv"
expires_at = 1000
{extra}
"#
    )
}

async fn setup(auth_extra: &str) -> (Proxy, SocketAddr, u16) {
    let rec = recorder::start().await;
    let proxy = Proxy::start(&config(rec.port(), 1, auth_extra, ""));
    (proxy, rec, rec.port())
}

fn host(port: u16, label: &str) -> String {
    format!("{port}-{label}.preview.localhost")
}

/// A sandbox cookie in the documented format, for crafting expired/foreign ones.
fn craft_cookie(sandbox: &str, label: &str, exp: u64) -> String {
    let body = URL_SAFE_NO_PAD.encode(format!(r#"{{"s":"{sandbox}","t":"{label}","e":{exp}}}"#));
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(b"sandbox-cookie\0");
    mac.update(body.as_bytes());
    format!(
        "{body}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn now() -> u64 {
    support::oidc::now()
}

#[tokio::test]
async fn every_credential_opens_a_private_sandbox_and_none_reaches_it() {
    let (proxy, _rec, rp) = setup("").await;
    let h = host(rp, "priv");
    let secrets = [TOKEN, "apikey-org-1", "apikey-org-2"];

    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/a?x=1",
        &[("x-daytona-preview-token", TOKEN), ("cookie", "app=1")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_no_credentials(&seen, &secrets);
    assert_eq!(seen["headers"]["cookie"][0], "app=1");
    assert_eq!(seen["query"], "x=1");

    let q = format!("/a?b=%2F&DAYTONA_SANDBOX_AUTH_KEY={TOKEN}&a=1&a=2");
    let r = send(proxy.addr, "GET", &h, &q, &[], b"").await;
    assert_eq!(r.status, 200, "non-browsers just proceed: {}", r.text());
    assert_eq!(
        r.json()["query"],
        "b=%2F&a=1&a=2",
        "other params keep bytes and order"
    );
    assert_no_credentials(&r.json(), &secrets);

    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/",
        &[("authorization", "Bearer apikey-org-1")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.json()["headers"].get("authorization").is_none(),
        "consumed Bearer is removed"
    );
    assert_no_credentials(&r.json(), &secrets);

    let r = send(
        proxy.addr,
        "GET",
        &host(rp, "other"),
        "/",
        &[("authorization", "Bearer apikey-org-2")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "key_sha256 entries work: {}", r.text());

    let cookie = format!(
        "daytona-sandbox-auth-priv={}; app=2",
        craft_cookie("priv", "priv", now() + 600)
    );
    let r = send(proxy.addr, "GET", &h, "/", &[("cookie", &cookie)], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["cookie"][0], "app=2");
    assert_no_credentials(&r.json(), &secrets);

    // Signed token in the host: opens that port, sets the cookie for that host.
    let r = send(
        proxy.addr,
        "GET",
        &host(rp, "signedtoken00001"),
        "/s",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let set: Vec<_> = r
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        set.iter()
            .any(|c| c.starts_with("daytona-sandbox-auth-signedtoken00001=")),
        "{set:?}"
    );
    assert!(
        set.iter().any(|c| c == "app=1; Path=/"),
        "the app's own cookies survive: {set:?}"
    );
    assert_no_credentials(&r.json(), &secrets);

    // Toolbox traffic with an API key passes auth (nothing listens on 2280: 502, not 401).
    let r = send(
        proxy.addr,
        "GET",
        "127.0.0.1",
        "/toolbox/priv/version",
        &[("authorization", "Bearer apikey-org-1")],
        b"",
    )
    .await;
    assert_ne!(r.status, 401, "{}", r.text());
    assert_ne!(r.status, 403, "{}", r.text());
}

#[tokio::test]
async fn failures_answer_json_codes_and_the_apps_authorization_is_forwarded() {
    let (proxy, _rec, rp) = setup("").await;
    let h = host(rp, "priv");
    let code = |r: &support::Reply| r.json()["code"].as_str().unwrap().to_string();

    let r = send(proxy.addr, "GET", &h, "/", &[], b"").await;
    assert_eq!((r.status, code(&r)), (401, "AUTH_REQUIRED".into()));
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/",
        &[("x-daytona-preview-token", "nope")],
        b"",
    )
    .await;
    assert_eq!((r.status, code(&r)), (401, "TOKEN_INVALID".into()));
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/?DAYTONA_SANDBOX_AUTH_KEY=nope",
        &[],
        b"",
    )
    .await;
    assert_eq!((r.status, code(&r)), (401, "TOKEN_INVALID".into()));
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/",
        &[("authorization", "Bearer apikey-org-2")],
        b"",
    )
    .await;
    assert_eq!((r.status, code(&r)), (403, "FORBIDDEN".into()));
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/",
        &[("authorization", "Bearer tok-other")],
        b"",
    )
    .await;
    assert_eq!((r.status, code(&r)), (401, "TOKEN_INVALID".into()));

    // A browser navigation without credentials (no OIDC configured): a readable 401 page.
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/",
        &[("accept", "text/html"), ("sec-fetch-mode", "navigate")],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.text().contains("<!doctype html>"), "{}", r.text());

    // The app's own Authorization on a private sandbox is not consumed: it is forwarded.
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/",
        &[
            ("authorization", "Bearer app-own-token"),
            ("x-daytona-preview-token", TOKEN),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["headers"]["authorization"][0],
        "Bearer app-own-token"
    );
    assert!(r.json()["headers"].get("x-daytona-preview-token").is_none());

    // WebSocket upgrade with bad credentials: 401 JSON, never a redirect or a page.
    let raw = support::raw_exchange(
        proxy.addr,
        format!("GET /ws HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAccept: text/html\r\nCookie: daytona-sandbox-auth-priv=forged.sig\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(support::status_of(&raw), 401, "{raw}");
    assert!(
        raw.contains("application/json") && raw.contains("TOKEN_INVALID"),
        "{raw}"
    );
}

#[tokio::test]
async fn public_sandboxes_are_open_except_reserved_ports_and_toolbox() {
    let (proxy, _rec, rp) = setup("").await;
    let r = send(
        proxy.addr,
        "GET",
        &host(rp, "pub"),
        "/",
        &[("authorization", "Bearer app-token")],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["headers"]["authorization"][0], "Bearer app-token");
    // A platform API key (any organisation) never reaches even a public sandbox.
    for key in ["apikey-org-1", "apikey-org-2"] {
        let bearer = format!("Bearer {key}");
        let r = send(
            proxy.addr,
            "GET",
            &host(rp, "pub"),
            "/",
            &[("authorization", &bearer)],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["headers"].get("authorization").is_none(), "{key}");
    }
    for port in [2280, 22222, 33333] {
        let r = send(proxy.addr, "GET", &host(port, "pub"), "/", &[], b"").await;
        assert_eq!(r.status, 401, "reserved port {port}: {}", r.text());
    }
    let r = send(
        proxy.addr,
        "GET",
        "127.0.0.1",
        "/toolbox/pub/version",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test]
async fn query_login_redirects_browsers_and_sets_a_working_cookie() {
    let (proxy, _rec, rp) = setup("").await;
    let h = host(rp, "priv");
    let mut browser = Browser::new(proxy.addr);
    let first = browser
        .get(&format!(
            "http://{h}/p?b=%2F&DAYTONA_SANDBOX_AUTH_KEY={TOKEN}&a=1"
        ))
        .await;
    assert_eq!(first.status, 302);
    assert_eq!(first.headers["location"], "/p?b=%2F&a=1");
    let set = first.headers["set-cookie"].to_str().unwrap();
    assert!(set.starts_with("daytona-sandbox-auth-priv="), "{set}");
    assert!(
        set.ends_with("; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax"),
        "{set}"
    );
    let (r, _) = browser.navigate(&format!("http://{h}/p?b=%2F&a=1")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["query"], "b=%2F&a=1");
    assert_no_credentials(&r.json(), &[TOKEN]);
    // The cookie opens this sandbox only: presented under another sandbox's name, it fails.
    let value = browser
        .cookie(&h, "daytona-sandbox-auth-priv")
        .unwrap()
        .clone();
    let r = send(
        proxy.addr,
        "GET",
        &host(rp, "other"),
        "/",
        &[("cookie", &format!("daytona-sandbox-auth-other={value}"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
}

#[tokio::test]
async fn websocket_upgrades_authenticate_and_carry_no_credentials_upstream() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::handshake::client::generate_key;
    let (proxy, _rec, rp) = setup("").await;
    let h = host(rp, "priv");
    let request = http::Request::builder()
        .uri(format!(
            "ws://{}/ws?x=1&DAYTONA_SANDBOX_AUTH_KEY={TOKEN}",
            proxy.addr
        ))
        .header("host", &h)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", generate_key())
        .header("x-daytona-preview-token", TOKEN)
        .header(
            "cookie",
            format!(
                "a=1; daytona-sandbox-auth-priv={}",
                craft_cookie("priv", "priv", now() + 60)
            ),
        )
        .body(())
        .unwrap();
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    let first = ws.next().await.unwrap().unwrap();
    let seen: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(seen["query"], "x=1");
    assert_eq!(seen["headers"]["cookie"][0], "a=1");
    assert_no_credentials(&seen, &[TOKEN]);
}

#[tokio::test]
async fn query_login_never_redirects_off_host() {
    let (proxy, _rec, rp) = setup("").await;
    let h = host(rp, "priv");
    // A backslash path is refused outright (400 BAD_PATH, tests/adversarial_paths.rs).
    for (path, status) in [
        ("//evil.com", 302),
        ("//evil.com/x", 302),
        ("/\\evil.com", 400),
    ] {
        let raw = support::raw_exchange(
            proxy.addr,
            format!("GET {path}?DAYTONA_SANDBOX_AUTH_KEY={TOKEN} HTTP/1.1\r\nHost: {h}\r\nAccept: text/html\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        );
        let location = raw
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap_or("");
        assert_eq!(support::status_of(&raw), status, "{path}: {raw}");
        assert!(status != 302 || location == "/", "{path}: {raw}");
    }
}

#[tokio::test]
async fn tampered_expired_and_foreign_cookies_are_rejected() {
    let (proxy, _rec, rp) = setup("").await;
    let h = host(rp, "priv");
    let code = |r: &support::Reply| r.json()["code"].as_str().unwrap().to_string();
    let good = craft_cookie("priv", "priv", now() + 600);
    let try_cookie = |value: String| {
        let h = h.clone();
        let addr = proxy.addr;
        async move {
            send(
                addr,
                "GET",
                &h,
                "/",
                &[("cookie", &format!("daytona-sandbox-auth-priv={value}"))],
                b"",
            )
            .await
        }
    };
    assert_eq!(try_cookie(good.clone()).await.status, 200);
    let mut tampered = good.clone();
    tampered.replace_range(0..1, if good.starts_with('e') { "f" } else { "e" });
    let r = try_cookie(tampered).await;
    assert_eq!((r.status, code(&r)), (401, "TOKEN_INVALID".into()));
    let r = try_cookie(craft_cookie("priv", "priv", now() - 1)).await;
    assert_eq!((r.status, code(&r)), (401, "TOKEN_EXPIRED".into()));
    let r = try_cookie(craft_cookie("other", "priv", now() + 600)).await;
    assert_eq!(
        (r.status, code(&r)),
        (401, "TOKEN_INVALID".into()),
        "foreign sandbox"
    );
    let r = try_cookie(craft_cookie("priv", "signedtoken00001", now() + 600)).await;
    assert_eq!(
        (r.status, code(&r)),
        (401, "TOKEN_INVALID".into()),
        "other label"
    );
    // A bad cookie does not stop a valid preview token.
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/",
        &[
            ("cookie", "daytona-sandbox-auth-priv=x.y"),
            ("x-daytona-preview-token", TOKEN),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn signed_preview_tokens_are_port_bound_expiring_and_revocable() {
    let rec = recorder::start().await;
    let rec2 = recorder::start().await;
    let rp = rec.port();
    let proxy = Proxy::start(&config(rp, rec2.port(), "", ""));
    let r = send(
        proxy.addr,
        "GET",
        &host(rp, "signedtoken00001"),
        "/",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Bound to rp: on another port it is only a (nonexistent) sandbox id.
    let r = send(
        proxy.addr,
        "GET",
        &host(rec2.port(), "signedtoken00001"),
        "/",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = send(
        proxy.addr,
        "GET",
        &host(rec2.port(), "signedtoken00002"),
        "/",
        &[],
        b"",
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "token 2 is bound to the second port: {}",
        r.text()
    );
    let r = send(
        proxy.addr,
        "GET",
        &host(rp, "expiredtoken0001"),
        "/",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 404, "expired: {}", r.text());
    // The cookie a signed token set does not open the sandbox on a sandbox-id host.
    let set = send(
        proxy.addr,
        "GET",
        &host(rp, "signedtoken00001"),
        "/",
        &[],
        b"",
    )
    .await;
    let cookie = set.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let value = cookie.split_once('=').unwrap().1;
    let r = send(
        proxy.addr,
        "GET",
        &host(rp, "priv"),
        "/",
        &[("cookie", &format!("daytona-sandbox-auth-priv={value}"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);

    // Revocation: the entry disappears from the registry (reload) and the token stops working.
    let revoked = config(rp, rec2.port(), "", "").replace(
        "token = \"signedtoken00001\"",
        "token = \"revokedtoken0001\"",
    );
    std::fs::write(
        &proxy.config_path,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{revoked}"),
    )
    .unwrap();
    proxy.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = send(
            proxy.addr,
            "GET",
            &host(rp, "signedtoken00001"),
            "/",
            &[],
            b"",
        )
        .await;
        if r.status == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still open after revocation"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn repeated_failures_get_429_but_valid_credentials_still_pass() {
    let rec = recorder::start().await;
    let rp = rec.port();
    let proxy = Proxy::start(&config(rp, 1, "", "").replace(
        "max_failures_per_minute = 1000",
        "max_failures_per_minute = 3",
    ));
    let h = host(rp, "priv");
    for _ in 0..3 {
        let r = send(
            proxy.addr,
            "GET",
            &h,
            "/",
            &[("x-daytona-preview-token", "guess")],
            b"",
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/",
        &[("x-daytona-preview-token", TOKEN)],
        b"",
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "a valid credential is never refused: {}",
        r.text()
    );
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/",
        &[("x-daytona-preview-token", "guess")],
        b"",
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["code"], "RATE_LIMITED");
    let retry: u32 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/",
        &[
            ("accept", "text/html"),
            ("x-daytona-preview-token", "guess"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 429);
    assert!(r.text().contains("<!doctype html>"));
    // Public sandboxes need no credential check: still open.
    let r = send(proxy.addr, "GET", &host(rp, "pub"), "/", &[], b"").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn cors_preflights_are_answered_before_auth_for_allowed_origins_only() {
    let (proxy, _rec, rp) = setup("").await;
    let h = host(rp, "priv");
    // The same sandbox on another port (a sibling sandbox's origin is never allowed).
    let origin = format!("http://{}", host(5173, "priv"));
    let preflight = |origin: String, extra: Vec<(&'static str, &'static str)>, h: String| {
        let addr = proxy.addr;
        async move {
            let mut headers = vec![
                ("origin", origin.as_str()),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "content-type,x-custom"),
            ];
            headers.extend(extra);
            send(addr, "OPTIONS", &h, "/api", &headers, b"").await
        }
    };
    let r = preflight(origin.clone(), vec![], h.clone()).await;
    assert_eq!(r.status, 204, "no credentials needed: {}", r.text());
    assert_eq!(r.headers["access-control-allow-origin"], origin.as_str());
    assert_eq!(r.headers["access-control-allow-credentials"], "true");
    assert_eq!(r.headers["access-control-allow-methods"], "PUT");
    assert_eq!(
        r.headers["access-control-allow-headers"],
        "content-type,x-custom"
    );
    assert_eq!(r.headers["vary"], "Origin");
    assert!(r.headers.contains_key("access-control-max-age"));

    let r = preflight("https://evil.example".into(), vec![], h.clone()).await;
    assert!(r.headers.get("access-control-allow-origin").is_none());

    // Normal responses: headers added for allowed origins, unless the app set its own.
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/x",
        &[("origin", &origin), ("x-daytona-preview-token", TOKEN)],
        b"",
    )
    .await;
    assert_eq!(r.headers["access-control-allow-origin"], origin.as_str());
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/own-cors",
        &[("origin", &origin), ("x-daytona-preview-token", TOKEN)],
        b"",
    )
    .await;
    let all: Vec<_> = r
        .headers
        .get_all("access-control-allow-origin")
        .iter()
        .collect();
    assert_eq!(all, vec!["https://app-chosen.example"]);
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/x",
        &[
            ("origin", "https://evil.example"),
            ("x-daytona-preview-token", TOKEN),
        ],
        b"",
    )
    .await;
    assert!(r.headers.get("access-control-allow-origin").is_none());

    // X-Daytona-Disable-CORS: the preflight goes to the app, header removed.
    let r = preflight(
        origin.clone(),
        vec![("x-daytona-disable-cors", "true")],
        host(rp, "pub"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["method"], "OPTIONS");
    assert!(seen["headers"].get("x-daytona-disable-cors").is_none());
    assert!(r.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn preview_warning_interstitial_with_csrf_and_same_host_redirects() {
    let (proxy, _rec, rp) = setup("preview_warning = true").await;
    let h = host(rp, "pub");
    let mut browser = Browser::new(proxy.addr);
    let page = browser.get(&format!("http://{h}/app?x=%3Cb%3E")).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.headers["content-security-policy"],
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    );
    let text = page.text();
    assert!(text.contains("Preview warning"), "{text}");
    let csrf = text
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let action = text
        .split("action=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(
        action.starts_with("/accept-daytona-preview-warning?redirect="),
        "{action}"
    );

    // Non-browsers, the skip header and WebSocket-ish requests are not interrupted.
    let r = send(proxy.addr, "GET", &h, "/", &[("accept", "text/html")], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/");
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/",
        &[
            ("accept", "text/html"),
            ("user-agent", "Mozilla/5.0"),
            ("x-daytona-skip-preview-warning", "true"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.json()["path"], "/");

    let form = |token: &str| format!("csrf={token}");
    let post = |path: String, body: String| {
        let h = h.clone();
        let addr = proxy.addr;
        async move {
            send(
                addr,
                "POST",
                &h,
                &path,
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("user-agent", "Mozilla/5.0"),
                ],
                body.as_bytes(),
            )
            .await
        }
    };
    let r = post(action.clone(), form("forged.token")).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let other_host_csrf = post(action.clone(), String::new()).await;
    assert_eq!(other_host_csrf.status, 403);
    let r = post(action.clone(), form(&csrf)).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/app?x=%3Cb%3E");
    let set = r.headers["set-cookie"].to_str().unwrap();
    assert!(
        set.starts_with("daytona-preview-page-accepted=true; Max-Age=86400"),
        "{set}"
    );
    for evil in [
        "%2F%2Fevil.com",
        "https%3A%2F%2Fevil.com",
        "%2F%5Cevil.com",
        "%5C%5Cevil.com",
        "%2F%252F%252Fevil.com",
    ] {
        let r = post(
            format!("/accept-daytona-preview-warning?redirect={evil}"),
            form(&csrf),
        )
        .await;
        assert_eq!(r.headers["location"], "/", "{evil}");
    }
    // With the cookie: through to the app, which never sees the cookie.
    let r = send(
        proxy.addr,
        "GET",
        &h,
        "/app",
        &[
            ("accept", "text/html"),
            ("user-agent", "Mozilla/5.0"),
            ("cookie", "daytona-preview-page-accepted=true; a=b"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.json()["path"], "/app");
    assert_no_credentials(&r.json(), &[]);
}

/// Sends `requests` one after the other on one keep-alive connection; returns each status.
fn statuses_on_one_connection(addr: SocketAddr, requests: &[String]) -> Vec<u16> {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut statuses = Vec::new();
    for request in requests {
        writer.write_all(request.as_bytes()).unwrap();
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        statuses.push(support::status_of(&status_line));
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
    }
    statuses
}

/// A connection that entered with the preview token gets no pass for later requests with
/// another token (sandgate remembers the accepted token per connection to skip re-hashing it).
#[tokio::test]
async fn a_keep_alive_connection_is_checked_on_every_request() {
    let (proxy, _rec, rp) = setup("").await;
    let h = host(rp, "priv");
    let request = |token: &str| {
        format!("GET / HTTP/1.1\r\nHost: {h}\r\nX-Daytona-Preview-Token: {token}\r\n\r\n")
    };
    let no_token = format!("GET / HTTP/1.1\r\nHost: {h}\r\n\r\n");
    let prefix = &TOKEN[..TOKEN.len() - 1];
    let longer = format!("{TOKEN}0");
    let requests = [
        request(TOKEN),
        request(TOKEN),
        request("nope"),
        request(prefix),
        request(&longer),
        no_token,
        request(TOKEN),
    ];
    let addr = proxy.addr;
    let statuses = tokio::task::spawn_blocking(move || statuses_on_one_connection(addr, &requests))
        .await
        .unwrap();
    assert_eq!(statuses, [200, 200, 401, 401, 401, 401, 200]);
}
