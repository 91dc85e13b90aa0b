//! Custom domains end to end (issue #19): the real binary with `[domains]` and `[acme]`, a real
//! ACME server (Debian's `pebble`) with its mock DNS (`pebble-challtestsrv`, which answers every
//! A query with 127.0.0.1, so pebble validates challenges against the proxy's own listeners),
//! the runner emulator behind, and Redis for two replicas.
//!
//! A certificate counts as ordered when pebble logged `POST /order-plz` (each new order) and
//! issued when it logged `Issued certificate serial`; each test runs its own pebble.
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::admin_cli::{ok, put_public_sandbox, put_runner, redis_toml, sandgate, start_proxy};
use support::bind::Bind;
use support::pebble::{Pebble, PebbleOptions};
use support::redis::RedisServer;
use support::runner::{sandboxes, Runner, ATTACKER_AND_VICTIM};
use support::tls_client::connect;
use support::{free_port, get, sample, send, within, Proxy, Reply, BIN};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

const DOMAIN: &str = "app.customer.test";
const COOKIE_KEY: &str = "custom-domains-cookie-key-0123456789abcdef";
/// Generous hang detector for anything that talks to pebble.
const HANG: Duration = Duration::from_secs(90);
const ISSUED: &str = "sandgate_acme_orders_total{result=\"issued\"}";
const FAILED: &str = "sandgate_acme_orders_total{result=\"failed\"}";

/// The proxy's two listeners, fixed because pebble validates against them.
#[derive(Clone, Copy)]
struct Ports {
    http: u16,
    tls: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            http: free_port(),
            tls: free_port(),
        }
    }

    fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls))
    }

    fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http))
    }
}

/// `sandgate certs dev` for the preview domain (the static certificate `[tls]` needs).
fn preview_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let status = std::process::Command::new(BIN)
        .args(["certs", "dev", "--domain", "preview.localhost", "--dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "sandgate certs dev");
    (
        dir.join("preview.localhost.pem"),
        dir.join("preview.localhost.key"),
    )
}

/// Everything but the registry: listeners on `ports`, HTTPS with the preview certificate and
/// `unknown_sni = "refuse"` (so a name without a certificate fails its handshake), the admin
/// listener, `[domains]` on pebble's DNS and `[acme]` for pebble with `acme_extra`.
fn serve_config(ports: Ports, pebble: &Pebble, dir: &Path, acme_extra: &str) -> String {
    let (cert, key) = preview_cert(&dir.join("preview-cert"));
    let defaults = [
        ("handshake_wait", "\"20s\""),
        ("order_timeout", "\"60s\""),
        ("renew_check_interval", "\"1s\""),
    ];
    // Lines `tls.<key> = …` of `acme_extra` go to the [tls] section.
    let (tls_extra, acme_extra): (Vec<&str>, Vec<&str>) =
        acme_extra.lines().partition(|l| l.starts_with("tls."));
    let tls_extra: String = tls_extra
        .iter()
        .map(|l| format!("{}\n", &l["tls.".len()..]))
        .collect();
    let acme_extra = acme_extra.join("\n");
    let mut keys = format!("dir = {:?}\n{acme_extra}\n", dir.join("acme"));
    for (key, value) in defaults {
        if !acme_extra.contains(key) {
            keys.push_str(&format!("{key} = {value}\n"));
        }
    }
    let acme = pebble.acme_config(&keys);
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\
         [auth]\ncookie_keys = [\"{COOKIE_KEY}\"]\nmax_failures_per_minute = 10000\n\
         [tls]\nenabled = true\nlisten = \"127.0.0.1:{}\"\nunknown_sni = \"refuse\"\nhandshake_timeout = \"40s\"\n{tls_extra}\
         [[tls.certs]]\ncert = {cert:?}\nkey = {key:?}\n\
         [domains]\nenabled = true\ndns_resolver = \"{}\"\ncache_ttl = \"1s\"\nverify_interval = \"1s\"\ncache_entries = 64\n\
         {acme}\n",
        ports.http, ports.tls, pebble.dns
    )
}

/// One `[[registry.domains]]` entry.
fn domain_entry(host: &str, sandbox: &str, prefix: Option<&str>, state: &str) -> String {
    let prefix = prefix.map_or(String::new(), |p| format!("path_prefix = \"{p}\"\n"));
    format!(
        "[[registry.domains]]\nhost = \"{host}\"\nsandbox = \"{sandbox}\"\nport = 3000\n{prefix}state = \"{state}\"\n"
    )
}

/// A pending domain verified by the TXT record `_sandgate-challenge.<host>` = `token`.
fn pending_entry(host: &str, sandbox: &str, token: &str) -> String {
    format!(
        "{}verification = \"dns\"\ntoken = \"{token}\"\n",
        domain_entry(host, sandbox, None, "pending")
    )
}

/// pebble, the runner emulator and one proxy on the static registry (`sandboxes` and
/// `domains` TOML); pebble validates against the proxy's listeners.
struct Stack {
    pebble: Pebble,
    runner: Runner,
    proxy: Proxy,
    ports: Ports,
    /// The root pebble signs issued certificates with (what clients trust).
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(
        options: impl FnOnce(Ports) -> PebbleOptions,
        acme: &str,
        registry: &str,
    ) -> Stack {
        Self::start_with(options(Ports::free()), acme, registry).await
    }

    async fn start_with(options: PebbleOptions, acme: &str, registry: &str) -> Stack {
        let ports = Ports {
            http: options.http_port,
            tls: options.tls_port,
        };
        Self::start_on(ports, options, acme, registry).await
    }

    /// `ports`: where the proxy listens (pebble's may differ, to make validation fail).
    async fn start_on(ports: Ports, options: PebbleOptions, acme: &str, registry: &str) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let pebble = Pebble::start(options);
        let runner = Runner::start("runner-key").await;
        let config = format!(
            "{}{}",
            serve_config(ports, &pebble, dir.path(), acme),
            runner.config(registry)
        );
        let proxy = Proxy::start(&config);
        Self::assemble(pebble, runner, proxy, ports, dir).await
    }

    /// The parts, once the proxy listens on `ports` (and pebble's issuing root is fetched).
    async fn assemble(
        pebble: Pebble,
        runner: Runner,
        proxy: Proxy,
        ports: Ports,
        dir: tempfile::TempDir,
    ) -> Stack {
        assert_eq!(proxy.tls_addr(), ports.tls_addr(), "the TLS listener");
        let root = pebble.issuing_root().await;
        Stack {
            pebble,
            runner,
            proxy,
            ports,
            root,
            _dir: dir,
        }
    }

    async fn handshake(&self, sni: &str) -> std::io::Result<TlsStream<TcpStream>> {
        handshake(self.ports.tls_addr(), sni, &self.root).await
    }

    async fn metrics(&self) -> String {
        metrics(&self.proxy).await
    }

    fn orders(&self) -> usize {
        orders(&self.pebble)
    }

    /// Details for a failure message: pebble's log and the proxy's.
    fn logs(&self) -> String {
        format!(
            "--- pebble ---\n{}\n--- proxy ---\n{}",
            self.pebble.log(),
            self.proxy.stderr()
        )
    }
}

fn orders(pebble: &Pebble) -> usize {
    pebble.log().matches("POST /order-plz").count()
}

fn issued(pebble: &Pebble) -> usize {
    pebble.log().matches("Issued certificate serial").count()
}

async fn metrics(proxy: &Proxy) -> String {
    let reply = get(proxy.admin_addr(), "admin", "/metrics").await;
    assert_eq!(reply.status, 200);
    reply.text()
}

/// A TLS handshake for `sni` trusting only `root`, bounded by the hang detector.
async fn handshake(
    addr: SocketAddr,
    sni: &str,
    root: &Path,
) -> std::io::Result<TlsStream<TcpStream>> {
    tokio::time::timeout(HANG, connect(addr, sni, &[root], b"http/1.1"))
        .await
        .unwrap_or_else(|_| panic!("the handshake for {sni} hung for {HANG:?}"))
}

