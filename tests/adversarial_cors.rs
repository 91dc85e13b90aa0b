//! Issue #12 class 1: a sibling sandbox's page must not read another sandbox with the
//! visitor's credentials. One row per (origin, sandbox, request kind), through the real binary
//! to the runner emulator: what the browser gets (status, `Access-Control-Allow-*`) and whether
//! the request reached the app.
mod support;

use support::runner::Runner;
use support::{send, Proxy};

const TOKEN: &str = "tok-victim-0123456789";
const DASHBOARD: &str = "https://dash.example.com";
const APP_ORIGIN: &str = "https://app-chosen.example";

fn config(runner: &Runner, allowed: &str) -> String {
    runner.config(&format!(
        r#"
[auth]
cookie_keys = ["test-cookie-key-0123456789abcdef0123"]
cors_allowed_origins = [{allowed}]
[[registry.sandboxes]]
id = "victim"
runner = "runner-1"
auth_token = "{TOKEN}"
[[registry.sandboxes]]
id = "pub"
runner = "runner-1"
public = true
[[registry.sandboxes]]
id = "pt"
runner = "runner-1"
public = true
cors = "passthrough"
[[registry.sandboxes]]
id = "ptpriv"
runner = "runner-1"
auth_token = "{TOKEN}"
cors = "passthrough"
"#
    ))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// `OPTIONS` with `Origin` and `Access-Control-Request-Method`, no credential.
    Preflight,
    /// `GET` with `Origin` and the preview token.
    Actual,
}

struct Case {
    name: &'static str,
    sandbox: &'static str,
    kind: Kind,
    origin: &'static str,
    path: &'static str,
    extra: &'static [(&'static str, &'static str)],
    status: u16,
    /// The one `Access-Control-Allow-Origin` expected (`None`: absent).
    acao: Option<&'static str>,
    reaches_app: bool,
}

const SAME_SANDBOX: &str = "http://5173-victim.preview.localhost";
const SIBLING: &str = "http://3000-attacker.preview.localhost";
const LOOK_ALIKE: &str = "https://3000-victim.preview.localhost.evil.com";

const fn row(
    name: &'static str,
    sandbox: &'static str,
    kind: Kind,
    origin: &'static str,
    status: u16,
    acao: Option<&'static str>,
    reaches_app: bool,
) -> Case {
    Case {
        name,
        sandbox,
        kind,
        origin,
        path: "/echo",
        extra: &[],
        status,
        acao,
        reaches_app,
    }
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    // managed (the default): the same sandbox on another port, and the dashboard.
    row("same sandbox", "victim", Kind::Preflight, SAME_SANDBOX, 204, Some(SAME_SANDBOX), false),
    row("same sandbox", "victim", Kind::Actual, SAME_SANDBOX, 200, Some(SAME_SANDBOX), true),
    row("dashboard", "victim", Kind::Preflight, DASHBOARD, 204, Some(DASHBOARD), false),
    row("dashboard", "victim", Kind::Actual, DASHBOARD, 200, Some(DASHBOARD), true),
    // ... and nothing else: another tenant's preview, null, a look-alike host.
    row("sibling sandbox", "victim", Kind::Preflight, SIBLING, 204, None, false),
    row("sibling sandbox", "victim", Kind::Actual, SIBLING, 200, None, true),
    row("sibling, public", "pub", Kind::Actual, SIBLING, 200, None, true),
    row("null", "victim", Kind::Preflight, "null", 204, None, false),
    row("null", "victim", Kind::Actual, "null", 200, None, true),
    row("look-alike", "victim", Kind::Preflight, LOOK_ALIKE, 204, None, false),
    row("look-alike", "victim", Kind::Actual, LOOK_ALIKE, 200, None, true),
    // passthrough: the app's own answers, once; the proxy adds nothing, even for its own origins.
    Case {
        path: "/cors",
        ..row("passthrough preflight", "pt", Kind::Preflight, SIBLING, 204, Some(APP_ORIGIN), true)
    },
    Case {
        path: "/cors",
        ..row("passthrough", "pt", Kind::Actual, SAME_SANDBOX, 200, Some(APP_ORIGIN), true)
    },
    row("passthrough, app silent", "pt", Kind::Actual, "http://1-pt.preview.localhost", 200, None, true),
    // A preflight carries no credential: a private passthrough sandbox refuses it unseen.
    row("passthrough private preflight", "ptpriv", Kind::Preflight, SIBLING, 401, None, false),
    // X-Daytona-Disable-CORS: the preflight goes to the app, the proxy adds nothing.
    Case {
        path: "/cors",
        extra: &[("x-daytona-disable-cors", "true")],
        ..row("disable-CORS header", "pub", Kind::Preflight, SAME_SANDBOX, 204, Some(APP_ORIGIN), true)
    },
];

