//! Issue #12, "trusted proxies": a client must not be able to choose the address the proxy and
//! the runner believe it has. Only peers in `server.trusted_proxies` are believed about the
//! client (`X-Forwarded-For`, `Forwarded`, the PROXY protocol); from anyone else the TCP peer
//! is the client. Every row asserts on what the sandbox received, or on the connection being
//! closed without an answer.
mod support;

use std::net::SocketAddr;

use support::{body_of, raw, recorder, status_of, Proxy};

/// A trusted range that does not contain the test's loopback address.
const ELSEWHERE: &str = "192.0.2.0/24";
const LOOPBACK: &str = "127.0.0.0/8";

fn start(trusted: &str, proxy_protocol: bool) -> Proxy {
    Proxy::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
trusted_proxies = ["{trusted}"]
proxy_protocol = {proxy_protocol}
[proxy]
domains = ["preview.localhost"]
[[registry.sandboxes]]
id = "pub"
address = "127.0.0.1"
public = true
"#
    ))
}

fn v2_header(source: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&source);
    h.extend_from_slice(&[10, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

/// What the sandbox saw of the client: (`X-Forwarded-For` values, `Forwarded` values), or
/// `None` when the proxy closed the connection without answering.
fn seen(answer: &str) -> Option<(Vec<String>, Vec<String>)> {
    if answer.is_empty() {
        return None;
    }
    assert_eq!(status_of(answer), 200, "{answer}");
    let record: serde_json::Value = serde_json::from_str(body_of(answer)).expect("JSON record");
    let values = |name: &str| -> Vec<String> {
        record["headers"][name]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    Some((values("x-forwarded-for"), values("forwarded")))
}

#[tokio::test]
async fn only_trusted_peers_say_who_the_client_is() {
    let upstream: SocketAddr = recorder::start().await;
    let rport = upstream.port();
    let untrusted = start(ELSEWHERE, false);
    let trusted = start(LOOPBACK, false);
    let proxy_protocol = start(LOOPBACK, true);
    let proxy_protocol_untrusted = start(ELSEWHERE, true);

    let request = |extra: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {rport}-pub.preview.localhost\r\n{extra}\
             Connection: close\r\n\r\n"
        )
        .into_bytes()
    };
    let spoof = "X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n";
    let xff = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let v1 = |line: &str| [line.as_bytes(), &request("")].concat();

    // (what, proxy, bytes sent, what the sandbox saw: (X-Forwarded-For, Forwarded) or closed)
    type Row<'a> = (
        &'a str,
        &'a Proxy,
        Vec<u8>,
        Option<(Vec<String>, Vec<String>)>,
    );
    let rows: Vec<Row> = vec![
        (
            "untrusted peer: its XFF is replaced and Forwarded dropped",
            &untrusted,
            request(spoof),
            Some((xff(&["127.0.0.1"]), vec![])),
        ),
        (
            "trusted peer: the chain is believed and the peer appended",
            &trusted,
            request("X-Forwarded-For: 198.51.100.7\r\nForwarded: for=198.51.100.7\r\n"),
            Some((
                xff(&["198.51.100.7, 127.0.0.1"]),
                xff(&["for=198.51.100.7"]),
            )),
        ),
        (
            "trusted peer: addresses left of the client are not passed on",
            &trusted,
            request("X-Forwarded-For: 6.6.6.6, 198.51.100.7\r\n"),
            Some((xff(&["198.51.100.7, 127.0.0.1"]), vec![])),
        ),
        (
            "PROXY v1 from a trusted peer sets the client",
            &proxy_protocol,
            v1("PROXY TCP4 203.0.113.50 10.0.0.1 5555 80\r\n"),
            Some((xff(&["203.0.113.50"]), vec![])),
        ),
        (
            "PROXY v2 from a trusted peer sets the client, and beats a spoofed XFF",
            &proxy_protocol,
            [v2_header([203, 0, 113, 51], 5555), request(spoof)].concat(),
            Some((xff(&["203.0.113.51"]), vec![])),
        ),
        (
            "PROXY header from an untrusted peer: closed",
            &proxy_protocol_untrusted,
            v1("PROXY TCP4 203.0.113.52 10.0.0.1 5555 80\r\n"),
            None,
        ),
        (
            "malformed PROXY header: closed",
            &proxy_protocol,
            v1("PROXY TCP4 203.0.113.999 10.0.0.1 5555 80\r\n"),
            None,
        ),
        (
            "no PROXY header on a PROXY listener: closed",
            &proxy_protocol,
            request(""),
            None,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, proxy, bytes, expected) in rows {
        let answer = raw(proxy.addr, bytes).await;
        let got = seen(&answer);
        if got != expected {
            wrong.push(format!("{what}: saw {got:?}, want {expected:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // The proxies are still serving after the refusals.
    let after = raw(proxy_protocol.addr, v1("PROXY UNKNOWN\r\n")).await;
    assert_eq!(seen(&after), Some((xff(&["127.0.0.1"]), vec![])), "{after}");
}
