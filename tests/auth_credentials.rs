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
use support::table::*;
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
    let query_login = format!("/a?b=%2F&DAYTONA_SANDBOX_AUTH_KEY={TOKEN}&a=1&a=2");
    let cookie = format!(
        "daytona-sandbox-auth-priv={}; app=2",
        craft_cookie("priv", "priv", now() + 600)
    );
    #[rustfmt::skip]
    let rows = [
        Row::get("preview token header", &h, "/a?x=1", &[("x-daytona-preview-token", TOKEN), ("cookie", "app=1")],
            [status(200), no_credentials(&secrets), sent("cookie", ["app=1"]), query("x=1")]),
        Row::get("query token: non-browsers just proceed, other params keep bytes and order", &h, &query_login, &[],
            [status(200), query("b=%2F&a=1&a=2"), no_credentials(&secrets)]),
        Row::get("API key of the organisation: consumed Bearer is removed", &h, "/", &[("authorization", "Bearer apikey-org-1")],
            [status(200), not_sent("authorization"), no_credentials(&secrets)]),
        Row::get("key_sha256 entries work", &host(rp, "other"), "/", &[("authorization", "Bearer apikey-org-2")],
            [status(200)]),
        Row::get("sandbox cookie", &h, "/", &[("cookie", &cookie)],
            [status(200), sent("cookie", ["app=2"]), no_credentials(&secrets)]),
        // Signed token in the host: opens that port, sets the cookie for that host.
        Row::get("signed token host: the app's own cookies survive", &host(rp, "signedtoken00001"), "/s", &[],
            [status(200), some_header("set-cookie", "daytona-sandbox-auth-signedtoken00001=*"),
             some_header("set-cookie", "app=1; Path=/"), no_credentials(&secrets)]),
        // Toolbox traffic with an API key passes auth (nothing listens on 2280: 502, not 401).
        Row::get("toolbox with an API key", "127.0.0.1", "/toolbox/priv/version", &[("authorization", "Bearer apikey-org-1")],
            [status_not(401), status_not(403)]),
    ];
    run(proxy.addr, Upstream::Recorder, rows).await;
}

