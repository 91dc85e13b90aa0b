//! The ACME engine against a real CA: Debian's `pebble` with its mock DNS (every name resolves
//! to 127.0.0.1), so pebble validates challenges against the tiny TLS-ALPN-01 / HTTP-01
//! responders these tests run on the ports it was told. Library level: `Acme` with a fake
//! `NameAuthority`; the full proxy's use of it is tested in tests/custom_domains.rs.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::server::{Acceptor, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use sandgate::base::BoxFuture;
use sandgate::config::{AcmeConfig, CertStorageKind, ChallengeKind, RedisConfig};
use sandgate::registry::redis::RedisHandle;
use sandgate::tls::acme::{stored_certificate, Acme, AcmeError, NameAuthority, ACME_TLS_ALPN};
use support::pebble::{Pebble, PebbleOptions};
use support::redis::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::LazyConfigAcceptor;

/// Allows exactly the names it was given.
struct Allow(HashSet<String>);

impl NameAuthority for Allow {
    fn may_order<'a>(&'a self, name: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.0.contains(name) })
    }
}

fn allow(names: &[&str]) -> Arc<dyn NameAuthority> {
    Arc::new(Allow(names.iter().map(|n| n.to_string()).collect()))
}

/// Listeners for pebble's challenges, bound before pebble starts (it must know the ports).
struct Ports {
    http: TcpListener,
    tls: TcpListener,
}

