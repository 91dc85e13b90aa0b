//! Limits: in-flight requests per sandbox (429), toolbox body size (413), WebSocket idle
//! timeout (1001), and the plaintext → HTTPS redirect.
mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::runner::{sandboxes, Runner};
use support::{get, send, Proxy};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const PREVIEW: &str = "3000-sbx-1.preview.localhost";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_per_sandbox_are_limited() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start_with_env(
        &runner.config(sandboxes()),
        &[("SANDGATE_PROXY__MAX_REQUESTS_PER_SANDBOX", "2")],
    );
    let addr = proxy.addr;
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, PREVIEW, "/hold").await.status }))
        .collect();
    runner.wait_requests(2).await;
    let refused = get(addr, PREVIEW, "/").await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["code"], "SANDBOX_BUSY");
    assert_eq!(refused.headers["retry-after"], "1");
    // Another sandbox is not affected.
    let other = send(
        addr,
        "GET",
        "3000-sbx-priv.preview.localhost",
        "/",
        &[("x-daytona-preview-token", "tok-secret")],
        b"",
    )
    .await;
    assert_eq!(other.status, 200);
    runner.release();
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(
        get(addr, PREVIEW, "/").await.status,
        200,
        "slots are released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toolbox_bodies_over_the_limit_get_413() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start_with_env(
        &runner.config(sandboxes()),
        &[("SANDGATE_PROXY__TOOLBOX_MAX_BODY_BYTES", "1000")],
    );
    let token = [("x-daytona-preview-token", "tok-public")];
    let small = send(
        proxy.addr,
        "POST",
        "127.0.0.1",
        "/toolbox/sbx-1/upload",
        &token,
        &[b'a'; 1000],
    )
    .await;
    assert_eq!(small.status, 200);
    let big = send(
        proxy.addr,
        "POST",
        "127.0.0.1",
        "/toolbox/sbx-1/upload",
        &token,
        &[b'a'; 1001],
    )
    .await;
    assert_eq!(big.status, 413);
    assert_eq!(big.json()["code"], "BODY_TOO_LARGE");
    // Chunked (no Content-Length): cut while streaming.
    let raw = support::raw(
        proxy.addr,
        format!(
            "POST /toolbox/sbx-1/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Daytona-Preview-Token: tok-public\r\n\
             Transfer-Encoding: chunked\r\n\r\n400\r\n{}\r\n400\r\n{}\r\n0\r\n\r\n",
            "b".repeat(1024),
            "b".repeat(1024)
        )
        .into_bytes(),
    )
    .await;
    assert_eq!(support::status_of(&raw), 413, "{raw}");
    // Previews have no limit.
    let preview = send(proxy.addr, "POST", PREVIEW, "/upload", &[], &[b'c'; 5000]).await;
    assert_eq!(preview.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websockets_are_closed_with_1001() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start_with_env(
        &runner.config(sandboxes()),
        &[("SANDGATE_PROXY__WEBSOCKET_IDLE_TIMEOUT", "500ms")],
    );
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{PREVIEW}/ws"), stream)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    match closed {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(runner.ws_closes(1).await, vec![Some(1001)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_redirects_to_https_except_health() {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(support::BIN)
        .args(["certs", "dev", "--domain", "preview.localhost", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\nredirect_plaintext = true\n\
         [[tls.certs]]\ncert = \"{}\"\nkey = \"{}\"\n",
        sandboxes(),
        dir.path().join("preview.localhost.pem").display(),
        dir.path().join("preview.localhost.key").display(),
    )));
    let port = proxy.tls_addr().port();
    let reply = get(proxy.addr, "3000-sbx-1.preview.localhost:8080", "/a?b=1").await;
    assert_eq!(reply.status, 308);
    assert_eq!(
        reply.headers["location"],
        format!("https://3000-sbx-1.preview.localhost:{port}/a?b=1").as_str()
    );
    assert_eq!(get(proxy.addr, "127.0.0.1", "/health").await.status, 200);
    assert!(runner.seen().is_empty(), "nothing is proxied in plaintext");
}
