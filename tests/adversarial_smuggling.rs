//! Issue #12's adversarial suite: request smuggling and routing confusion, as raw bytes (no
//! client would send them). The attacker owns the public sandbox `attacker`; `victim` is
//! private. For every row: the statuses the client gets on the connection, and exactly which
//! requests the runner emulator received. No row may put a request for the victim, or a
//! request hidden in another's body, in front of the runner, where it would carry the proxy's
//! runner key.
mod support;

use std::time::Duration;

use support::runner::{Runner, ATTACKER_AND_VICTIM};
use support::{raw_until_idle, statuses, Proxy};

const ATTACKER: &str = "3000-attacker.preview.localhost";
const VICTIM: &str = "3000-victim.preview.localhost";
const ECHO: &str = "/sandboxes/attacker/toolbox/proxy/3000/echo";

/// What a smuggled request looks like: for the runner (its path, and the victim's host).
fn smuggled() -> String {
    format!("GET /sandboxes/victim/toolbox/proxy/3000/smuggled HTTP/1.1\r\nHost: {VICTIM}\r\n\r\n")
}

struct Row {
    name: &'static str,
    request: String,
    /// Statuses of the answers on the connection, in order.
    statuses: &'static [u16],
    /// Targets the runner received, in order.
    forwarded: &'static [&'static str],
    /// The body failed after the head went out: the runner may or may not have got the head.
    head_may_be_lost: bool,
}

fn row(
    name: &'static str,
    request: String,
    statuses: &'static [u16],
    forwarded: &'static [&'static str],
) -> Row {
    Row {
        name,
        request,
        statuses,
        forwarded,
        head_may_be_lost: false,
    }
}

/// A chunked body that turns out malformed after its head was forwarded: the client's fault
/// (400 `BAD_REQUEST_BODY`), never a second request.
fn bad_chunked_row(name: &'static str, body: String) -> Row {
    Row {
        head_may_be_lost: true,
        ..row(
            name,
            post("Transfer-Encoding: chunked\r\n", &body),
            &[BAD_CHUNKED],
            &[ECHO],
        )
    }
}

const BAD_CHUNKED: u16 = 400;

/// `POST /echo` to the attacker with `headers` (CRLF-terminated lines) and `body`.
fn post(headers: &str, body: &str) -> String {
    format!("POST /echo HTTP/1.1\r\nHost: {ATTACKER}\r\n{headers}\r\n{body}")
}

/// `GET /echo` with the given `Host` line(s) and request target, closing after the answer.
fn get(target: &str, host_lines: &str) -> String {
    format!("GET {target} HTTP/1.1\r\n{host_lines}Connection: close\r\n\r\n")
}

async fn run(rows: Vec<Row>) {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(ATTACKER_AND_VICTIM));
    for row in rows {
        let before = runner.seen().len();
        let answer = raw_until_idle(proxy.addr, row.request, Duration::from_millis(700)).await;
        let forwarded: Vec<String> = runner.seen()[before..]
            .iter()
            .map(|s| s.target.clone())
            .collect();
        assert!(
            forwarded
                .iter()
                .all(|t| !t.contains("victim") && !t.contains("smuggled")),
            "{}: the runner received {forwarded:?}",
            row.name
        );
        if !(row.head_may_be_lost && forwarded.is_empty()) {
            assert_eq!(forwarded, row.forwarded, "{}: {answer}", row.name);
        }
        assert_eq!(statuses(&answer), row.statuses, "{}: {answer}", row.name);
    }
}

