//! SIGHUP reloads the static registry without dropping open connections; a bad file is rejected
//! and the registry in force stays; changed keys only a restart applies are named. Scripted
//! reloads: `sandgate reload --pid-file` (`server.pid_file`) and the admin listener's
//! `POST /reload` (only with `admin.token`).
mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{get, runner_config, send, Proxy, BIN};
use tokio_tungstenite::tungstenite::Message;

fn sandbox(id: &str) -> String {
    format!("[[registry.sandboxes]]\nid = \"{id}\"\nrunner = \"runner-1\"\npublic = true\n")
}

async fn eventually_status(proxy: &Proxy, host: &str, status: u16) -> bool {
    for _ in 0..100 {
        if get(proxy.addr, host, "/").await.status == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_static_registry_and_keeps_connections() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runner = listener.local_addr().unwrap();
    tokio::spawn(sandgate::cli::demo::run_demo_runner(listener, "k".into()));
    let proxy = Proxy::start(&runner_config(runner, "k", &sandbox("a")));
    assert_eq!(
        get(proxy.addr, "3000-a.preview.localhost", "/")
            .await
            .status,
        200
    );
    assert_eq!(
        get(proxy.addr, "3000-b.preview.localhost", "/")
            .await
            .status,
        404
    );

    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let url = format!("ws://3000-a.preview.localhost:{}/ws", proxy.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();

    // Listen address stays as it was: the reload only swaps the registry.
    let with_b = std::fs::read_to_string(&proxy.config_path).unwrap() + &sandbox("b");
    std::fs::write(&proxy.config_path, with_b).unwrap();
    proxy.signal("HUP");
    assert!(eventually_status(&proxy, "3000-b.preview.localhost", 200).await);

    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );

    std::fs::write(
        &proxy.config_path,
        "[[registry.sandboxes]]\nid = \"c\"\nrunner = \"nope\"\n",
    )
    .unwrap();
    proxy.signal("HUP");
    let mut rejected = false;
    for _ in 0..100 {
        if proxy.stderr().contains("reload rejected") {
            rejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(rejected, "log:\n{}", proxy.stderr());
    assert_eq!(
        get(proxy.addr, "3000-b.preview.localhost", "/")
            .await
            .status,
        200
    );
    ws.send(Message::text("after bad reload")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("after bad reload")
    );
}

async fn wait_for_log(proxy: &Proxy, needle: &str) -> String {
    for _ in 0..250 {
        if let Some(line) = proxy.stderr().lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no log line with {needle:?}:\n{}", proxy.stderr());
}

/// The proxy's config file with `from` replaced by `to` (which must be there).
fn edit_config(proxy: &Proxy, from: &str, to: &str) {
    let text = std::fs::read_to_string(&proxy.config_path).unwrap();
    assert!(text.contains(from), "{from:?} not in:\n{text}");
    std::fs::write(&proxy.config_path, text.replacen(from, to, 1)).unwrap();
}

async fn demo_runner() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runner = listener.local_addr().unwrap();
    tokio::spawn(sandgate::cli::demo::run_demo_runner(listener, "k".into()));
    runner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_names_the_changed_keys_that_need_a_restart() {
    let runner = demo_runner().await;
    let proxy = Proxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"info\"\n{}",
        runner_config(runner, "k", &sandbox("a"))
    ));
    edit_config(
        &proxy,
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:1\"",
    );
    edit_config(&proxy, "level = \"info\"", "level = \"debug\"");
    std::fs::write(
        &proxy.config_path,
        std::fs::read_to_string(&proxy.config_path).unwrap()
            + &sandbox("b")
            // TLS was off at start: there is no listener to give a certificate to.
            + "[[tls.certs]]\ncert = \"/nowhere.pem\"\nkey = \"/nowhere.key\"\n",
    )
    .unwrap();
    proxy.signal("HUP");
    let line = wait_for_log(&proxy, "need a restart").await;
    assert!(
        line.contains("log.level, server.listen, tls.certs"),
        "{line}"
    );
    assert!(
        !line.contains("registry"),
        "the registry was applied: {line}"
    );
    assert!(eventually_status(&proxy, "3000-b.preview.localhost", 200).await);
    // Still serving where it was.
    assert_eq!(
        get(proxy.addr, "3000-a.preview.localhost", "/")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_command_signals_the_pid_file_process_which_removes_the_file_at_exit() {
    let runner = demo_runner().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sandgate.pid");
    let mut proxy = Proxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npid_file = {:?}\n{}",
        pid_file,
        runner_config(runner, "k", &sandbox("a"))
    ));
    let written = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(written.trim(), proxy.pid().to_string());
    std::fs::write(
        &proxy.config_path,
        std::fs::read_to_string(&proxy.config_path).unwrap() + &sandbox("b"),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["reload", "--pid-file"])
        .arg(&pid_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(eventually_status(&proxy, "3000-b.preview.localhost", 200).await);

    let missing = std::process::Command::new(BIN)
        .args(["reload", "--pid-file"])
        .arg(dir.path().join("nope.pid"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.pid"));

    // A stale pid file naming another program: it is not signalled (SIGHUP would kill it).
    let mut other = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let stale = dir.path().join("stale.pid");
    std::fs::write(&stale, format!("{}\n", other.id())).unwrap();
    let refused = std::process::Command::new(BIN)
        .args(["reload", "--pid-file"])
        .arg(&stale)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not sandgate"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process was not signalled"
    );
    let _ = other.kill();
    let _ = other.wait();

    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(20)).is_some());
    assert!(!pid_file.exists(), "the pid file is removed at exit");
}

struct Ask {
    name: &'static str,
    /// `admin.token` in the config.
    token: Option<&'static str>,
    method: &'static str,
    authorization: Option<&'static str>,
    status: u16,
    /// Text the JSON body has.
    body_has: &'static str,
}

const ASKS: &[Ask] = &[
    Ask {
        name: "no token configured",
        token: None,
        method: "POST",
        authorization: Some("Bearer anything"),
        status: 403,
        body_has: "admin.token",
    },
    Ask {
        name: "no credentials",
        token: Some("s3cret"),
        method: "POST",
        authorization: None,
        status: 401,
        body_has: "Bearer",
    },
    Ask {
        name: "wrong token",
        token: Some("s3cret"),
        method: "POST",
        authorization: Some("Bearer s3cret-not"),
        status: 401,
        body_has: "Bearer",
    },
    Ask {
        name: "GET",
        token: Some("s3cret"),
        method: "GET",
        authorization: Some("Bearer s3cret"),
        status: 405,
        body_has: "POST",
    },
    Ask {
        name: "the token",
        token: Some("s3cret"),
        method: "POST",
        authorization: Some("Bearer s3cret"),
        status: 200,
        body_has: "\"needs_restart\":[\"server.listen\"]",
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_needs_the_admin_token_and_reports_what_it_did() {
    let runner = demo_runner().await;
    for ask in ASKS {
        let token = ask
            .token
            .map_or(String::new(), |t| format!("token = \"{t}\"\n"));
        let proxy = Proxy::start(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{token}{}",
            runner_config(runner, "k", &sandbox("a"))
        ));
        edit_config(
            &proxy,
            "listen = \"127.0.0.1:0\"",
            "listen = \"127.0.0.1:1\"",
        );
        std::fs::write(
            &proxy.config_path,
            std::fs::read_to_string(&proxy.config_path).unwrap() + &sandbox("b"),
        )
        .unwrap();
        let headers: Vec<(&str, &str)> = ask
            .authorization
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        let reply = send(
            proxy.admin_addr(),
            ask.method,
            "admin",
            "/reload",
            &headers,
            b"",
        )
        .await;
        assert_eq!(reply.status, ask.status, "{}: {}", ask.name, reply.text());
        assert!(
            reply.text().contains(ask.body_has),
            "{}: {}",
            ask.name,
            reply.text()
        );
        let json = reply.json();
        let reloaded = get(proxy.addr, "3000-b.preview.localhost", "/")
            .await
            .status
            == 200;
        assert_eq!(
            reloaded,
            ask.status == 200,
            "{}: reloaded only with the token",
            ask.name
        );
        if ask.status == 200 {
            assert_eq!(json["applied"], serde_json::json!(["registry"]), "{json}");
            assert_eq!(json["errors"], serde_json::json!([]), "{json}");
        } else {
            assert!(json["error"].is_string(), "{}: {json}", ask.name);
        }
    }
}
