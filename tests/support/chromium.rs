//! A real browser: headless Chromium (Debian package `chromium`) driven over the DevTools
//! protocol. [`Chromium::launch`] answers `None` (after printing why) when it is not installed,
//! except under CI (`CI` set), where a missing browser is a failure.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "chromium";

pub struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    session: Option<String>,
}

impl Cdp {
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
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

    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is a string containing `needle`.
    pub async fn wait_for(&mut self, expression: &str, needle: &str) -> String {
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

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }
}

fn installed() -> bool {
    Command::new(CHROMIUM)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The browser process (killed on drop) and its profile directory.
pub struct Chromium {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Chromium {
    /// Starts headless Chromium and attaches to a fresh blank page; `None` when Chromium is not
    /// installed outside CI.
    pub async fn launch() -> Option<(Chromium, Cdp)> {
        if !installed() {
            // CI installs it (.ci/run); there a missing browser is a failure, not a skip.
            assert!(
                std::env::var_os("CI").is_none(),
                "chromium is not installed"
            );
            println!("SKIPPED: chromium is not installed (CI: apt-get install -y chromium)");
            return None;
        }
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
        let browser = Chromium {
            child,
            _profile: profile,
        };
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
        Some((browser, cdp))
    }

    pub async fn close(self, cdp: &mut Cdp) {
        let _ = cdp.call("Browser.close", json!({})).await;
    }
}
