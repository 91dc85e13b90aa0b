//! The OIDC browser login end to end: real binary, real test identity provider (discovery,
//! JWKS, authorize, PKCE-checking token endpoint), a cookie-keeping client following redirects
//! across the preview host, the login host and the provider.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use support::browser::{split_url, Browser};
use support::oidc::Idp;
use support::recorder::{self, assert_no_credentials};
use support::{free_port, send, Proxy};

struct Setup {
    proxy: Proxy,
    idp: Idp,
    port: u16,
    preview: String,
    login: String,
}

async fn setup() -> Setup {
    let idp = Idp::start("sandgate-client").await;
    let rec: SocketAddr = recorder::start().await;
    let port = free_port();
    let login = format!("login.localhost:{port}");
    let proxy = Proxy::start(&format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
[proxy]
domains = ["preview.localhost"]
[auth]
cookie_keys = ["0123456789abcdef0123456789abcdef"]
max_failures_per_minute = 1000
[auth.oidc]
issuer = "{issuer}"
client_id = "sandgate-client"
login_host = "{login}"
[[registry.sandboxes]]
id = "priv"
address = "127.0.0.1"
organization = "org-1"
[[registry.sandboxes]]
id = "other"
address = "127.0.0.1"
organization = "org-2"
[[registry.domains]]
host = "app.customer.example"
sandbox = "priv"
port = {app}
path_prefix = "/base"
state = "verified"
[[registry.domains]]
host = "other.customer.example"
sandbox = "other"
port = {app}
state = "verified"
[[registry.domains]]
host = "pending.customer.example"
sandbox = "priv"
port = {app}
token = "0123456789abcdef0123456789abcdef"
[domains]
enabled = true
dns_resolver = "127.0.0.1:9"
"#,
        issuer = idp.issuer(),
        app = rec.port(),
    ));
    Setup {
        preview: format!("{}-priv.preview.localhost:{port}", rec.port()),
        proxy,
        idp,
        port,
        login,
    }
}

fn browser(s: &Setup) -> Browser {
    let mut b = Browser::new(s.proxy.addr);
    b.route(&s.idp.addr.to_string(), s.idp.addr);
    b
}

#[tokio::test]
async fn a_browser_logs_in_through_the_provider_and_lands_back_same_host() {
    let s = setup().await;
    let mut b = browser(&s);
    let start = format!("http://{}/app/page?x=1&y=%2F", s.preview);
    let (reply, final_url) = b.navigate(&start).await;
    assert_eq!(reply.status, 200, "{} via {:?}", reply.text(), b.visited);
    assert_eq!(final_url, start, "back where it started: {:?}", b.visited);
    let seen = reply.json();
    assert_eq!(seen["path"], "/app/page");
    assert_eq!(seen["query"], "x=1&y=%2F");
    assert_no_credentials(&seen, &[]);

    // The hops: preview → login host → provider → callback → preview session → page.
    let hosts: Vec<String> = b.visited.iter().map(|u| split_url(u).0).collect();
    assert_eq!(hosts[1], s.login);
    assert!(b.visited[1].contains("/login?returnTo="));
    assert!(b.visited[2].contains("code_challenge_method=S256"));
    assert!(b.visited[3].starts_with(&format!("http://{}/callback?code=", s.login)));
    assert!(b.visited[4].contains("/__sandgate/session?ticket="));
    assert_eq!(hosts[4], s.preview);
    assert_eq!(s.idp.state.tokens_issued.load(Ordering::SeqCst), 1);
    assert_eq!(s.idp.state.pkce_failures.load(Ordering::SeqCst), 0);
    // The sandbox cookie is host-only on the preview host; the PKCE cookie was cleared.
    let preview_host = s.preview.split(':').next().unwrap();
    assert!(b
        .cookie(preview_host, "daytona-sandbox-auth-priv")
        .is_some());
    assert!(b.cookie("login.localhost", "sandgate-oidc").is_none());

    // The session ticket is bound to its host: replayed on another preview host it fails.
    let ticket_path = split_url(&b.visited[4]).1;
    let other = s.preview.replace("-priv.", "-other.");
    let r = send(s.proxy.addr, "GET", &other, &ticket_path, &[], b"").await;
    assert_eq!(r.status, 401, "{}", r.text());
    // And it works once: replayed on its own host it is refused.
    let r = send(s.proxy.addr, "GET", &s.preview, &ticket_path, &[], b"").await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(b.visited[2].contains("&nonce="));

    // API calls and WebSocket upgrades without credentials get 401 JSON, not the login redirect.
    let r = send(
        s.proxy.addr,
        "GET",
        &s.preview,
        "/api",
        &[("accept", "application/json")],
        b"",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "AUTH_REQUIRED");
    let raw = support::raw_exchange(
        s.proxy.addr,
        format!("GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAccept: text/html\r\nSec-Fetch-Mode: navigate\r\n\r\n", s.preview).as_bytes(),
        std::time::Duration::from_secs(5),
    );
    assert_eq!(support::status_of(&raw), 401, "{raw}");
    assert!(
        raw.contains("AUTH_REQUIRED") && !raw.to_ascii_lowercase().contains("location:"),
        "{raw}"
    );
}

