//! Graceful shutdown of the real binary on SIGTERM.
mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::runner::{sandboxes, Runner};
use support::{ws_connect, Proxy};
use tokio_tungstenite::tungstenite::Message;

const PREVIEW: &str = "3000-sbx-1.preview.localhost";

fn start(runner: &Runner, shutdown_timeout: &str) -> Proxy {
    Proxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"{shutdown_timeout}\"\n{}",
        runner.config(sandboxes())
    ))
}

/// Polls until the proxy's port refuses connections.
async fn wait_refused(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(proxy.addr).await.is_err() {
            return;
        }
        assert!(Instant::now() < deadline, "the listener is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let runner = Runner::start("runner-key").await;
    let mut proxy = start(&runner, "20s");
    let addr = proxy.addr;
    let in_flight = tokio::spawn(async move { support::get(addr, PREVIEW, "/hold").await });
    runner.wait_requests(1).await;

    proxy.signal("TERM");
    wait_refused(&proxy).await;
    if let Some(status) = proxy.child.try_wait().unwrap() {
        panic!(
            "the proxy exited ({status:?}) with a request in flight:\n{}",
            proxy.stderr()
        );
    }
    runner.release();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "released");
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy did not exit after draining");
    assert!(status.success(), "{status:?}\n{}", proxy.stderr());
}

#[tokio::test]
async fn sigterm_closes_open_websockets_with_1001_after_the_timeout() {
    let runner = Runner::start("runner-key").await;
    let mut proxy = start(&runner, "500ms");
    let (mut ws, _) = ws_connect(proxy.addr, PREVIEW, "/ws", &[]).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));

    let signalled = Instant::now();
    proxy.signal("TERM");
    let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("no close frame")
        .expect("the stream ended without a close frame")
        .expect("websocket error");
    let elapsed = signalled.elapsed();
    match message {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    // The sandbox side is told too.
    assert_eq!(runner.ws_closes(1).await, [Some(1001)]);
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy did not exit");
    assert!(status.success(), "{status:?}\n{}", proxy.stderr());
}

#[tokio::test]
async fn sigterm_right_after_the_listening_line_is_graceful() {
    // A supervisor may stop the proxy as soon as it says it is listening: the stop signal must
    // already be handled (drain and exit 0), not kill the process.
    for _ in 0..5 {
        let runner = Runner::start("runner-key").await;
        let mut proxy = start(&runner, "1s");
        proxy.signal("TERM");
        let status = proxy
            .wait_exit(Duration::from_secs(10))
            .expect("the proxy did not exit");
        assert!(status.success(), "{status:?}\n{}", proxy.stderr());
    }
}