fn leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The leaf's serial number (hex) and DNS names.
fn serial_and_names(stream: &TlsStream<TcpStream>) -> (String, Vec<String>) {
    let der = leaf(stream);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let names = cert
        .subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (cert.raw_serial_as_string(), names)
}

/// An HTTP/1.1 connection over `stream` (kept open by the caller).
async fn h1(stream: TlsStream<TcpStream>) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn h1_get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut request = http::Request::get(path).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One request on a fresh HTTPS connection with SNI `sni` and Host `host`.
async fn https_get(stack: &Stack, sni: &str, host: &str, path: &str) -> (u16, String) {
    let stream = stack
        .handshake(sni)
        .await
        .unwrap_or_else(|e| panic!("handshake for {sni}: {e}\n{}", stack.logs()));
    h1_get(&mut h1(stream).await, host, path, &[]).await
}

// --- 1. a verified domain gets its certificate on the first handshake ------------------------

/// For each challenge type: four concurrent first handshakes for a verified domain share one
/// order and all get the certificate pebble issued for the name; the domain then serves the
/// sandbox's port over HTTPS and plain HTTP with its path prefix, and a later handshake is
/// served from memory (no second order).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verified_domain_gets_a_certificate_on_its_first_handshake_and_serves_the_sandbox() {
    for (challenge, redirect) in [
        ("tls-alpn-01", false),
        ("http-01", false),
        // The CA's HTTP-01 request is answered, not redirected like the rest of plain HTTP.
        ("http-01", true),
    ] {
        let stack = Stack::start(
            |p| PebbleOptions::new(p.http, p.tls),
            &format!("challenge = \"{challenge}\"\ntls.redirect_plaintext = {redirect}"),
            &format!(
                "{}{}",
                sandboxes(),
                domain_entry(DOMAIN, "sbx-1", Some("/app"), "verified")
            ),
        )
        .await;
        assert_eq!(stack.orders(), 0, "{challenge}: no order at startup");

        let started = Instant::now();
        let handshakes: Vec<_> = (0..4)
            .map(|_| {
                let (addr, root) = (stack.ports.tls_addr(), stack.root.clone());
                tokio::spawn(async move { handshake(addr, DOMAIN, &root).await })
            })
            .collect();
        let mut serials = Vec::new();
        for h in handshakes {
            let stream = h
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{challenge}: first handshake: {e}\n{}", stack.logs()));
            let (serial, names) = serial_and_names(&stream);
            assert_eq!(names, vec![DOMAIN.to_string()], "{challenge}");
            serials.push(serial);
        }
        println!(
            "{challenge}: first handshakes (order included) {:?}",
            started.elapsed()
        );
        serials.dedup();
        assert_eq!(serials.len(), 1, "{challenge}: one certificate for all");
        assert_eq!(
            stack.orders(),
            1,
            "{challenge}: one order\n{}",
            stack.logs()
        );
        assert_eq!(issued(&stack.pebble), 1, "{challenge}");

        let (status, body) = https_get(&stack, DOMAIN, DOMAIN, "/hello?x=1").await;
        assert_eq!(status, 200, "{challenge}: {body}");
        let seen = stack.runner.last();
        assert_eq!(
            seen.target, "/sandboxes/sbx-1/toolbox/proxy/3000/app/hello?x=1",
            "{challenge}: the path prefix goes before the request's path"
        );
        assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
        let plain = get(stack.ports.http_addr(), DOMAIN, "/plain").await;
        if redirect {
            assert_eq!(plain.status, 308, "{challenge}: {}", plain.text());
        } else {
            assert_eq!(plain.status, 200, "{challenge}: {}", plain.text());
            assert_eq!(
                stack.runner.last().target,
                "/sandboxes/sbx-1/toolbox/proxy/3000/app/plain"
            );
        }

        let started = Instant::now();
        let again = stack.handshake(DOMAIN).await.unwrap();
        println!("{challenge}: a later handshake {:?}", started.elapsed());
        assert_eq!(serial_and_names(&again).0, serials[0], "{challenge}");
        assert_eq!(stack.orders(), 1, "{challenge}: served from memory");
        let upper = stack.handshake(&DOMAIN.to_ascii_uppercase()).await.unwrap();
        assert_eq!(
            serial_and_names(&upper).0,
            serials[0],
            "{challenge}: SNI in upper case"
        );
        assert_eq!(stack.orders(), 1, "{challenge}: one name whatever its case");
        let text = stack.metrics().await;
        assert_eq!(sample(&text, ISSUED), 1.0, "{challenge}: {text}");
        assert_eq!(
            sample(&text, "sandgate_acme_certificates"),
            1.0,
            "{challenge}"
        );
        let expiry = sample(&text, "sandgate_acme_soonest_expiry_seconds");
        assert!(
            expiry > 86_400.0,
            "{challenge}: pebble's certificates last years: {expiry}"
        );
    }
}

// --- 2. unverified and unknown names never order -------------------------------------------

/// A pending domain, an unknown name, a preview host without its own name and a name under a
/// verified one: no handshake orders (each fails, pebble sees no order, the metric stays at 0).
/// The pending domain's plain HTTP request gets the pending page naming the TXT record; a wrong
/// TXT value keeps it pending, the right one verifies it, and then it gets its certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unverified_or_unknown_names_never_order_and_a_txt_record_verifies() {
    let pending = "pending.customer.test";
    let token = "0123456789abcdef0123456789abcdef";
    let stack = Stack::start(
        |p| PebbleOptions::new(p.http, p.tls),
        "",
        &format!(
            "{}{}{}",
            sandboxes(),
            pending_entry(pending, "sbx-1", token),
            domain_entry(DOMAIN, "sbx-1", None, "verified")
        ),
    )
    .await;

    // (SNI, why it must not order)
    let refused: &[(&str, &str)] = &[
        (pending, "a pending domain"),
        ("nobody.customer.test", "an unknown name"),
        ("sub.app.customer.test", "a name under a verified domain"),
        ("customer.test", "the parent of a verified domain"),
        (
            "x.3000-sbx-1.preview.localhost",
            "a name under a preview host",
        ),
        (
            "3000-sbx-1.other.test",
            "a preview-looking host of no configured domain",
        ),
        ("PENDING.customer.test", "a pending domain in upper case"),
    ];
    for (sni, why) in refused {
        let started = Instant::now();
        let result = stack.handshake(sni).await;
        assert!(result.is_err(), "{why} ({sni}) got a certificate");
        assert!(
            started.elapsed() < Duration::from_secs(20 + 15),
            "{why}: the handshake failed only after {:?}",
            started.elapsed()
        );
    }
    // A client offering only `acme-tls/1` (a validation handshake) for a verified domain whose
    // challenge is not open gets nothing and starts no order.
    let probe = connect(
        stack.ports.tls_addr(),
        DOMAIN,
        &[&stack.root],
        b"acme-tls/1",
    )
    .await;
    assert!(
        probe.is_err(),
        "a challenge handshake with no challenge open"
    );
    assert_eq!(
        stack.orders(),
        0,
        "no order for any of them\n{}",
        stack.logs()
    );
    assert_eq!(sample(&stack.metrics().await, ISSUED), 0.0);
    assert_eq!(sample(&stack.metrics().await, FAILED), 0.0);

    let page = get(stack.ports.http_addr(), pending, "/").await;
    assert_eq!(page.status, 403, "{}", page.text());
    let text = page.text();
    assert!(
        text.to_ascii_lowercase().contains("domain_pending"),
        "{text}"
    );
    assert!(
        text.contains(&format!("_sandgate-challenge.{pending}")),
        "{text}"
    );
    assert_eq!(
        get(stack.ports.http_addr(), "nobody.customer.test", "/")
            .await
            .status,
        404
    );
    let reached = stack.runner.seen().len();
    assert_eq!(reached, 0, "nothing reached the sandbox");

    stack.pebble.set_txt(pending, "not-the-token").await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // > verify_interval and cache_ttl
    assert_eq!(
        get(stack.ports.http_addr(), pending, "/").await.status,
        403,
        "a wrong TXT value"
    );

    stack.pebble.set_txt(pending, token).await;
    let waited = within(
        Duration::from_secs(20),
        "the TXT record verifies the domain",
        || async { get(stack.ports.http_addr(), pending, "/").await.status == 200 },
    )
    .await;
    println!("verified {waited:?} after the TXT record appeared");
    assert_eq!(
        stack.runner.last().target,
        "/sandboxes/sbx-1/toolbox/proxy/3000/"
    );
    let stream = stack
        .handshake(pending)
        .await
        .unwrap_or_else(|e| panic!("verified now: {e}\n{}", stack.logs()));
    assert_eq!(serial_and_names(&stream).1, vec![pending.to_string()]);
    assert_eq!(stack.orders(), 1);
}

