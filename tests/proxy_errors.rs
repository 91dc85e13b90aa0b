//! What clients see when something is wrong: bad hosts, unknown or stopped sandboxes, dead or
//! slow runners, ports nothing listens on, and upstream failures mid-body.
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::runner::{sandboxes, Runner};
use support::{body_of, free_port, raw, request, send, send_streaming, status_of, Proxy};

const PREVIEW: &str = "3000-sbx-1.preview.localhost";

/// A config with `[proxy]` settings and one runner.
fn config(runner: SocketAddr, key: &str, proxy: &str, sandboxes: &str) -> String {
    format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n{proxy}\n\
         [[registry.runners]]\nid = \"runner-1\"\nurl = \"http://{runner}\"\napi_key = \"{key}\"\n\
         {sandboxes}"
    )
}

#[tokio::test]
async fn bad_hosts_get_4xx_never_5xx() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(sandboxes()));
    let long_label = format!("3000-{}.preview.localhost", "a".repeat(59));
    let host = |h: &str| format!("GET / HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n");
    let cases: Vec<(String, Vec<u8>, u16)> = vec![
        ("non-numeric port".into(), host("abc-sbx-1.preview.localhost").into(), 400),
        ("zero port".into(), host("0-sbx-1.preview.localhost").into(), 400),
        ("leading zero port".into(), host("03000-sbx-1.preview.localhost").into(), 400),
        ("huge port".into(), host("65536-sbx-1.preview.localhost").into(), 400),
        ("huger port".into(), host("99999999-sbx-1.preview.localhost").into(), 400),
        ("empty id".into(), host("3000-.preview.localhost").into(), 400),
        ("no dash".into(), host("3000.preview.localhost").into(), 400),
        ("label > 63 bytes".into(), host(&long_label).into(), 400),
        ("nested label".into(), host("a.3000-sbx-1.preview.localhost").into(), 400),
        ("non-numeric host port".into(), host("3000-sbx-1.preview.localhost:http").into(), 400),
        ("space in host".into(), host("3000-sbx 1.preview.localhost").into(), 400),
        ("percent in id".into(), host("3000-sbx%2D1.preview.localhost").into(), 400),
        ("unknown domain".into(), host("3000-sbx-1.elsewhere.example").into(), 404),
        ("IPv4 literal".into(), host("127.0.0.1").into(), 404),
        ("IPv4 literal with port".into(), host("127.0.0.1:8080").into(), 404),
        ("IPv6 literal".into(), host("[::1]:8080").into(), 404),
        (
            "absolute-form target".into(),
            format!("GET http://other/ HTTP/1.1\r\nHost: {PREVIEW}\r\nConnection: close\r\n\r\n")
                .into(),
            400,
        ),
        (
            "absolute-form to a preview".into(),
            format!(
                "GET http://{PREVIEW}/echo HTTP/1.1\r\nHost: {PREVIEW}\r\nConnection: close\r\n\r\n"
            )
            .into(),
            400,
        ),
        (
            "duplicate Host".into(),
            format!("GET / HTTP/1.1\r\nHost: {PREVIEW}\r\nHost: {PREVIEW}\r\nConnection: close\r\n\r\n")
                .into(),
            400,
        ),
        (
            "conflicting Hosts".into(),
            format!("GET / HTTP/1.1\r\nHost: {PREVIEW}\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .into(),
            400,
        ),
        (
            "no Host".into(),
            b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec(),
            400,
        ),
        ("HTTP/1.0 without Host".into(), b"GET /echo HTTP/1.0\r\n\r\n".to_vec(), 400),
        (
            "non-ASCII Host".into(),
            b"GET / HTTP/1.1\r\nHost: 3000-sbx-\xc3\xa9.preview.localhost\r\nConnection: close\r\n\r\n"
                .to_vec(),
            400,
        ),
    ];
    for (name, bytes, expected) in cases {
        let answer = raw(proxy.addr, bytes).await;
        let status = status_of(&answer);
        assert_eq!(status, expected, "{name}: {answer}");
        let json: serde_json::Value = serde_json::from_str(body_of(&answer))
            .unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {answer}"));
        assert_eq!(json["statusCode"], expected, "{name}");
    }
    assert!(runner.seen().is_empty(), "a bad host reached the runner");
    // The own host still answers.
    let health = support::get(proxy.addr, "127.0.0.1", "/health").await;
    assert_eq!(health.status, 200);
}

