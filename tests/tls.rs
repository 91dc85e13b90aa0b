//! HTTPS: certificates by SNI (two domains, wildcard, unknown names), h2 and HTTP/1.1 over TLS,
//! a WebSocket over TLS, and certificate reload without dropping open connections.
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::runner::{sandboxes, Runner};
use support::tls_client::connect;
use support::{Proxy, BIN};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

/// `sandgate certs dev --domain D --dir DIR`; returns (CA, cert, key) paths.
fn dev_certs(dir: &Path, domain: &str) -> (PathBuf, PathBuf, PathBuf) {
    let status = Command::new(BIN)
        .args(["certs", "dev", "--domain", domain, "--dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    (
        dir.join("dev-ca.pem"),
        dir.join(format!("{domain}.pem")),
        dir.join(format!("{domain}.key")),
    )
}

fn tls_config(pairs: &[(&PathBuf, &PathBuf)], unknown_sni: &str) -> String {
    let mut toml = format!(
        "[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\nunknown_sni = \"{unknown_sni}\"\n"
    );
    for (cert, key) in pairs {
        toml.push_str(&format!(
            "[[tls.certs]]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    toml
}

fn served_leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn served_names(stream: &TlsStream<TcpStream>) -> Vec<String> {
    let leaf = served_leaf(stream);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| {
            n.to_string()
                .trim_start_matches("DNSName(")
                .trim_end_matches(')')
                .to_string()
        })
        .collect()
}

async fn h1_get(stream: TlsStream<TcpStream>, host: &str, path: &str) -> (u16, Bytes) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_certificates_and_h1_h2_websocket_all_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, cert_a, key_a) = dev_certs(&dir.path().join("a"), "preview.localhost");
    let (ca_b, cert_b, key_b) = dev_certs(&dir.path().join("b"), "other.test");
    let runner = Runner::start("k").await;
    let tls = tls_config(&[(&cert_a, &key_a), (&cert_b, &key_b)], "default");
    let proxy = Proxy::start(&runner.config(&format!("{}{tls}", sandboxes())));
    let addr = proxy.tls_addr();
    let cas = [ca_a.as_path(), ca_b.as_path()];
    let host = "3000-sbx-1.preview.localhost";

    let wildcard = connect(addr, host, &cas, b"http/1.1").await.unwrap();
    assert!(served_names(&wildcard).contains(&"*.preview.localhost".to_string()));
    let other = connect(addr, "other.test", &cas, b"http/1.1")
        .await
        .unwrap();
    assert_eq!(served_names(&other), vec!["other.test", "*.other.test"]);

    let (status, _) = h1_get(wildcard, host, "/over-tls").await;
    assert_eq!(status, 200);
    let seen = runner.last();
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));

    let h2 = connect(addr, host, &cas, b"h2").await.unwrap();
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(h2))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get(format!("https://{host}/over-h2"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(runner.last().target.contains("/over-h2"));

    let stream = connect(addr, host, &cas, b"http/1.1").await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{host}/ws"), stream)
        .await
        .unwrap();
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over tls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_gets_the_default_or_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path(), "preview.localhost");
    for (mode, expect_default) in [("default", true), ("refuse", false)] {
        let proxy = Proxy::start(&tls_config(&[(&cert, &key)], mode));
        let error = connect(
            proxy.tls_addr(),
            "unknown.example",
            &[ca.as_path()],
            b"http/1.1",
        )
        .await
        .unwrap_err()
        .to_string();
        // The default certificate reaches the client, which rejects it for the name; a refused
        // handshake ends with an alert before any certificate.
        let saw_certificate = error.contains("certificate") && error.contains("not valid for name");
        assert_eq!(saw_certificate, expect_default, "{mode}: {error}");
        let ok = connect(
            proxy.tls_addr(),
            "x.preview.localhost",
            &[ca.as_path()],
            b"http/1.1",
        )
        .await;
        assert!(ok.is_ok(), "{mode}: known names still work");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate_and_keeps_open_websockets() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path(), "preview.localhost");
    let old_ca = dir.path().join("old-ca.pem");
    std::fs::copy(&ca, &old_ca).unwrap();
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}{}",
        sandboxes(),
        tls_config(&[(&cert, &key)], "default")
    )));
    let addr = proxy.tls_addr();
    let host = "3000-sbx-1.preview.localhost";
    let cas = [old_ca.as_path(), ca.as_path()];

    let stream = connect(addr, host, &cas, b"http/1.1").await.unwrap();
    let before = served_leaf(&stream);
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{host}/ws"), stream)
        .await
        .unwrap();

    dev_certs(dir.path(), "preview.localhost"); // a new CA, key and certificate
    proxy.signal("HUP");
    let mut after = before.clone();
    for _ in 0..100 {
        let fresh = connect(addr, host, &cas, b"http/1.1").await.unwrap();
        after = served_leaf(&fresh);
        if after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_ne!(after, before, "new handshakes get the new certificate");
    ws.send(Message::text("still open")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still open")
    );

    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    proxy.signal("HUP");
    for _ in 0..100 {
        if proxy.stderr().contains("certificate reload rejected") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(proxy.stderr().contains("certificate reload rejected"));
    let fresh = connect(addr, host, &cas, b"http/1.1").await.unwrap();
    assert_eq!(served_leaf(&fresh), after, "the certificate in force stays");
    let (status, _) = h1_get(fresh, host, "/after-bad-reload").await;
    assert_eq!(status, 200);
    ws.send(Message::text("after bad reload")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("after bad reload")
    );
}

/// Plain HTTP sent to the HTTPS port gets nginx's answer, a 400 that says to use https, instead
/// of a dropped connection; TLS on the same port keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_gets_a_400_that_says_https() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path(), "preview.localhost");
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}{}",
        sandboxes(),
        tls_config(&[(&cert, &key)], "default")
    )));
    let addr = proxy.tls_addr();
    let raw = support::raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: 3000-sbx-1.preview.localhost\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(support::status_of(&raw), 400, "{raw}");
    assert!(raw.contains("this port speaks HTTPS"), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("connection: close"),
        "{raw}"
    );
    let host = "3000-sbx-1.preview.localhost";
    let stream = connect(addr, host, &[ca.as_path()], b"http/1.1")
        .await
        .unwrap();
    let (status, _) = h1_get(stream, host, "/after-plain").await;
    assert_eq!(status, 200);
}