// --- 3. renewal ---------------------------------------------------------------------------

/// With 30 s certificates (renewal due at 20 s, checked every second) the certificate is
/// replaced by one with a new serial, while a keep-alive HTTPS connection and a WebSocket opened
/// on the old one keep working throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewal_replaces_the_certificate_while_open_connections_keep_working() {
    let stack = Stack::start(
        |p| {
            let mut options = PebbleOptions::new(p.http, p.tls);
            options.validity = Some(Duration::from_secs(30));
            options
        },
        "",
        &format!(
            "{}{}",
            sandboxes(),
            domain_entry(DOMAIN, "sbx-1", None, "verified")
        ),
    )
    .await;
    let first = stack
        .handshake(DOMAIN)
        .await
        .unwrap_or_else(|e| panic!("first handshake: {e}\n{}", stack.logs()));
    let (old_serial, _) = serial_and_names(&first);
    let mut keep_alive = h1(first).await;
    assert_eq!(h1_get(&mut keep_alive, DOMAIN, "/before", &[]).await.0, 200);
    let ws_stream = stack.handshake(DOMAIN).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("wss://{DOMAIN}/ws"), ws_stream)
        .await
        .expect("a WebSocket through the custom domain");

    let started = Instant::now();
    let mut round = 0;
    let new_serial = loop {
        round += 1;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no renewal within 60 s of a 30 s certificate\n{}",
            stack.logs()
        );
        let (status, body) =
            h1_get(&mut keep_alive, DOMAIN, &format!("/during/{round}"), &[]).await;
        assert_eq!(
            status, 200,
            "the keep-alive connection, round {round}: {body}"
        );
        ws.send(Message::text(format!("ping {round}")))
            .await
            .unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("ping {round}"))
        );
        let stream = stack
            .handshake(DOMAIN)
            .await
            .unwrap_or_else(|e| panic!("a handshake during renewal failed: {e}\n{}", stack.logs()));
        let (serial, _) = serial_and_names(&stream);
        if serial != old_serial {
            break serial;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!(
        "renewed after {:?}: {old_serial} -> {new_serial}",
        started.elapsed()
    );
    assert_eq!(h1_get(&mut keep_alive, DOMAIN, "/after", &[]).await.0, 200);
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    let text = stack.metrics().await;
    assert!(sample(&text, ISSUED) >= 2.0, "{text}");
    assert_eq!(sample(&text, "sandgate_acme_certificates"), 1.0, "{text}");
    assert!(
        sample(&text, "sandgate_acme_soonest_expiry_seconds") <= 30.0,
        "{text}"
    );
}

// --- 4. two replicas on one Redis ---------------------------------------------------------

/// The full config of one replica on the Redis registry with certificates in Redis.
fn replica_config(
    redis: &RedisServer,
    ports: Ports,
    pebble: &Pebble,
    dir: &Path,
    key: &Path,
) -> String {
    let acme = format!("storage = \"redis\"\nencryption_key_file = {key:?}");
    let serve = serve_config(ports, pebble, dir, &acme);
    format!("{serve}{}", redis_toml(redis, ""))
}

/// What two replicas share: Redis, a folder with the storage key (and its path), their ports,
/// and pebble validating against replica one's.
fn replicas() -> (
    RedisServer,
    tempfile::TempDir,
    PathBuf,
    (Ports, Ports),
    Pebble,
) {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("acme.key");
    std::fs::write(&key, "5a".repeat(32)).unwrap();
    let (one, two) = (Ports::free(), Ports::free());
    let pebble = Pebble::start(PebbleOptions::new(one.http, one.tls));
    (redis, dir, key, (one, two), pebble)
}

/// Two replicas on one Redis, the domain added with the CLI (`--verify none`): the first
/// handshake at replica 1 orders (pebble validates against replica 1's listener); a handshake
/// at replica 2 while that order runs waits for it instead of ordering again. Both serve the
/// same certificate, pebble saw one order, the stored value is not plaintext, and
/// `sandgate domain list` shows the certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_redis_make_one_order_and_both_serve_it() {
    let (redis, dir, key, (one, two), pebble) = replicas();
    let runner = Runner::start("k").await;
    let cli = dir.path().join("cli.toml");
    std::fs::write(
        &cli,
        replica_config(&redis, one, &pebble, &dir.path().join("cli"), &key),
    )
    .unwrap();
    put_runner(&cli, "runner-1", runner.addr, "k");
    put_public_sandbox(&cli, "sbx-1", "runner-1");
    let added = ok(
        &cli,
        &[
            "domain",
            "add",
            DOMAIN,
            "--sandbox",
            "sbx-1",
            "--port",
            "3000",
            "--verify",
            "none",
        ],
    );
    println!("domain add: {added}");
    let first = start_proxy(&replica_config(
        &redis,
        one,
        &pebble,
        &dir.path().join("one"),
        &key,
    ));
    let second = start_proxy(&replica_config(
        &redis,
        two,
        &pebble,
        &dir.path().join("two"),
        &key,
    ));
    let root = pebble.issuing_root().await;

    let at_one = {
        let root = root.clone();
        tokio::spawn(async move { handshake(one.tls_addr(), DOMAIN, &root).await })
    };
    within(HANG, "replica 1 starts its order", || async {
        orders(&pebble) >= 1
    })
    .await;
    let at_two = handshake(two.tls_addr(), DOMAIN, &root).await;
    let at_one = at_one.await.unwrap();
    let logs = || {
        format!(
            "--- pebble ---\n{}\n--- one ---\n{}\n--- two ---\n{}",
            pebble.log(),
            first.stderr(),
            second.stderr()
        )
    };
    let at_one = at_one.unwrap_or_else(|e| panic!("replica 1: {e}\n{}", logs()));
    let at_two = at_two.unwrap_or_else(|e| panic!("replica 2: {e}\n{}", logs()));
    assert_eq!(
        leaf(&at_one),
        leaf(&at_two),
        "both serve the one certificate"
    );
    assert_eq!(orders(&pebble), 1, "one order\n{}", logs());
    assert_eq!(issued(&pebble), 1);
    assert_eq!(sample(&metrics(&first).await, ISSUED), 1.0);
    assert_eq!(
        sample(&metrics(&second).await, ISSUED),
        0.0,
        "replica 2 did not order"
    );
    assert_eq!(
        h1_get(&mut h1(at_two).await, DOMAIN, "/via-two", &[])
            .await
            .0,
        200
    );
    assert_eq!(
        runner.last().target,
        "/sandboxes/sbx-1/toolbox/proxy/3000/via-two"
    );

    let keys = redis.cli(&["--scan", "--pattern", "*acme:cert:*"]);
    let cert_key = keys
        .lines()
        .find(|k| k.contains(DOMAIN))
        .unwrap_or_else(|| panic!("no stored certificate for {DOMAIN} in Redis: {keys:?}"));
    let stored = redis.cli(&["GET", cert_key]);
    assert!(!stored.contains("BEGIN"), "stored in plaintext: {stored}");

    let listed = ok(&cli, &["domain", "list"]);
    let line = listed
        .lines()
        .find(|l| l.contains(DOMAIN))
        .unwrap_or_else(|| panic!("{DOMAIN} not listed: {listed}"));
    assert!(line.contains("verified"), "{line}");
    assert!(
        line.contains("valid until"),
        "the certificate's state: {line}"
    );
}

