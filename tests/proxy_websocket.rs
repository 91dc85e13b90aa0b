//! WebSockets through the proxy: frames of every kind, close codes both ways, big messages,
//! and handshake headers passed untouched.
mod support;

use futures_util::{SinkExt, StreamExt};
use support::runner::{sandboxes, Runner};
use support::{ws_connect, Proxy, Ws};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const PREVIEW: &str = "3000-sbx-1.preview.localhost";

async fn setup() -> (Runner, Proxy) {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(sandboxes()));
    (runner, proxy)
}

async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(std::time::Duration::from_secs(20), ws.next())
        .await
        .expect("no message in time")
        .expect("the stream ended")
        .expect("websocket error")
}

#[tokio::test]
async fn text_binary_ping_and_close_code_through_the_proxy() {
    let (runner, proxy) = setup().await;
    let (mut ws, response) = ws_connect(
        proxy.addr,
        PREVIEW,
        "/ws?room=a%2Fb",
        &[
            ("sec-websocket-protocol", "chat.v2, other"),
            ("sec-websocket-extensions", "x-custom; a=1"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
    let seen = runner.last();
    assert_eq!(
        seen.target,
        "/sandboxes/sbx-1/toolbox/proxy/3000/ws?room=a%2Fb"
    );
    assert_eq!(seen.all("sec-websocket-protocol"), ["chat.v2, other"]);
    assert_eq!(seen.all("sec-websocket-extensions"), ["x-custom; a=1"]);
    assert_eq!(seen.all("sec-websocket-version"), ["13"]);
    assert_eq!(seen.all("upgrade"), ["websocket"]);
    assert_eq!(seen.all("x-daytona-authorization"), ["Bearer runner-key"]);

    ws.send(Message::text("héllo")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("héllo"));
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(binary));
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );

    ws.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4000),
        other => panic!("expected the close echo, got {other:?}"),
    }
    assert_eq!(runner.ws_closes(1).await, [Some(4000)]);
}

#[tokio::test]
async fn server_close_code_reaches_the_client() {
    let (runner, proxy) = setup().await;
    let (mut ws, _) = ws_connect(proxy.addr, PREVIEW, "/ws", &[]).await.unwrap();
    ws.send(Message::text("close:4001")).await.unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason, "asked to");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // Complete the closing handshake: the stream then ends cleanly.
    while let Some(Ok(_)) = ws.next().await {}
    assert_eq!(runner.ws_closes(1).await.len(), 1);
}

#[tokio::test]
async fn sixteen_mib_message_round_trip() {
    let (_runner, proxy) = setup().await;
    let (mut ws, _) = ws_connect(proxy.addr, PREVIEW, "/ws", &[]).await.unwrap();
    let big: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match next(&mut ws).await {
        Message::Binary(data) => {
            assert_eq!(data.len(), big.len());
            assert!(data[..] == big[..], "the message was altered");
        }
        other => panic!("expected binary, got {other:?}"),
    }
    let text = "ü".repeat(8 << 20);
    ws.send(Message::text(text.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text(text));
}

#[tokio::test]
async fn toolbox_websocket_and_auth() {
    let (runner, proxy) = setup().await;
    let (mut ws, _) = ws_connect(
        proxy.addr,
        "localhost",
        "/toolbox/sbx-priv/ws",
        &[("x-daytona-preview-token", "tok-secret")],
    )
    .await
    .unwrap();
    assert_eq!(runner.last().target, "/sandboxes/sbx-priv/toolbox/ws");
    assert_eq!(runner.last().header("x-daytona-preview-token"), None);
    ws.send(Message::text("pty")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("pty"));

    // Without a credential, an upgrade gets 401 JSON, not a login redirect.
    let err = ws_connect(proxy.addr, "3000-sbx-priv.preview.localhost", "/ws", &[])
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(response) => {
            assert_eq!(response.status(), 401);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["code"], "AUTH_REQUIRED");
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}
