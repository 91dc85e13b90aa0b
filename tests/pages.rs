//! The proxy's own pages and JSON errors, from the real binary: words a browser user can act on
//! (share link, reserved port), a 503 that retries by itself after `Retry-After`, the request id
//! on every page and JSON error, CSP and `nosniff` on all, and the operator's templates
//! (`[pages] dir`) with every placeholder escaped. One row in headless Chromium.
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::chromium::Chromium;
use support::runner::{sandboxes, Runner};
use support::table::{
    self, body_has, code, has_header, header, json, status, Expect, Row, Upstream,
};
use support::{Proxy, Reply, BIN};

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";
const HTML: (&str, &str) = ("accept", "text/html");
const PRIV: &str = "3000-sbx-priv.preview.localhost";
const OFF: &str = "3000-sbx-off.preview.localhost";
const RESERVED: &str = "22222-sbx-1.preview.localhost";
const UNKNOWN: &str = "3000-nope.preview.localhost";
/// A request id the client chose; `<`, `>` and `"` are allowed in one, so pages must escape it.
const NASTY_ID: &str = "<b>id\"1</b>";

/// A stopped sandbox with no wake configured: 503 with `Retry-After`.
const STOPPED: &str =
    "[[registry.sandboxes]]\nid = \"sbx-off\"\nrunner = \"runner-1\"\npublic = true\nstate = \"stopped\"\n";

/// Headers every proxy-generated page and JSON error carries.
fn secured() -> [Expect; 2] {
    [
        header("content-security-policy", CSP),
        header("x-content-type-options", "nosniff"),
    ]
}

fn secured_and(mut expect: Vec<Expect>) -> Vec<Expect> {
    expect.extend(secured());
    expect
}

fn check(name: &'static str, ok: impl Fn(&Reply) -> bool + 'static) -> Expect {
    Expect::Reply(Box::new(move |r: &Reply| {
        if ok(r) {
            Ok(())
        } else {
            Err(format!("{name}: {}", r.text()))
        }
    }))
}

/// The page shows the request id the response header carries.
fn page_shows_request_id() -> Expect {
    check("the page shows its X-Request-Id", |r| {
        let id = r.headers.get("x-request-id").and_then(|v| v.to_str().ok());
        id.is_some_and(|id| !id.is_empty() && r.text().contains(&format!("<code>{id}</code>")))
    })
}