/// The value in `… TXT "<value>"` of the CLI's output.
fn txt_value(output: &str) -> String {
    output
        .split_once("TXT \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(value, _)| value.to_string())
        .unwrap_or_else(|| panic!("no TXT record in {output:?}"))
}

/// A domain's life on the Redis registry with one proxy: `domain add --verify dns` (pending:
/// the pending page, no certificate), the TXT record published and `domain verify` (routed with
/// its prefix, a certificate on the first handshake), `domain rm` (404 again), and no renewal
/// order for the removed domain once its 30 s certificate is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_domain_added_verified_and_removed_with_the_cli_on_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("acme.key");
    std::fs::write(&key, "a7".repeat(32)).unwrap();
    let ports = Ports::free();
    let mut options = PebbleOptions::new(ports.http, ports.tls);
    options.validity = Some(Duration::from_secs(30));
    let pebble = Pebble::start(options);
    let runner = Runner::start("k").await;
    let config = replica_config(&redis, ports, &pebble, &dir.path().join("proxy"), &key);
    let cli = dir.path().join("cli.toml");
    std::fs::write(&cli, &config).unwrap();
    put_runner(&cli, "runner-1", runner.addr, "k");
    put_public_sandbox(&cli, "sbx-1", "runner-1");
    let added = ok(
        &cli,
        &[
            "domain",
            "add",
            DOMAIN,
            "--sandbox",
            "sbx-1",
            "--port",
            "3000",
            "--path-prefix",
            "/app",
            "--verify",
            "dns",
        ],
    );
    assert!(
        added.contains(&format!("_sandgate-challenge.{DOMAIN}")),
        "{added}"
    );
    let token = txt_value(&added);
    let proxy = start_proxy(&config);
    let root = pebble.issuing_root().await;
    let logs = || {
        format!(
            "--- pebble ---\n{}\n--- proxy ---\n{}",
            pebble.log(),
            proxy.stderr()
        )
    };

    assert_eq!(get(ports.http_addr(), DOMAIN, "/x").await.status, 403);
    assert!(
        handshake(ports.tls_addr(), DOMAIN, &root).await.is_err(),
        "pending: no certificate"
    );
    assert_eq!(orders(&pebble), 0);
    let listed = ok(&cli, &["domain", "list"]);
    assert!(listed.contains("pending"), "{listed}");
    assert!(listed.contains(&format!("TXT \"{token}\"")), "{listed}");

    let (verified, _, refused) = sandgate(&cli, &["domain", "verify", DOMAIN]);
    assert!(!verified, "verified without its TXT record");
    assert!(
        refused.contains(&format!("_sandgate-challenge.{DOMAIN}")),
        "{refused}"
    );
    pebble.set_txt(DOMAIN, &token).await;
    ok(&cli, &["domain", "verify", DOMAIN]);
    within(
        Duration::from_secs(20),
        "the verified domain routes",
        || async { get(ports.http_addr(), DOMAIN, "/x").await.status == 200 },
    )
    .await;
    assert_eq!(
        runner.last().target,
        "/sandboxes/sbx-1/toolbox/proxy/3000/app/x"
    );
    let stream = handshake(ports.tls_addr(), DOMAIN, &root)
        .await
        .unwrap_or_else(|e| panic!("verified: {e}\n{}", logs()));
    let issued_at = Instant::now();
    assert_eq!(serial_and_names(&stream).1, vec![DOMAIN.to_string()]);
    assert_eq!(orders(&pebble), 1);
    let listed = ok(&cli, &["domain", "list"]);
    assert!(listed.contains("valid until"), "{listed}");

    ok(&cli, &["domain", "rm", DOMAIN]);
    within(
        Duration::from_secs(20),
        "the removed domain is unknown",
        || async { get(ports.http_addr(), DOMAIN, "/x").await.status == 404 },
    )
    .await;
    // Renewal is due 20 s after issuance; give the checks (every second) ten more.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(issued_at.elapsed())).await;
    assert_eq!(
        orders(&pebble),
        1,
        "a removed domain was renewed\n{}",
        logs()
    );
    assert_eq!(sample(&metrics(&proxy).await, ISSUED), 1.0);
}

// --- 5. faults ----------------------------------------------------------------------------

/// pebble rejects half of the valid nonces it gets (its own fault injection): the order is
/// retried through them and the certificate still issued on the first handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejected_nonces_are_retried_and_the_certificate_still_issued() {
    let stack = Stack::start(
        |p| {
            let mut options = PebbleOptions::new(p.http, p.tls);
            options.nonce_reject_percent = 50;
            options
        },
        "",
        &format!(
            "{}{}",
            sandboxes(),
            domain_entry(DOMAIN, "sbx-1", None, "verified")
        ),
    )
    .await;
    let started = Instant::now();
    let stream = stack
        .handshake(DOMAIN)
        .await
        .unwrap_or_else(|e| panic!("through rejected nonces: {e}\n{}", stack.logs()));
    println!("issued through rejected nonces in {:?}", started.elapsed());
    assert!(stack.pebble.log().contains("badNonce") || stack.pebble.log().contains("nonce"));
    assert_eq!(serial_and_names(&stream).1, vec![DOMAIN.to_string()]);
    assert_eq!(issued(&stack.pebble), 1);
    assert_eq!(h1_get(&mut h1(stream).await, DOMAIN, "/", &[]).await.0, 200);
}

/// pebble validates TLS-ALPN-01 on a port where nothing listens, so the order fails: the
/// handshake fails within `handshake_wait` and slack, the metrics count one failed order with
/// reason `challenge`, the log names the domain, and the next handshakes do not order again
/// before `retry_min`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_that_cannot_validate_fails_the_handshake_and_backs_off() {
    let ports = Ports::free();
    let nowhere = free_port();
    let stack = Stack::start_on(
        ports,
        PebbleOptions::new(ports.http, nowhere),
        "handshake_wait = \"10s\"\nretry_min = \"300s\"\nretry_max = \"3600s\"",
        &format!(
            "{}{}",
            sandboxes(),
            domain_entry(DOMAIN, "sbx-1", None, "verified")
        ),
    )
    .await;
    let started = Instant::now();
    let failed = stack.handshake(DOMAIN).await;
    let took = started.elapsed();
    println!("a failing order failed the handshake after {took:?}");
    assert!(
        failed.is_err(),
        "got a certificate pebble could not validate"
    );
    assert!(
        took < Duration::from_secs(10 + 15),
        "{took:?}\n{}",
        stack.logs()
    );
    within(HANG, "the order is counted as failed", || async {
        sample(&stack.metrics().await, FAILED) == 1.0
    })
    .await;
    let text = stack.metrics().await;
    assert_eq!(
        sample(
            &text,
            "sandgate_acme_order_failures_total{reason=\"challenge\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(sample(&text, ISSUED), 0.0);
    let orders_after_failure = stack.orders();
    assert_eq!(orders_after_failure, 1, "{}", stack.logs());
    let log = stack.proxy.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains(DOMAIN) && l.to_ascii_lowercase().contains("fail")),
        "the log says which order failed: {log}"
    );

    for attempt in 0..3 {
        let started = Instant::now();
        assert!(stack.handshake(DOMAIN).await.is_err(), "attempt {attempt}");
        println!(
            "handshake during backoff failed after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        stack.orders(),
        orders_after_failure,
        "no order before retry_min\n{}",
        stack.logs()
    );
    assert_eq!(sample(&stack.metrics().await, FAILED), 1.0);
}

const SECOND: &str = "second.customer.test";

/// `acme.orders_per_hour = 1` and two verified domains; the first has its certificate, the
/// second's handshake was refused.
async fn over_the_budget() -> Stack {
    let stack = Stack::start(
        |p| PebbleOptions::new(p.http, p.tls),
        "orders_per_hour = 1",
        &format!(
            "{}{}{}",
            sandboxes(),
            domain_entry(DOMAIN, "sbx-1", None, "verified"),
            domain_entry(SECOND, "sbx-1", None, "verified")
        ),
    )
    .await;
    assert_eq!(https_get(&stack, DOMAIN, DOMAIN, "/").await.0, 200);
    let started = Instant::now();
    assert!(stack.handshake(SECOND).await.is_err(), "over the budget");
    println!("refused over the budget after {:?}", started.elapsed());
    stack
}

