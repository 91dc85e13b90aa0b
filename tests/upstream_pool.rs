//! The upstream pool: keep-alive connections are reused (and only once their response is read
//! to the end), a connection the upstream closed while idle is replaced without failing the
//! request, and an h2c runner gets HTTP/2 on one multiplexed connection (WebSockets still over
//! HTTP/1.1), a stream the runner refused is sent again, requests queued behind a failed h2c
//! connect share its failure, and a runner 502 leaves its connection in the pool.
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use support::runner::{sandboxes, Runner};
use support::{get, runner_config, sample, send, ws_connect, Proxy};

const HOST: &str = "3000-sbx-1.preview.localhost";

async fn upstream_connects(proxy: &Proxy) -> f64 {
    let reply = get(proxy.admin_addr(), "admin", "/metrics").await;
    assert_eq!(reply.status, 200);
    sample(&reply.text(), "sandgate_upstream_connects_total")
}

/// The test sandboxes on one runner at `runner` that speaks h2c; `proxy_extra` goes in `[proxy]`.
fn h2c_config(runner: SocketAddr, proxy_extra: &str) -> String {
    format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n{proxy_extra}\
         [[registry.runners]]\nid = \"runner-1\"\nurl = \"http://{runner}\"\napi_key = \"k\"\n\
         protocol = \"h2c\"\n{}",
        sandboxes()
    )
}

fn with_admin(config: String) -> String {
    format!("{config}[admin]\nlisten = \"127.0.0.1:0\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_reused_once_the_body_is_read() {
    let runner = Runner::start("k").await;
    // One serving thread, so one set of idle connections: every thread keeps its own, and
    // these requests come on new client connections the kernel may give to any thread.
    let config = with_admin(runner.config(sandboxes()));
    let proxy = Proxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n{config}"
    ));

    // Sequential requests of every body shape share one upstream connection.
    for path in ["/", "/bytes/65536", "/chunked/70000", "/status/204", "/"] {
        let reply = get(proxy.addr, HOST, path).await;
        assert!(reply.status < 300, "{path}: {}", reply.status);
    }
    let head = send(proxy.addr, "HEAD", HOST, "/bytes/100", &[], b"").await;
    assert_eq!(head.status, 200);
    let post = send(proxy.addr, "POST", HOST, "/upload", &[], &[7u8; 100_000]).await;
    assert_eq!(post.json()["len"], 100_000);
    assert_eq!(get(proxy.addr, HOST, "/").await.status, 200);
    let connects = upstream_connects(&proxy).await;
    // HEAD answers leave the body unread on hyper's side, which may cost one connection.
    assert!((1.0..=2.0).contains(&connects), "{connects} connects");

    // While one response is held open, another request gets its own connection.
    let before = upstream_connects(&proxy).await;
    let received = runner.seen().len();
    let held = tokio::spawn(support::send_streaming(
        proxy.addr,
        support::request("GET", HOST, "/hold")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap(),
    ));
    runner.wait_requests(received + 1).await;
    let quick = tokio::time::timeout(Duration::from_secs(5), get(proxy.addr, HOST, "/"))
        .await
        .expect("queued behind the held response");
    assert_eq!(quick.status, 200);
    runner.release();
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    assert!(upstream_connects(&proxy).await - before <= 1.0);

    // Many concurrent requests: never more connections than requests, all answered.
    let before = upstream_connects(&proxy).await;
    let replies =
        futures_util::future::join_all((0..16).map(|_| get(proxy.addr, HOST, "/bytes/1000"))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert!(upstream_connects(&proxy).await - before <= 16.0);
}

