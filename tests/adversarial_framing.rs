//! Issue #12, classes 8, 9 and 11, as a client with a raw socket plays them:
//! - a malformed, truncated or abandoned request body is the client's fault: 400
//!   `BAD_REQUEST_BODY`, no WARN line, no upstream-error metric (so clients cannot fire runner
//!   alerts at will);
//! - a response body the upstream aborts ends the client connection with a reset, never with a
//!   clean close an HTTP/1.0 client would take for the end of the body (plaintext and TLS);
//! - an answer sent before the request body was read (401, 404, 413) reaches a client that is
//!   still uploading, with `Connection: close`, instead of a broken pipe; the draining is bounded.
mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use support::runner::{sandboxes, Runner};
use support::{get, sample, Proxy, BIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

const PREVIEW: &str = "3000-sbx-1.preview.localhost";
const UPSTREAM_ERRORS: [&str; 3] = [
    "sandgate_upstream_errors_total{reason=\"connect\"}",
    "sandgate_upstream_errors_total{reason=\"timeout\"}",
    "sandgate_upstream_errors_total{reason=\"other\"}",
];

async fn scrape(admin: SocketAddr) -> String {
    get(admin, "admin", "/metrics").await.text()
}

fn upstream_errors(metrics: &str) -> f64 {
    UPSTREAM_ERRORS.iter().map(|s| sample(metrics, s)).sum()
}

fn client_errors(metrics: &str) -> f64 {
    ["preview", "toolbox"]
        .iter()
        .map(|kind| {
            sample(
                metrics,
                &format!("sandgate_requests_total{{kind=\"{kind}\",class=\"4xx\"}}"),
            )
        })
        .sum()
}

fn warnings(proxy: &Proxy) -> Vec<String> {
    proxy
        .stderr()
        .lines()
        .filter(|l| l.contains("WARN"))
        .map(str::to_string)
        .collect()
}

/// How the client ends its request after the bytes.
#[derive(Clone, Copy, Debug)]
enum Then {
    /// Keeps the connection open and reads the answer.
    Wait,
    /// Half-closes (no more request bytes) and reads the answer.
    HalfClose,
    /// Hangs up: no answer can reach it.
    HangUp,
}

/// Writes `request`, ends as `then` says, and returns what came back (empty after a hang-up).
fn exchange(addr: SocketAddr, request: &[u8], then: Then) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).unwrap();
    match then {
        Then::Wait => {}
        Then::HalfClose => stream.shutdown(Shutdown::Write).unwrap(),
        Then::HangUp => {
            // Give the proxy time to forward the head before the hang-up.
            std::thread::sleep(Duration::from_millis(200));
            return String::new();
        }
    }
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_bodies_are_the_clients_fault() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start_with_env(
        &runner.config(&format!(
            "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
            sandboxes()
        )),
        &[("SANDGATE_PROXY__TOOLBOX_MAX_BODY_BYTES", "1000000")],
    );
    let admin = proxy.admin_addr();
    let chunked = |path: &str, host: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nX-Daytona-Preview-Token: tok-public\r\n\
             Transfer-Encoding: chunked\r\n\r\n{body}"
        )
    };
    let preview = |body: &str| chunked("/echo", PREVIEW, body);
    let toolbox = |body: &str| chunked("/toolbox/sbx-1/echo", "127.0.0.1", body);
    let long_extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(70_000));
    let rows: Vec<(&str, String, Then)> = vec![
        (
            "chunk size not hex",
            preview("zz\r\nhello\r\n0\r\n\r\n"),
            Then::Wait,
        ),
        (
            "chunk size overflows",
            preview("fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            Then::Wait,
        ),
        (
            "bare LF in a chunk extension",
            preview("5;ext\nx\r\nhello\r\n0\r\n\r\n"),
            Then::Wait,
        ),
        (
            "chunk extensions too long",
            preview(&long_extension),
            Then::Wait,
        ),
        (
            "chunk data not followed by CRLF",
            preview("5\r\nhelloXY0\r\n\r\n"),
            Then::Wait,
        ),
        (
            "toolbox: chunk size not hex",
            toolbox("5\r\nhello\r\nqq\r\n"),
            Then::Wait,
        ),
        (
            "truncated chunked body, then half-close",
            preview("a\r\nhel"),
            Then::HalfClose,
        ),
        (
            "body shorter than Content-Length, then half-close",
            format!("POST /echo HTTP/1.1\r\nHost: {PREVIEW}\r\nContent-Length: 100\r\n\r\nshort"),
            Then::HalfClose,
        ),
        (
            "toolbox: body shorter than Content-Length, then half-close",
            "POST /toolbox/sbx-1/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             X-Daytona-Preview-Token: tok-public\r\nContent-Length: 100\r\n\r\nshort"
                .to_string(),
            Then::HalfClose,
        ),
        (
            "client hangs up mid-upload",
            format!(
                "POST /echo HTTP/1.1\r\nHost: {PREVIEW}\r\nContent-Length: 100000\r\n\r\nshort"
            ),
            Then::HangUp,
        ),
    ];
    for (name, request, then) in rows {
        let before = scrape(admin).await;
        let warned = warnings(&proxy).len();
        let addr = proxy.addr;
        let reply = tokio::task::spawn_blocking(move || exchange(addr, request.as_bytes(), then))
            .await
            .unwrap();
        if !matches!(then, Then::HangUp) {
            assert_eq!(support::status_of(&reply), 400, "{name}: {reply}");
            let body: serde_json::Value = serde_json::from_str(support::body_of(&reply))
                .unwrap_or_else(|e| panic!("{name}: {e}: {reply}"));
            assert_eq!(body["code"], "BAD_REQUEST_BODY", "{name}");
        }
        // The request is counted once it is answered (or its answer could not be delivered).
        let deadline = Instant::now() + Duration::from_secs(10);
        let after = loop {
            let after = scrape(admin).await;
            if client_errors(&after) > client_errors(&before) || Instant::now() > deadline {
                break after;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            client_errors(&after) - client_errors(&before),
            1.0,
            "{name}: counted as a client error"
        );
        assert_eq!(
            upstream_errors(&after),
            upstream_errors(&before),
            "{name}: not an upstream error"
        );
        assert_eq!(warnings(&proxy)[warned..], [] as [String; 0], "{name}");
    }
    // A well-formed body still goes through.
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: {PREVIEW}\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let addr = proxy.addr;
    let reply = tokio::task::spawn_blocking(move || exchange(addr, request.as_bytes(), Then::Wait))
        .await
        .unwrap();
    assert_eq!(support::status_of(&reply), 200, "{reply}");
}

/// Reads until the server ends the connection; `Ok` with what was read for a clean close, the
/// error kind for anything else.
async fn read_to_end_or_error<S: tokio::io::AsyncRead + Unpin>(
    mut stream: S,
) -> (Vec<u8>, Result<(), ErrorKind>) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await;
        match read {
            Err(_) => return (out, Err(ErrorKind::TimedOut)),
            Ok(Ok(0)) => return (out, Ok(())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (out, Err(e.kind())),
        }
    }
}

