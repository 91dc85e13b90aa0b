//! Issue #12, class 4: sandboxes plant cookies for the proxy and for each other.
//!
//! A hostile sandbox answers with `Set-Cookie`s of its choosing (the runner emulator's
//! `x-reply-set-cookie`); we assert on what the browser would store (the `Set-Cookie` headers the
//! client receives) and on what the runner received. A victim whose browser carries a planted
//! cookie of the proxy's name still gets in, and under https the proxy's cookies are `__Host-`.
mod support;

use support::browser::{split_url, Browser};
use support::oidc::Idp;
use support::runner::{sandboxes, Runner};
use support::{send, Proxy, Reply};

const KEY: &str = "adversarial-cookie-key-0123456789abcdef";
const PREVIEW: &str = "3000-sbx-1.preview.localhost";
const PRIVATE: &str = "3000-sbx-priv.preview.localhost";
const BROWSER: [(&str, &str); 3] = [
    ("accept", "text/html,application/xhtml+xml"),
    ("sec-fetch-mode", "navigate"),
    ("user-agent", "Mozilla/5.0 (sandgate tests)"),
];

fn config(runner: &Runner, scheme: &str, auth_extra: &str) -> String {
    format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\npublic_scheme = \"{scheme}\"\n\
         [auth]\ncookie_keys = [\"{KEY}\"]\nmax_failures_per_minute = 1000\n{auth_extra}\n\
         [[registry.runners]]\nid = \"runner-1\"\nurl = \"http://{}\"\napi_key = \"{}\"\n{}",
        runner.addr,
        runner.key,
        sandboxes()
    )
}

fn set_cookies(reply: &Reply) -> Vec<String> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// One hostile (or innocent) answer of the sandbox and what the browser may store of it.
struct Planted {
    name: &'static str,
    host: &'static str,
    path: &'static str,
    /// Extra request headers (credentials for the toolbox).
    auth: &'static [(&'static str, &'static str)],
    sent: &'static [&'static str],
    stored: &'static [&'static str],
}

const NONE: &[(&str, &str)] = &[];
const TOOLBOX_AUTH: &[(&str, &str)] = &[("x-daytona-preview-token", "tok-secret")];

const PLANTED: &[Planted] = &[
    Planted {
        name: "another sandbox's auth cookie for the parent domain",
        host: PREVIEW,
        path: "/",
        auth: NONE,
        sent: &["daytona-sandbox-auth-victim=x; Domain=preview.localhost; Path=/"],
        stored: &[],
    },
    Planted {
        name: "the warning-accepted cookie for every sandbox",
        host: PREVIEW,
        path: "/",
        auth: NONE,
        sent: &["daytona-preview-page-accepted=true; Domain=preview.localhost; Path=/"],
        stored: &[],
    },
    Planted {
        name: "a __Host- variant of the proxy's cookie",
        host: PREVIEW,
        path: "/",
        auth: NONE,
        sent: &["__Host-daytona-sandbox-auth-sbx-1=x; Path=/; Secure"],
        stored: &[],
    },
    Planted {
        name: "case variants of reserved names",
        host: PREVIEW,
        path: "/",
        auth: NONE,
        sent: &[
            "DAYTONA-Preview-Page-Accepted=true",
            "__host-daytona-preview-page-accepted=true; Secure; Path=/",
            "Sandgate-OIDC=x",
        ],
        stored: &[],
    },
    Planted {
        name: "a nameless cookie whose value reads as a reserved name",
        host: PREVIEW,
        path: "/",
        auth: NONE,
        sent: &[
            "=daytona-sandbox-auth-victim=x; Domain=preview.localhost",
            "daytona-preview-page-accepted",
        ],
        stored: &[],
    },
    Planted {
        name: "session fixation on every sandbox through the parent domain",
        host: PREVIEW,
        path: "/",
        auth: NONE,
        sent: &["session=fixation; Domain=.preview.localhost; Path=/"],
        stored: &["session=fixation; Path=/"],
    },
    Planted {
        name: "Domain in any case",
        host: PREVIEW,
        path: "/",
        auth: NONE,
        sent: &[
            "app=1; domain=PREVIEW.LOCALHOST",
            "b=2;DOMAIN = preview.localhost;Secure",
        ],
        stored: &["app=1", "b=2;Secure"],
    },
    Planted {
        name: "an app's own host-only cookie is kept byte for byte",
        host: PREVIEW,
        path: "/",
        auth: NONE,
        sent: &[
            "app=1; Path=/; HttpOnly",
            "odd = v ;  path=/x;SameSite=Strict",
        ],
        stored: &[
            "app=1; Path=/; HttpOnly",
            "odd = v ;  path=/x;SameSite=Strict",
        ],
    },
    Planted {
        name: "several Set-Cookie headers: each judged on its own, order kept",
        host: PREVIEW,
        path: "/",
        auth: NONE,
        sent: &[
            "a=1; Path=/",
            "daytona-sandbox-auth-sbx-priv=y; Domain=preview.localhost",
            "b=2; Domain=preview.localhost; Secure",
            "c=3",
        ],
        stored: &["a=1; Path=/", "b=2; Secure", "c=3"],
    },
    Planted {
        name: "on a redirect",
        host: PREVIEW,
        path: "/redirect",
        auth: NONE,
        sent: &[
            "daytona-preview-page-accepted=true; Domain=preview.localhost",
            "r=1; Domain=preview.localhost",
        ],
        stored: &["r=1"],
    },
    Planted {
        name: "on an error",
        host: PREVIEW,
        path: "/status/500",
        auth: NONE,
        sent: &["sandgate-x=1", "e=1; Max-Age=5; Domain=preview.localhost"],
        stored: &["e=1; Max-Age=5"],
    },
    Planted {
        name: "from the toolbox on the proxy's own host",
        host: "proxy.localhost",
        path: "/toolbox/sbx-priv/files",
        auth: TOOLBOX_AUTH,
        sent: &[
            "daytona-sandbox-auth-victim=x; Domain=localhost",
            "t=1; Domain=localhost; Path=/",
        ],
        stored: &["t=1; Path=/"],
    },
];

