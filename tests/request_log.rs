//! The owner's view (issue #15): the last requests of each sandbox on the admin listener, as
//! JSON (`GET /sandboxes/<id>/requests`), as a live SSE stream (`?follow=1`), and through
//! `sandgate logs`. Real proxy, real runner emulator; the attacks: secrets never recorded, one
//! sandbox's requests never shown for another.
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::runner::{sandboxes, Runner, ATTACKER_AND_VICTIM};
use support::{get, send, Proxy, BIN};

const HOST: &str = "3000-sbx-1.preview.localhost";

fn config(runner: &Runner, sandboxes: &str, log: &str) -> String {
    runner.config(&format!(
        "{sandboxes}[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = false\n{log}"
    ))
}

/// A GET on the admin listener, with its body still streaming.
async fn admin_get(admin: SocketAddr, path: &str) -> http::Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", admin.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.send_request(request).await.unwrap()
}

async fn admin_json(admin: SocketAddr, path: &str) -> (u16, Value) {
    let response = admin_get(admin, path).await;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

async fn requests(admin: SocketAddr, id: &str) -> Vec<Value> {
    let (status, list) = admin_json(admin, &format!("/sandboxes/{id}/requests")).await;
    assert_eq!(status, 200, "{list}");
    list["requests"].as_array().unwrap().clone()
}

fn paths(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect()
}

/// A live stream's events as `(event, data)`, read as they arrive.
struct Events {
    body: Incoming,
    pending: String,
}

impl Events {
    async fn open(admin: SocketAddr, id: &str) -> Events {
        let response = admin_get(admin, &format!("/sandboxes/{id}/requests?follow=1")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Events {
            body: response.into_body(),
            pending: String::new(),
        }
    }

    /// The next event (comments skipped); `None` when the stream ends.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::to_string)
                };
                if let (Some(event), Some(data)) = (field("event: "), field("data: ")) {
                    return Some((event, serde_json::from_str(&data).unwrap()));
                }
                continue;
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("an event within 10 s")?
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.pending.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
}

#[tokio::test]
async fn entries_carry_each_requests_fields_refusals_included() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&config(&runner, sandboxes(), ""));
    let admin = proxy.admin_addr();
    let ok = get(proxy.addr, HOST, "/hello?q=1").await;
    let long_path = format!("/{}", "a".repeat(300));
    assert_eq!(get(proxy.addr, HOST, &long_path).await.status, 200);
    let failed = get(proxy.addr, HOST, "/status/502").await;
    let toolbox = send(
        proxy.addr,
        "POST",
        "preview.localhost",
        "/toolbox/sbx-1/files",
        &[],
        b"x",
    )
    .await;
    let refused = get(proxy.addr, "3000-sbx-priv.preview.localhost", "/").await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        get(proxy.addr, "3000-nosuch.preview.localhost", "/")
            .await
            .status,
        404
    );

    let entries = requests(admin, "sbx-1").await;
    assert_eq!(
        paths(&entries),
        [
            "/hello",
            &long_path[..256],
            "/status/502",
            "/toolbox/sbx-1/files"
        ]
    );
    let first = &entries[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["status"], 200);
    assert_eq!(first["kind"], "preview");
    assert_eq!(first["port"], 3000);
    assert_eq!(first["bytes"].as_u64(), Some(ok.body.len() as u64));
    assert_eq!(
        first["request_id"],
        ok.headers["x-request-id"].to_str().unwrap()
    );
    assert!(first["micros"].as_u64().is_some() && first["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first.get("path_truncated"), None);
    assert_eq!(entries[1]["path_truncated"], true);
    assert_eq!(entries[2]["status"], failed.status);
    assert_eq!(
        (
            &entries[3]["method"],
            &entries[3]["kind"],
            &entries[3]["port"]
        ),
        (&Value::from("POST"), &Value::from("toolbox"), &Value::Null)
    );
    assert_eq!(entries[3]["status"], toolbox.status);
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);

    let private = requests(admin, "SBX-PRIV").await;
    assert_eq!(
        (paths(&private), &private[0]["status"]),
        (vec!["/"], &Value::from(401))
    );
    assert!(
        requests(admin, "nosuch").await.is_empty(),
        "never resolved: never recorded"
    );

    let (status, limited) = admin_json(admin, "/sandboxes/sbx-1/requests?limit=1").await;
    assert_eq!(
        (status, paths(limited["requests"].as_array().unwrap())),
        (200, vec!["/toolbox/sbx-1/files"])
    );
    assert_eq!(limited["next_seq"], 5);
    for bad in [
        "/sandboxes/a.b/requests",
        "/sandboxes/sbx-1/requests?limit=x",
    ] {
        assert_eq!(admin_json(admin, bad).await.0, 400, "{bad}");
    }
}