/// Over `acme.orders_per_hour` no order is started (pebble sees one for two domains), the log
/// says why, and the certificate already held keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hourly_order_budget_holds_across_domains() {
    let stack = over_the_budget().await;
    assert_eq!(stack.orders(), 1, "{}", stack.logs());
    let log = stack.proxy.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains(SECOND) && l.contains("orders_per_hour")),
        "the log names the budget: {log}"
    );
    assert_eq!(https_get(&stack, DOMAIN, DOMAIN, "/again").await.0, 200);
}

/// An order refused by the hourly budget shows in the metrics (reason `budget`: this process's
/// limit, not the CA's `rate_limited`), so an operator sees names waiting for certificates
/// without reading logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_refused_by_the_budget_is_counted() {
    let stack = over_the_budget().await;
    let text = stack.metrics().await;
    let acme: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sandgate_acme_"))
        .collect();
    assert_eq!(
        sample(
            &text,
            "sandgate_acme_order_failures_total{reason=\"budget\"}"
        ),
        1.0,
        "{}",
        acme.join("\n")
    );
}

// --- 6. the tenant wall -------------------------------------------------------------------

/// Two tenants, each with a verified custom domain: the public `attacker` and the private
/// `victim` (token `tok-victim`).
const ATTACKER_DOMAIN: &str = "attacker.customer.test";
const VICTIM_DOMAIN: &str = "victim.customer.test";
const VICTIM_PREVIEW: &str = "3000-victim.preview.localhost";
const VICTIM_TOKEN: &[(&str, &str)] = &[("x-daytona-preview-token", "tok-victim")];

fn tenants() -> String {
    format!(
        "{ATTACKER_AND_VICTIM}{}{}",
        domain_entry(ATTACKER_DOMAIN, "attacker", None, "verified"),
        domain_entry(VICTIM_DOMAIN, "victim", None, "verified")
    )
}