#[tokio::test]
async fn request_smuggling_is_refused_or_reframed() {
    let s = smuggled();
    // The body a front end going by Content-Length would see as one request's.
    let te_body = format!("0\r\n\r\n{s}");
    let cl = te_body.len();
    let rows = vec![
        // CL+TE: hyper goes by Transfer-Encoding alone and closes the connection after the
        // answer (RFC 9112 §6.1), so the rest is never read as a request.
        row(
            "Content-Length then Transfer-Encoding",
            post(
                &format!("Content-Length: {cl}\r\nTransfer-Encoding: chunked\r\n"),
                &te_body,
            ),
            &[200],
            &[ECHO],
        ),
        row(
            "Transfer-Encoding then Content-Length",
            post(
                &format!("Transfer-Encoding: chunked\r\nContent-Length: {cl}\r\n"),
                &te_body,
            ),
            &[200],
            &[ECHO],
        ),
        row(
            "Content-Length: 0 with Transfer-Encoding",
            post(
                "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
                &format!("5\r\nhello\r\n0\r\n\r\n{s}"),
            ),
            &[200],
            &[ECHO],
        ),
        row(
            "duplicate differing Content-Length",
            post(&format!("Content-Length: 5\r\nContent-Length: {cl}\r\n"), &te_body),
            &[400],
            &[],
        ),
        row(
            "differing Content-Length in one list",
            post(&format!("Content-Length: 5, {cl}\r\n"), &te_body),
            &[400],
            &[],
        ),
        row(
            "signed Content-Length",
            post("Content-Length: +5\r\n", &te_body),
            &[400],
            &[],
        ),
        row(
            "Transfer-Encoding: chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", &te_body),
            &[400],
            &[],
        ),
        row(
            "Transfer-Encoding: xchunked",
            post(&format!("Transfer-Encoding: xchunked\r\nContent-Length: {cl}\r\n"), &te_body),
            &[400],
            &[],
        ),
        row(
            "chunked, then a second Transfer-Encoding: identity",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                &te_body,
            ),
            &[400],
            &[],
        ),
        row(
            "space before the colon",
            post(&format!("Transfer-Encoding : chunked\r\nContent-Length: {cl}\r\n"), &te_body),
            &[400],
            &[],
        ),
        row(
            "folded Transfer-Encoding",
            post(
                &format!("Transfer-Encoding: identity\r\n chunked\r\nContent-Length: {cl}\r\n"),
                &te_body,
            ),
            &[400],
            &[],
        ),
        row(
            "vertical tab before chunked",
            post(&format!("Transfer-Encoding:\x0bchunked\r\nContent-Length: {cl}\r\n"), &te_body),
            &[400],
            &[],
        ),
        row(
            "Transfer-Encoding on HTTP/1.0",
            format!(
                "POST /echo HTTP/1.0\r\nHost: {ATTACKER}\r\nTransfer-Encoding: chunked\r\n\r\n{te_body}"
            ),
            &[400],
            &[],
        ),
        // A tab is whitespace before the value: a plain chunked body, and the request after it
        // on the connection is an ordinary second request (to the victim: refused, 401).
        row(
            "tab before chunked, then a pipelined request",
            post("Transfer-Encoding:\tchunked\r\n", &te_body),
            &[200, 401],
            &[ECHO],
        ),
        row(
            "upper-case Chunked",
            post("Transfer-Encoding: Chunked\r\nConnection: close\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            &[200],
            &[ECHO],
        ),
        row(
            "a request inside a Content-Length body",
            post(&format!("Content-Length: {}\r\n", s.len()), &s),
            &[200],
            &[ECHO],
        ),
        row(
            "bare LF line endings",
            format!("GET /echo HTTP/1.1\nHost: {ATTACKER}\nConnection: close\n\n"),
            &[200],
            &[ECHO],
        ),
        row(
            "bare LF inside a CRLF head",
            format!("GET /echo HTTP/1.1\r\nHost: {ATTACKER}\nX-A: 1\r\nConnection: close\r\n\r\n"),
            &[200],
            &[ECHO],
        ),
        row(
            "bare CR in a header",
            format!("GET /echo HTTP/1.1\r\nHost: {ATTACKER}\rX-A: 1\r\nConnection: close\r\n\r\n"),
            &[400],
            &[],
        ),
        bad_chunked_row(
            "chunk size overflow",
            format!("fffffffffffffffff1\r\nx\r\n0\r\n\r\n{s}"),
        ),
        bad_chunked_row("negative chunk size", format!("-1\r\nx\r\n0\r\n\r\n{s}")),
        bad_chunked_row("chunk size not hex", format!("zz\r\nx\r\n0\r\n\r\n{s}")),
    ];
    run(rows).await;
}

