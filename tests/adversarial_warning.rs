//! Issue #12, class 5: the preview warning cannot be bypassed by the method. Any browser
//! navigation without the accepted cookie gets the interstitial (and never reaches the sandbox);
//! fetch()-style requests, WebSocket upgrades, the skip header, non-browsers and reserved ports
//! do not. Also: a planted or legacy-named accepted cookie does not switch the warning off.
mod support;

use support::runner::{sandboxes, Runner};
use support::{send, Proxy, Reply};

const PREVIEW: &str = "3000-sbx-1.preview.localhost";
const UA: (&str, &str) = ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/140");
const HTML: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
const NAVIGATE: (&str, &str) = ("sec-fetch-mode", "navigate");
const CROSS_SITE: (&str, &str) = ("sec-fetch-site", "cross-site");
const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

fn config(runner: &Runner, scheme: &str, auth_extra: &str) -> String {
    format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\npublic_scheme = \"{scheme}\"\n\
         [auth]\npreview_warning = true\nmax_failures_per_minute = 1000\n{auth_extra}\n\
         [[registry.runners]]\nid = \"runner-1\"\nurl = \"http://{}\"\napi_key = \"{}\"\n{}",
        runner.addr,
        runner.key,
        sandboxes()
    )
}

struct Row {
    name: &'static str,
    method: &'static str,
    host: &'static str,
    headers: &'static [(&'static str, &'static str)],
    warned: bool,
}

const fn row(
    name: &'static str,
    method: &'static str,
    headers: &'static [(&'static str, &'static str)],
    warned: bool,
) -> Row {
    Row {
        name,
        method,
        host: PREVIEW,
        headers,
        warned,
    }
}

const ROWS: &[Row] = &[
    row("GET navigation", "GET", &[UA, HTML, NAVIGATE], true),
    row("HEAD navigation", "HEAD", &[UA, HTML, NAVIGATE], true),
    row(
        "cross-site form POST navigation",
        "POST",
        &[
            UA,
            HTML,
            NAVIGATE,
            CROSS_SITE,
            FORM,
            ("sec-fetch-dest", "document"),
        ],
        true,
    ),
    row("PUT navigation", "PUT", &[UA, HTML, NAVIGATE], true),
    row(
        "Sec-Fetch-Dest document alone",
        "POST",
        &[UA, ("sec-fetch-dest", "document")],
        true,
    ),
    row(
        "iframe navigation",
        "POST",
        &[UA, NAVIGATE, ("sec-fetch-dest", "iframe")],
        true,
    ),
    row(
        "frame navigation by Sec-Fetch-Dest",
        "DELETE",
        &[UA, ("sec-fetch-dest", "frame")],
        true,
    ),
    row(
        "POST by an older browser (no Sec-Fetch)",
        "POST",
        &[UA, HTML, FORM],
        true,
    ),
    row(
        "PUT by an older browser (no Sec-Fetch)",
        "PUT",
        &[UA, HTML],
        true,
    ),
    row(
        "a planted accepted cookie before a refusing one does not matter",
        "POST",
        &[
            UA,
            HTML,
            NAVIGATE,
            ("cookie", "daytona-preview-page-accepted=no; a=1"),
        ],
        true,
    ),
    row(
        "fetch() that asks for HTML",
        "GET",
        &[
            UA,
            HTML,
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-dest", "empty"),
        ],
        false,
    ),
    row(
        "fetch() POST",
        "POST",
        &[UA, ("accept", "*/*"), ("sec-fetch-mode", "cors")],
        false,
    ),
    row(
        "no-cors subresource",
        "POST",
        &[
            UA,
            HTML,
            ("sec-fetch-mode", "no-cors"),
            ("sec-fetch-dest", "image"),
        ],
        false,
    ),
    row(
        "same-origin XHR",
        "PUT",
        &[UA, HTML, ("sec-fetch-mode", "same-origin")],
        false,
    ),
    row(
        "skip header",
        "POST",
        &[
            UA,
            HTML,
            NAVIGATE,
            ("x-daytona-skip-preview-warning", "true"),
        ],
        false,
    ),
    row(
        "non-browser",
        "POST",
        &[("user-agent", "curl/8.5"), HTML, NAVIGATE],
        false,
    ),
    row(
        "accepted",
        "POST",
        &[
            UA,
            HTML,
            NAVIGATE,
            ("cookie", "daytona-preview-page-accepted=true"),
        ],
        false,
    ),
    row(
        "accepted, behind a planted cookie of the same name",
        "POST",
        &[
            UA,
            HTML,
            NAVIGATE,
            (
                "cookie",
                "daytona-preview-page-accepted=no; daytona-preview-page-accepted=true",
            ),
        ],
        false,
    ),
    Row {
        name: "reserved port",
        method: "POST",
        host: "22222-sbx-1.preview.localhost",
        headers: &[
            UA,
            HTML,
            NAVIGATE,
            ("x-daytona-preview-token", "tok-public"),
        ],
        warned: false,
    },
];