/// Without an allow-list (the default the issue found open): siblings still get nothing.
#[rustfmt::skip]
const NO_LIST_CASES: &[Case] = &[
    row("same sandbox", "victim", Kind::Preflight, SAME_SANDBOX, 204, Some(SAME_SANDBOX), false),
    row("sibling sandbox", "victim", Kind::Preflight, SIBLING, 204, None, false),
    row("sibling sandbox", "victim", Kind::Actual, SIBLING, 200, None, true),
    row("sibling, public", "pub", Kind::Actual, SIBLING, 200, None, true),
    row("dashboard", "victim", Kind::Actual, DASHBOARD, 200, None, true),
];

#[tokio::test]
async fn credentialed_cors_only_for_the_same_sandbox_and_configured_origins() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(&runner, &format!("{DASHBOARD:?}")));
    let failures = check(&runner, &proxy, CASES).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn without_an_allow_list_sibling_sandboxes_get_nothing() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(&runner, ""));
    let failures = check(&runner, &proxy, NO_LIST_CASES).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Sends every case; one line per failed expectation (every row is checked).
async fn check(runner: &Runner, proxy: &Proxy, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for c in cases {
        let host = format!("3000-{}.preview.localhost", c.sandbox);
        let mut headers = vec![("origin", c.origin)];
        let method = match c.kind {
            Kind::Preflight => {
                headers.push(("access-control-request-method", "PUT"));
                headers.push(("access-control-request-headers", "content-type"));
                "OPTIONS"
            }
            Kind::Actual => {
                headers.push(("x-daytona-preview-token", TOKEN));
                "GET"
            }
        };
        headers.extend_from_slice(c.extra);
        let before = runner.seen().len();
        let r = send(proxy.addr, method, &host, c.path, &headers, b"").await;
        let reached = runner.seen().len() > before;
        let all = |name: &str| -> Vec<String> {
            r.headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        let acao = all("access-control-allow-origin");
        let acac = all("access-control-allow-credentials");
        let expected_acao: Vec<String> = c.acao.iter().map(|o| o.to_string()).collect();
        let expected_acac: Vec<String> = c.acao.iter().map(|_| "true".to_string()).collect();
        let app_preflight = r.headers.contains_key("x-app-preflight");
        let checks = [
            ("status", r.status == c.status),
            ("Access-Control-Allow-Origin", acao == expected_acao),
            ("Access-Control-Allow-Credentials", acac == expected_acac),
            ("reached the app", reached == c.reaches_app),
            (
                "preflight answered by the app",
                app_preflight == (c.kind == Kind::Preflight && c.reaches_app),
            ),
            (
                "no proxy Allow-Methods for a refused origin",
                c.acao.is_some() || all("access-control-allow-methods").is_empty(),
            ),
        ];
        for (what, ok) in checks {
            if !ok {
                failures.push(format!(
                    "{} ({:?} from {}): {what}: status {}, headers {:?}, reached {reached}",
                    c.name, c.kind, c.origin, r.status, r.headers
                ));
            }
        }
    }
    failures
}