#[tokio::test]
async fn the_ring_keeps_the_last_n_and_drops_the_oldest() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&config(&runner, sandboxes(), "requests_per_sandbox = 8\n"));
    for i in 0..18 {
        assert_eq!(get(proxy.addr, HOST, &format!("/n{i}")).await.status, 200);
    }
    let (_, list) = admin_json(proxy.admin_addr(), "/sandboxes/sbx-1/requests").await;
    let entries = list["requests"].as_array().unwrap();
    let expected: Vec<String> = (10..18).map(|i| format!("/n{i}")).collect();
    assert_eq!(paths(entries), expected);
    assert_eq!(entries[0]["seq"], 11);
    assert_eq!(list["next_seq"], 19);
}

/// Host, path, headers, and the status the proxy answers.
type Visit<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16);

/// The attack: every credential a visitor can present (the sandbox's preview token as a
/// header, in the query, as a bearer; a cookie; a signed preview host), accepted or refused,
/// leaves no trace in the owner's log, which still records each of those requests.
#[tokio::test]
async fn no_credential_is_ever_recorded() {
    const TOKEN: &str = "tok-victim-secret-0123";
    const SIGNED: &str = "signedtoken00001";
    const WRONG: &str = "wrong-guess-secret-987";
    const COOKIE: &str = "cookie-secret-value-555";
    let runner = Runner::start("k").await;
    let sandboxes = format!(
        "[[registry.sandboxes]]\nid = \"victim\"\nrunner = \"runner-1\"\nauth_token = \"{TOKEN}\"\n\
         [[registry.signed_previews]]\ntoken = \"{SIGNED}\"\nport = 3000\nsandbox = \"victim\"\n"
    );
    let proxy = Proxy::start(&config(&runner, &sandboxes, ""));
    let host = "3000-victim.preview.localhost";
    let bearer = format!("Bearer {TOKEN}");
    let cookie = format!("daytona-sandbox-auth-victim={COOKIE}");
    let query = format!("/q?DAYTONA_SANDBOX_AUTH_KEY={TOKEN}");
    let cases: [Visit; 6] = [
        (host, "/h", vec![("x-daytona-preview-token", TOKEN)], 200),
        (host, &query, vec![], 200),
        (host, "/b", vec![("authorization", &bearer)], 401),
        (host, "/c", vec![("cookie", &cookie)], 401),
        (host, "/w", vec![("x-daytona-preview-token", WRONG)], 401),
        ("3000-signedtoken00001.preview.localhost", "/s", vec![], 200),
    ];
    for (host, path, headers, status) in &cases {
        let reply = send(proxy.addr, "GET", host, path, headers, b"").await;
        assert_eq!(reply.status, *status, "{host}{path}");
    }
    let (_, list) = admin_json(proxy.admin_addr(), "/sandboxes/victim/requests").await;
    assert_eq!(
        paths(list["requests"].as_array().unwrap()),
        ["/h", "/q", "/b", "/c", "/w", "/s"]
    );
    let text = list.to_string();
    for secret in [
        TOKEN,
        SIGNED,
        WRONG,
        COOKIE,
        "DAYTONA_SANDBOX_AUTH_KEY",
        "preview.localhost",
    ] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

/// The attack: a tenant reads only its own sandbox's log, and only the operator can read it
/// at all (the public listener does not serve the admin paths, on any host).
#[tokio::test]
async fn a_sandbox_log_never_shows_another_sandboxs_requests() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&config(&runner, ATTACKER_AND_VICTIM, ""));
    let admin = proxy.admin_addr();
    let victim = "3000-victim.preview.localhost";
    let attacker = "3000-attacker.preview.localhost";
    let token = [("x-daytona-preview-token", "tok-victim")];
    send(proxy.addr, "GET", victim, "/victim-private", &token, b"").await;
    get(proxy.addr, attacker, "/attacker-own").await;
    // Request ids and paths naming the other sandbox change nothing.
    let spoof = [("x-request-id", "victim")];
    send(
        proxy.addr,
        "GET",
        attacker,
        "/sandboxes/victim/requests",
        &spoof,
        b"",
    )
    .await;

    assert_eq!(paths(&requests(admin, "victim").await), ["/victim-private"]);
    assert_eq!(
        paths(&requests(admin, "attacker").await),
        ["/attacker-own", "/sandboxes/victim/requests"]
    );
    for host in ["preview.localhost", attacker] {
        let reply = get(proxy.addr, host, "/sandboxes/victim/requests").await;
        assert!(
            !reply.text().contains("victim-private"),
            "{host}: {}",
            reply.text()
        );
    }
}