#[tokio::test]
async fn sandbox_set_cookies_never_plant_reserved_names_or_domain_cookies() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(&runner, "http", ""));
    for row in PLANTED {
        let mut headers: Vec<(&str, &str)> = row.auth.to_vec();
        headers.extend(row.sent.iter().map(|c| ("x-reply-set-cookie", *c)));
        let reply = send(proxy.addr, "GET", row.host, row.path, &headers, b"").await;
        assert_eq!(
            runner.last().all("x-reply-set-cookie").len(),
            row.sent.len(),
            "{}: the sandbox answered",
            row.name
        );
        assert_eq!(set_cookies(&reply), row.stored, "{}", row.name);
    }
}

#[tokio::test]
async fn set_cookie2_is_dropped_and_a_websocket_handshake_is_filtered_too() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(&runner, "http", ""));
    let reply = send(
        proxy.addr,
        "GET",
        PREVIEW,
        "/",
        &[
            (
                "x-reply-set-cookie2",
                "daytona-preview-page-accepted=true; Version=1",
            ),
            ("x-reply-set-cookie2", "app=1; Version=1"),
        ],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get("set-cookie2").is_none(), "{reply:?}");

    let (_ws, response) = support::ws_connect(
        proxy.addr,
        PREVIEW,
        "/ws",
        &[(
            "x-reply-set-cookie",
            "daytona-sandbox-auth-victim=x; Domain=preview.localhost",
        )],
    )
    .await
    .expect("websocket through the proxy");
    assert_eq!(response.status(), 101);
    assert!(
        response.headers().get("set-cookie").is_none(),
        "{:?}",
        response.headers()
    );
}

/// A fresh sandbox cookie by the query-token login: its `Set-Cookie` and its value.
async fn log_in(proxy: &Proxy) -> (String, String) {
    let reply = send(
        proxy.addr,
        "GET",
        PRIVATE,
        "/?DAYTONA_SANDBOX_AUTH_KEY=tok-secret",
        &BROWSER,
        b"",
    )
    .await;
    assert_eq!(reply.status, 302, "{}", reply.text());
    let set = set_cookies(&reply).pop().expect("the login sets a cookie");
    let value = set
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, v)| v.to_string())
        .expect("name=value");
    (set, value)
}

#[tokio::test]
async fn under_https_the_proxys_cookies_are_host_prefixed() {
    let runner = Runner::start("runner-key").await;
    for (scheme, name, attributes) in [
        (
            "http",
            "daytona-sandbox-auth-sbx-priv=",
            "; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax",
        ),
        (
            "https",
            "__Host-daytona-sandbox-auth-sbx-priv=",
            "; Max-Age=3600; Path=/; HttpOnly; Secure; SameSite=None",
        ),
    ] {
        let proxy = Proxy::start(&config(&runner, scheme, ""));
        let (set, _) = log_in(&proxy).await;
        assert!(set.starts_with(name), "{scheme}: {set}");
        assert!(set.ends_with(attributes), "{scheme}: {set}");
        assert!(!set.to_ascii_lowercase().contains("domain"), "{set}");
    }
}

