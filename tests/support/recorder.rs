//! A recording upstream: answers every request with JSON describing what it received
//! (method, path, raw query, every header), so tests can assert that no credential reached the
//! sandbox. `GET …/own-cors` answers with the app's own CORS header; WebSocket upgrades are
//! accepted and the first message sent is the same JSON record.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::SinkExt;
use http::header::{CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Starts the recorder on a free loopback port.
pub async fn start() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|req| async move { Ok::<_, Infallible>(record(req)) });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn describe(req: &Request<Incoming>) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let entry = headers
            .entry(name.as_str().to_string())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            );
        }
    }
    serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    })
}

fn record(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let described = describe(&req);
    if let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) {
        let accept = derive_accept_key(key.as_bytes());
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            let _ = ws.send(Message::text(described.to_string())).await;
            let _ = ws.close(None).await;
        });
        let mut response = Response::new(Full::default());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(SEC_WEBSOCKET_ACCEPT, HeaderValue::try_from(accept).unwrap());
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(described.to_string())));
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("set-cookie", HeaderValue::from_static("app=1; Path=/"));
    if req.uri().path().ends_with("/own-cors") {
        h.insert(
            "access-control-allow-origin",
            HeaderValue::from_static("https://app-chosen.example"),
        );
    }
    response
}

/// Asserts that nothing in a recorded request is a credential of the proxy.
pub fn assert_no_credentials(record: &serde_json::Value, secrets: &[&str]) {
    if let Err(problem) = credentials_in(record, secrets) {
        panic!("{problem}");
    }
}

/// The first credential of the proxy (or of `secrets`) found in a recorded request.
pub fn credentials_in(record: &serde_json::Value, secrets: &[&str]) -> Result<(), String> {
    let text = record.to_string();
    for secret in secrets {
        if text.contains(secret) {
            return Err(format!("the sandbox saw a credential {secret:?}: {text}"));
        }
    }
    let headers = &record["headers"];
    if headers.get("x-daytona-preview-token").is_some() {
        return Err(format!("the sandbox saw x-daytona-preview-token: {text}"));
    }
    if let Some(cookies) = headers.get("cookie") {
        let c = cookies.to_string();
        if c.contains("daytona-sandbox-auth-")
            || c.contains("daytona-preview-page-accepted")
            || c.contains("sandgate-")
        {
            return Err(format!("the sandbox saw a proxy cookie: {c}"));
        }
    }
    let query = record["query"].as_str().unwrap_or("");
    if query.contains("DAYTONA_SANDBOX_AUTH_KEY") {
        return Err(format!("the sandbox saw the query credential: {query}"));
    }
    Ok(())
}