/// An HTTP/1.1 upstream that answers one request per connection with keep-alive headers, then
/// closes the socket shortly after: the pooled connection is dead by the next request.
async fn closing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_while_idle_is_replaced() {
    let (upstream, accepted) = closing_upstream().await;
    let proxy = Proxy::start(&runner_config(upstream, "k", sandboxes()));
    for round in 0..5 {
        let reply = get(proxy.addr, HOST, "/").await;
        assert_eq!(
            (round, reply.status, reply.text().as_str()),
            (round, 200, "ok")
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 5);
}

/// What an h2c runner saw: (HTTP version, request target) per request, and connections.
#[derive(Default)]
struct H2Seen {
    requests: Mutex<Vec<(http::Version, String)>>,
    connections: AtomicUsize,
}

/// A runner speaking HTTP/1.1 and HTTP/2 prior knowledge (hyper-util's auto server): answers
/// with its protocol version, and echoes WebSockets (HTTP/1.1 upgrades).
async fn h2c_runner() -> (SocketAddr, Arc<H2Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(H2Seen::default());
    let state = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            state.connections.fetch_add(1, Ordering::SeqCst);
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(h2c_answer(req, &state)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn h2c_answer(mut req: Request<Incoming>, seen: &H2Seen) -> Response<Full<Bytes>> {
    let target = req.uri().path().to_string();
    seen.requests
        .lock()
        .unwrap()
        .push((req.version(), target.clone()));
    if target.ends_with("/ws") {
        let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        return Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::default())
            .unwrap();
    }
    Response::new(Full::new(Bytes::from(format!("{:?}", req.version()))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_runners_get_http2_on_one_connection_and_websockets_over_http1() {
    let (runner, seen) = h2c_runner().await;
    let config = h2c_config(runner, "");
    let proxy = Proxy::start(&config);
    let replies = futures_util::future::join_all(
        (0..12).map(|i| get(proxy.addr, HOST, if i % 2 == 0 { "/a?x=1" } else { "/b" })),
    )
    .await;
    for reply in &replies {
        assert_eq!((reply.status, reply.text().as_str()), (200, "HTTP/2.0"));
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
    let requests = seen.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 12);
    assert!(requests.iter().all(|(v, t)| *v == http::Version::HTTP_2
        && t.starts_with("/sandboxes/sbx-1/toolbox/proxy/3000/")));

    let (mut ws, _) = ws_connect(proxy.addr, HOST, "/ws", &[]).await.unwrap();
    ws.send(Message::text("over h1")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("over h1"));
    let last = seen.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.0, http::Version::HTTP_11);
}

/// An HTTP/1.1 upstream that answers `/early` at once and reads the request body afterwards
/// (keeping the connection), and answers anything else `ok`.
async fn early_answer_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path().ends_with("/early") {
                        tokio::spawn(async move {
                            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                        });
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_still_uploading_is_not_handed_to_the_next_request() {
    let upstream = early_answer_upstream().await;
    let config = runner_config(upstream, "k", sandboxes())
        .replace("[proxy]\n", "[proxy]\nresponse_header_timeout = \"2s\"\n");
    let proxy = Proxy::start(&config);
    // The upload: one chunk now, the rest only after the second request is done.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, Infallible>>(1);
    let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
    let upload = support::send_streaming(
        proxy.addr,
        support::request("POST", HOST, "/early").body(body).unwrap(),
    );
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"first"))))
        .await
        .unwrap();
    let response = upload.await.unwrap();
    assert_eq!(response.status(), 200);
    // The answer is complete; the upload is not. The next request must not wait behind it.
    let started = std::time::Instant::now();
    let next = get(proxy.addr, HOST, "/").await;
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, "ok"),
        "{:?}",
        started.elapsed()
    );
    drop(tx);
}

fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The runner's 502 for a port nothing listens on becomes sandgate's PORT_NOT_LISTENING; its
/// connection is drained and reused, so a client polling a port that is not up yet does not
/// open an upstream connection per request. (Each serving thread keeps its own upstream
/// connections: with two threads, six requests on new client connections open at most two.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_502_keeps_its_connection() {
    let runner = Runner::start("k").await;
    let config = with_admin(runner.config(sandboxes()));
    let proxy = Proxy::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 2\n{config}"
    ));
    for _ in 0..5 {
        let reply = get(proxy.addr, HOST, "/status/502").await;
        assert_eq!(reply.status, 502);
        assert_eq!(
            reply.json()["code"],
            "PORT_NOT_LISTENING",
            "{}",
            reply.text()
        );
        // The drain runs beside the answer: give it a moment before the next request.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(get(proxy.addr, HOST, "/").await.status, 200);
    assert!(upstream_connects(&proxy).await <= 2.0);
}

