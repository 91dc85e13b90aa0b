//! Auto-wake: a stopped sandbox answers 503 with Retry-After, and the start hook is called once
//! per interval, with the configured bearer.
mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{get, send, Proxy};

type Calls = Arc<Mutex<Vec<(String, String, String)>>>;

/// A start hook that records (method, path, authorization) and answers 202.
async fn hook() -> (std::net::SocketAddr, Calls) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls: Calls = Arc::default();
    let recorded = calls.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let auth = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    recorded.lock().unwrap().push((
                        req.method().to_string(),
                        req.uri().path().to_string(),
                        auth,
                    ));
                    let mut response = http::Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = http::StatusCode::ACCEPTED;
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_sandbox_calls_the_start_hook_once_per_interval() {
    let (hook_addr, calls) = hook().await;
    let proxy = Proxy::start(&format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [registry.wake]\nurl = \"http://{hook_addr}/api/sandbox/{{id}}/start\"\napi_key = \"wake-key\"\ninterval = \"1h\"\n\
         [[registry.sandboxes]]\nid = \"sleepy\"\naddress = \"127.0.0.1\"\npublic = true\nstate = \"stopped\"\n\
         [[registry.sandboxes]]\nid = \"other\"\naddress = \"127.0.0.1\"\npublic = true\nstate = \"archived\"\n\
         [[registry.sandboxes]]\nid = \"private\"\naddress = \"127.0.0.1\"\nauth_token = \"tok\"\nstate = \"stopped\"\n"
    ));
    for _ in 0..5 {
        let reply = get(proxy.addr, "3000-sleepy.preview.localhost", "/").await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.headers["retry-after"], "5");
        assert_eq!(reply.json()["code"], "SANDBOX_NOT_RUNNING");
        assert!(reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("being started"));
    }
    let page = send(
        proxy.addr,
        "GET",
        "3000-other.preview.localhost",
        "/",
        &[("accept", "text/html")],
        b"",
    )
    .await;
    assert_eq!(page.status, 503);
    assert!(page.text().contains("<html"), "browsers get a page");

    // Without a credential, a private sandbox neither reveals its state nor wakes.
    let anonymous = get(proxy.addr, "3000-private.preview.localhost", "/").await;
    assert_eq!(anonymous.status, 401);

    for _ in 0..100 {
        if calls.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut calls = calls.lock().unwrap().clone();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            (
                "POST".into(),
                "/api/sandbox/other/start".into(),
                "Bearer wake-key".into()
            ),
            (
                "POST".into(),
                "/api/sandbox/sleepy/start".into(),
                "Bearer wake-key".into()
            ),
        ]
    );
}

#[tokio::test]
async fn without_a_hook_the_page_says_to_start_it() {
    let proxy = Proxy::start(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [[registry.sandboxes]]\nid = \"sleepy\"\naddress = \"127.0.0.1\"\npublic = true\nstate = \"stopped\"\n",
    );
    let reply = get(proxy.addr, "3000-sleepy.preview.localhost", "/").await;
    assert_eq!(reply.status, 503);
    assert!(reply.json()["message"]
        .as_str()
        .unwrap()
        .contains("start it and retry"));
}
