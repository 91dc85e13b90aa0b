//! Issue #12, class 10: odd request forms. The asterisk-form target (`OPTIONS *`) is answered by
//! the proxy, never forwarded as `.../proxy/<port>*`; only `Upgrade: websocket` reaches the
//! runner, and any other upgrade token (`h2c`, `foo`) is removed with its `Connection` token and
//! `HTTP2-Settings`, the request going on as a plain one. Asserted on what the runner received.
mod support;

use std::time::Duration;

use support::runner::{Runner, ATTACKER_AND_VICTIM};
use support::{raw_until_idle, statuses, Proxy};

const ATTACKER: &str = "3000-attacker.preview.localhost";
const PREFIX: &str = "/sandboxes/attacker/toolbox/proxy/3000";

struct Row {
    name: &'static str,
    request: String,
    status: u16,
    /// The path under the attacker's prefix the runner received, if anything reached it.
    forwarded: Option<&'static str>,
    /// The `Upgrade` header the runner received with it (`None`: none).
    upgrade: Option<&'static str>,
}

fn row(
    name: &'static str,
    request: String,
    status: u16,
    forwarded: Option<&'static str>,
    upgrade: Option<&'static str>,
) -> Row {
    Row {
        name,
        request,
        status,
        forwarded,
        upgrade,
    }
}

fn with_headers(method_target: &str, host: &str, headers: &str) -> String {
    format!("{method_target} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n")
}

const WS_KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

const CLOSE: &str = "Connection: close\r\n";

#[tokio::test]
async fn asterisk_form_is_answered_by_the_proxy() {
    let close = CLOSE;
    let rows = vec![
        row(
            "OPTIONS * on a preview host",
            with_headers("OPTIONS *", ATTACKER, close),
            200,
            None,
            None,
        ),
        row(
            "OPTIONS * on a private sandbox's host",
            with_headers("OPTIONS *", "3000-victim.preview.localhost", close),
            200,
            None,
            None,
        ),
        row(
            "OPTIONS * on the proxy's own host",
            with_headers("OPTIONS *", "localhost", close),
            200,
            None,
            None,
        ),
        row(
            "GET * on a preview host",
            with_headers("GET *", ATTACKER, close),
            400,
            None,
            None,
        ),
        row(
            "POST * on the own host",
            with_headers(
                "POST *",
                "localhost",
                "Content-Length: 0\r\nConnection: close\r\n",
            ),
            400,
            None,
            None,
        ),
    ];
    run(rows).await;
}

#[tokio::test]
async fn only_websocket_upgrades_are_relayed() {
    let close = CLOSE;
    let h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";
    let rows = vec![
        row(
            "Upgrade: h2c",
            with_headers("GET /echo", ATTACKER, &format!("{h2c}{close}")),
            200,
            Some("/echo"),
            None,
        ),
        row(
            "Upgrade: h2c, HTTP2-Settings not named in Connection",
            with_headers(
                "GET /echo",
                ATTACKER,
                "Connection: upgrade, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n",
            ),
            200,
            Some("/echo"),
            None,
        ),
        row(
            "Upgrade: foo",
            with_headers(
                "POST /echo",
                ATTACKER,
                "Connection: Upgrade, close\r\nUpgrade: foo/2\r\nContent-Length: 2\r\n",
            ) + "hi",
            200,
            Some("/echo"),
            None,
        ),
        row(
            "Upgrade: websocket without Connection: upgrade",
            with_headers(
                "GET /echo",
                ATTACKER,
                &format!("Upgrade: websocket\r\n{close}"),
            ),
            200,
            Some("/echo"),
            None,
        ),
        row(
            "Upgrade: WebSocket",
            with_headers(
                "GET /ws",
                ATTACKER,
                &format!("Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n{WS_KEY}"),
            ),
            101,
            Some("/ws"),
            Some("websocket"),
        ),
        row(
            "websocket in a list of upgrade tokens",
            with_headers(
                "GET /ws",
                ATTACKER,
                &format!("Connection: Upgrade\r\nUpgrade: h2c, websocket\r\n{WS_KEY}"),
            ),
            101,
            Some("/ws"),
            Some("websocket"),
        ),
    ];
    run(rows).await;
}

async fn run(rows: Vec<Row>) {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(ATTACKER_AND_VICTIM));
    for row in rows {
        let before = runner.seen().len();
        let answer = raw_until_idle(proxy.addr, row.request, Duration::from_millis(500)).await;
        let seen = runner.seen()[before..].to_vec();
        let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
        let expected: Vec<String> = row
            .forwarded
            .iter()
            .map(|p| format!("{PREFIX}{p}"))
            .collect();
        assert_eq!(targets, expected, "{}: {answer}", row.name);
        assert_eq!(statuses(&answer), [row.status], "{}: {answer}", row.name);
        if row.forwarded.is_none() && row.status == 200 {
            let allow = answer
                .lines()
                .find_map(|l| l.strip_prefix("allow: "))
                .unwrap_or_default();
            assert!(
                allow.contains("OPTIONS") && allow.contains("GET"),
                "{}: {answer}",
                row.name
            );
        }
        if let Some(seen) = seen.first() {
            assert_eq!(
                seen.header("upgrade").as_deref(),
                row.upgrade,
                "{}",
                row.name
            );
            assert_eq!(seen.header("http2-settings"), None, "{}", row.name);
            let connection = seen.header("connection").unwrap_or_default();
            assert_eq!(
                connection.to_ascii_lowercase().contains("upgrade"),
                row.upgrade.is_some(),
                "{}: Connection {connection:?}",
                row.name
            );
        }
    }
}