impl Ports {
    async fn bind() -> Ports {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        Ports {
            http: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tls: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn pebble_options(&self) -> PebbleOptions {
        PebbleOptions::new(
            self.http.local_addr().unwrap().port(),
            self.tls.local_addr().unwrap().port(),
        )
    }
}

fn config(pebble: &Pebble, dir: &tempfile::TempDir) -> AcmeConfig {
    AcmeConfig {
        enabled: true,
        directory_url: pebble.directory_url.clone(),
        ca_root: Some(pebble.https_ca.clone()),
        dir: dir.path().join("acme"),
        handshake_wait: Duration::from_secs(60),
        order_timeout: Duration::from_secs(60),
        renew_check_interval: Duration::from_millis(500),
        ..AcmeConfig::default()
    }
}

/// Answers TLS-ALPN-01 from any of `acmes` (`alpn_challenge_config`); any other handshake gets
/// the name's certificate through `obtain` (as the proxy's listener does) and a tiny HTTP/1.1
/// `ok` per request.
fn serve_tls(listener: TcpListener, acmes: Vec<Arc<Acme>>) -> SocketAddr {
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acmes = acmes.clone();
            tokio::spawn(async move {
                let Ok(start) = LazyConfigAcceptor::new(Acceptor::default(), stream).await else {
                    return;
                };
                let hello = start.client_hello();
                let Some(sni) = hello.server_name().map(str::to_owned) else {
                    return;
                };
                let challenge = hello
                    .alpn()
                    .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
                let config = if challenge {
                    acmes.iter().find_map(|a| a.alpn_challenge_config(&sni))
                } else {
                    acmes[0].obtain(&sni).await.ok().map(server_config)
                };
                let Some(config) = config else {
                    return;
                };
                let Ok(mut tls) = start.into_stream(config).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0
                        || tls
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn server_config(key: Arc<CertifiedKey>) -> Arc<rustls::ServerConfig> {
    let resolver: Arc<dyn ResolvesServerCert> = Arc::new(SingleCertAndKey::from(key));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Answers `GET /.well-known/acme-challenge/<token>` from any of `acmes` (as the plain listener does).
fn serve_http(listener: TcpListener, acmes: Vec<Arc<Acme>>) {
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let acmes = acmes.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let Ok(n) = stream.read(&mut buf).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&buf[..n]);
                let token = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|path| path.strip_prefix("/.well-known/acme-challenge/"))
                    .and_then(|token| acmes.iter().find_map(|a| a.http_challenge(token)));
                let reply = match token {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .into()
                    }
                };
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
}

/// A request over a client TLS connection that trusts only `root`; the server's leaf.
async fn fetch_over_tls(addr: SocketAddr, sni: &str, root: &Path) -> Vec<u8> {
    let mut tls = support::tls_client::connect(addr, sni, &[root], b"http/1.1")
        .await
        .unwrap_or_else(|e| panic!("TLS to {sni}: {e}"));
    assert_eq!(request(&mut tls).await, "ok");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn request<S: AsyncReadExt + AsyncWriteExt + Unpin>(tls: &mut S) -> String {
    tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tls.read(&mut buf).await.unwrap();
    support::body_of(&String::from_utf8_lossy(&buf[..n])).to_string()
}

fn leaf(key: &CertifiedKey) -> Vec<u8> {
    key.cert[0].to_vec()
}

/// Orders pebble received (its log line per new order).
fn pebble_orders(pebble: &Pebble) -> usize {
    pebble.log().matches("POST /order-plz").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_handshake_orders_and_then_serves_from_memory() {
    let ports = Ports::bind().await;
    let pebble = Pebble::start(ports.pebble_options());
    let dir = tempfile::tempdir().unwrap();
    let acme = Acme::new(&config(&pebble, &dir), None, allow(&["shop.example.com"])).unwrap();
    let addr = serve_tls(ports.tls, vec![acme.clone()]);
    let root = pebble.issuing_root().await;

    assert!(acme.held("shop.example.com").is_none());
    let started = Instant::now();
    let served = fetch_over_tls(addr, "shop.example.com", &root).await;
    println!(
        "first handshake + request (order at pebble): {:?}",
        started.elapsed()
    );
    let held = acme
        .held("SHOP.example.com.")
        .expect("held after the order");
    assert_eq!(
        served,
        leaf(&held),
        "the handshake served the ordered certificate"
    );
    let started = Instant::now();
    let again = fetch_over_tls(addr, "shop.example.com", &root).await;
    println!("later handshake + request (held): {:?}", started.elapsed());
    assert_eq!(again, served);
    assert_eq!(acme.orders_started(), 1, "{}", pebble.log());
    assert_eq!(pebble_orders(&pebble), 1, "{}", pebble.log());
    assert_eq!(
        acme.open_challenges(),
        0,
        "challenges closed after the order"
    );
    let stored = std::fs::read_to_string(dir.path().join("acme/shop.example.com.pem")).unwrap();
    assert!(
        stored.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{stored}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn names_the_authority_refuses_never_order() {
    let ports = Ports::bind().await;
    let pebble = Pebble::start(ports.pebble_options());
    let dir = tempfile::tempdir().unwrap();
    let acme = Acme::new(&config(&pebble, &dir), None, allow(&["shop.example.com"])).unwrap();
    let addr = serve_tls(ports.tls, vec![acme.clone()]);
    let root = pebble.issuing_root().await;
    // (name asked, as the handshake's SNI)
    let refused = [
        "other.example.com",
        "3000-sandbox1.preview.example.com",
        "shop.example.com.evil.com",
        "xn--shp-qla.example.com",
    ];
    for name in refused {
        let result = acme.obtain(name).await;
        assert!(
            matches!(&result, Err(AcmeError::NotAllowed(n)) if n == name),
            "{name}: {result:?}"
        );
        let handshake =
            support::tls_client::connect(addr, name, &[root.as_path()], b"http/1.1").await;
        assert!(handshake.is_err(), "{name}: no certificate served");
    }
    assert_eq!(acme.orders_started(), 0);
    assert_eq!(pebble_orders(&pebble), 0, "{}", pebble.log());
    assert!(!dir.path().join("acme").exists(), "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_handshakes_share_one_order() {
    let ports = Ports::bind().await;
    let pebble = Pebble::start(ports.pebble_options());
    let dir = tempfile::tempdir().unwrap();
    let acme = Acme::new(&config(&pebble, &dir), None, allow(&["app.example.com"])).unwrap();
    serve_tls(ports.tls, vec![acme.clone()]);
    let obtains: Vec<_> = (0..16)
        .map(|_| {
            let acme = acme.clone();
            tokio::spawn(async move { acme.obtain("app.example.com").await })
        })
        .collect();
    let mut leaves = HashSet::new();
    for obtain in obtains {
        let key = obtain.await.unwrap().expect("certificate");
        leaves.insert(leaf(&key));
    }
    assert_eq!(leaves.len(), 1, "every caller got the same certificate");
    assert_eq!(acme.orders_started(), 1);
    assert_eq!(pebble_orders(&pebble), 1, "{}", pebble.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http01_issues_and_a_restart_reuses_the_stored_certificate_and_account() {
    let ports = Ports::bind().await;
    let pebble = Pebble::start(ports.pebble_options());
    let dir = tempfile::tempdir().unwrap();
    let config = AcmeConfig {
        challenge: ChallengeKind::Http01,
        ..config(&pebble, &dir)
    };
    let names = ["web.example.com", "two.example.com"];
    let first = Acme::new(&config, None, allow(&names)).unwrap();
    let restarted = Acme::new(&config, None, allow(&names)).unwrap();
    serve_http(ports.http, vec![first.clone(), restarted.clone()]);
    let key = first
        .obtain("web.example.com")
        .await
        .expect("http-01 order");
    assert_eq!(first.orders_started(), 1);

    let reloaded = restarted.obtain("web.example.com").await.unwrap();
    assert_eq!(leaf(&reloaded), leaf(&key), "read from storage");
    assert_eq!(restarted.orders_started(), 0);
    let stored = stored_certificate(&config, None, "web.example.com")
        .await
        .unwrap()
        .expect("domain list sees it");
    assert!(stored.not_after > std::time::SystemTime::now());

    // A new name through the restarted process: ordered with the stored account.
    restarted
        .obtain("two.example.com")
        .await
        .expect("second order");
    assert_eq!(restarted.orders_started(), 1);
    let accounts: Vec<_> = std::fs::read_dir(dir.path().join("acme"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|name| name.starts_with("account-"))
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(
        pebble.log().matches("POST /sign-me-up").count(),
        1,
        "one account at the CA: {}",
        pebble.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewal_replaces_the_certificate_and_open_connections_keep_working() {
    let ports = Ports::bind().await;
    let mut options = ports.pebble_options();
    options.validity = Some(Duration::from_secs(20));
    let pebble = Pebble::start(options);
    let dir = tempfile::tempdir().unwrap();
    let acme = Acme::new(&config(&pebble, &dir), None, allow(&["live.example.com"])).unwrap();
    let addr = serve_tls(ports.tls, vec![acme.clone()]);
    let root = pebble.issuing_root().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(acme.clone().maintain(shutdown.clone()));

    let mut open =
        support::tls_client::connect(addr, "live.example.com", &[root.as_path()], b"http/1.1")
            .await
            .expect("first handshake orders");
    assert_eq!(request(&mut open).await, "ok");
    let first = acme.held_validity("live.example.com").unwrap();
    let lifetime = first.not_after.duration_since(first.not_before).unwrap();
    println!("issued lifetime: {lifetime:?}");

    let renewed = support::within(Duration::from_secs(90), "renewal", || async {
        acme.held_validity("live.example.com")
            .is_some_and(|v| v.not_after > first.not_after)
    })
    .await;
    println!("renewed after {renewed:?}");
    assert!(acme.orders_started() >= 2);
    assert_eq!(
        request(&mut open).await,
        "ok",
        "the open connection survives"
    );
    let fresh = fetch_over_tls(addr, "live.example.com", &root).await;
    assert_eq!(fresh, leaf(&acme.held("live.example.com").unwrap()));
    shutdown.cancel();
}

fn redis_config(redis: &RedisServer) -> RedisConfig {
    RedisConfig {
        url: format!("redis://127.0.0.1:{}", redis.port),
        key_prefix: "t:".into(),
        ..RedisConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_redis_make_one_order_and_both_serve_it() {
    let ports = Ports::bind().await;
    let pebble = Pebble::start(ports.pebble_options());
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("acme.key");
    std::fs::write(&key_file, format!("{}\n", "5a".repeat(32))).unwrap();
    let config = AcmeConfig {
        storage: CertStorageKind::Redis,
        encryption_key_file: Some(key_file.clone()),
        ..config(&pebble, &dir)
    };
    let handle = || Some(Arc::new(RedisHandle::new(&redis_config(&redis)).unwrap()));
    let names = ["team.example.com"];
    let replicas = [
        Acme::new(&config, handle(), allow(&names)).unwrap(),
        Acme::new(&config, handle(), allow(&names)).unwrap(),
    ];
    serve_tls(ports.tls, replicas.to_vec());
    let (a, b) = tokio::join!(
        replicas[0].obtain("team.example.com"),
        replicas[1].obtain("team.example.com")
    );
    let (a, b) = (a.expect("replica a"), b.expect("replica b"));
    assert_eq!(leaf(&a), leaf(&b), "both serve the one certificate");
    let orders = replicas[0].orders_started() + replicas[1].orders_started();
    assert_eq!(orders, 1, "{}", pebble.log());
    assert_eq!(pebble_orders(&pebble), 1);

    // At rest: sealed, and bound to its key name.
    let mut conn = redis::Client::open(redis_config(&redis).url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let value: Vec<u8> = redis::cmd("GET")
        .arg("t:acme:cert:team.example.com")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!value.windows(5).any(|w| w == b"BEGIN"), "not plaintext");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("t:acme:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.iter().any(|k| k.starts_with("t:acme:account:")),
        "{keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("t:acme:lock:")),
        "lock released: {keys:?}"
    );
    let _: () = redis::cmd("SET")
        .arg("t:acme:cert:evil.example.com")
        .arg(&value)
        .query_async(&mut conn)
        .await
        .unwrap();
    let moved = stored_certificate(&config, handle(), "evil.example.com").await;
    assert!(
        matches!(&moved, Err(AcmeError::Storage(e)) if e.contains("does not decrypt")),
        "{moved:?}"
    );
    let own = stored_certificate(&config, handle(), "team.example.com").await;
    assert!(matches!(own, Ok(Some(_))), "{own:?}");

    // A third replica starting later takes it from Redis without ordering.
    let late = Acme::new(&config, handle(), allow(&names)).unwrap();
    let c = late.obtain("team.example.com").await.unwrap();
    assert_eq!(leaf(&c), leaf(&a));
    assert_eq!(late.orders_started(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rejected_nonces_are_retried_until_issued() {
    let ports = Ports::bind().await;
    let mut options = ports.pebble_options();
    options.nonce_reject_percent = 50;
    let pebble = Pebble::start(options);
    let dir = tempfile::tempdir().unwrap();
    let names = ["n1.example.com", "n2.example.com", "n3.example.com"];
    let acme = Acme::new(&config(&pebble, &dir), None, allow(&names)).unwrap();
    serve_tls(ports.tls, vec![acme.clone()]);
    for name in names {
        let result = acme.obtain(name).await;
        assert!(result.is_ok(), "{name}: {result:?}\n{}", pebble.log());
    }
    assert!(
        pebble.log().contains("reject 50% of good nonces"),
        "pebble's fault injection is on: {}",
        pebble.log()
    );
    assert_eq!(
        acme.orders_started(),
        3,
        "each name ordered once, retried inside"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_order_backs_off_with_its_reason() {
    let ports = Ports::bind().await;
    let pebble = Pebble::start(ports.pebble_options());
    drop(ports.tls); // nothing answers TLS-ALPN-01: validation fails
    let dir = tempfile::tempdir().unwrap();
    let config = AcmeConfig {
        retry_min: Duration::from_secs(3),
        retry_max: Duration::from_secs(6),
        ..config(&pebble, &dir)
    };
    let failures_before = failures("challenge");
    let acme = Acme::new(&config, None, allow(&["down.example.com"])).unwrap();
    let first = acme.obtain("down.example.com").await;
    let failed_at = Instant::now();
    match &first {
        Err(AcmeError::Order { reason, .. }) => {
            assert!(reason.starts_with("challenge:"), "{reason}")
        }
        other => panic!("expected a challenge failure, got {other:?}"),
    }
    assert!(failures("challenge") > failures_before, "counted by reason");
    let second = acme.obtain("down.example.com").await;
    assert!(
        matches!(&second, Err(AcmeError::Backoff { reason, .. }) if reason.starts_with("challenge:")),
        "{second:?}"
    );
    assert_eq!(acme.orders_started(), 1, "no order during the pause");
    assert_eq!(acme.open_challenges(), 0);

    tokio::time::sleep(Duration::from_secs(3).saturating_sub(failed_at.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = acme.obtain("down.example.com").await;
    assert!(matches!(third, Err(AcmeError::Order { .. })), "{third:?}");
    assert_eq!(
        acme.orders_started(),
        2,
        "one more order once the pause ended"
    );
    let fourth = acme.obtain("down.example.com").await;
    assert!(
        matches!(&fourth, Err(AcmeError::Backoff { retry_in_secs, .. }) if *retry_in_secs > 3),
        "the pause doubled: {fourth:?}"
    );
}

fn failures(reason: &str) -> f64 {
    let text = sandgate::metrics::metrics().render();
    let series = format!("sandgate_acme_order_failures_total{{reason=\"{reason}\"}}");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handshake_gives_up_after_handshake_wait_while_the_order_goes_on() {
    let ports = Ports::bind().await;
    let pebble = Pebble::start(ports.pebble_options());
    let dir = tempfile::tempdir().unwrap();
    let config = AcmeConfig {
        handshake_wait: Duration::from_millis(1),
        ..config(&pebble, &dir)
    };
    let acme = Acme::new(&config, None, allow(&["slow.example.com"])).unwrap();
    serve_tls(ports.tls, vec![acme.clone()]);
    let started = Instant::now();
    let first = acme.obtain("slow.example.com").await;
    assert!(
        matches!(&first, Err(AcmeError::Pending(_))),
        "{first:?} after {:?}",
        started.elapsed()
    );
    support::within(
        Duration::from_secs(60),
        "the order finishes anyway",
        || async { acme.held("slow.example.com").is_some() },
    )
    .await;
    assert_eq!(acme.orders_started(), 1);
}

/// Allows a name at the handshake, then refuses it: the domain was removed (or lost its
/// verification) while the handshake waited.
struct RevokedAfterFirstAsk(std::sync::atomic::AtomicU32);

impl NameAuthority for RevokedAfterFirstAsk {
    fn may_order<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, bool> {
        let asked = self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move { asked == 0 })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_authority_is_asked_again_right_before_ordering() {
    let ports = Ports::bind().await;
    let pebble = Pebble::start(ports.pebble_options());
    let dir = tempfile::tempdir().unwrap();
    let authority = Arc::new(RevokedAfterFirstAsk(Default::default()));
    let acme = Acme::new(&config(&pebble, &dir), None, authority.clone()).unwrap();
    serve_tls(ports.tls, vec![acme.clone()]);
    let result = acme.obtain("gone.example.com").await;
    assert!(
        matches!(result, Err(AcmeError::NotAllowed(_))),
        "{result:?}"
    );
    assert_eq!(authority.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(acme.orders_started(), 0);
    assert_eq!(pebble_orders(&pebble), 0, "{}", pebble.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hourly_budget_stops_orders_for_all_names() {
    let ports = Ports::bind().await;
    let pebble = Pebble::start(ports.pebble_options());
    let dir = tempfile::tempdir().unwrap();
    let config = AcmeConfig {
        orders_per_hour: 1,
        ..config(&pebble, &dir)
    };
    let names = ["b1.example.com", "b2.example.com"];
    let acme = Acme::new(&config, None, allow(&names)).unwrap();
    serve_tls(ports.tls, vec![acme.clone()]);
    acme.obtain("b1.example.com")
        .await
        .expect("within the budget");
    let second = acme.obtain("b2.example.com").await;
    assert!(matches!(second, Err(AcmeError::RateLimited)), "{second:?}");
    assert_eq!(acme.orders_started(), 1);
    assert_eq!(pebble_orders(&pebble), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn processes_sharing_a_directory_make_one_order() {
    let ports = Ports::bind().await;
    let pebble = Pebble::start(ports.pebble_options());
    let dir = tempfile::tempdir().unwrap();
    let names = ["shared.example.com"];
    let replicas = [
        Acme::new(&config(&pebble, &dir), None, allow(&names)).unwrap(),
        Acme::new(&config(&pebble, &dir), None, allow(&names)).unwrap(),
    ];
    serve_tls(ports.tls, replicas.to_vec());
    let (a, b) = tokio::join!(
        replicas[0].obtain("shared.example.com"),
        replicas[1].obtain("shared.example.com")
    );
    assert_eq!(leaf(&a.unwrap()), leaf(&b.unwrap()));
    assert_eq!(
        replicas[0].orders_started() + replicas[1].orders_started(),
        1
    );
    assert!(
        !dir.path().join("acme/shared.example.com.lock").exists(),
        "lock released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_renew_once_and_both_take_the_renewal() {
    let ports = Ports::bind().await;
    let mut options = ports.pebble_options();
    options.validity = Some(Duration::from_secs(20));
    let pebble = Pebble::start(options);
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("acme.key");
    std::fs::write(&key_file, "c3".repeat(32)).unwrap();
    let config = AcmeConfig {
        storage: CertStorageKind::Redis,
        encryption_key_file: Some(key_file),
        ..config(&pebble, &dir)
    };
    let handle = || Some(Arc::new(RedisHandle::new(&redis_config(&redis)).unwrap()));
    let names = ["renew.example.com"];
    let replicas = [
        Acme::new(&config, handle(), allow(&names)).unwrap(),
        Acme::new(&config, handle(), allow(&names)).unwrap(),
    ];
    serve_tls(ports.tls, replicas.to_vec());
    let first = replicas[0].obtain("renew.example.com").await.unwrap();
    let taken = replicas[1].obtain("renew.example.com").await.unwrap();
    assert_eq!(leaf(&first), leaf(&taken));
    let shutdown = tokio_util::sync::CancellationToken::new();
    for replica in &replicas {
        tokio::spawn(replica.clone().maintain(shutdown.clone()));
    }
    let old_not_after = replicas[0]
        .held_validity("renew.example.com")
        .unwrap()
        .not_after;
    support::within(Duration::from_secs(90), "both renewed", || async {
        replicas.iter().all(|r| {
            r.held_validity("renew.example.com")
                .is_some_and(|v| v.not_after > old_not_after)
        })
    })
    .await;
    let (a, b) = (
        replicas[0].held("renew.example.com").unwrap(),
        replicas[1].held("renew.example.com").unwrap(),
    );
    assert_eq!(leaf(&a), leaf(&b), "one renewal, taken by both");
    let orders = replicas[0].orders_started() + replicas[1].orders_started();
    assert_eq!(orders, 2, "the first order and one renewal");
    shutdown.cancel();
}