#[tokio::test]
async fn built_in_pages_and_json_errors() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!("{}{STOPPED}", sandboxes())));
    let with_id = [("x-request-id", "req-42")];
    let html_nasty = [HTML, ("x-request-id", NASTY_ID)];
    let rows = vec![
        Row::get(
            "browser 401: ask for a share link",
            PRIV,
            "/",
            &[HTML],
            secured_and(vec![
                status(401),
                code_in_page("AUTH_REQUIRED"),
                body_has("ask its owner for a share link"),
                page_shows_request_id(),
                header("content-type", "text/html; charset=utf-8"),
            ]),
        ),
        Row::get(
            "API 401: JSON with request_id",
            PRIV,
            "/",
            &with_id,
            secured_and(vec![
                status(401),
                code("AUTH_REQUIRED"),
                json("/request_id", "req-42"),
                header("x-request-id", "req-42"),
            ]),
        ),
        Row::get(
            "browser: a reserved port says so",
            RESERVED,
            "/",
            &[HTML],
            secured_and(vec![
                status(401),
                body_has("Port 22222 is reserved by the platform"),
                page_shows_request_id(),
            ]),
        ),
        Row::get(
            "API: a reserved port says so",
            RESERVED,
            "/",
            &[],
            secured_and(vec![
                status(401),
                code("AUTH_REQUIRED"),
                check("message names the port", |r| {
                    r.json()["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("port 22222 is reserved by the platform"))
                }),
            ]),
        ),
        Row::get(
            "browser 503: counts down and retries",
            OFF,
            "/",
            &[HTML],
            secured_and(vec![
                status(503),
                header("retry-after", "5"),
                header("refresh", "5"),
                body_has("<meta http-equiv=\"refresh\" content=\"5\">"),
                body_has("Retrying in <span class=\"n\">5</span> s"),
                page_shows_request_id(),
            ]),
        ),
        Row::get(
            "API 503: Retry-After, no refresh",
            OFF,
            "/",
            &with_id,
            secured_and(vec![
                status(503),
                header("retry-after", "5"),
                json("/request_id", "req-42"),
                check("no Refresh for API clients", |r| {
                    !r.headers.contains_key("refresh")
                }),
            ]),
        ),
        Row::get(
            "browser 404 escapes the client's request id",
            UNKNOWN,
            "/",
            &html_nasty,
            secured_and(vec![
                status(404),
                body_has("&lt;b&gt;id&quot;1&lt;/b&gt;"),
                check("raw id absent", |r| !r.text().contains(NASTY_ID)),
            ]),
        ),
        Row::get(
            "API 404 JSON",
            UNKNOWN,
            "/",
            &with_id,
            secured_and(vec![
                status(404),
                code("SANDBOX_NOT_FOUND"),
                json("/request_id", "req-42"),
            ]),
        ),
        Row::get(
            "own host 404",
            "preview.localhost",
            "/nothing",
            &[],
            secured_and(vec![status(404), has_header("x-request-id")]),
        ),
    ];
    table::run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

/// The built-in page names its machine code in `<code>`.
fn code_in_page(want: &'static str) -> Expect {
    check("machine code on the page", move |r| {
        r.text().contains(&format!("<code>{want}</code>"))
    })
}

#[tokio::test]
async fn request_ids_off_leave_them_out() {
    let runner = Runner::start("k").await;
    let proxy =
        Proxy::start(&runner.config(&format!("[log]\nrequest_id = false\n{}", sandboxes())));
    let rows = [
        Row::get(
            "JSON without request_id",
            PRIV,
            "/",
            &[],
            [
                status(401),
                check("no request_id key", |r| {
                    r.json().get("request_id").is_none()
                }),
            ],
        ),
        Row::get(
            "page without request id",
            PRIV,
            "/",
            &[HTML],
            [
                status(401),
                check("no request id line", |r| !r.text().contains("request id")),
            ],
        ),
    ];
    table::run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

fn templates_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "401.html",
        "<h1>Brand {{status}} {{title}}</h1><p>{{message}}</p><i>{{request_id}}</i><b>{{path}}</b>",
    );
    write(
        "SANDBOX_NOT_RUNNING.html",
        "<p>Napping; back in {{retry_after}} s ({{code}})</p>",
    );
    write("default.html", "<p>DEFAULT {{status}} {{code}}</p>");
    write("notes.txt", "{{not a template}}");
    dir
}