#[tokio::test]
async fn a_planted_cookie_of_the_same_name_does_not_lock_the_victim_out() {
    let runner = Runner::start("runner-key").await;
    // (scheme, Cookie header with `{v}` for the victim's real value, expected status)
    let rows: &[(&str, &str, u16)] = &[
        ("http", "daytona-sandbox-auth-sbx-priv={v}", 200),
        (
            "http",
            "daytona-sandbox-auth-sbx-priv=planted.garbage; daytona-sandbox-auth-sbx-priv={v}",
            200,
        ),
        (
            "http",
            "app=1; daytona-sandbox-auth-sbx-priv=a.b; daytona-sandbox-auth-sbx-priv=; daytona-sandbox-auth-sbx-priv={v}",
            200,
        ),
        ("http", "daytona-sandbox-auth-sbx-priv=planted.garbage", 401),
        ("https", "__Host-daytona-sandbox-auth-sbx-priv={v}", 200),
        (
            "https",
            "daytona-sandbox-auth-sbx-priv=planted.garbage; __Host-daytona-sandbox-auth-sbx-priv={v}",
            200,
        ),
        // Transition: cookies issued before the switch to __Host- names still work.
        ("https", "daytona-sandbox-auth-sbx-priv={v}", 200),
        ("https", "__Host-daytona-sandbox-auth-sbx-priv=planted.garbage", 401),
    ];
    let http = Proxy::start(&config(&runner, "http", ""));
    let https = Proxy::start(&config(&runner, "https", ""));
    let (_, value) = log_in(&http).await;
    for (scheme, template, status) in rows {
        let proxy = if *scheme == "https" { &https } else { &http };
        let cookie = template.replace("{v}", &value);
        let headers = [("cookie", cookie.as_str()), ("accept", "application/json")];
        let reply = send(proxy.addr, "GET", PRIVATE, "/app", &headers, b"").await;
        assert_eq!(
            reply.status,
            *status,
            "{scheme} {template}: {}",
            reply.text()
        );
        if *status == 200 {
            let seen = runner.last();
            let forwarded = seen.all("cookie").join("; ");
            assert!(
                !forwarded.contains("daytona-") && !forwarded.contains("__Host-"),
                "{template}: the runner got {forwarded:?}"
            );
            assert_eq!(
                seen.header("cookie").is_some(),
                template.starts_with("app=1")
            );
        }
    }
}

#[tokio::test]
async fn a_planted_login_cookie_does_not_break_the_oidc_callback() {
    let idp = Idp::start("sandgate-client").await;
    let proxy = Proxy::start(&format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [auth]\ncookie_keys = [\"{KEY}\"]\nmax_failures_per_minute = 1000\n\
         [auth.oidc]\nissuer = \"{}\"\nclient_id = \"sandgate-client\"\n\
         login_host = \"login.localhost\"\n\
         [[registry.sandboxes]]\nid = \"priv\"\naddress = \"127.0.0.1\"\norganization = \"org-1\"\n",
        idp.issuer()
    ));
    let mut b = Browser::new(proxy.addr);
    b.route(&idp.addr.to_string(), idp.addr);
    let mut url = "http://3000-priv.preview.localhost/app".to_string();
    // preview → /login (sets the login cookie) → the provider → back to /callback
    for _ in 0..3 {
        let reply = b.get(&url).await;
        assert_eq!(reply.status, 302, "{url}: {}", reply.text());
        url = reply.headers["location"].to_str().unwrap().to_string();
    }
    let (authority, callback) = split_url(&url);
    assert!(callback.starts_with("/callback?code="), "{url}");
    let real = b
        .cookie("login.localhost", "sandgate-oidc")
        .expect("login cookie");
    // A sibling planted its own login cookie for the login host, sorted first.
    let cookie = format!("sandgate-oidc=planted.garbage; sandgate-oidc={real}");
    let reply = send(
        proxy.addr,
        "GET",
        &authority,
        &callback,
        &[("cookie", &cookie)],
        b"",
    )
    .await;
    assert_eq!(reply.status, 302, "{}", reply.text());
    let location = reply.headers["location"].to_str().unwrap();
    assert!(
        location.contains("/__sandgate/session?ticket="),
        "{location}"
    );
}
