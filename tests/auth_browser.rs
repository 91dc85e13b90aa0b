//! A real browser: headless Chromium (Debian package `chromium`) driven over the DevTools
//! protocol opens a query-token preview URL, follows the redirect that sets the sandbox cookie,
//! then loads a subresource and opens a WebSocket with only that cookie.
//! Skips (with a message) when `chromium` is not installed.
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{runner_config, Proxy};
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "chromium";

struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("cdp send");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("cdp reply in time")
                .expect("cdp open")
                .expect("cdp frame");
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is a string containing `needle`.
    async fn wait_for(&mut self, expression: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.eval(expression).await;
            let s = v.as_str().unwrap_or("").to_string();
            if s.contains(needle) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {needle:?} in {expression}: last {v}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn chromium_installed() -> bool {
    Command::new(CHROMIUM)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Browser(std::process::Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn chromium_logs_in_by_query_token_then_uses_only_the_cookie() {
    if !chromium_installed() {
        // CI installs it (.ci/run); there a missing browser is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed"
        );
        println!("SKIPPED: chromium is not installed (CI: apt-get install -y chromium)");
        return;
    }
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

    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    let stderr = child.stderr.take().unwrap();
    let browser = Browser(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let devtools = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("chromium printed its DevTools URL");
    let (ws, _) = tokio_tungstenite::connect_async(devtools.as_str())
        .await
        .expect("connect to DevTools");
    let mut cdp = Cdp {
        ws,
        next_id: 0,
        session: None,
    };
    let target = cdp
        .call("Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());

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
    let _ = cdp.call("Browser.close", json!({})).await;
    drop(browser);
}