#[tokio::test]
async fn operator_templates_replace_the_pages_with_values_escaped() {
    let runner = Runner::start("k").await;
    let dir = templates_dir();
    let pages = format!("[pages]\ndir = \"{}\"\n", dir.path().display());
    let proxy = Proxy::start(&runner.config(&format!("{pages}{}{STOPPED}", sandboxes())));
    let html_nasty = [HTML, ("x-request-id", NASTY_ID)];
    let rows = vec![
        Row::get(
            "401.html by status, values escaped",
            PRIV,
            "/a\"b",
            &html_nasty,
            secured_and(vec![
                status(401),
                body_has("<h1>Brand 401 Unauthorized</h1>"),
                body_has("ask its owner for a share link"),
                body_has("<i>&lt;b&gt;id&quot;1&lt;/b&gt;</i>"),
                body_has("<b>/a&quot;b</b>"),
            ]),
        ),
        Row::get(
            "a code's template wins over the status",
            OFF,
            "/",
            &[HTML],
            secured_and(vec![
                status(503),
                body_has("<p>Napping; back in 5 s (SANDBOX_NOT_RUNNING)</p>"),
                header("refresh", "5"),
            ]),
        ),
        Row::get(
            "default.html for the rest",
            UNKNOWN,
            "/",
            &[HTML],
            secured_and(vec![
                status(404),
                body_has("<p>DEFAULT 404 SANDBOX_NOT_FOUND</p>"),
            ]),
        ),
        Row::get(
            "API clients still get JSON",
            PRIV,
            "/",
            &[],
            secured_and(vec![status(401), code("AUTH_REQUIRED")]),
        ),
    ];
    table::run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

/// `serve` with `config`: the exit status and stderr, once it has exited (refused to start).
fn serve_refuses(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandgate.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{config}"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started with {config}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_templates_dir_is_a_startup_error_naming_the_key() {
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("401.html"), "<p>{{mesage}}</p>").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let rows = [
        (
            "missing folder",
            "/nonexistent/sandgate-pages".to_string(),
            "/nonexistent/sandgate-pages",
        ),
        (
            "unknown placeholder",
            bad.path().display().to_string(),
            "{{mesage}}",
        ),
        (
            "no template",
            empty.path().display().to_string(),
            "holds no template",
        ),
    ];
    let mut failures = Vec::new();
    for (name, dir, want) in rows {
        let stderr = serve_refuses(&format!("[pages]\ndir = \"{dir}\"\n"));
        if !(stderr.contains("pages.dir") && stderr.contains(want)) {
            failures.push(format!("{name}: want pages.dir and {want:?} in {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// In a real browser: the 401 page reads as words, and the 503 page reloads itself after
/// `Retry-After` (a new request id each time), with no script.
#[tokio::test]
async fn chromium_shows_the_pages_and_the_503_retries_by_itself() {
    let Some((browser, mut cdp)) = Chromium::launch().await else {
        return;
    };
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!("{}{STOPPED}", sandboxes())));
    let port = proxy.addr.port();

    cdp.navigate(&format!("http://{PRIV}:{port}/")).await;
    let text = cdp
        .wait_for("document.body ? document.body.innerText : ''", "share link")
        .await;
    assert!(text.contains("401"), "{text}");

    cdp.navigate(&format!("http://{OFF}:{port}/")).await;
    let id = "(document.querySelector('small code:last-of-type')||{}).textContent||''";
    let first = cdp
        .wait_for(
            "document.body ? document.body.innerText : ''",
            "Retrying in",
        )
        .await;
    let first_id = cdp.eval(id).await.as_str().unwrap_or("").to_string();
    assert!(first.contains("503"), "{first}");
    assert!(!first_id.is_empty());
    assert_eq!(
        cdp.eval("document.scripts.length").await,
        serde_json::json!(0)
    );
    // Retry-After is 5 s: within 12 s the page has been fetched again.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let now = cdp.eval(id).await.as_str().unwrap_or("").to_string();
        if !now.is_empty() && now != first_id {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 503 page did not reload by itself"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.close(&mut cdp).await;
}

/// With OIDC configured, a 401 page a browser gets without being redirected (a `fetch` that
/// asks for HTML) links to the sign-in, back to the same URL.
#[tokio::test]
async fn with_oidc_the_401_page_links_to_sign_in() {
    let idp = support::oidc::Idp::start("sandgate-client").await;
    let runner = Runner::start("k").await;
    let oidc = format!(
        "[auth]\ncookie_keys = [\"0123456789abcdef0123456789abcdef\"]\n\
         [auth.oidc]\nissuer = \"{}\"\nclient_id = \"sandgate-client\"\nlogin_host = \"login.localhost\"\n",
        idp.issuer()
    );
    let proxy = Proxy::start(&runner.config(&format!("{oidc}{}", sandboxes())));
    let fetch_html = [HTML, ("sec-fetch-mode", "cors")];
    let rows = vec![
        Row::get(
            "sign-in link",
            PRIV,
            "/x?y=1",
            &fetch_html,
            secured_and(vec![
                status(401),
                body_has("<a href=\"http://login.localhost/login?returnTo="),
                body_has("3000-sbx-priv.preview.localhost%2Fx%3Fy%3D1"),
                body_has("share link"),
            ]),
        ),
        Row::get(
            "API clients get no link",
            PRIV,
            "/x",
            &[],
            secured_and(vec![
                status(401),
                check("no link in JSON", |r| !r.text().contains("login.localhost")),
            ]),
        ),
    ];
    table::run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

/// SIGHUP reads the templates again; a broken one is refused and the pages in force stay.
#[tokio::test]
async fn sighup_reloads_the_templates_and_keeps_them_on_a_bad_edit() {
    let runner = Runner::start("k").await;
    let dir = templates_dir();
    let pages = format!("[pages]\ndir = \"{}\"\n", dir.path().display());
    let proxy = Proxy::start(&runner.config(&format!("{pages}{}", sandboxes())));
    let page = || async {
        support::send(proxy.addr, "GET", PRIV, "/", &[HTML], b"")
            .await
            .text()
    };
    assert!(page().await.contains("Brand 401"));

    let template = dir.path().join("401.html");
    std::fs::write(&template, "<p>Rebranded {{status}}</p>").unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !page().await.contains("Rebranded 401") {
        assert!(Instant::now() < deadline, "not reloaded: {}", page().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    std::fs::write(&template, "<p>{{typo}}</p>").unwrap();
    proxy.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.stderr().contains("{{typo}}") {
        assert!(
            Instant::now() < deadline,
            "no rejection logged: {}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        page().await.contains("Rebranded 401"),
        "the pages in force stay"
    );
}