/// `sandgate certs dev` for `preview.localhost`; returns (CA, cert, key) paths.
fn dev_certs(dir: &Path) -> (String, String, String) {
    let status = std::process::Command::new(BIN)
        .args(["certs", "dev", "--domain", "preview.localhost", "--dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let path = |name: &str| dir.join(name).display().to_string();
    (
        path("dev-ca.pem"),
        path("preview.localhost.pem"),
        path("preview.localhost.key"),
    )
}

async fn tls_connect(addr: SocketAddr, ca: &str) -> TlsStream<tokio::net::TcpStream> {
    support::tls_client::connect(addr, PREVIEW, &[Path::new(ca)], b"http/1.1")
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_upstream_bodies_reset_the_client_connection() {
    let runner = Runner::start("k").await;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path());
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
         [[tls.certs]]\ncert = \"{cert}\"\nkey = \"{key}\"\n",
        sandboxes()
    )));
    let tls_addr = proxy.tls_addr();
    // `/abort/N`: the runner sends N bytes chunked, then its connection fails (N large enough
    // for the response head to leave the runner before).
    let rows = [
        ("HTTP/1.0, close-delimited", "HTTP/1.0", false),
        ("HTTP/1.1, chunked", "HTTP/1.1", false),
        ("HTTP/1.0 over TLS, close-delimited", "HTTP/1.0", true),
        ("HTTP/1.1 over TLS, chunked", "HTTP/1.1", true),
    ];
    for (name, version, tls) in rows {
        let request = format!("GET /abort/4194304 {version}\r\nHost: {PREVIEW}\r\n\r\n");
        let (received, end) = if tls {
            let mut stream = tls_connect(tls_addr, &ca).await;
            stream.write_all(request.as_bytes()).await.unwrap();
            read_to_end_or_error(stream).await
        } else {
            let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            read_to_end_or_error(stream).await
        };
        let head = String::from_utf8_lossy(&received[..received.len().min(200)]).into_owned();
        assert!(head.contains(" 200 "), "{name}: {head}");
        assert_eq!(
            end,
            Err(ErrorKind::ConnectionReset),
            "{name}: the cut body must end in a reset, not a clean close"
        );
    }
    // A whole close-delimited body still ends with a clean close.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(format!("GET /chunked/200000 HTTP/1.0\r\nHost: {PREVIEW}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (received, end) = read_to_end_or_error(stream).await;
    assert_eq!(end, Ok(()));
    let body = support::body_of(&String::from_utf8_lossy(&received)).len();
    assert!(body >= 200_000, "{body}");
}