/// Sends `row` and checks the interstitial came (and the sandbox saw nothing) or did not.
async fn check(proxy: &Proxy, runner: &Runner, scheme: &str, row: &Row) -> Reply {
    let before = runner.seen().len();
    let reply = send(
        proxy.addr,
        row.method,
        row.host,
        "/submit?x=1",
        row.headers,
        b"a=1",
    )
    .await;
    let reached = runner.seen().len() > before;
    let what = format!("{scheme} {} ({} {})", row.name, row.method, reply.status);
    if row.warned {
        assert!(!reached, "{what}: reached the sandbox");
        assert_eq!(reply.status, 200, "{what}");
        assert!(
            reply.headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("form-action 'self'"),
            "{what}"
        );
        if row.method != "HEAD" {
            assert!(reply.text().contains("Preview warning"), "{what}");
        }
    } else {
        assert!(reached, "{what}: got {}", reply.text());
        assert_eq!(reply.json()["method"], row.method, "{what}");
    }
    reply
}

#[tokio::test]
async fn every_browser_navigation_gets_the_interstitial_whatever_the_method() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(&runner, "http", ""));
    for row in ROWS {
        check(&proxy, &runner, "http", row).await;
    }
    let (_ws, response) = support::ws_connect(
        proxy.addr,
        PREVIEW,
        "/ws",
        &[UA, HTML, ("sec-fetch-mode", "websocket")],
    )
    .await
    .expect("WebSocket upgrades skip the warning");
    assert_eq!(response.status(), 101);
}

#[tokio::test]
async fn under_https_only_the_host_prefixed_accepted_cookie_counts() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(&runner, "https", ""));
    let rows = [
        row(
            "__Host- accepted cookie",
            "POST",
            &[
                UA,
                HTML,
                NAVIGATE,
                ("cookie", "__Host-daytona-preview-page-accepted=true"),
            ],
            false,
        ),
        // Any sibling can plant the legacy name for the whole preview domain from JavaScript
        // (`document.cookie = "…; Domain=…"`); a `__Host-` cookie cannot carry a Domain.
        row(
            "legacy accepted cookie",
            "GET",
            &[
                UA,
                HTML,
                NAVIGATE,
                ("cookie", "daytona-preview-page-accepted=true"),
            ],
            true,
        ),
    ];
    for row in &rows {
        check(&proxy, &runner, "https", row).await;
    }
}

#[tokio::test]
async fn accepting_after_a_post_returns_to_the_url_with_get() {
    let runner = Runner::start("runner-key").await;
    for (scheme, cookie) in [
        ("http", "daytona-preview-page-accepted=true; "),
        ("https", "__Host-daytona-preview-page-accepted=true; "),
    ] {
        let proxy = Proxy::start(&config(&runner, scheme, ""));
        let post = row(
            "form POST",
            "POST",
            &[UA, HTML, NAVIGATE, CROSS_SITE, FORM],
            true,
        );
        let page = check(&proxy, &runner, scheme, &post).await.text();
        assert!(page.contains("was not sent"), "{page}");
        let field = |attr: &str| {
            page.split(attr)
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap()
                .replace("&amp;", "&")
        };
        let (action, csrf) = (field("action=\""), field("value=\""));
        let reply = send(
            proxy.addr,
            "POST",
            PREVIEW,
            &action,
            &[UA, FORM],
            format!("csrf={csrf}").as_bytes(),
        )
        .await;
        assert_eq!(reply.status, 303, "a 303 makes the browser GET the URL");
        assert_eq!(reply.headers["location"], "/submit?x=1");
        let set = reply.headers["set-cookie"].to_str().unwrap();
        assert!(set.starts_with(cookie), "{scheme}: {set}");
    }
}

#[tokio::test]
async fn a_post_navigation_without_credentials_goes_to_login_and_fetch_gets_401() {
    let runner = Runner::start("runner-key").await;
    let oidc = "[auth.oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"c\"\n\
                login_host = \"login.localhost\"\n";
    let proxy = Proxy::start(&config(&runner, "http", oidc));
    let private = "3000-sbx-priv.preview.localhost";
    let reply = send(
        proxy.addr,
        "POST",
        private,
        "/submit?x=1",
        &[UA, HTML, NAVIGATE, CROSS_SITE, FORM],
        b"a=1",
    )
    .await;
    assert_eq!(reply.status, 302, "{}", reply.text());
    let location = reply.headers["location"].to_str().unwrap();
    assert!(
        location.starts_with("http://login.localhost/login?returnTo="),
        "{location}"
    );
    let reply = send(
        proxy.addr,
        "POST",
        private,
        "/submit",
        &[UA, ("accept", "*/*"), ("sec-fetch-mode", "cors")],
        b"a=1",
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert!(runner.seen().is_empty(), "nothing reached the sandbox");
}
