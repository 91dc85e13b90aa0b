//! Debian's `pebble` (a real ACME server) and `pebble-challtestsrv` (its mock DNS server) on
//! free loopback ports. The DNS answers every A query with 127.0.0.1 (no AAAA), so pebble
//! validates challenges against the proxy's own listeners: `http_port` and `tls_port` are the
//! ports the proxy listens on. Both processes are killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, BIN};

pub struct Pebble {
    /// `https://localhost:<port>/dir`.
    pub directory_url: String,
    /// The CA that signed pebble's HTTPS certificate: `acme.ca_root`.
    pub https_ca: PathBuf,
    /// The mock DNS server: `domains.dns_resolver`.
    pub dns: SocketAddr,
    management: SocketAddr,
    /// The mock DNS's management API (`/set-txt`, `/clear-txt`).
    pub dns_management: SocketAddr,
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
}

/// How pebble runs.
pub struct PebbleOptions {
    /// Where pebble connects for HTTP-01 (the proxy's plain listener).
    pub http_port: u16,
    /// Where pebble connects for TLS-ALPN-01 (the proxy's TLS listener).
    pub tls_port: u16,
    /// Issued certificates' lifetime (pebble's default is 5 years).
    pub validity: Option<Duration>,
    /// Percentage of valid nonces pebble rejects as bad (its own fault injection).
    pub nonce_reject_percent: u8,
    /// Percentage of authorizations reused across orders.
    pub authz_reuse_percent: u8,
    /// The DNS server pebble asks (DNS-01's TXT records); its mock DNS when `None`.
    pub dns_server: Option<SocketAddr>,
}

impl PebbleOptions {
    pub fn new(http_port: u16, tls_port: u16) -> PebbleOptions {
        PebbleOptions {
            http_port,
            tls_port,
            validity: None,
            nonce_reject_percent: 0,
            authz_reuse_percent: 0,
            dns_server: None,
        }
    }
}

impl Pebble {
    pub fn start(options: PebbleOptions) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("https");
        let status = Command::new(BIN)
            .args(["certs", "dev", "--domain", "localhost", "--dir"])
            .arg(&certs)
            .stdout(Stdio::null())
            .status()
            .expect("run sandgate certs dev");
        assert!(status.success(), "certs dev for pebble's HTTPS");
        let https_ca = certs.join("dev-ca.pem");
        let (acme_port, management_port) = (free_port(), free_port());
        let (dns_port, dns_management_port) = (free_port(), free_port());
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": certs.join("localhost.pem"),
            "privateKey": certs.join("localhost.key"),
            "httpPort": options.http_port,
            "tlsPort": options.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(validity) = options.validity {
            pebble["certificateValidityPeriod"] = validity.as_secs().into();
        }
        let config = dir.path().join("pebble.json");
        std::fs::write(
            &config,
            serde_json::to_vec(&serde_json::json!({ "pebble": pebble })).unwrap(),
        )
        .unwrap();
        let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
        let dns = Command::new("pebble-challtestsrv")
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_management_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("pebble-challtestsrv (apt install pebble)");
        let server = Command::new("pebble")
            .arg("-config")
            .arg(&config)
            .arg("-dnsserver")
            .arg(
                options
                    .dns_server
                    .map_or(format!("127.0.0.1:{dns_port}"), |a| a.to_string()),
            )
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                options.nonce_reject_percent.to_string(),
            )
            .env("PEBBLE_AUTHZREUSE", options.authz_reuse_percent.to_string())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble (apt install pebble)");
        let pebble = Pebble {
            directory_url: format!("https://localhost:{acme_port}/dir"),
            https_ca,
            dns: SocketAddr::from(([127, 0, 0, 1], dns_port)),
            management: SocketAddr::from(([127, 0, 0, 1], management_port)),
            dns_management: SocketAddr::from(([127, 0, 0, 1], dns_management_port)),
            children: vec![dns, server],
            dir,
        };
        for port in [acme_port, management_port, dns_management_port] {
            wait_listening(port);
        }
        pebble
    }

    /// The `[acme]` section for this pebble (plus whatever `extra` keys the test adds).
    pub fn acme_config(&self, extra: &str) -> String {
        format!(
            "[acme]\nenabled = true\ndirectory_url = {:?}\nca_root = {:?}\n{extra}\n",
            self.directory_url, self.https_ca
        )
    }

    /// Publishes `_sandgate-challenge.<host>` TXT = `value` on the mock DNS.
    pub async fn set_txt(&self, host: &str, value: &str) {
        let body = serde_json::json!({
            "host": format!("_sandgate-challenge.{host}."),
            "value": value,
        });
        self.dns_call("/set-txt", body).await;
    }

    pub async fn clear_txt(&self, host: &str) {
        let body = serde_json::json!({ "host": format!("_sandgate-challenge.{host}.") });
        self.dns_call("/clear-txt", body).await;
    }

    async fn dns_call(&self, path: &str, body: serde_json::Value) {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.to_string().len()
        );
        let reply = super::raw(self.dns_management, request).await;
        assert_eq!(
            super::status_of(&reply),
            200,
            "challtestsrv {path}: {reply}"
        );
    }

    /// The root that signs issued certificates (regenerated at every pebble start), as PEM,
    /// written to a file for TLS clients.
    pub async fn issuing_root(&self) -> PathBuf {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = super::tls_client::connect(
            self.management,
            "localhost",
            &[&self.https_ca],
            b"http/1.1",
        )
        .await
        .expect("pebble management TLS");
        tls.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let _ = tls.read_to_end(&mut reply).await;
        let reply = String::from_utf8_lossy(&reply);
        let start = reply
            .find("-----BEGIN")
            .expect("a PEM root in pebble's answer");
        let path = self.dir.path().join("issuing-root.pem");
        std::fs::write(&path, &reply[start..]).unwrap();
        path
    }

    /// pebble's own log (orders, validations), for failure messages.
    pub fn log(&self) -> String {
        ["pebble.log", "pebble.err"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect()
    }
}

fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {port} (pebble or challtestsrv did not start)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