#[tokio::test]
async fn unknown_sandbox_is_404_json_or_html() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(sandboxes()));
    let host = "3000-nope.preview.localhost";
    let reply = send(proxy.addr, "GET", host, "/x?y=1", &[], b"").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["content-type"], "application/json");
    let json = reply.json();
    assert_eq!(json["statusCode"], 404);
    assert_eq!(json["code"], "SANDBOX_NOT_FOUND");
    assert_eq!(json["path"], "/x");
    assert!(json["timestamp"].is_string() && json["message"].is_string());

    let token = [("x-daytona-preview-token", "t")];
    let reply = send(
        proxy.addr,
        "GET",
        "localhost",
        "/toolbox/nope/files",
        &token,
        b"",
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["code"], "SANDBOX_NOT_FOUND");

    let accept = [("accept", "text/html,application/xhtml+xml,*/*;q=0.8")];
    let page = send(proxy.addr, "GET", host, "/", &accept, b"").await;
    assert_eq!(page.status, 404);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let text = page.text();
    assert!(
        text.contains("<html") && text.contains("SANDBOX_NOT_FOUND"),
        "{text}"
    );
    assert!(runner.seen().is_empty());
}

#[tokio::test]
async fn stopped_sandbox_is_503_with_retry_after() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(
        "[[registry.sandboxes]]\nid = \"sbx-off\"\nrunner = \"runner-1\"\npublic = true\nstate = \"stopped\"\n",
    ));
    let reply = support::get(proxy.addr, "3000-sbx-off.preview.localhost", "/").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.headers.contains_key("retry-after"));
    let retry: u32 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0);
    assert_eq!(reply.json()["code"], "SANDBOX_NOT_RUNNING");
    assert!(runner.seen().is_empty());
}

/// A loopback listener that never accepts, with its accept queue filled: further SYNs are
/// dropped, so connecting to it hangs (a runner host that does not answer).
fn unanswering_listener() -> (socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => fillers.push(stream),
            Err(_) => return (socket, fillers),
        }
    }
    panic!("could not fill the accept queue of {addr}");
}

#[tokio::test]
async fn dead_runner_is_502_runner_unreachable_quickly() {
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (hanging, _fillers) = unanswering_listener();
    let hanging = hanging.local_addr().unwrap().as_socket().unwrap();
    let sandboxes = format!(
        "[[registry.sandboxes]]\nid = \"sbx-1\"\nrunner = \"runner-1\"\npublic = true\nauth_token = \"tok\"\n\
         [[registry.runners]]\nid = \"hanging\"\nurl = \"http://{hanging}\"\napi_key = \"k\"\n\
         [[registry.sandboxes]]\nid = \"sbx-hang\"\nrunner = \"hanging\"\npublic = true\n"
    );
    let connect_timeout = Duration::from_millis(500);
    let proxy = Proxy::start(&config(
        dead,
        "k",
        "connect_timeout = \"500ms\"\nresponse_header_timeout = \"20s\"",
        &sandboxes,
    ));
    // Connection refused.
    let started = Instant::now();
    let reply = support::get(proxy.addr, PREVIEW, "/").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["code"], "RUNNER_UNREACHABLE");
    assert!(started.elapsed() < connect_timeout + Duration::from_secs(2));
    let token = [("x-daytona-preview-token", "tok")];
    let reply = send(
        proxy.addr,
        "GET",
        "localhost",
        "/toolbox/sbx-1/version",
        &token,
        b"",
    )
    .await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["code"], "RUNNER_UNREACHABLE");

    // A runner that never completes the handshake: the connect timeout applies (not the 20 s
    // response header timeout).
    let started = Instant::now();
    let reply = support::get(proxy.addr, "3000-sbx-hang.preview.localhost", "/").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["code"], "RUNNER_UNREACHABLE");
    assert!(elapsed >= connect_timeout, "{elapsed:?}");
    assert!(
        elapsed < connect_timeout + Duration::from_secs(2),
        "took {elapsed:?}"
    );
}

