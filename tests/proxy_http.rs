//! Plain HTTP through the real binary: methods and bodies, toolbox/preview/direct targets,
//! byte-exact paths and queries, header injection and stripping, redirects, trailers,
//! `Expect: 100-continue`, and h2c.
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use support::runner::{sandboxes, Runner};
use support::table::*;
use support::{body_of, raw, request, send_streaming, status_of, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREVIEW: &str = "3000-sbx-1.preview.localhost";
const PREFIX: &str = "/sandboxes/sbx-1/toolbox/proxy/3000";

async fn setup() -> (Runner, Proxy) {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(sandboxes()));
    (runner, proxy)
}

#[tokio::test]
async fn methods_and_bodies_reach_the_sandbox() {
    let (runner, proxy) = setup().await;
    let echo = format!("{PREFIX}/echo");
    let mut rows: Vec<Row> = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]
        .into_iter()
        .map(|m| {
            let body = format!("body of a {m} request").repeat(100);
            let sha256 = hex::encode(Sha256::digest(body.as_bytes()));
            // OPTIONS without preflight headers is the app's business, not the proxy's.
            #[rustfmt::skip]
            let row = Row::new(m, m, PREVIEW, "/echo", &[],
                [status(200), json("/method", m), json("/body_len", body.len()), json("/body_sha256", sha256),
                 method(m), target(&echo)]);
            row.body(body)
        })
        .collect();
    #[rustfmt::skip]
    rows.push(Row::new("HEAD", "HEAD", PREVIEW, "/echo", &[], [status(200), empty_body(), method("HEAD")]));
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