#[tokio::test]
async fn routing_confusion_never_reaches_another_sandbox() {
    let a = format!("Host: {ATTACKER}\r\n");
    let v = format!("Host: {VICTIM}\r\n");
    let host = |h: &str| format!("Host: {h}\r\n");
    let rows = vec![
        row(
            "absolute-form to the victim, attacker Host",
            get(&format!("http://{VICTIM}/echo"), &a),
            &[400],
            &[],
        ),
        row(
            "absolute-form to the attacker, victim Host",
            get(&format!("http://{ATTACKER}/echo"), &v),
            &[400],
            &[],
        ),
        row(
            "absolute-form with userinfo",
            get(&format!("http://{ATTACKER}@{VICTIM}/echo"), &a),
            &[400],
            &[],
        ),
        row(
            "authority-form",
            get(&format!("{VICTIM}:80"), &a),
            &[400],
            &[],
        ),
        row(
            "CONNECT to the victim",
            get(&format!("{VICTIM}:80"), &a).replacen("GET", "CONNECT", 1),
            &[400],
            &[],
        ),
        row(
            "duplicate Host, attacker first",
            get("/echo", &format!("{a}{v}")),
            &[400],
            &[],
        ),
        row(
            "duplicate Host, victim first",
            get("/echo", &format!("{v}{a}")),
            &[400],
            &[],
        ),
        row(
            "two hosts in one Host",
            get("/echo", &host(&format!("{ATTACKER}, {VICTIM}"))),
            &[400],
            &[],
        ),
        row(
            "userinfo in Host",
            get("/echo", &host(&format!("a@{VICTIM}"))),
            &[400],
            &[],
        ),
        row(
            "attacker host as userinfo",
            get("/echo", &host(&format!("{ATTACKER}@{VICTIM}"))),
            &[400],
            &[],
        ),
        row(
            "percent-encoded Host",
            get("/echo", &host("3000-vict%69m.preview.localhost")),
            &[400],
            &[],
        ),
        row(
            "encoded slash in Host",
            get("/echo", &host(&format!("{ATTACKER}%2f{VICTIM}"))),
            &[400],
            &[],
        ),
        row(
            "two ports",
            get("/echo", &host(&format!("{ATTACKER}:80:80"))),
            &[400],
            &[],
        ),
        row(
            "victim nested under the attacker",
            get("/echo", &host(&format!("{VICTIM}.{ATTACKER}"))),
            &[400],
            &[],
        ),
        row("empty Host", get("/echo", "Host: \r\n"), &[400], &[]),
        row(
            "NUL in Host",
            get("/echo", &format!("Host: {ATTACKER}\0{VICTIM}\r\n")),
            &[400],
            &[],
        ),
        // Spellings of the attacker's own host route to the attacker, never elsewhere ...
        row(
            "upper-case host",
            get("/echo", &host("3000-ATTACKER.PREVIEW.LOCALHOST")),
            &[200],
            &[ECHO],
        ),
        row(
            "trailing dot",
            get("/echo", &host(&format!("{ATTACKER}."))),
            &[200],
            &[ECHO],
        ),
        row(
            "port in Host",
            get("/echo", &host(&format!("{ATTACKER}:8080"))),
            &[200],
            &[ECHO],
        ),
        row(
            "trailing whitespace in Host",
            get("/echo", &format!("Host: {ATTACKER} \t\r\n")),
            &[200],
            &[ECHO],
        ),
        row(
            "X-Forwarded-Host names the victim",
            get("/echo", &format!("{a}X-Forwarded-Host: {VICTIM}\r\n")),
            &[200],
            &[ECHO],
        ),
        // ... and the victim's, in any spelling, needs the victim's credential.
        row(
            "upper-case victim host",
            get("/echo", &host("3000-VICTIM.PREVIEW.LOCALHOST.")),
            &[401],
            &[],
        ),
        row(
            "victim Host, X-Forwarded-Host names the attacker",
            get("/echo", &format!("{v}X-Forwarded-Host: {ATTACKER}\r\n")),
            &[401],
            &[],
        ),
        row(
            "victim Host behind an IPv6 literal",
            get("/echo", &host(&format!("[{VICTIM}]"))),
            &[404],
            &[],
        ),
    ];
    run(rows).await;
}