#[tokio::test]
async fn port_not_listening_is_502_naming_the_port() {
    // Direct mode, nothing on the port.
    let port = free_port();
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[[registry.sandboxes]]\nid = \"sbx-d\"\naddress = \"127.0.0.1\"\npublic = true\n",
        sandboxes()
    )));
    let reply = support::get(proxy.addr, &format!("{port}-sbx-d.preview.localhost"), "/").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["code"], "PORT_NOT_LISTENING");
    assert!(json["message"]
        .as_str()
        .unwrap()
        .contains(&port.to_string()));

    // Runner mode: the runner answers 502 for a port nothing listens on.
    let reply = support::get(proxy.addr, PREVIEW, "/status/502").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["code"], "PORT_NOT_LISTENING");
    assert!(json["message"].as_str().unwrap().contains("3000"));

    // Other statuses of the app pass through untouched.
    for code in [500u16, 503, 404] {
        let reply = support::get(proxy.addr, PREVIEW, &format!("/status/{code}")).await;
        assert_eq!(reply.status, code);
        assert_eq!(reply.text(), "status");
    }
}

#[tokio::test]
async fn slow_runner_is_504_upstream_timeout() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(
        runner.addr,
        "runner-key",
        "response_header_timeout = \"300ms\"",
        sandboxes(),
    ));
    let started = Instant::now();
    let reply = support::get(proxy.addr, PREVIEW, "/slow/10000").await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.json()["code"], "UPSTREAM_TIMEOUT");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2300), "{elapsed:?}");
    // A runner that answers in time is fine.
    let reply = support::get(proxy.addr, PREVIEW, "/slow/10").await;
    assert_eq!(reply.status, 200);
}

/// The response-header deadline is one timer per client connection, moved for each request:
/// after a timeout, and after idling past an old deadline, the next requests on the same
/// connection still get their full time.
#[tokio::test]
async fn the_deadline_timer_is_reset_for_every_request_on_a_connection() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(
        runner.addr,
        "runner-key",
        "response_header_timeout = \"300ms\"",
        sandboxes(),
    ));
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut status_of_path = async |path: &str| {
        sender.ready().await.unwrap();
        let req = request("GET", PREVIEW, path)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    };
    assert_eq!(status_of_path("/slow/10").await, 200);
    assert_eq!(status_of_path("/slow/5000").await, 504);
    assert_eq!(status_of_path("/slow/150").await, 200, "after a timeout");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_of_path("/slow/150").await,
        200,
        "after idling past a deadline"
    );
    assert_eq!(
        status_of_path("/slow/5000").await,
        504,
        "and it still fires"
    );
}

#[tokio::test]
async fn mid_stream_upstream_failure_aborts_the_client_body() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(sandboxes()));
    // Chunked, so a clean end would look complete to the client.
    let req = request("GET", PREVIEW, "/abort/4194304")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send_streaming(proxy.addr, req).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0usize;
    let error = loop {
        match body.frame().await {
            Some(Ok(frame)) => received += frame.into_data().map_or(0, |d| d.len()),
            Some(Err(e)) => break e,
            None => panic!("the body ended cleanly after {received} bytes"),
        }
    };
    assert!(received <= 4 << 20, "{error}");
    // The same body intact, for contrast.
    let req = request("GET", PREVIEW, "/chunked/300000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send_streaming(proxy.addr, req).await.unwrap();
    let (len, ok) = support::runner::drain_pattern(response.into_body())
        .await
        .unwrap();
    assert_eq!((len, ok), (300_000, true));
}

#[tokio::test]
async fn runner_refuses_a_wrong_runner_key() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(runner.addr, "wrong-key", "", sandboxes()));
    let reply = support::get(proxy.addr, PREVIEW, "/echo").await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(reply.json()["message"], "unauthorized");
    assert_eq!(
        runner.last().all("x-daytona-authorization"),
        ["Bearer wrong-key"]
    );
}
