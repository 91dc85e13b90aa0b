//! A real browser: headless Chromium (Debian package `chromium`) driven over the DevTools
//! protocol opens a query-token preview URL, follows the redirect that sets the sandbox cookie,
//! then loads a subresource and opens a WebSocket with only that cookie.
//! Skips (with a message) when `chromium` is not installed.
mod support;

use serde_json::json;
use support::chromium::Chromium;
use support::{runner_config, Proxy};

#[tokio::test]
async fn chromium_logs_in_by_query_token_then_uses_only_the_cookie() {
    let Some((browser, mut cdp)) = Chromium::launch().await else {
        return;
    };
    let runner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runner_addr = runner.local_addr().unwrap();
    tokio::spawn(sandgate::cli::demo::run_demo_runner(runner, "k".into()));
    let proxy = Proxy::start(&runner_config(
        runner_addr,
        "k",
        "[auth]\ncookie_keys = [\"0123456789abcdef0123456789abcdef\"]\n\
         [[registry.sandboxes]]\nid = \"web\"\nrunner = \"runner-1\"\nauth_token = \"browser-token-123\"\n",
    ));
    let origin = format!("http://3000-web.preview.localhost:{}", proxy.addr.port());

    cdp.call(
        "Page.navigate",
        json!({"url": format!("{origin}/?DAYTONA_SANDBOX_AUTH_KEY=browser-token-123")}),
    )
    .await;
    // The page's script opened its WebSocket to /ws: cookie only, no token in that URL.
    let log = cdp
        .wait_for(
            "(document.getElementById('log')||{}).textContent||''",
            "connected",
        )
        .await;
    assert!(log.contains("connected"), "{log}");
    let href = cdp.eval("location.href").await;
    assert_eq!(
        href,
        json!(format!("{origin}/")),
        "redirected without the token"
    );
    assert_eq!(
        cdp.eval("document.cookie").await,
        json!(""),
        "the cookie is HttpOnly"
    );
    let sub = cdp
        .eval("fetch('/hello').then(r => r.status + ' ' + r.url).catch(e => 'error ' + e)")
        .await;
    assert_eq!(sub, json!(format!("200 {origin}/hello")));
    cdp.eval("document.getElementById('f').requestSubmit(); 'sent'")
        .await;
    cdp.wait_for("document.getElementById('log').textContent", "echo: hello")
        .await;
    // Without the cookie (a fresh context) the same subresource is refused.
    let status = cdp
        .eval("fetch('/hello', {credentials: 'omit'}).then(r => r.status)")
        .await;
    assert_eq!(status, json!(401));
    browser.close(&mut cdp).await;
}