fn sandbox_of(target: &str) -> &str {
    target
        .strip_prefix("/sandboxes/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
}

/// A custom domain routes to its own sandbox only, with that sandbox's authentication, whatever
/// the SNI: a connection opened with the attacker's name and certificate reaches the victim
/// only as the victim's Host with the victim's credentials; credentials and the proxy's cookies
/// never reach a sandbox; cookies set on a custom domain are host-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_custom_domain_never_opens_another_tenants_sandbox() {
    let stack = Stack::start(|p| PebbleOptions::new(p.http, p.tls), "", &tenants()).await;
    // (what, SNI (None: plain HTTP), Host, headers, the sandbox it may reach: None = refused)
    type Row = (
        &'static str,
        Option<&'static str>,
        &'static str,
        &'static [(&'static str, &'static str)],
        Option<&'static str>,
    );
    let rows: &[Row] = &[
        (
            "victim's domain, no credential",
            None,
            VICTIM_DOMAIN,
            &[],
            None,
        ),
        (
            "victim's domain, a wrong token",
            None,
            VICTIM_DOMAIN,
            &[("x-daytona-preview-token", "tok-attacker")],
            None,
        ),
        (
            "victim's domain, victim's token",
            None,
            VICTIM_DOMAIN,
            VICTIM_TOKEN,
            Some("victim"),
        ),
        (
            "attacker's domain",
            None,
            ATTACKER_DOMAIN,
            &[],
            Some("attacker"),
        ),
        (
            "attacker's domain carrying the victim's token",
            None,
            ATTACKER_DOMAIN,
            VICTIM_TOKEN,
            Some("attacker"),
        ),
        (
            "attacker's SNI, victim's domain as Host",
            Some(ATTACKER_DOMAIN),
            VICTIM_DOMAIN,
            &[],
            None,
        ),
        (
            "attacker's SNI, victim's preview host as Host",
            Some(ATTACKER_DOMAIN),
            VICTIM_PREVIEW,
            &[],
            None,
        ),
        (
            "attacker's SNI and Host",
            Some(ATTACKER_DOMAIN),
            ATTACKER_DOMAIN,
            &[],
            Some("attacker"),
        ),
        (
            "victim's SNI, attacker's domain as Host",
            Some(VICTIM_DOMAIN),
            ATTACKER_DOMAIN,
            &[],
            Some("attacker"),
        ),
    ];
    for (what, sni, host, headers, reaches) in rows {
        let before = stack.runner.seen().len();
        let (status, body) = match sni {
            None => {
                let reply = send(stack.ports.http_addr(), "GET", host, "/wall", headers, b"").await;
                (reply.status, reply.text())
            }
            Some(sni) => {
                let stream = stack
                    .handshake(sni)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: handshake {e}\n{}", stack.logs()));
                h1_get(&mut h1(stream).await, host, "/wall", headers).await
            }
        };
        let seen = stack.runner.seen();
        match reaches {
            None => {
                assert!(
                    (400..500).contains(&status),
                    "{what}: expected a refusal, got {status}: {body}"
                );
                assert_eq!(
                    seen.len(),
                    before,
                    "{what}: reached a sandbox: {:?}",
                    seen.last()
                );
            }
            Some(sandbox) => {
                assert_eq!(status, 200, "{what}: {body}");
                assert_eq!(seen.len(), before + 1, "{what}");
                let last = seen.last().unwrap();
                assert_eq!(
                    sandbox_of(&last.target),
                    *sandbox,
                    "{what}: {}",
                    last.target
                );
                assert_eq!(
                    last.header("x-daytona-preview-token"),
                    None,
                    "{what}: credential leaked"
                );
            }
        }
    }
    assert_eq!(
        stack.orders(),
        2,
        "one certificate per verified domain\n{}",
        stack.logs()
    );

    // The browser login on the victim's domain: a host-only cookie.
    let browser = [
        ("accept", "text/html,application/xhtml+xml"),
        ("sec-fetch-mode", "navigate"),
        ("user-agent", "Mozilla/5.0 (sandgate tests)"),
    ];
    let login = send(
        stack.ports.http_addr(),
        "GET",
        VICTIM_DOMAIN,
        "/?DAYTONA_SANDBOX_AUTH_KEY=tok-victim",
        &browser,
        b"",
    )
    .await;
    assert_eq!(login.status, 302, "{}", login.text());
    let cookies = set_cookies(&login);
    let sandbox_cookie = cookies
        .iter()
        .find(|c| c.contains("daytona-sandbox-auth-"))
        .unwrap_or_else(|| panic!("the login sets the sandbox cookie: {cookies:?}"));
    assert!(
        !sandbox_cookie.to_ascii_lowercase().contains("domain"),
        "{sandbox_cookie}"
    );
    let pair = sandbox_cookie.split(';').next().unwrap().to_string();

    // The victim's cookie opens the victim's domain, but sent to the attacker's domain it is
    // stripped before the attacker's sandbox sees the request.
    let with_cookie = [("cookie", pair.as_str())];
    let reply = send(
        stack.ports.http_addr(),
        "GET",
        VICTIM_DOMAIN,
        "/c",
        &with_cookie,
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let mixed = format!("app=1; {pair}");
    let reply = send(
        stack.ports.http_addr(),
        "GET",
        ATTACKER_DOMAIN,
        "/c",
        &[("cookie", mixed.as_str())],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    let last = stack.runner.last();
    assert_eq!(sandbox_of(&last.target), "attacker");
    assert_eq!(
        last.all("cookie"),
        vec!["app=1".to_string()],
        "the proxy's cookie reached a sandbox"
    );

    // The attacker's sandbox sets cookies for the parent domain and with the proxy's names.
    // (Set-Cookie sent by the sandbox, what the browser may store: None = dropped)
    let planted: &[(&str, Option<&str>)] = &[
        ("s=1; Domain=customer.test; Path=/", Some("s=1; Path=/")),
        ("s=2; Domain=.victim.customer.test", Some("s=2")),
        ("s=3; Domain=preview.localhost", Some("s=3")),
        ("daytona-sandbox-auth-victim=x; Domain=customer.test", None),
    ];
    for (sent, stored) in planted {
        let reply = send(
            stack.ports.http_addr(),
            "GET",
            ATTACKER_DOMAIN,
            "/plant",
            &[("x-reply-set-cookie", sent)],
            b"",
        )
        .await;
        assert_eq!(reply.status, 200);
        let got = set_cookies(&reply);
        match stored {
            Some(stored) => assert_eq!(got, vec![stored.to_string()], "{sent}"),
            None => assert!(got.is_empty(), "{sent}: {got:?}"),
        }
    }
}

/// Records a control plane wrote for the platform's own names (a preview host, the preview
/// domain itself, a name under a preview host) pointing at the attacker: the preview routing
/// still decides (the victim's own authentication), none reaches the attacker's sandbox, and
/// no certificate is ordered for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_for_the_platforms_own_names_are_ignored() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("acme.key");
    std::fs::write(&key, "3c".repeat(32)).unwrap();
    let ports = Ports::free();
    let pebble = Pebble::start(PebbleOptions::new(ports.http, ports.tls));
    let runner = Runner::start("k").await;
    let config = replica_config(&redis, ports, &pebble, &dir.path().join("proxy"), &key);
    let cli = dir.path().join("cli.toml");
    std::fs::write(&cli, &config).unwrap();
    put_runner(&cli, "runner-1", runner.addr, "k");
    put_public_sandbox(&cli, "attacker", "runner-1");
    ok(
        &cli,
        &[
            "registry",
            "put-sandbox",
            "--id",
            "victim",
            "--runner",
            "runner-1",
            "--auth-token",
            "tok-victim",
        ],
    );
    // A signed link to the victim's port 3000: its token is a sandbox-id-shaped string.
    let signed = ok(
        &cli,
        &[
            "preview-url",
            "sign",
            "--sandbox",
            "victim",
            "--port",
            "3000",
            "--ttl",
            "1h",
        ],
    );
    let token = signed
        .split("3000-")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .unwrap_or_else(|| panic!("a signed URL in {signed}"))
        .to_string();
    // The attack: a record naming the victim's signed token as its "sandbox" (Redis and the
    // control plane take any id). A domain's id is an id, never a credential.
    let by_token = "link.customer.test";
    let key = format!("sandgate:domain:{by_token}");
    redis.cli(&[
        "HSET", &key, "sandbox", &token, "port", "3000", "state", "verified",
    ]);
    let shadows = [
        VICTIM_PREVIEW,
        "preview.localhost",
        "x.3000-victim.preview.localhost",
    ];
    // The control: a record written the same way for a name of the tenant's own.
    for host in shadows.into_iter().chain([ATTACKER_DOMAIN]) {
        let key = format!("sandgate:domain:{host}");
        redis.cli(&[
            "HSET", &key, "sandbox", "attacker", "port", "3000", "state", "verified",
        ]);
        redis.cli(&["SADD", "sandgate:domains", host]);
    }
    let proxy = start_proxy(&config);
    let root = pebble.issuing_root().await;
    for host in shadows {
        let reply = get(ports.http_addr(), host, "/shadow").await;
        let reached: Vec<String> = runner.seen().iter().map(|s| s.target.clone()).collect();
        assert!(
            !reached.iter().any(|t| sandbox_of(t) == "attacker"),
            "{host} reached the attacker ({}): {reached:?}",
            reply.status
        );
        assert_ne!(reply.status, 200, "{host}: {}", reply.text());
    }
    assert_eq!(
        get(ports.http_addr(), VICTIM_PREVIEW, "/shadow")
            .await
            .status,
        401
    );
    assert_eq!(
        get(ports.http_addr(), ATTACKER_DOMAIN, "/own").await.status,
        200
    );
    assert_eq!(sandbox_of(&runner.last().target), "attacker");
    // The app's own paths, the proxy's toolbox prefix included, go to the domain's sandbox.
    let toolbox = get(ports.http_addr(), ATTACKER_DOMAIN, "/toolbox/victim/files").await;
    assert_eq!(toolbox.status, 200, "{}", toolbox.text());
    assert_eq!(
        runner.last().target,
        "/sandboxes/attacker/toolbox/proxy/3000/toolbox/victim/files"
    );
    let before = runner.seen().len();
    let linked = get(ports.http_addr(), by_token, "/link").await;
    assert_eq!(linked.status, 404, "{}", linked.text());
    assert_eq!(
        runner.seen().len(),
        before,
        "a record's token opened the victim"
    );
    let sni = "x.3000-victim.preview.localhost";
    assert!(
        handshake(ports.tls_addr(), sni, &root).await.is_err(),
        "{sni} got a certificate"
    );
    assert_eq!(
        orders(&pebble),
        0,
        "ordered for a platform name\n{}\n{}",
        pebble.log(),
        proxy.stderr()
    );
}

fn set_cookies(reply: &Reply) -> Vec<String> {
    reply
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

/// A flood of random SNIs and Hosts (no domain record): no order, every handshake refused,
/// every request 404, and the proxy's memory stays flat (printed; the bound is a generous
/// leak detector) with the domain cache held to `cache_entries` (64).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_unknown_names_orders_nothing_and_stays_bounded() {
    let stack = Stack::start(
        |p| PebbleOptions::new(p.http, p.tls),
        "",
        &format!(
            "{}{}",
            sandboxes(),
            domain_entry(DOMAIN, "sbx-1", None, "verified")
        ),
    )
    .await;
    // Warm up: the one verified domain gets its certificate.
    assert_eq!(https_get(&stack, DOMAIN, DOMAIN, "/").await.0, 200);
    let rss_before = stack.proxy.rss_kib();
    let tag = std::process::id();
    let started = Instant::now();
    for i in 0..300 {
        let sni = format!("flood-{tag}-{i}.customer.test");
        assert!(
            stack.handshake(&sni).await.is_err(),
            "{sni} got a certificate"
        );
    }
    let handshakes = started.elapsed();
    let started = Instant::now();
    for i in 0..2000 {
        let host = format!("host-{tag}-{i}.customer.test");
        let reply = get(stack.ports.http_addr(), &host, "/").await;
        assert_eq!(reply.status, 404, "{host}: {}", reply.text());
    }
    let requests = started.elapsed();
    let rss_after = stack.proxy.rss_kib();
    println!(
        "300 refused handshakes in {handshakes:?}, 2000 unknown hosts in {requests:?}; RSS {rss_before} -> {rss_after} KiB"
    );
    assert_eq!(
        stack.orders(),
        1,
        "only the verified domain ordered\n{}",
        stack.logs()
    );
    let text = stack.metrics().await;
    assert_eq!(sample(&text, ISSUED), 1.0);
    assert_eq!(sample(&text, FAILED), 0.0);
    let domain_metrics: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sandgate_domain_"))
        .collect();
    println!("{}", domain_metrics.join("\n"));
    let held = "sandgate_domain_cache_entries";
    assert!(text.contains(held), "no {held}:\n{text}");
    let entries = sample(&text, held);
    assert!(
        entries <= 64.0,
        "the domain cache grew past cache_entries (64): {entries}"
    );
    assert!(
        sample(&text, "sandgate_domain_lookups_total{result=\"unknown\"}") >= 2000.0,
        "every flooded name was looked up (and answered unknown)"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew by {} KiB over the flood",
        rss_after - rss_before
    );
    assert_eq!(https_get(&stack, DOMAIN, DOMAIN, "/still").await.0, 200);
}

/// The CLI on a config without Redis: `domain list` reads the static config's domains (with
/// the TXT record a dns-pending one needs).
#[tokio::test]
async fn domain_list_shows_the_static_configs_domains() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sandgate.toml");
    let token = "fedcba9876543210fedcba9876543210";
    std::fs::write(
        &config,
        format!(
            "[proxy]\ndomains = [\"preview.localhost\"]\n[domains]\nenabled = true\n\
             [[registry.runners]]\nid = \"runner-1\"\nurl = \"http://127.0.0.1:1\"\napi_key = \"k\"\n{}{}{}",
            sandboxes(),
            domain_entry(DOMAIN, "sbx-1", Some("/app"), "verified"),
            pending_entry("pending.customer.test", "sbx-1", token)
        ),
    )
    .unwrap();
    let (success, listed, stderr) = sandgate(&config, &["domain", "list"]);
    assert!(success, "{stderr}");
    let line = |host: &str| {
        listed
            .lines()
            .find(|l| l.contains(host))
            .unwrap_or_else(|| panic!("{host} not listed: {listed}"))
            .to_string()
    };
    let verified = line(DOMAIN);
    assert!(
        verified.contains("sbx-1") && verified.contains("3000") && verified.contains("/app"),
        "{verified}"
    );
    assert!(verified.contains("verified"), "{verified}");
    let pending = line("pending.customer.test");
    assert!(pending.contains("pending"), "{pending}");
    assert!(
        listed.contains("_sandgate-challenge.pending.customer.test"),
        "{listed}"
    );
    assert!(listed.contains(token), "{listed}");
    let (success, json, stderr) = sandgate(&config, &["domain", "list", "--json"]);
    assert!(success, "{stderr}");
    let value: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert!(value.to_string().contains(DOMAIN), "{value}");
}

