//! Issue #12, class 7: the failed-credential limiter must never refuse a valid credential, and
//! must count per real client (behind a trusted proxy: the address it vouches for), not per
//! load balancer. An attacker's bad guesses from one address must not lock out the users
//! sharing it.
mod support;

use support::recorder;
use support::{send, Proxy, Reply};

const KEY: &str = "test-cookie-key-0123456789abcdef0123";
const TOKEN: &str = "tok-priv-0123456789";
const SIGNED: &str = "signedtoken00001";
/// Failures allowed per minute and address before 429.
const BUDGET: usize = 5;

fn config(rport: u16, server_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server_extra}
[proxy]
domains = ["preview.localhost"]
[auth]
cookie_keys = ["{KEY}"]
max_failures_per_minute = {BUDGET}
[[registry.sandboxes]]
id = "priv"
address = "127.0.0.1"
auth_token = "{TOKEN}"
organization = "org-1"
[[registry.sandboxes]]
id = "pub"
address = "127.0.0.1"
public = true
[[registry.api_keys]]
key = "apikey-org-1"
organization = "org-1"
[[registry.signed_previews]]
token = "{SIGNED}"
port = {rport}
sandbox = "priv"
"#
    )
}

fn host(rport: u16, label: &str) -> String {
    format!("{rport}-{label}.preview.localhost")
}

/// A valid sandbox cookie, as a browser gets it (query token, then a 302 with Set-Cookie).
async fn sandbox_cookie(proxy: &Proxy, rport: u16) -> String {
    let r = send(
        proxy.addr,
        "GET",
        &host(rport, "priv"),
        &format!("/?DAYTONA_SANDBOX_AUTH_KEY={TOKEN}"),
        &[("accept", "text/html")],
        b"",
    )
    .await;
    assert_eq!(r.status, 302, "{}", r.text());
    let set_cookie = r.headers["set-cookie"].to_str().unwrap();
    set_cookie.split(';').next().unwrap().to_string()
}

async fn hammer(proxy: &Proxy, rport: u16, from: &[(&str, &str)]) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..30 {
        let guess = format!("guess-{i}");
        let mut headers = from.to_vec();
        headers.push(("x-daytona-preview-token", &guess));
        let r = send(proxy.addr, "GET", &host(rport, "priv"), "/", &headers, b"").await;
        statuses.push(r.status);
    }
    statuses
}

fn assert_rate_limited(r: &Reply, what: &str) {
    assert_eq!(r.status, 429, "{what}: {}", r.text());
    assert_eq!(r.json()["code"], "RATE_LIMITED", "{what}");
    let retry: u32 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{what}: Retry-After {retry}");
}

#[tokio::test]
async fn valid_credentials_pass_an_address_that_is_over_its_failure_budget() {
    let upstream = recorder::start().await;
    let rport = upstream.port();
    let proxy = Proxy::start(&config(rport, ""));
    let cookie = sandbox_cookie(&proxy, rport).await;

    let statuses = hammer(&proxy, rport, &[]).await;
    assert!(statuses[..BUDGET].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[BUDGET..].iter().all(|s| *s == 429), "{statuses:?}");

    let priv_host = host(rport, "priv");
    let signed_host = host(rport, SIGNED);
    // (what, host, headers, expected status)
    type Row<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);
    let rows: [Row; 7] = [
        (
            "valid preview token",
            &priv_host,
            vec![("x-daytona-preview-token", TOKEN)],
            200,
        ),
        ("valid cookie", &priv_host, vec![("cookie", &cookie)], 200),
        (
            "valid API key",
            &priv_host,
            vec![("authorization", "Bearer apikey-org-1")],
            200,
        ),
        ("valid signed preview host", &signed_host, vec![], 200),
        ("public sandbox", &host(rport, "pub"), vec![], 200),
        (
            "bad token",
            &priv_host,
            vec![("x-daytona-preview-token", "guess-again")],
            429,
        ),
        (
            "guessed signed host",
            &host(rport, "guessedtoken0001"),
            vec![],
            429,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, host, headers, expected) in &rows {
        let r = send(proxy.addr, "GET", host, "/", headers, b"").await;
        if r.status != *expected {
            wrong.push(format!(
                "{what}: {} (want {expected}): {}",
                r.status,
                r.text()
            ));
        } else if *expected == 429 {
            assert_rate_limited(&r, what);
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_limited_separately() {
    let upstream = recorder::start().await;
    let rport = upstream.port();
    let proxy = Proxy::start(&config(rport, "trusted_proxies = [\"127.0.0.0/8\"]"));
    let attacker = [("x-forwarded-for", "198.51.100.1")];
    let statuses = hammer(&proxy, rport, &attacker).await;
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");

    // (what, X-Forwarded-For, preview token, expected status)
    let rows = [
        ("attacker, bad token", "198.51.100.1", "guess-again", 429),
        ("attacker, valid token", "198.51.100.1", TOKEN, 200),
        ("neighbour, bad token", "198.51.100.2", "typo", 401),
        ("neighbour, valid token", "198.51.100.2", TOKEN, 200),
        // A client-supplied address left of the real one changes nothing.
        (
            "attacker, spoofed prefix",
            "203.0.113.7, 198.51.100.1",
            "guess",
            429,
        ),
    ];
    for (what, xff, token, expected) in rows {
        let headers = [("x-forwarded-for", xff), ("x-daytona-preview-token", token)];
        let r = send(proxy.addr, "GET", &host(rport, "priv"), "/", &headers, b"").await;
        assert_eq!(r.status, expected, "{what}: {}", r.text());
    }
}