/// An h2c runner that refuses the first stream of every connection (`REFUSED_STREAM`: never
/// processed, RFC 9113 §8.7) and answers the others with the request's method.
async fn refusing_h2c_runner() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                let mut refused = false;
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    if !refused {
                        refused = true;
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let head = Response::new(());
                    if let Ok(mut body) = respond.send_response(head, false) {
                        let _ = body.send_data(Bytes::from(req.method().to_string()), true);
                    }
                }
            });
        }
    });
    (addr, answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_stream_the_runner_refused_is_sent_again_when_it_has_no_body() {
    let (runner, answered) = refusing_h2c_runner().await;
    let config = h2c_config(runner, "");
    let proxy = Proxy::start(&config);
    // The first stream is refused; the GET goes again on the same connection and is answered.
    let reply = get(proxy.addr, HOST, "/").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "GET"));
    assert_eq!(answered.load(Ordering::SeqCst), 1);

    // A request with a body is never replayed: once refused, the client gets 502.
    let proxy = Proxy::start(&config);
    let reply = send(proxy.addr, "POST", HOST, "/", &[], b"payload").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(answered.load(Ordering::SeqCst), 1);
}

/// A listener whose accept queue is full and never drained: further connects hang until the
/// connector gives up (Linux drops the SYNs of a listener whose backlog is full; `listen(0)`
/// leaves room for the one filler connection).
fn blackhole() -> (std::net::TcpListener, std::net::TcpStream) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let filler = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    (listener, filler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_behind_a_failed_h2c_connect_fail_with_it() {
    let (listener, _filler) = blackhole();
    let runner = listener.local_addr().unwrap();
    let config = h2c_config(runner, "connect_timeout = \"2s\"\n");
    let proxy = Proxy::start(&config);
    let replies = futures_util::future::join_all((0..4).map(|_| get(proxy.addr, HOST, "/"))).await;
    assert!(replies.iter().all(|r| r.status == 502 || r.status == 504));
    // One request tried (and timed out); the three queued behind it got its failure instead of
    // each waiting out a connect timeout of their own in turn.
    let log = proxy.stderr();
    let tried = log.matches("ConnectTimeout(").count();
    let shared = log.matches("SharedConnectFailed(").count();
    assert_eq!((tried, shared), (1, 3), "{log}");
}

/// The shared h2c connection is driven by the runtime of the serving thread that opened it.
/// When that thread has drained its own clients first, a request another thread still has on
/// the connection completes: no serving runtime ends before every thread has drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_survive_the_drain_of_another_serving_thread() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runner = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    if req.uri().path().ends_with("/slow") {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let close = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").into_bytes()
    };
    // Which thread gets which connection is the kernel's choice: four tries make it all but
    // certain that the slow request lands on the thread that did not open the h2c connection.
    for _ in 0..4 {
        let config = h2c_config(runner, "");
        let mut proxy = Proxy::start(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 2\nshutdown_timeout = \"10s\"\n{config}"
        ));
        let addr = proxy.addr;
        let fast = close("/fast");
        let first = tokio::task::spawn_blocking(move || {
            support::raw_exchange(addr, &fast, Duration::from_secs(5))
        })
        .await
        .unwrap();
        assert_eq!(support::status_of(&first), 200, "{first}");
        let slow = close("/slow");
        let pending = tokio::task::spawn_blocking(move || {
            support::raw_exchange(addr, &slow, Duration::from_secs(10))
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        proxy.signal("TERM");
        let raw = pending.await.unwrap();
        assert!(proxy.wait_exit(Duration::from_secs(15)).is_some());
        assert_eq!(support::status_of(&raw), 200, "{raw}");
        assert!(raw.ends_with("done"), "{raw}");
    }
}