// --- 9. the wildcard preview certificate by DNS-01 through the operator's hook --------------

const WILDCARD: &str = "*.apps.platform.test";
const RECORD: &str = "_acme-challenge.apps.platform.test";

/// A DNS hook that logs each call (`<action> <record> <value>`) to `<dir>/calls`, then runs
/// `body`.
fn logging_hook(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let hook = dir.join("dns-hook");
    let script = format!(
        "#!/bin/sh\necho \"$1 $2 $3\" >> {:?}\n{body}\n",
        dir.join("calls").display().to_string()
    );
    std::fs::write(&hook, script).unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    hook
}

/// Publishes and clears the record on pebble's mock DNS, as a real hook does at a provider.
fn publishing_hook_body(pebble: &Pebble) -> String {
    format!(
        "case \"$1\" in\n\
           set) body=\"{{\\\"host\\\":\\\"$2.\\\",\\\"value\\\":\\\"$3\\\"}}\"; path=set-txt ;;\n\
           clear) body=\"{{\\\"host\\\":\\\"$2.\\\"}}\"; path=clear-txt ;;\n\
         esac\n\
         exec curl -sf -X POST -d \"$body\" http://{}/$path",
        pebble.dns_management
    )
}

/// pebble (with `options`), the runner (a public `attacker`, a private `victim`) and a proxy
/// (with `env`) with no custom domains, previews under `apps.platform.test`, `acme.dns01` for
/// its wildcard through the hook `hook(pebble, dir)` makes, and a static certificate for
/// another name only. Returns the hook's folder and the proxy's config too.
async fn wildcard_stack(
    options: impl FnOnce(&mut PebbleOptions),
    hook: impl FnOnce(&Pebble, &Path) -> PathBuf,
    env: &[(&str, &str)],
) -> (Stack, PathBuf, String) {
    let ports = Ports::free();
    let dir = tempfile::tempdir().unwrap();
    let mut pebble_options = PebbleOptions::new(ports.http, ports.tls);
    options(&mut pebble_options);
    let pebble = Pebble::start(pebble_options);
    let hook = hook(&pebble, dir.path());
    let runner = Runner::start("runner-key").await;
    let config = wildcard_config(ports, &pebble, &runner, dir.path(), &hook, "");
    let proxy = Proxy::start_with_env(&config, env);
    let hook_dir = dir.path().to_path_buf();
    let stack = Stack::assemble(pebble, runner, proxy, ports, dir).await;
    (stack, hook_dir, config)
}

/// A proxy on `ports` with no custom domains, previews under `apps.platform.test` on
/// `runner` (a public `attacker`, a private `victim`), `acme.dns01` for its wildcard through
/// `hook` (plus `acme_extra` keys), files under `dir`, and a static certificate for another
/// name only.
fn wildcard_config(
    ports: Ports,
    pebble: &Pebble,
    runner: &Runner,
    dir: &Path,
    hook: &Path,
    acme_extra: &str,
) -> String {
    let (cert, key) = preview_cert(&dir.join("preview-cert"));
    let acme = pebble.acme_config(&format!(
        "dir = {:?}\nhandshake_wait = \"20s\"\norder_timeout = \"60s\"\nrenew_check_interval = \"1s\"\n{acme_extra}\n\
         [acme.dns01]\nnames = [\"{WILDCARD}\"]\nhook = {hook:?}\nhook_timeout = \"20s\"\n",
        dir.join("acme")
    ));
    format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [tls]\nenabled = true\nlisten = \"127.0.0.1:{}\"\nunknown_sni = \"refuse\"\n\
         [[tls.certs]]\ncert = {cert:?}\nkey = {key:?}\n{acme}\n{}",
        ports.http,
        ports.tls,
        runner
            .config(ATTACKER_AND_VICTIM)
            .replace("\"preview.localhost\"", "\"apps.platform.test\"")
    )
}

/// The first handshake for `host` on `addr` served with a certificate `root` signed (retried
/// up to the hang limit).
async fn first_served_handshake(addr: SocketAddr, root: &Path, host: &str) -> TlsStream<TcpStream> {
    let started = Instant::now();
    loop {
        match handshake(addr, host, root).await {
            Ok(stream) => {
                println!("{host}: served after {:?}", started.elapsed());
                return stream;
            }
            Err(e) if started.elapsed() < HANG => {
                println!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no certificate for {host} on {addr}: {e}"),
        }
    }
}

/// The logging hook's calls so far.
fn hook_calls(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("calls")).unwrap_or_default();
    text.lines().map(str::to_owned).collect()
}

/// With `[acme.dns01]` and no custom domains: the proxy orders the wildcard at start, its hook
/// publishes `_acme-challenge.<base>` (pebble validates DNS-01 against it) and clears it
/// after, and every preview host one label below serves with the one certificate. The
/// wildcard opens no door: the private sandbox still wants its token. Names it does not cover
/// (two labels below, the base itself, another domain) never order nor run the hook.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wildcard_preview_certificate_is_obtained_by_dns01_through_the_hook() {
    let (stack, calls, _) = wildcard_stack(
        |_| {},
        |pebble, dir| logging_hook(dir, &publishing_hook_body(pebble)),
        &[],
    )
    .await;
    let host = "3000-attacker.apps.platform.test";
    let stream = first_served_handshake(stack.ports.tls_addr(), &stack.root, host).await;
    let (serial, names) = serial_and_names(&stream);
    assert_eq!(names, vec![WILDCARD.to_string()]);
    let (status, body) = h1_get(&mut h1(stream).await, host, "/hi", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        stack.runner.last().target,
        "/sandboxes/attacker/toolbox/proxy/3000/hi"
    );

    let victim = "3000-victim.apps.platform.test";
    let stream = stack.handshake(victim).await.unwrap();
    assert_eq!(serial_and_names(&stream).0, serial, "one certificate");
    let mut sender = h1(stream).await;
    let (status, _) = h1_get(&mut sender, victim, "/", &[]).await;
    assert_eq!(status, 401, "the wildcard is no credential");
    let token = [("x-daytona-preview-token", "tok-victim")];
    assert_eq!(h1_get(&mut sender, victim, "/", &token).await.0, 200);

    let set = hook_calls(&calls);
    let value = set[0]
        .strip_prefix(&format!("set {RECORD} "))
        .unwrap_or_else(|| panic!("{set:?}"))
        .to_string();
    assert!(!value.is_empty());
    let cleared = [
        format!("set {RECORD} {value}"),
        format!("clear {RECORD} {value}"),
    ];
    within(Duration::from_secs(10), "the record cleared", || async {
        hook_calls(&calls) == cleared
    })
    .await;

    for sni in [
        "x.3000-attacker.apps.platform.test",
        "apps.platform.test",
        "3000-attacker.other.test",
    ] {
        // Refused by the proxy (an alert), not a certificate the client turned down.
        let refused = stack.handshake(sni).await.expect_err(sni).to_string();
        assert!(refused.contains("alert"), "{sni}: {refused}");
    }
    assert_eq!(stack.orders(), 1, "{}", stack.logs());
    assert_eq!(issued(&stack.pebble), 1);
    assert_eq!(hook_calls(&calls).len(), 2, "the hook ran for nothing else");
    let text = stack.metrics().await;
    assert_eq!(sample(&text, ISSUED), 1.0, "{text}");
    assert_eq!(sample(&text, "sandgate_acme_certificates"), 1.0);
}