const UPLOAD: usize = 5 << 20;

/// Sends `head` and then `body_len` bytes (raw, or chunked in 64 KiB chunks) the way an SDK does:
/// the whole upload, then the answer. Returns the error that broke the upload, or the answer
/// and how the connection ended.
fn upload(
    addr: SocketAddr,
    head: &str,
    chunked: bool,
    body_len: usize,
) -> Result<(String, Result<(), ErrorKind>), std::io::Error> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.write_all(head.as_bytes())?;
    let piece = vec![b'u'; 64 * 1024];
    let mut sent = 0;
    while sent < body_len {
        let n = piece.len().min(body_len - sent);
        if chunked {
            stream.write_all(format!("{n:x}\r\n").as_bytes())?;
            stream.write_all(&piece[..n])?;
            stream.write_all(b"\r\n")?;
        } else {
            stream.write_all(&piece[..n])?;
        }
        sent += n;
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n")?;
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let end = loop {
        match stream.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e.kind()),
        }
    };
    Ok((String::from_utf8_lossy(&out).into_owned(), end))
}

fn upload_head(method_path: &str, host: &str, headers: &str, chunked: bool, len: usize) -> String {
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    format!("{method_path} HTTP/1.1\r\nHost: {host}\r\n{headers}{framing}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refusals_reach_a_client_still_uploading() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start_with_env(
        &runner.config(sandboxes()),
        &[("SANDGATE_PROXY__TOOLBOX_MAX_BODY_BYTES", "1048576")],
    );
    let wrong = "X-Daytona-Preview-Token: wrong-token\r\n";
    let right = "X-Daytona-Preview-Token: tok-public\r\n";
    let private = "3000-sbx-priv.preview.localhost";
    let unknown = "3000-nope.preview.localhost";
    let rows = [
        // name, request line, host, headers, chunked, status, code
        (
            "preview, wrong token",
            "POST /upload",
            private,
            wrong,
            false,
            401,
            "",
        ),
        (
            "preview, no token, chunked",
            "PUT /upload",
            private,
            "",
            true,
            401,
            "",
        ),
        (
            "toolbox, wrong token",
            "POST /toolbox/sbx-priv/files/upload",
            "127.0.0.1",
            wrong,
            false,
            401,
            "",
        ),
        (
            "unknown sandbox",
            "POST /upload",
            unknown,
            "",
            false,
            404,
            "SANDBOX_NOT_FOUND",
        ),
        (
            "toolbox, declared body too large",
            "POST /toolbox/sbx-1/upload",
            "127.0.0.1",
            right,
            false,
            413,
            "BODY_TOO_LARGE",
        ),
        (
            "toolbox, chunked body too large",
            "POST /toolbox/sbx-1/upload",
            "127.0.0.1",
            right,
            true,
            413,
            "BODY_TOO_LARGE",
        ),
    ];
    for (name, line, host, headers, chunked, status, code) in rows {
        let head = upload_head(line, host, headers, chunked, UPLOAD);
        let addr = proxy.addr;
        let outcome = tokio::task::spawn_blocking(move || upload(addr, &head, chunked, UPLOAD))
            .await
            .unwrap();
        let (reply, end) = outcome.unwrap_or_else(|e| panic!("{name}: the upload broke: {e}"));
        assert_eq!(support::status_of(&reply), status, "{name}: {reply}");
        assert_eq!(end, Ok(()), "{name}: a clean close after the answer");
        let head = reply.split("\r\n\r\n").next().unwrap().to_ascii_lowercase();
        assert!(head.contains("\r\nconnection: close"), "{name}: {head}");
        let body: serde_json::Value = serde_json::from_str(support::body_of(&reply))
            .unwrap_or_else(|e| panic!("{name}: a complete answer: {e}: {reply}"));
        assert_eq!(body["statusCode"], status, "{name}");
        if !code.is_empty() {
            assert_eq!(body["code"], code, "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lingering_after_early_refusals_is_bounded() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[server]\nlisten = \"127.0.0.1:0\"\nlingering_bytes = 65536\nlingering_timeout = \"1s\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        sandboxes()
    )));
    let admin = proxy.admin_addr();
    let private = "3000-sbx-priv.preview.localhost";
    // Bytes: past the bound the proxy stops reading; a 64 MiB upload breaks.
    let head = upload_head("POST /upload", private, "", false, 64 << 20);
    let addr = proxy.addr;
    let outcome = tokio::task::spawn_blocking(move || upload(addr, &head, false, 64 << 20))
        .await
        .unwrap();
    assert!(
        !matches!(outcome, Ok((_, Ok(())))),
        "the proxy read a 64 MiB body past a 64 KiB bound"
    );
    // Time: a client that stops sending (but keeps the connection) is let go after the timeout.
    let head = upload_head("POST /upload", private, "", false, 1000);
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(b"only this").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert_eq!(support::status_of(&reply), 401, "{reply}");
    let series = "sandgate_connections_active";
    let closed = loop {
        let open = sample(&scrape(admin).await, series);
        if open == 0.0 || started.elapsed() > Duration::from_secs(10) {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        closed < Duration::from_secs(4),
        "the connection was held {closed:?}"
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_failing_after_the_answer_started_is_not_the_runners_fault() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        sandboxes()
    )));
    let admin = proxy.admin_addr();
    let before = scrape(admin).await;
    let warned = warnings(&proxy).len();
    // `/sse` answers at once (first event) without reading the request body.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /sse HTTP/1.1\r\nHost: {PREVIEW}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&received).contains("data: first") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the first event")
            .unwrap();
        assert_ne!(n, 0, "{}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    stream.write_all(b"zz\r\n").await.unwrap();
    let (_, end) = read_to_end_or_error(stream).await;
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "the cut response body ends in a reset"
    );
    let after = scrape(admin).await;
    assert_eq!(upstream_errors(&after), upstream_errors(&before));
    assert_eq!(warnings(&proxy)[warned..], [] as [String; 0]);
    runner.release();
}
