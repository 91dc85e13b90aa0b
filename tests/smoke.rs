//! The shortest end-to-end path: real binary, real demo runner, real HTTP.
mod support;

use support::{get, runner_config, Proxy};

#[tokio::test]
async fn preview_and_health_through_the_real_binary() {
    let runner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runner_addr = runner.local_addr().unwrap();
    tokio::spawn(sandgate::cli::demo::run_demo_runner(runner, "k".into()));
    let proxy = Proxy::start(&runner_config(
        runner_addr,
        "k",
        "[[registry.sandboxes]]\nid = \"sbx-1\"\nrunner = \"runner-1\"\npublic = true\n",
    ));
    let reply = get(proxy.addr, "3000-sbx-1.preview.localhost", "/hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "hello from sandbox sbx-1, port 3000, path /hi\n"
    );
    let health = get(proxy.addr, "127.0.0.1", "/health").await;
    assert_eq!(health.json()["status"], "ok");
}

/// On one core sandgate runs a current-thread runtime: the same traffic works there, including
/// a WebSocket relayed while other requests are served, and SIGTERM drains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_thread_runtime_serves_http_and_websockets() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let runner = support::runner::Runner::start("k").await;
    let mut proxy = Proxy::start_with_env(
        &runner.config(support::runner::sandboxes()),
        &[("SANDGATE_WORKER_THREADS", "1")],
    );
    let host = "3000-sbx-1.preview.localhost";
    let (mut ws, _) = support::ws_connect(proxy.addr, host, "/ws", &[])
        .await
        .unwrap();
    let replies = futures_util::future::join_all((0..20).map(|_| get(proxy.addr, host, "/"))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    ws.send(Message::text("one thread")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("one thread")
    );
    drop(ws);
    proxy.signal("TERM");
    let status = proxy.wait_exit(std::time::Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