/// A hook that fails (no credentials at the DNS provider): the order fails with the hook's
/// own words in the log and the `dns_hook` reason, the handshake fails cleanly, and the
/// pause after a failure holds (no second order while the proxy retries every second).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_dns_hook_fails_the_order_with_its_words_and_backs_off() {
    let (stack, calls, _) = wildcard_stack(
        |_| {},
        |_, dir| logging_hook(dir, "echo 'no credentials for platform.test' >&2; exit 3"),
        &[],
    )
    .await;
    let reason = "sandgate_acme_order_failures_total{reason=\"dns_hook\"}";
    let proxy = &stack.proxy;
    within(HANG, "a dns_hook failure", || async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sample(&metrics(proxy).await, reason) >= 1.0
    })
    .await;
    let log = stack.proxy.stderr();
    assert!(
        log.contains("no credentials for platform.test") && log.contains("exit status: 3"),
        "{log}"
    );
    assert!(stack
        .handshake("3000-attacker.apps.platform.test")
        .await
        .is_err());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = stack.metrics().await;
    assert_eq!(
        sample(&text, reason),
        1.0,
        "one failure, then the pause: {text}"
    );
    assert_eq!(sample(&text, FAILED), 1.0);
    assert_eq!(stack.orders(), 1, "{}", stack.logs());
    assert_eq!(issued(&stack.pebble), 0);
    // One `set` (it failed) and its `clear`: a record half-published is removed too.
    let calls = hook_calls(&calls);
    assert_eq!(calls.len(), 2, "{calls:?}");
    let value = calls[0].strip_prefix(&format!("set {RECORD} ")).unwrap();
    assert_eq!(calls[1], format!("clear {RECORD} {value}"));
    assert_eq!(
        get(stack.proxy.admin_addr(), "admin", "/health")
            .await
            .status,
        200
    );
}

/// The shipped RFC 2136 hook (`examples/acme-dns-hook/nsupdate.sh`) against BIND: it publishes
/// the record with a TSIG-signed update, pebble validates DNS-01 by asking BIND, the wildcard
/// serves, and the record is deleted from the zone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_shipped_nsupdate_hook_obtains_the_wildcard_through_bind() {
    let bind = Bind::start("apps.platform.test");
    let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/acme-dns-hook/nsupdate.sh");
    let port = bind.addr.port().to_string();
    let key = bind.key_file.display().to_string();
    let env = [
        ("SANDGATE_DNS_SERVER", "127.0.0.1"),
        ("SANDGATE_DNS_PORT", port.as_str()),
        ("SANDGATE_DNS_KEY", key.as_str()),
    ];
    let (stack, _, _) = wildcard_stack(|o| o.dns_server = Some(bind.addr), |_, _| hook, &env).await;
    let host = "3000-attacker.apps.platform.test";
    let stream = first_served_handshake(stack.ports.tls_addr(), &stack.root, host).await;
    assert_eq!(serial_and_names(&stream).1, vec![WILDCARD.to_string()]);
    assert_eq!(h1_get(&mut h1(stream).await, host, "/", &[]).await.0, 200);
    let log = bind.log();
    assert!(
        log.contains(&format!("adding an RR at '{RECORD}' TXT")),
        "{log}"
    );
    within(Duration::from_secs(10), "the record deleted", || async {
        bind.dig("TXT", RECORD).trim().is_empty()
    })
    .await;
    assert_eq!(stack.orders(), 1, "{}", stack.logs());
}

/// A restart takes the stored wildcard (no order, no hook run); at 2/3 of its lifetime (30 s
/// here) it is renewed through the hook (a new value published and cleared) and new handshakes
/// get the new certificate without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wildcard_is_reused_after_a_restart_and_renewed_through_the_hook() {
    let (mut stack, calls, config) = wildcard_stack(
        |o| o.validity = Some(Duration::from_secs(30)),
        |pebble, dir| logging_hook(dir, &publishing_hook_body(pebble)),
        &[],
    )
    .await;
    let host = "3000-attacker.apps.platform.test";
    let (first, _) =
        serial_and_names(&first_served_handshake(stack.ports.tls_addr(), &stack.root, host).await);
    assert_eq!(stack.orders(), 1);

    stack.proxy.signal("TERM");
    assert!(stack.proxy.wait_exit(Duration::from_secs(20)).is_some());
    stack.proxy = Proxy::start(&config);
    let again = stack.handshake(host).await.expect("the stored wildcard");
    assert_eq!(serial_and_names(&again).0, first, "taken from storage");
    assert_eq!(stack.orders(), 1, "no order after the restart");

    let started = Instant::now();
    let renewed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no renewal within 60 s of a 30 s certificate\n{}",
            stack.logs()
        );
        let stream = stack
            .handshake(host)
            .await
            .unwrap_or_else(|e| panic!("a handshake during renewal failed: {e}\n{}", stack.logs()));
        let (serial, names) = serial_and_names(&stream);
        if serial != first {
            assert_eq!(names, vec![WILDCARD.to_string()]);
            break serial;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    println!("renewed after {:?}: {renewed}", started.elapsed());
    assert_eq!(stack.orders(), 2, "{}", stack.logs());
    within(
        Duration::from_secs(10),
        "the renewal's record cleared",
        || async { hook_calls(&calls).len() == 4 },
    )
    .await;
    let calls = hook_calls(&calls);
    let actions: Vec<&str> = calls.iter().map(|c| &c[..c.find(' ').unwrap()]).collect();
    assert_eq!(actions, ["set", "clear", "set", "clear"], "{calls:?}");
    assert_ne!(calls[0], calls[2], "a new challenge value");
}

/// Two replicas sharing Redis storage: both want the wildcard at start, one orders (the hook
/// runs once), the other takes it from Redis, and both serve the one certificate; its key is
/// stored sealed under `acme:cert:*.<base>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_redis_order_the_wildcard_once_and_both_serve_it() {
    let (redis, dir, key, (one, two), pebble) = replicas();
    let hook = logging_hook(dir.path(), &publishing_hook_body(&pebble));
    let runner = Runner::start("runner-key").await;
    let storage = format!("storage = \"redis\"\nencryption_key_file = {key:?}");
    let replica = |ports: Ports, name: &str| {
        let config = wildcard_config(
            ports,
            &pebble,
            &runner,
            &dir.path().join(name),
            &hook,
            &storage,
        );
        Proxy::start(&format!("{config}[redis]\nurl = \"{}\"\n", redis.url()))
    };
    let _replicas = [replica(one, "one"), replica(two, "two")];
    let root = pebble.issuing_root().await;
    let host = "3000-attacker.apps.platform.test";
    let mut serials = Vec::new();
    for ports in [one, two] {
        let stream = first_served_handshake(ports.tls_addr(), &root, host).await;
        serials.push(serial_and_names(&stream).0);
    }
    assert_eq!(serials[0], serials[1], "one certificate for both");
    assert_eq!(orders(&pebble), 1, "{}", pebble.log());
    within(Duration::from_secs(10), "set and clear", || async {
        hook_calls(dir.path()).len() == 2
    })
    .await;
    let stored = redis.cli(&["KEYS", "*acme:cert:*"]);
    assert!(
        stored.contains("acme:cert:*.apps.platform.test"),
        "{stored}"
    );
    let value = redis.cli(&["GET", stored.trim()]);
    assert!(!value.contains("PRIVATE KEY"), "sealed at rest");
}