#[tokio::test]
async fn another_organisation_is_forbidden() {
    let s = setup().await;
    *s.idp.state.organization.lock().unwrap() = "org-2".into();
    let mut b = browser(&s);
    let (reply, url) = b.navigate(&format!("http://{}/", s.preview)).await;
    assert_eq!(
        reply.status,
        403,
        "{url}: {} {}",
        reply.text(),
        s.proxy.stderr()
    );
    assert!(url.contains("/callback?"));
    let preview_host = s.preview.split(':').next().unwrap();
    assert!(b
        .cookie(preview_host, "daytona-sandbox-auth-priv")
        .is_none());
}

#[tokio::test]
async fn an_id_token_for_another_login_is_refused() {
    let s = setup().await;
    s.idp.state.wrong_nonce.store(true, Ordering::SeqCst);
    let mut b = browser(&s);
    let (reply, url) = b.navigate(&format!("http://{}/", s.preview)).await;
    assert_eq!(reply.status, 400, "{url}: {}", reply.text());
    assert!(reply.text().contains("nonce"));
}

#[tokio::test]
async fn state_and_pkce_cookie_must_belong_together() {
    let s = setup().await;
    // Browser A starts a login and stops at the provider's redirect back.
    let mut a = browser(&s);
    let first = a.get(&format!("http://{}/", s.preview)).await;
    let login_url = first.headers["location"].to_str().unwrap().to_string();
    let to_idp = a.get(&login_url).await;
    let authorize = to_idp.headers["location"].to_str().unwrap().to_string();
    let back = a.get(&authorize).await;
    let callback = back.headers["location"].to_str().unwrap().to_string();

    // Browser B (no PKCE cookie) cannot complete A's callback (login CSRF / code injection).
    let mut b = browser(&s);
    let r = b.get(&callback).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // A tampered state fails even with A's cookie.
    let tampered = callback.replace("state=", "state=x");
    let r = a.get(&tampered).await;
    assert_eq!(r.status, 400, "{}", r.text());
    // A's own callback works (the code was not consumed by the failures above).
    let (r, url) = a.navigate(&callback).await;
    assert_eq!(r.status, 200, "{url}: {}", r.text());
    // A replayed code is refused by the provider.
    let mut c = browser(&s);
    c.jar = a.jar.clone();
    let r = c.get(&callback).await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn login_return_targets_stay_on_the_preview_host() {
    let s = setup().await;
    let login = |return_to: &str| {
        format!(
            "http://{}/login?returnTo={}",
            s.login,
            percent_encoding::utf8_percent_encode(return_to, percent_encoding::NON_ALPHANUMERIC)
        )
    };
    for evil in [
        "//evil.com",
        "https://evil.com/",
        "/\\evil.com",
        "%2F%2Fevil.com",
        "\\\\evil.com",
        "http://login.localhost/x",
    ] {
        let mut b = browser(&s);
        let r = b.get(&login(evil)).await;
        assert_eq!(r.status, 400, "{evil}: {}", r.text());
    }
    for (path, expected) in [
        ("//evil.com", "/"),
        ("/%2F%2Fevil.com", "/"),
        ("/ok?a=1", "/ok?a=1"),
    ] {
        let mut b = browser(&s);
        let (r, url) = b
            .navigate(&login(&format!("http://{}{path}", s.preview)))
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(url, format!("http://{}{expected}", s.preview), "{path}");
    }
    let _ = s.port;
}

/// Sign-in on a custom domain: the login comes back to the domain (not its preview host), the
/// cookie is host-only there, and the session ticket opens nothing on any other host: not the
/// next tenant's domain, not the sandbox's own preview host. Only verified domains are targets,
/// and the organisation check is the sandbox's as on its preview host.
#[tokio::test]
async fn a_browser_signs_in_on_a_custom_domain_and_lands_back_there() {
    let s = setup().await;
    let domain = format!("app.customer.example:{}", s.port);
    let start = format!("http://{domain}/page?x=1");
    // Up to the session hand-off, by hand: the ticket is kept unspent.
    let mut b = browser(&s);
    let mut url = start.clone();
    for hop in ["login host", "provider", "callback", "session"] {
        let r = b.get(&url).await;
        assert_eq!(
            r.status,
            302,
            "to the {hop}: {} {}",
            r.text(),
            s.proxy.stderr()
        );
        url = r.headers["location"].to_str().unwrap().to_string();
    }
    assert!(
        url.starts_with(&format!("http://{domain}/__sandgate/session?ticket=")),
        "{url}"
    );
    let ticket_path = split_url(&url).1;
    for host in [
        format!("other.customer.example:{}", s.port),
        s.preview.clone(),
    ] {
        let r = send(s.proxy.addr, "GET", &host, &ticket_path, &[], b"").await;
        assert_eq!(
            r.status,
            401,
            "a ticket for {domain} on {host}: {}",
            r.text()
        );
    }
    let (reply, final_url) = b.navigate(&url).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(final_url, start, "back where it started: {:?}", b.visited);
    let seen = reply.json();
    assert_eq!(
        seen["path"], "/base/page",
        "the domain's path prefix upstream"
    );
    assert_no_credentials(&seen, &[]);
    assert!(b
        .cookie("app.customer.example", "daytona-sandbox-auth-priv")
        .is_some());
    let preview_host = s.preview.split(':').next().unwrap();
    assert!(b
        .cookie(preview_host, "daytona-sandbox-auth-priv")
        .is_none());
    // The domain's cookie opens the domain's port only: taken to the sandbox's other ports'
    // preview hosts, it is refused.
    let value = b
        .cookie("app.customer.example", "daytona-sandbox-auth-priv")
        .unwrap()
        .clone();
    let cookie = format!("daytona-sandbox-auth-priv={value}");
    let other_port = format!("1-priv.preview.localhost:{}", s.port);
    let r = send(
        s.proxy.addr,
        "GET",
        &other_port,
        "/",
        &[("cookie", &cookie)],
        b"",
    )
    .await;
    assert_eq!(
        r.status,
        401,
        "the domain's cookie on another port: {}",
        r.text()
    );
    let r = send(
        s.proxy.addr,
        "GET",
        &domain,
        "/again",
        &[("cookie", &cookie)],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let login = |return_to: String| {
        format!(
            "http://{}/login?returnTo={}",
            s.login,
            percent_encoding::utf8_percent_encode(&return_to, percent_encoding::NON_ALPHANUMERIC)
        )
    };
    for host in ["pending.customer.example", "unknown.customer.example"] {
        let r = browser(&s)
            .get(&login(format!("http://{host}:{}/", s.port)))
            .await;
        assert_eq!(r.status, 400, "{host}: {}", r.text());
    }
    // The provider's user is in org-1; the other tenant's domain is org-2's sandbox.
    let (reply, url) = browser(&s)
        .navigate(&format!("http://other.customer.example:{}/", s.port))
        .await;
    assert_eq!(reply.status, 403, "{url}: {}", reply.text());
}
