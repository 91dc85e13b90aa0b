//! Activity recording through the real server (in-process, so the memory sink is observable):
//! throttling, batching, skip header, and heartbeats of open WebSockets.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sandgate::config::Config;
use support::send;
use tokio_tungstenite::tungstenite::Message;

async fn demo_runner() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sandgate::cli::demo::run_demo_runner(listener, "k".into()));
    addr
}

async fn start(runner: SocketAddr, activity: &str, sandboxes: usize) -> sandgate::Running {
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[proxy]\ndomains = [\"preview.localhost\"]\n\
         [activity]\n{activity}\n\
         [[registry.runners]]\nid = \"r\"\nurl = \"http://{runner}\"\napi_key = \"k\"\n"
    );
    for i in 0..sandboxes {
        toml.push_str(&format!(
            "[[registry.sandboxes]]\nid = \"sbx-{i}\"\nrunner = \"r\"\npublic = true\n"
        ));
    }
    sandgate::start(Config::from_toml_str(&toml).unwrap())
        .await
        .unwrap()
}

async fn wait_until(mut done: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_in_one_interval_make_one_write() {
    let runner = demo_runner().await;
    let proxy = start(runner, "throttle = \"1h\"\nflush_interval = \"50ms\"", 1).await;
    let addr = proxy.addr;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            tokio::spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                for _ in 0..10_000 / 32 + 1 {
                    let request = http::Request::get(format!("http://{addr}/"))
                        .header("host", "3000-sbx-0.preview.localhost")
                        .body(Empty::new())
                        .unwrap();
                    let response = client.request(request).await.unwrap();
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let sink = proxy.activity_sink.clone();
    assert!(wait_until(|| sink.writes_for("sbx-0") >= 1, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.writes_for("sbx-0"), 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sandboxes_go_out_in_one_batch() {
    let runner = demo_runner().await;
    // A long flush interval: all marks are pending at the first flush after the requests.
    let proxy = start(runner, "throttle = \"1h\"\nflush_interval = \"3s\"", 1000).await;
    let addr = proxy.addr;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            tokio::spawn(async move {
                for i in (t..1000).step_by(8) {
                    let host = format!("3000-sbx-{i}.preview.localhost");
                    assert_eq!(send(addr, "GET", &host, "/", &[], b"").await.status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let sink = proxy.activity_sink.clone();
    assert!(
        wait_until(
            || sink.writes.load(Ordering::Relaxed) >= 1000,
            Duration::from_secs(8)
        )
        .await
    );
    let batches = sink.batches.load(Ordering::Relaxed);
    // The first flush may fire while requests are still arriving; at most a couple of batches.
    assert!(batches <= 3, "{batches} batches for 1000 sandboxes");
    assert_eq!(sink.last.len(), 1000);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_header_records_nothing() {
    let runner = demo_runner().await;
    let proxy = start(runner, "throttle = \"0s\"\nflush_interval = \"20ms\"", 2).await;
    let skip = [("x-daytona-skip-last-activity-update", "true")];
    let r = send(
        proxy.addr,
        "GET",
        "3000-sbx-0.preview.localhost",
        "/",
        &skip,
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        proxy.addr,
        "GET",
        "3000-sbx-1.preview.localhost",
        "/",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let sink = proxy.activity_sink.clone();
    assert!(wait_until(|| sink.writes_for("sbx-1") == 1, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.writes_for("sbx-0"), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websocket_heartbeats_and_stops_when_closed() {
    let runner = demo_runner().await;
    let proxy = start(
        runner,
        "throttle = \"0s\"\nflush_interval = \"50ms\"\nheartbeat = \"300ms\"",
        1,
    )
    .await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let url = format!("ws://3000-sbx-0.preview.localhost:{}/ws", proxy.addr.port());
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));

    let sink = proxy.activity_sink.clone();
    let at_open = sink.writes_for("sbx-0");
    // Idle for a bit over three heartbeats: each one re-marks the sandbox.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let while_open = sink.writes_for("sbx-0") - at_open;
    assert!(while_open >= 3, "{while_open} heartbeat writes while open");
    assert_eq!(proxy.app.activity.open_streams(), 1);

    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws); // as a browser does after the close handshake
    assert!(
        wait_until(
            || proxy.app.activity.open_streams() == 0,
            Duration::from_secs(3)
        )
        .await
    );
    // The close itself is one last mark; after it, nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_close = sink.writes_for("sbx-0");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        sink.writes_for("sbx-0"),
        after_close,
        "no marks after close"
    );
    proxy.shutdown().await;
}