#[tokio::test]
async fn failures_answer_json_codes_and_the_apps_authorization_is_forwarded() {
    let (proxy, _rec, rp) = setup("").await;
    let h = host(rp, "priv");
    #[rustfmt::skip]
    let rows = [
        Row::get("no credential", &h, "/", &[],
            [status(401), code("AUTH_REQUIRED"), header("www-authenticate", "Bearer")]),
        Row::get("wrong preview token", &h, "/", &[("x-daytona-preview-token", "nope")],
            [status(401), code("TOKEN_INVALID")]),
        Row::get("wrong query token", &h, "/?DAYTONA_SANDBOX_AUTH_KEY=nope", &[],
            [status(401), code("TOKEN_INVALID")]),
        Row::get("API key of another organisation", &h, "/", &[("authorization", "Bearer apikey-org-2")],
            [status(403), code("FORBIDDEN")]),
        Row::get("another sandbox's token as Bearer", &h, "/", &[("authorization", "Bearer tok-other")],
            [status(401), code("TOKEN_INVALID")]),
        // A browser navigation without credentials (no OIDC configured): a readable 401 page.
        Row::get("browser navigation without credentials", &h, "/", &[("accept", "text/html"), ("sec-fetch-mode", "navigate")],
            [status(401), body_has("<!doctype html>")]),
        // The app's own Authorization on a private sandbox is not consumed: it is forwarded.
        Row::get("the app's own Authorization beside a preview token", &h, "/",
            &[("authorization", "Bearer app-own-token"), ("x-daytona-preview-token", TOKEN)],
            [status(200), sent("authorization", ["Bearer app-own-token"]), not_sent("x-daytona-preview-token")]),
    ];
    run(proxy.addr, Upstream::Recorder, rows).await;

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
    let public = host(rp, "pub");
    #[rustfmt::skip]
    let rows = [
        Row::get("the app's own Bearer", &public, "/", &[("authorization", "Bearer app-token")],
            [status(200), sent("authorization", ["Bearer app-token"])]),
        // A platform API key (any organisation) never reaches even a public sandbox.
        Row::get("API key of the organisation", &public, "/", &[("authorization", "Bearer apikey-org-1")],
            [status(200), not_sent("authorization")]),
        Row::get("API key of another organisation", &public, "/", &[("authorization", "Bearer apikey-org-2")],
            [status(200), not_sent("authorization")]),
        Row::get("reserved port 2280", &host(2280, "pub"), "/", &[], [status(401)]),
        Row::get("reserved port 22222", &host(22222, "pub"), "/", &[], [status(401)]),
        Row::get("reserved port 33333", &host(33333, "pub"), "/", &[], [status(401)]),
        Row::get("toolbox", "127.0.0.1", "/toolbox/pub/version", &[], [status(401)]),
    ];
    run(proxy.addr, Upstream::Recorder, rows).await;
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
    let rows = [
        ("//evil.com", 302),
        ("//evil.com/x", 302),
        ("/\\evil.com", 400),
    ];
    let mut failures = Vec::new();
    for (path, status) in rows {
        let raw = support::raw_exchange(
            proxy.addr,
            format!("GET {path}?DAYTONA_SANDBOX_AUTH_KEY={TOKEN} HTTP/1.1\r\nHost: {h}\r\nAccept: text/html\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        );
        let location = raw
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .unwrap_or("");
        let got = support::status_of(&raw);
        if got != status || (status == 302 && location != "/") {
            failures.push(format!(
                "{path:?}: status {got} (expected {status}), location {location:?} (expected \"/\" on a redirect): {raw}"
            ));
        }
    }
    report(rows.len(), &failures);
}

#[tokio::test]
async fn tampered_expired_and_foreign_cookies_are_rejected() {
    let (proxy, _rec, rp) = setup("").await;
    let h = host(rp, "priv");
    let good = craft_cookie("priv", "priv", now() + 600);
    let mut tampered = good.clone();
    tampered.replace_range(0..1, if good.starts_with('e') { "f" } else { "e" });
    let cookie = |value: &str| format!("daytona-sandbox-auth-priv={value}");
    let [good, tampered, expired, foreign, other_label] = [
        good,
        tampered,
        craft_cookie("priv", "priv", now() - 1),
        craft_cookie("other", "priv", now() + 600),
        craft_cookie("priv", "signedtoken00001", now() + 600),
    ]
    .map(|value| cookie(&value));
    #[rustfmt::skip]
    let rows = [
        Row::get("good cookie", &h, "/", &[("cookie", &good)], [status(200)]),
        Row::get("tampered", &h, "/", &[("cookie", &tampered)], [status(401), code("TOKEN_INVALID")]),
        Row::get("expired", &h, "/", &[("cookie", &expired)], [status(401), code("TOKEN_EXPIRED")]),
        Row::get("foreign sandbox", &h, "/", &[("cookie", &foreign)], [status(401), code("TOKEN_INVALID")]),
        Row::get("other label", &h, "/", &[("cookie", &other_label)], [status(401), code("TOKEN_INVALID")]),
        // A bad cookie does not stop a valid preview token.
        Row::get("bad cookie beside a valid preview token", &h, "/",
            &[("cookie", "daytona-sandbox-auth-priv=x.y"), ("x-daytona-preview-token", TOKEN)], [status(200)]),
    ];
    run(proxy.addr, Upstream::Recorder, rows).await;
}

#[tokio::test]
async fn signed_preview_tokens_are_port_bound_expiring_and_revocable() {
    let rec = recorder::start().await;
    let rec2 = recorder::start().await;
    let rp = rec.port();
    let proxy = Proxy::start(&config(rp, rec2.port(), "", ""));
    let port2 = rec2.port();
    #[rustfmt::skip]
    let rows = [
        Row::get("signed token on its port", &host(rp, "signedtoken00001"), "/", &[], [status(200)]),
        // Bound to rp: on another port it is only a (nonexistent) sandbox id.
        Row::get("signed token on another port", &host(port2, "signedtoken00001"), "/", &[], [status(404)]),
        Row::get("token 2 is bound to the second port", &host(port2, "signedtoken00002"), "/", &[], [status(200)]),
        Row::get("expired", &host(rp, "expiredtoken0001"), "/", &[], [status(404)]),
    ];
    run(proxy.addr, Upstream::Recorder, rows).await;
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
    let guess = [("x-daytona-preview-token", "guess")];
    #[rustfmt::skip]
    let rows = [
        Row::get("failure 1", &h, "/", &guess, [status(401)]),
        Row::get("failure 2", &h, "/", &guess, [status(401)]),
        Row::get("failure 3", &h, "/", &guess, [status(401)]),
        Row::get("a valid credential is never refused", &h, "/", &[("x-daytona-preview-token", TOKEN)], [status(200)]),
        Row::get("failure 4: limited", &h, "/", &guess,
            [status(429), code("RATE_LIMITED"), header_number_in("retry-after", 1, 60)]),
        Row::get("failure 5 from a browser: limited, a page", &h, "/", &[("accept", "text/html"), guess[0]],
            [status(429), body_has("<!doctype html>")]),
        // Public sandboxes need no credential check: still open.
        Row::get("public sandbox", &host(rp, "pub"), "/", &[], [status(200)]),
    ];
    run(proxy.addr, Upstream::Recorder, rows).await;
}

#[tokio::test]
async fn cors_preflights_are_answered_before_auth_for_allowed_origins_only() {
    let (proxy, _rec, rp) = setup("").await;
    let h = host(rp, "priv");
    // The same sandbox on another port (a sibling sandbox's origin is never allowed).
    let origin = format!("http://{}", host(5173, "priv"));
    let preflight = |origin| {
        [
            ("origin", origin),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "content-type,x-custom"),
        ]
    };
    let [allowed, evil] = [origin.as_str(), "https://evil.example"].map(preflight);
    let disable = [
        allowed[0],
        allowed[1],
        allowed[2],
        ("x-daytona-disable-cors", "true"),
    ];
    let acao = "access-control-allow-origin";
    #[rustfmt::skip]
    let rows = [
        Row::new("allowed preflight: no credentials needed", "OPTIONS", &h, "/api", &allowed,
            [status(204), header(acao, &origin), header("access-control-allow-credentials", "true"),
             header("access-control-allow-methods", "PUT"),
             header("access-control-allow-headers", "content-type,x-custom"),
             header("vary", "Origin"), has_header("access-control-max-age")]),
        Row::new("foreign preflight", "OPTIONS", &h, "/api", &evil, [no_header(acao)]),
        // Normal responses: headers added for allowed origins, unless the app set its own.
        Row::get("allowed origin", &h, "/x", &[("origin", &origin), ("x-daytona-preview-token", TOKEN)],
            [header(acao, &origin)]),
        Row::get("allowed origin, the app's own CORS", &h, "/own-cors", &[("origin", &origin), ("x-daytona-preview-token", TOKEN)],
            [header_values(acao, ["https://app-chosen.example"])]),
        Row::get("foreign origin", &h, "/x", &[("origin", "https://evil.example"), ("x-daytona-preview-token", TOKEN)],
            [no_header(acao)]),
        // X-Daytona-Disable-CORS: the preflight goes to the app, header removed.
        Row::new("preflight with X-Daytona-Disable-CORS", "OPTIONS", &host(rp, "pub"), "/api", &disable,
            [status(200), method("OPTIONS"), not_sent("x-daytona-disable-cors"), no_header(acao)]),
    ];
    run(proxy.addr, Upstream::Recorder, rows).await;
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

    let form = |token: &str| format!("csrf={token}");
    let (forged, accepted) = (form("forged.token"), form(&csrf));
    let browser = [("user-agent", "Mozilla/5.0")];
    let form_post = [
        ("content-type", "application/x-www-form-urlencoded"),
        browser[0],
    ];
    let post = |name: &str, path: &str, body: &str, expect: Vec<Expect>| {
        Row::new(name, "POST", &h, path, &form_post, expect).body(body)
    };
    let evil = |to: &str| {
        let path = format!("/accept-daytona-preview-warning?redirect={to}");
        post(
            &format!("redirect to {to}"),
            &path,
            &accepted,
            vec![header("location", "/")],
        )
    };
    #[rustfmt::skip]
    let rows = [
        // Non-browsers, the skip header and WebSocket-ish requests are not interrupted.
        Row::get("not a browser", &h, "/", &[("accept", "text/html")], [status(200), path("/")]),
        Row::get("the skip header", &h, "/", &[("accept", "text/html"), browser[0], ("x-daytona-skip-preview-warning", "true")],
            [path("/")]),
        post("forged CSRF token", &action, &forged, vec![status(403)]),
        post("no CSRF token", &action, "", vec![status(403)]),
        post("the page's CSRF token", &action, &accepted, vec![status(303), header("location", "/app?x=%3Cb%3E"),
            header_starts("set-cookie", "daytona-preview-page-accepted=true; Max-Age=86400")]),
        evil("%2F%2Fevil.com"),
        evil("https%3A%2F%2Fevil.com"),
        evil("%2F%5Cevil.com"),
        evil("%5C%5Cevil.com"),
        evil("%2F%252F%252Fevil.com"),
        // With the cookie: through to the app, which never sees the cookie.
        Row::get("accepted", &h, "/app", &[("accept", "text/html"), browser[0], ("cookie", "daytona-preview-page-accepted=true; a=b")],
            [path("/app"), no_credentials(&[])]),
    ];
    run(proxy.addr, Upstream::Recorder, rows).await;
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
