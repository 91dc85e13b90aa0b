//! The operations surface: Prometheus metrics that move with traffic, the admin listener,
//! slowloris and per-IP limits, access logs free of credentials, request ids.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::runner::{sandboxes, Runner};
use support::{get, sample, send, Proxy};

async fn scrape(admin: std::net::SocketAddr) -> String {
    let reply = get(admin, "admin", "/metrics").await;
    assert_eq!(reply.status, 200);
    reply.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        sandboxes()
    )));
    let admin = proxy.admin_addr();
    let ok = "sandgate_requests_total{kind=\"preview\",class=\"2xx\"}";
    let not_found = "sandgate_requests_total{kind=\"preview\",class=\"4xx\"}";
    let denied = "sandgate_auth_failures_total{code=\"AUTH_REQUIRED\"}";
    let before = scrape(admin).await;
    for _ in 0..3 {
        assert_eq!(
            get(proxy.addr, "3000-sbx-1.preview.localhost", "/")
                .await
                .status,
            200
        );
    }
    assert_eq!(
        get(proxy.addr, "3000-nope.preview.localhost", "/")
            .await
            .status,
        404
    );
    assert_eq!(
        get(proxy.addr, "3000-sbx-priv.preview.localhost", "/")
            .await
            .status,
        401
    );
    let after = scrape(admin).await;
    assert_eq!(sample(&after, ok) - sample(&before, ok), 3.0, "{after}");
    assert_eq!(sample(&after, not_found) - sample(&before, not_found), 2.0);
    assert_eq!(sample(&after, denied) - sample(&before, denied), 1.0);
    assert!(sample(&after, "sandgate_route_cache_total{reason=\"hit\"}") >= 2.0);
    assert!(sample(&after, "sandgate_request_duration_seconds_count") >= 5.0);
    assert!(after.contains("sandgate_connections_active"));

    assert_eq!(get(admin, "admin", "/health").await.status, 200);
    assert_eq!(get(admin, "admin", "/ready").await.status, 200);
    assert_eq!(get(admin, "admin", "/nope").await.status, 404);
}