/// The criterion: a request shows on the live stream within 100 ms of its response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_shows_on_the_live_stream_within_100_ms() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&config(&runner, sandboxes(), ""));
    let admin = proxy.admin_addr();
    get(proxy.addr, HOST, "/before").await;
    let mut events = Events::open(admin, "sbx-1").await;
    let (event, backlog) = events.next().await.unwrap();
    assert_eq!(
        (event.as_str(), &backlog["path"]),
        ("request", &Value::from("/before"))
    );

    let reply = get(proxy.addr, HOST, "/live").await;
    let answered = Instant::now();
    let (event, entry) = events.next().await.unwrap();
    let delay = answered.elapsed();
    assert_eq!(
        (event.as_str(), entry["path"].as_str()),
        ("request", Some("/live"))
    );
    assert_eq!(
        entry["request_id"],
        reply.headers["x-request-id"].to_str().unwrap()
    );
    assert!(
        delay < Duration::from_millis(100),
        "shown {delay:?} after the response"
    );
}

#[tokio::test]
async fn followers_are_limited_and_streams_end_at_shutdown_without_holding_the_drain() {
    let runner = Runner::start("k").await;
    let mut proxy = Proxy::start(&config(
        &runner,
        &format!(
            "{}[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"60s\"\n",
            sandboxes()
        ),
        "",
    ));
    let admin = proxy.admin_addr();
    let mut streams = Vec::new();
    for _ in 0..64 {
        streams.push(Events::open(admin, "sbx-1").await);
    }
    let (status, refused) = admin_json(admin, "/sandboxes/sbx-1/requests?follow=1").await;
    assert_eq!(status, 503);
    assert!(refused["error"]
        .as_str()
        .unwrap()
        .contains("too many followers"));
    // A follower that goes away frees its place (noticed at the next write to it).
    streams.truncate(63);
    let mut freed = false;
    for _ in 0..100 {
        get(proxy.addr, HOST, "/nudge").await;
        let response = admin_get(admin, "/sandboxes/sbx-1/requests?follow=1").await;
        if response.status() == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(freed, "a closed follower still counts");

    get(proxy.addr, HOST, "/x").await;
    let mut last = String::new();
    while last != "/x" {
        last = streams[0].next().await.unwrap().1["path"]
            .as_str()
            .unwrap()
            .into();
    }
    proxy.signal("TERM");
    assert_eq!(streams[0].next().await, None, "the stream ends at shutdown");
    assert!(
        proxy.wait_exit(Duration::from_secs(20)).is_some(),
        "64 open streams held the drain (shutdown_timeout is 60 s)"
    );
}

fn sandgate(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_lists_and_follows_until_the_proxy_closes() {
    let runner = Runner::start("k").await;
    let port = support::free_port();
    let mut proxy = Proxy::start(&runner.config(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:{port}\"\n",
        sandboxes()
    )));
    let config = proxy.config_path.to_str().unwrap().to_string();
    let admin = format!("http://127.0.0.1:{port}");
    let reply = get(proxy.addr, HOST, "/one").await;
    get(proxy.addr, HOST, "/two").await;

    let text = sandgate(&["logs", "--sandbox", "sbx-1", "--config", &config]);
    let text = String::from_utf8(text.stdout).unwrap();
    let id = reply.headers["x-request-id"].to_str().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains(" 200 GET /one ")
            && lines[0].contains(" preview:3000 ")
            && lines[0].ends_with(&format!("req={id}")),
        "{text}"
    );
    let json = sandgate(&[
        "logs",
        "--sandbox",
        "sbx-1",
        "--admin",
        &admin,
        "--json",
        "--limit",
        "1",
    ]);
    let json: Vec<Value> = String::from_utf8(json.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(paths(&json), ["/two"]);

    let mut follow = Command::new(BIN)
        .args([
            "logs",
            "--sandbox",
            "sbx-1",
            "--admin",
            &admin,
            "--follow",
            "--limit",
            "0",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    // The follower is connected once its backlog (none: --limit 0) was read; a request made
    // before that would be missed, so keep asking until one shows.
    let mut shown = None;
    for _ in 0..50 {
        get(proxy.addr, HOST, "/three").await;
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            shown = Some(line);
            break;
        }
    }
    let shown = shown.expect("the follower printed a request");
    assert!(shown.contains(" GET /three "), "{shown}");
    proxy.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = follow.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the follower did not end with the proxy"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let _ = proxy.wait_exit(Duration::from_secs(10));
}

#[test]
fn the_cli_says_when_there_is_no_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "[proxy]\ndomains = [\"preview.localhost\"]\n").unwrap();
    let out = sandgate(&[
        "logs",
        "--sandbox",
        "x",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no admin listener"));
    let closed = format!("http://127.0.0.1:{}", support::free_port());
    let out = sandgate(&["logs", "--sandbox", "x", "--admin", &closed]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the admin listener"),
        "{stderr}"
    );
}