#[tokio::test]
async fn toolbox_path_goes_to_the_runner_toolbox() {
    let (runner, proxy) = setup().await;
    let token = [("x-daytona-preview-token", "tok-secret")];
    #[rustfmt::skip]
    let rows = [
        Row::new("toolbox call", "POST", "127.0.0.1", "/toolbox/sbx-priv/process/execute?cwd=/tmp", &token,
            [status(200), json("/body_len", 16), target("/sandboxes/sbx-priv/toolbox/process/execute?cwd=/tmp")])
            .body(r#"{"command":"ls"}"#),
        // No rest at all: the toolbox root.
        Row::get("the toolbox root", "localhost", "/toolbox/sbx-priv", &token,
            [status(200), target("/sandboxes/sbx-priv/toolbox")]),
        // Toolbox traffic always needs a credential, even on a public sandbox.
        Row::get("no credential, public sandbox", "localhost", "/toolbox/sbx-1/version", &[], [status(401)]),
    ];
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

#[tokio::test]
async fn direct_mode_goes_straight_to_the_address() {
    let app = Runner::start("unused").await;
    let port = app.addr.port();
    let proxy = Proxy::start(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [[registry.sandboxes]]\nid = \"sbx-d\"\naddress = \"127.0.0.1\"\npublic = true\n",
    );
    let host = format!("{port}-sbx-d.preview.localhost");
    #[rustfmt::skip]
    let rows = [
        Row::new("direct mode", "PUT", &host, "/echo/a%20b?x=1", &[("x-daytona-authorization", "Bearer forged")],
            [status(200), method("PUT"), target("/echo/a%20b?x=1"),
             // Direct mode never sends a runner key, nor the client's.
             not_sent("x-daytona-authorization"), sent("x-forwarded-host", [host.as_str()])])
            .body("direct"),
    ];
    run(proxy.addr, Upstream::Runner(&app), rows).await;
}

#[tokio::test]
async fn encoded_paths_and_queries_are_forwarded_byte_exact() {
    let (runner, proxy) = setup().await;
    let cases = [
        "/a%3Fb/c",
        "/a%20b",
        "/%E2%9C%93/caf%C3%A9",
        // Dot-segments and encoded slashes are refused (tests/adversarial_paths.rs).
        "/a%2e%2eb/x..y//z",
        "/p;matrix=1/%25",
        "/q?b=%2F&a=1&a=2&empty=&flag&plus=a+b&pct=%zz&sp=%20",
        "/q?",
        "/?DAYTONA_SANDBOX_AUTH_KEYX=keep&x=%2F",
    ];
    let token = [("x-daytona-preview-token", "tok-secret")];
    let path = "/toolbox/sbx-priv/files/a%3Fb?path=%2Ftmp%2Fx%20y&z=%E2%9C%93";
    let to = "/sandboxes/sbx-priv/toolbox/files/a%3Fb?path=%2Ftmp%2Fx%20y&z=%E2%9C%93";
    #[rustfmt::skip]
    let rows = cases
        .into_iter()
        .map(|p| Row::get(p, PREVIEW, p, &[], [status(200), target(&format!("{PREFIX}{p}"))]))
        .chain([Row::get(path, "localhost", path, &token, [status(200), target(to)])]);
    run(proxy.addr, Upstream::Runner(&runner), rows).await;

    // Raw UTF-8 bytes in the request target (hyper and `http` accept them): passed as they are.
    let mut head = b"GET /caf\xc3\xa9/\xe2\x9c\x93?n=\xc3\xa9 HTTP/1.1\r\nHost: ".to_vec();
    head.extend_from_slice(PREVIEW.as_bytes());
    head.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let answer = raw(proxy.addr, head).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(runner.last().target, format!("{PREFIX}/café/✓?n=é"));
}

#[tokio::test]
async fn runner_key_injected_hop_by_hop_removed_forwarded_headers_set() {
    let (runner, proxy) = setup().await;
    let request = format!(
        "GET /echo HTTP/1.1\r\n\
         Host: {PREVIEW}:8080\r\n\
         X-Daytona-Authorization: Bearer forged\r\n\
         X-Daytona-Authorization: Bearer forged-again\r\n\
         Connection: keep-alive, X-Secret, x-other\r\n\
         X-Secret: 1\r\n\
         X-Other: 2\r\n\
         Keep-Alive: timeout=5\r\n\
         Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
         Proxy-Connection: keep-alive\r\n\
         TE: gzip\r\n\
         Upgrade: h2c\r\n\
         X-Forwarded-For: 203.0.113.7\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: evil.example\r\n\
         X-App: kept\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let answer = raw(proxy.addr, request).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = runner.last();
    assert_eq!(seen.all("x-daytona-authorization"), ["Bearer runner-key"]);
    for gone in [
        "x-secret",
        "x-other",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "upgrade",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the sandbox");
    }
    for value in seen.all("connection") {
        assert!(!value.to_ascii_lowercase().contains("x-secret"), "{value}");
    }
    assert_eq!(seen.all("x-forwarded-host"), [format!("{PREVIEW}:8080")]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
    // From a peer that is not a trusted proxy, the client's own list is replaced, not extended.
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-app"), ["kept"]);

    // `TE: trailers` is the one TE value that passes.
    #[rustfmt::skip]
    let rows = [
        Row::get("TE: trailers", PREVIEW, "/echo", &[("te", "trailers")], [status(200), sent("te", ["trailers"])]),
    ];
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

#[tokio::test]
async fn credentials_never_reach_the_sandbox() {
    let (runner, proxy) = setup().await;
    let host = "3000-sbx-priv.preview.localhost";
    let cookie =
        "app=1; daytona-sandbox-auth-sbx-priv=sig; daytona-preview-page-accepted=true; b=2";
    let echo = format!("{PREFIX}/echo");
    #[rustfmt::skip]
    let rows = [
        Row::get("by header", host, "/echo?x=1", &[("x-daytona-preview-token", "tok-secret"), ("cookie", cookie)],
            [status(200), target("/sandboxes/sbx-priv/toolbox/proxy/3000/echo?x=1"),
             not_sent("x-daytona-preview-token"), sent("cookie", ["app=1; b=2"])]),
        // By query parameter: removed, the others keep their bytes and order.
        Row::get("by query parameter, only proxy cookies", host, "/echo?b=%2F&DAYTONA_SANDBOX_AUTH_KEY=tok-secret&a=1&a=2&c",
            &[("cookie", "daytona-sandbox-auth-sbx-priv=sig")],
            [status(200), target("/sandboxes/sbx-priv/toolbox/proxy/3000/echo?b=%2F&a=1&a=2&c"), not_sent("cookie")]),
        // On a public sandbox the token is not needed, and still never forwarded.
        Row::get("public sandbox", PREVIEW, "/echo?DAYTONA_SANDBOX_AUTH_KEY=tok-public", &[("x-daytona-preview-token", "tok-public")],
            [status(200), target(&echo), not_sent("x-daytona-preview-token")]),
    ];
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

#[tokio::test]
async fn toolbox_redirects_get_the_toolbox_prefix() {
    let (runner, proxy) = setup().await;
    let token = ("x-daytona-preview-token", "tok-secret");
    let toolbox = |location: &str, expected: &str| {
        Row::get(
            location,
            "localhost",
            "/toolbox/sbx-priv/redirect",
            &[token, ("x-location", location)],
            [status(302), header("location", expected)],
        )
    };
    #[rustfmt::skip]
    let rows = [
        toolbox("/files?path=/", "/toolbox/sbx-priv/files?path=/"),
        toolbox("/toolbox/sbx-priv/files", "/toolbox/sbx-priv/files"),
        toolbox("http://elsewhere.example/x", "http://elsewhere.example/x"),
        toolbox("//elsewhere.example/x", "//elsewhere.example/x"),
        // Previews are the app's own URLs: not rewritten.
        Row::get("preview", PREVIEW, "/redirect", &[("x-location", "/files")], [status(302), header("location", "/files")]),
    ];
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

#[tokio::test]
async fn trailers_pass_through() {
    let (_runner, proxy) = setup().await;
    let req = request("GET", PREVIEW, "/trailers")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = send_streaming(proxy.addr, req).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-checksum"], "abc");
    assert_eq!(&collected.to_bytes()[..], b"with trailers");
}

#[tokio::test]
async fn expect_100_continue_upload() {
    let (runner, proxy) = setup().await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let body = vec![b'x'; 100_000];
    stream
        .write_all(
            format!(
                "POST /upload HTTP/1.1\r\nHost: {PREVIEW}\r\nExpect: 100-continue\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The client holds the body until the interim answer.
    let mut interim = vec![0u8; 25];
    stream.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(&body).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 200, "{answer}");
    let json: serde_json::Value = serde_json::from_str(body_of(&answer)).unwrap();
    assert_eq!(json["len"], body.len());
    assert_eq!(json["sha256"], hex::encode(Sha256::digest(&body)));
    assert_eq!(runner.last().target, format!("{PREFIX}/upload"));
}

async fn h2_connection(proxy: &Proxy) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

#[tokio::test]
async fn h2c_prior_knowledge_is_proxied() {
    let (runner, proxy) = setup().await;
    let mut sender = h2_connection(&proxy).await;
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{PREVIEW}/echo/a%3Fb?q=1"))
        .body(Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["body_len"], 7);
    let seen = runner.last();
    assert_eq!(seen.target, format!("{PREFIX}/echo/a%3Fb?q=1"));
    assert_eq!(seen.all("x-forwarded-host"), [PREVIEW]);
    assert_eq!(seen.all("x-daytona-authorization"), ["Bearer runner-key"]);
}

#[tokio::test]
async fn h2_authority_differing_from_host_is_refused() {
    let (runner, proxy) = setup().await;
    let mut sender = h2_connection(&proxy).await;
    let req = http::Request::builder()
        .uri(format!("http://{PREVIEW}/echo"))
        .header("host", "3000-sbx-priv.preview.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 400);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["code"], "BAD_HOST");
    assert!(runner.seen().is_empty(), "nothing may reach the runner");
}

#[tokio::test]
async fn preview_hosts_are_case_insensitive_and_ignore_the_port() {
    let (runner, proxy) = setup().await;
    let host = "3000-SBX-1.Preview.LOCALHOST:8443";
    let echo = format!("{PREFIX}/echo");
    #[rustfmt::skip]
    let rows = [
        Row::get(host, host, "/echo", &[], [status(200), target(&echo), sent("x-forwarded-host", [host])]),
    ];
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

#[tokio::test]
async fn reserved_ports_need_a_credential_even_on_public_sandboxes() {
    let (runner, proxy) = setup().await;
    let token = [("x-daytona-preview-token", "tok-public")];
    let mut rows = Vec::new();
    for port in [2280, 22222, 33333] {
        let host = format!("{port}-sbx-1.preview.localhost");
        let to = format!("/sandboxes/sbx-1/toolbox/proxy/{port}/");
        #[rustfmt::skip]
        rows.extend([
            Row::get(format!("{port} without a credential"), &host, "/", &[], [status(401), code("AUTH_REQUIRED")]),
            Row::get(format!("{port} with the token"), &host, "/", &token, [status(200), target(&to)]),
        ]);
    }
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
}

#[tokio::test]
async fn skip_activity_header_is_consumed() {
    let (runner, proxy) = setup().await;
    let skip = "x-daytona-skip-last-activity-update";
    #[rustfmt::skip]
    let rows = [
        Row::get(skip, PREVIEW, "/echo", &[(skip, "true")], [status(200), not_sent(skip)]),
    ];
    run(proxy.addr, Upstream::Runner(&runner), rows).await;
}