/// Sends a request head one byte every 200 ms until the server answers or closes (or 10 s
/// pass); returns how long after `since` that was. The stream needs a short read timeout.
fn dribble_a_head(stream: &mut TcpStream, since: Instant) -> Duration {
    let head =
        b"GET / HTTP/1.1\r\nHost: 3000-sbx-1.preview.localhost\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n";
    for byte in head.iter().cycle() {
        let mut buf = [0u8; 256];
        // Anything read (an error response) or a close ends it; a read timeout means still open.
        if stream.read(&mut buf).is_ok() {
            break;
        }
        if since.elapsed() > Duration::from_secs(10) || stream.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    since.elapsed()
}

/// `header_read_timeout = "1s"`: neither cut early nor left open.
fn assert_cut_after_one_second(held: Duration) {
    assert!(
        held >= Duration::from_millis(800),
        "cut too early: {held:?}"
    );
    assert!(
        held < Duration::from_secs(5),
        "slow client held the connection for {held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_the_header_timeout_while_others_are_served() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"1s\"\n",
        sandboxes()
    )));
    let addr = proxy.addr;
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        dribble_a_head(&mut stream, Instant::now())
    });
    // A normal client is served meanwhile.
    for _ in 0..5 {
        assert_eq!(
            get(proxy.addr, "3000-sbx-1.preview.localhost", "/")
                .await
                .status,
            200
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert_cut_after_one_second(held);
}

/// The header timer is armed again for each head of a keep-alive connection (with the sleep an
/// earlier head used): a client that goes quiet or dribbles after its first answer is cut off
/// like one that dribbles its first head, `header_read_timeout` after that answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_after_a_first_request_is_cut_too() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"1s\"\n",
        sandboxes()
    )));
    // Earlier requests leave sleeps to reuse.
    for _ in 0..3 {
        assert_eq!(
            get(proxy.addr, "3000-sbx-1.preview.localhost", "/")
                .await
                .status,
            200
        );
    }
    let addr = proxy.addr;
    let slow = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 3000-sbx-1.preview.localhost\r\n\r\n")
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut first = [0u8; 4096];
        let n = stream.read(&mut first).unwrap();
        let answered = Instant::now();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"), "first answer");
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        dribble_a_head(&mut stream, answered)
    });
    let held = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert_cut_after_one_second(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connection_limit_holds() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[server]\nlisten = \"127.0.0.1:0\"\nmax_connections_per_ip = 2\n",
        sandboxes()
    )));
    let request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let open = |n: usize| -> Vec<TcpStream> {
        (0..n)
            .map(|_| {
                let mut s = TcpStream::connect(proxy.addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                s.write_all(request).unwrap();
                s
            })
            .collect()
    };
    let mut held = open(2);
    for s in &mut held {
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    let mut third = open(1).pop().unwrap();
    let mut buf = [0u8; 512];
    let n = third.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the third connection from one IP is closed at accept");
    drop(held);
    // Slots free up when connections close.
    let mut ok = false;
    for _ in 0..50 {
        let mut s = open(1).pop().unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a slot frees up when a connection closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websockets_keep_their_connection_slots() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[server]\nlisten = \"127.0.0.1:0\"\nmax_connections_per_ip = 2\n",
        sandboxes()
    )));
    let host = "3000-sbx-1.preview.localhost";
    let (mut first, _) = support::ws_connect(proxy.addr, host, "/ws", &[])
        .await
        .unwrap();
    let (second, _) = support::ws_connect(proxy.addr, host, "/ws", &[])
        .await
        .unwrap();
    // The HTTP connections behind both WebSockets have ended; the relays still hold the slots.
    let refused = support::raw(proxy.addr, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(refused.is_empty(), "a third connection got: {refused}");
    first.close(None).await.unwrap();
    drop(first);
    let mut freed = false;
    for _ in 0..100 {
        let reply = support::raw(
            proxy.addr,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if reply.starts_with("HTTP/1.1 200") {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "closing a WebSocket frees its slot");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_no_credentials_and_request_ids_flow() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start_with_env(&runner.config(sandboxes()), &[("RUST_LOG", "info")]);
    let secret_query = "/p?DAYTONA_SANDBOX_AUTH_KEY=tok-secret&x=1";
    let r = get(proxy.addr, "3000-sbx-priv.preview.localhost", secret_query).await;
    assert_eq!(r.status, 200);
    let r = send(
        proxy.addr,
        "GET",
        "3000-sbx-priv.preview.localhost",
        "/q",
        &[
            ("x-daytona-preview-token", "tok-secret"),
            ("cookie", "daytona-sandbox-auth-sbx-priv=cookie-secret"),
            ("x-request-id", "trace-abc-123"),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-request-id"], "trace-abc-123");
    assert_eq!(
        runner.last().header("x-request-id").as_deref(),
        Some("trace-abc-123")
    );
    let generated = get(proxy.addr, "3000-sbx-1.preview.localhost", "/").await;
    let id = generated.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(id.len() >= 16);
    assert_eq!(runner.last().header("x-request-id"), Some(id));

    let mut log = String::new();
    // Access lines are written by a background writer at least every second (`log.access_flush`).
    for _ in 0..250 {
        log = proxy.stderr();
        if log.matches("sandgate::access").count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(log.matches("sandgate::access").count() >= 3, "{log}");
    assert!(log.contains("trace-abc-123"));
    for secret in [
        "tok-secret",
        "cookie-secret",
        "DAYTONA_SANDBOX_AUTH_KEY",
        "3000-sbx-priv.preview",
    ] {
        assert!(
            !log.contains(secret),
            "{secret} leaked into the log:\n{log}"
        );
    }
}

/// `server.reuse_port`: two processes share one port and the kernel gives each a share of the
/// connections; without it the second process cannot bind and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_lets_processes_share_a_port() {
    let runner = Runner::start("k").await;
    let config = |listen: &str, reuse: bool| {
        runner.config(&format!(
            "[server]\nlisten = \"{listen}\"\nreuse_port = {reuse}\n{}[admin]\nlisten = \"127.0.0.1:0\"\n",
            sandboxes()
        ))
    };
    let first = Proxy::start(&config("127.0.0.1:0", true));
    let shared = first.addr.to_string();
    let second = Proxy::start(&config(&shared, true));
    assert_eq!(second.addr, first.addr);

    let request =
        b"GET / HTTP/1.1\r\nHost: 3000-sbx-1.preview.localhost\r\nConnection: close\r\n\r\n";
    for _ in 0..64 {
        let raw = support::raw_exchange(first.addr, request, Duration::from_secs(10));
        assert_eq!(support::status_of(&raw), 200, "{raw}");
    }
    let ok = "sandgate_requests_total{kind=\"preview\",class=\"2xx\"}";
    let served = [
        sample(&scrape(first.admin_addr()).await, ok),
        sample(&scrape(second.admin_addr()).await, ok),
    ];
    assert_eq!(served[0] + served[1], 64.0, "{served:?}");
    assert!(
        served.iter().all(|&n| n > 0.0),
        "one process got all: {served:?}"
    );

    // Without SO_REUSEPORT on the newcomer the port is taken: a clear start error.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandgate.toml");
    std::fs::write(&path, config(&shared, false)).unwrap();
    let mut child = std::process::Command::new(support::BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sandgate started on a port another process holds");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&shared),
        "the error names the address: {stderr}"
    );
}

/// `--version` names the commit and the features; `/metrics` has `sandgate_build_info` with the
/// same values and the standard `process_*` metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_build_info_and_process_metrics() {
    let out = std::process::Command::new(support::BIN)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let expected_features = if cfg!(feature = "mimalloc") {
        "mimalloc"
    } else {
        "none"
    };
    let (_, details) = version
        .split_once(" (commit ")
        .unwrap_or_else(|| panic!("no commit in {version:?}"));
    let commit = details.split(',').next().unwrap();
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{version}"
    );
    assert!(
        version.ends_with(&format!("features: {expected_features})")),
        "{version}"
    );

    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        sandboxes()
    )));
    let text = scrape(proxy.admin_addr()).await;
    let info = format!(
        "sandgate_build_info{{version=\"{}\",commit=\"{commit}\",features=\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&info), "{info} not in:\n{text}");
    let rss = sample(&text, "process_resident_memory_bytes");
    let kib = proxy.rss_kib() as f64;
    assert!(
        rss > kib * 1024.0 / 4.0 && rss < kib * 1024.0 * 4.0,
        "rss {rss} vs {kib} KiB"
    );
    assert!(sample(&text, "process_open_fds") >= 3.0);
    assert!(sample(&text, "process_max_fds") >= sample(&text, "process_open_fds"));
    assert!(sample(&text, "process_threads") >= 1.0);
    assert!(sample(&text, "process_cpu_seconds_total") >= 0.0);
    let started = sample(&text, "process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "{started} vs {now}"
    );
    assert_eq!(text.matches("# EOF").count(), 1);
    assert!(text.ends_with("# EOF\n"));
}

/// Every metric `docs/deploy.md` tells operators to alert on is one `/metrics` exports: a
/// renamed metric must not leave the guide's alerts silently matching nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_guides_alerts_name_exported_metrics() {
    let guide =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/deploy.md")).unwrap();
    let named: std::collections::BTreeSet<&str> = guide
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("sandgate_") || word.starts_with("process_"))
        .collect();
    assert!(named.len() >= 10, "the guide names {named:?}");

    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        sandboxes()
    )));
    let text = scrape(proxy.admin_addr()).await;
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let missing: Vec<_> = named.iter().filter(|m| !exported.contains(*m)).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}\n{text}");
}

/// Polls the admin listener until `series` satisfies `done` (10 s hang detector); returns it.
async fn poll_gauge(admin: std::net::SocketAddr, series: &str, done: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = sample(&scrape(admin).await, series);
        if done(value) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The soak's gauges: `sandgate_tasks_alive` adds up the tasks of every serving thread's runtime
/// (connections spread over two), `sandgate_cache_entries` counts cached routes, found or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_count_tasks_on_every_serving_thread_and_cached_routes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&runner.config(&format!(
        "{}[server]\nlisten = \"127.0.0.1:0\"\nthreads = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        sandboxes()
    )));
    let admin = proxy.admin_addr();
    let routes = "sandgate_cache_entries{cache=\"routes\"}";
    let tasks = "sandgate_tasks_alive";
    assert_eq!(sample(&scrape(admin).await, routes), 0.0);
    let idle = sample(&scrape(admin).await, tasks);
    assert!(idle >= 1.0, "the admin listener's task at least: {idle}");

    // 20 keep-alive connections, one answered request each: the kernel spreads them over both
    // threads' listeners, so counting one runtime would see about half.
    let mut open = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 3000-sbx-1.preview.localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        open.push(stream);
    }
    let busy = poll_gauge(admin, tasks, |v| v >= idle + 20.0).await;
    assert!(
        busy >= idle + 20.0,
        "{idle} idle, {busy} with 20 connections"
    );
    drop(open);
    let after = poll_gauge(admin, tasks, |v| v < idle + 5.0).await;
    assert!(after < idle + 5.0, "{idle} idle, {after} after closing");

    assert_eq!(
        get(proxy.addr, "3000-nope.preview.localhost", "/")
            .await
            .status,
        404
    );
    // sbx-1 and the remembered miss.
    assert_eq!(sample(&scrape(admin).await, routes), 2.0);
}
