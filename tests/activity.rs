//! Activity recording through the real server (in-process, so the memory sink is observable):
//! throttling, batching, what counts (skip header, ignored ports, monitor user agents), and
//! heartbeats of open WebSockets in `open` and `traffic` mode.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sandgate::config::Config;
use support::send;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

async fn demo_runner() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sandgate::cli::demo::run_demo_runner(listener, "k".into()));
    addr
}

async fn start(runner: SocketAddr, activity: &str, sandboxes: usize) -> sandgate::Running {
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[proxy]\ndomains = [\"preview.localhost\"]\n\
         [activity]\n{activity}\n\
         [[registry.runners]]\nid = \"r\"\nurl = \"http://{runner}\"\napi_key = \"k\"\n"
    );
    for i in 0..sandboxes {
        toml.push_str(&format!(
            "[[registry.sandboxes]]\nid = \"sbx-{i}\"\nrunner = \"r\"\npublic = true\n"
        ));
    }
    sandgate::start(Config::from_toml_str(&toml).unwrap())
        .await
        .unwrap()
}

async fn wait_until(mut done: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_in_one_interval_make_one_write() {
    let runner = demo_runner().await;
    let proxy = start(runner, "throttle = \"1h\"\nflush_interval = \"50ms\"", 1).await;
    let addr = proxy.addr;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            tokio::spawn(async move {
                let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                for _ in 0..10_000 / 32 + 1 {
                    let request = http::Request::get(format!("http://{addr}/"))
                        .header("host", "3000-sbx-0.preview.localhost")
                        .body(Empty::new())
                        .unwrap();
                    let response = client.request(request).await.unwrap();
                    assert_eq!(response.status(), 200);
                    response.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let sink = proxy.activity_sink.clone();
    assert!(wait_until(|| sink.writes_for("sbx-0") >= 1, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.writes_for("sbx-0"), 1);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sandboxes_go_out_in_one_batch() {
    let runner = demo_runner().await;
    // A long flush interval: all marks are pending at the first flush after the requests.
    let proxy = start(runner, "throttle = \"1h\"\nflush_interval = \"3s\"", 1000).await;
    let addr = proxy.addr;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            tokio::spawn(async move {
                for i in (t..1000).step_by(8) {
                    let host = format!("3000-sbx-{i}.preview.localhost");
                    assert_eq!(send(addr, "GET", &host, "/", &[], b"").await.status, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let sink = proxy.activity_sink.clone();
    assert!(
        wait_until(
            || sink.writes.load(Ordering::Relaxed) >= 1000,
            Duration::from_secs(8)
        )
        .await
    );
    let batches = sink.batches.load(Ordering::Relaxed);
    // The first flush may fire while requests are still arriving; at most a couple of batches.
    assert!(batches <= 3, "{batches} batches for 1000 sandboxes");
    assert_eq!(sink.last.len(), 1000);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_header_records_nothing() {
    let runner = demo_runner().await;
    let proxy = start(runner, "throttle = \"0s\"\nflush_interval = \"20ms\"", 2).await;
    let skip = [("x-daytona-skip-last-activity-update", "true")];
    let r = send(
        proxy.addr,
        "GET",
        "3000-sbx-0.preview.localhost",
        "/",
        &skip,
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        proxy.addr,
        "GET",
        "3000-sbx-1.preview.localhost",
        "/",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let sink = proxy.activity_sink.clone();
    assert!(wait_until(|| sink.writes_for("sbx-1") == 1, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sink.writes_for("sbx-0"), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websocket_heartbeats_and_stops_when_closed() {
    let runner = demo_runner().await;
    let proxy = start(
        runner,
        "throttle = \"0s\"\nflush_interval = \"50ms\"\nheartbeat = \"300ms\"\nstreams = \"open\"",
        1,
    )
    .await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let url = format!("ws://3000-sbx-0.preview.localhost:{}/ws", proxy.addr.port());
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(response.status(), 101);
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));

    let sink = proxy.activity_sink.clone();
    let at_open = sink.writes_for("sbx-0");
    // Idle for a bit over three heartbeats: each one re-marks the sandbox.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let while_open = sink.writes_for("sbx-0") - at_open;
    assert!(while_open >= 3, "{while_open} heartbeat writes while open");
    assert_eq!(proxy.app.activity.open_streams(), 1);

    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws); // as a browser does after the close handshake
    assert!(
        wait_until(
            || proxy.app.activity.open_streams() == 0,
            Duration::from_secs(3)
        )
        .await
    );
    // The close itself is one last mark; after it, nothing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_close = sink.writes_for("sbx-0");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        sink.writes_for("sbx-0"),
        after_close,
        "no marks after close"
    );
    proxy.shutdown().await;
}

const BROWSER: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) \
     Chrome/131.0.0.0 Safari/537.36";

/// What the common uptime monitors and load-balancer probes send, as they send it.
const MONITORS: [&str; 11] = [
    "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
    "Pingdom.com_bot_version_1.4_(http://www.pingdom.com/)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) StatusCake",
    "Site24x7",
    "Better Uptime Bot Mozilla/5.0 (X11; Linux x86_64; rv:109.0)",
    "kube-probe/1.31",
    "ELB-HealthChecker/2.0",
    "GoogleHC/1.0",
    "Datadog/Synthetics",
    "Checkly/1.0 (https://www.checklyhq.com)",
    "Uptime-Kuma/1.23.16",
];

/// One request of a table: each row goes to its own sandbox, so its marks are its own.
struct Case {
    name: String,
    port: u16,
    headers: Vec<(&'static str, String)>,
    /// Routed by `X-Daytona-Sandbox-Id`/`-Port` on the proxy's own host, not a preview host.
    by_header: bool,
    counts: bool,
}

fn case(
    name: impl Into<String>,
    port: u16,
    headers: &[(&'static str, &str)],
    counts: bool,
) -> Case {
    Case {
        name: name.into(),
        port,
        headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        by_header: false,
        counts,
    }
}

fn from_agent(name: impl Into<String>, agent: &str, counts: bool) -> Case {
    case(name, 3000, &[("user-agent", agent)], counts)
}

/// Sends every row (the ones that must not mark first), waits until every row that counts was
/// written, then fails once naming each row whose marks were wrong. No timing: a flush writes
/// every pending mark, so once the last request's mark is written, an earlier one would be too.
async fn check_marks(activity: &str, mut cases: Vec<Case>) {
    cases.sort_by_key(|c| c.counts);
    let runner = demo_runner().await;
    let config = format!("throttle = \"0s\"\nflush_interval = \"20ms\"\n{activity}");
    let proxy = start(runner, &config, cases.len()).await;
    for (i, case) in cases.iter().enumerate() {
        let (id, port) = (format!("sbx-{i}"), case.port.to_string());
        let mut headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let host = if case.by_header {
            headers.extend([
                ("x-daytona-sandbox-id", &*id),
                ("x-daytona-sandbox-port", &*port),
            ]);
            "sandgate.localhost".to_string()
        } else {
            format!("{port}-{id}.preview.localhost")
        };
        let reply = send(proxy.addr, "GET", &host, "/", &headers, b"").await;
        assert_eq!(reply.status, 200, "{}: {}", case.name, reply.text());
    }
    let sink = proxy.activity_sink.clone();
    let counted = |i: usize| sink.writes_for(&format!("sbx-{i}")) > 0;
    let all_written = || (0..cases.len()).all(|i| !cases[i].counts || counted(i));
    wait_until(all_written, Duration::from_secs(5)).await;
    let wrong: Vec<String> = (0..cases.len())
        .filter(|&i| counted(i) != cases[i].counts)
        .map(|i| format!("{} (counts: {})", cases[i].name, cases[i].counts))
        .collect();
    assert!(wrong.is_empty(), "wrong marks for: {wrong:#?}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_requests_ignored_ports_and_monitors_never_mark() {
    let mut cases = vec![
        case("no user agent", 3000, &[], true),
        from_agent("browser", BROWSER, true),
        from_agent("curl", "curl/8.5.0", true),
        from_agent("an agent near a pattern", "UptimeChecker-inhouse/1.0", true),
        case(
            "skip header",
            3000,
            &[("x-daytona-skip-last-activity-update", "True")],
            false,
        ),
        case(
            "skip header false",
            3000,
            &[("x-daytona-skip-last-activity-update", "false")],
            true,
        ),
        case("ignored port", 9090, &[("user-agent", BROWSER)], false),
        case("ignored port 2", 8081, &[], false),
        case("port next to an ignored one", 9091, &[], true),
        Case {
            by_header: true,
            ..case("header-routed, ignored port", 9090, &[], false)
        },
        Case {
            by_header: true,
            ..case("header-routed", 3000, &[], true)
        },
        from_agent(
            "monitor, lower case",
            "mozilla/5.0+(compatible; uptimerobot/2.0)",
            false,
        ),
        from_agent("monitor, upper case", "KUBE-PROBE/1.29", false),
        from_agent("monitor, mixed case", "gOOgleHc/1.0", false),
    ];
    cases.extend(
        MONITORS
            .iter()
            .map(|agent| from_agent(format!("monitor {agent}"), agent, false)),
    );
    check_marks("ignore_ports = [9090, 8081]", cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_agent_list_is_configurable_and_empty_counts_every_agent() {
    let mut everyone: Vec<Case> = MONITORS
        .iter()
        .map(|agent| from_agent(format!("monitor {agent}"), agent, true))
        .collect();
    everyone.push(from_agent("browser", BROWSER, true));
    check_marks("ignore_user_agents = []", everyone).await;

    let own = vec![
        from_agent("own probe", "Our-Probe/3 (ops)", false),
        from_agent("own probe, other case", "our-PROBE/3", false),
        from_agent("a default monitor, no longer listed", MONITORS[0], true),
        from_agent("browser", BROWSER, true),
    ];
    check_marks("ignore_user_agents = [\"our-probe\"]", own).await;
}

/// A WebSocket to `sbx-{sandbox}` on `port` with `agent`, after the first echo.
async fn websocket(
    proxy: &sandgate::Running,
    sandbox: usize,
    port: u16,
    agent: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let url = format!(
        "ws://{port}-sbx-{sandbox}.preview.localhost:{}/ws",
        proxy.addr.port()
    );
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("user-agent", agent.parse().unwrap());
    let (ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    ws
}

/// Heartbeat writes a WebSocket makes while open for ~1 s (5 heartbeats of 200 ms), sending a
/// message every 100 ms if `talks`. Counted from the write of its opening.
async fn heartbeat_writes(streams: &str, talks: bool) -> usize {
    let runner = demo_runner().await;
    let config = format!(
        "throttle = \"0s\"\nflush_interval = \"20ms\"\nheartbeat = \"200ms\"\nstreams = \"{streams}\""
    );
    let proxy = start(runner, &config, 1).await;
    let mut ws = websocket(&proxy, 0, 3000, BROWSER).await;
    let sink = proxy.activity_sink.clone();
    assert!(wait_until(|| sink.writes_for("sbx-0") >= 1, Duration::from_secs(5)).await);
    // The request's mark and the stream's opening mark may land in two flushes (20 ms apart)
    // on a busy machine: count from after both.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let at_open = sink.writes_for("sbx-0");
    for _ in 0..11 {
        if talks {
            ws.send(Message::text("hi")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let writes = sink.writes_for("sbx-0") - at_open;
    assert_eq!(proxy.app.activity.open_streams(), 1);
    drop(ws);
    proxy.shutdown().await;
    writes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_websocket_stops_marking_in_traffic_mode_only() {
    let (quiet_traffic, quiet_open, talking_traffic) = tokio::join!(
        heartbeat_writes("traffic", false),
        heartbeat_writes("open", false),
        heartbeat_writes("traffic", true),
    );
    assert_eq!(
        quiet_traffic, 0,
        "traffic mode: a quiet WebSocket is no activity"
    );
    assert!(quiet_open >= 3, "open mode: {quiet_open} heartbeat writes");
    assert!(
        talking_traffic >= 3,
        "traffic mode, talking: {talking_traffic} heartbeat writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_that_do_not_count_hold_no_stream_and_never_mark() {
    let runner = demo_runner().await;
    let config = "throttle = \"0s\"\nflush_interval = \"20ms\"\nheartbeat = \"100ms\"\n\
                  streams = \"open\"\nignore_ports = [9090]";
    let proxy = start(runner, config, 3).await;
    let mut monitor = websocket(&proxy, 0, 3000, "kube-probe/1.31").await;
    let mut ignored = websocket(&proxy, 1, 9090, BROWSER).await;
    let user = websocket(&proxy, 2, 3000, BROWSER).await;
    for ws in [&mut monitor, &mut ignored] {
        ws.send(Message::text("ping")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    }
    let sink = proxy.activity_sink.clone();
    assert!(wait_until(|| sink.writes_for("sbx-2") >= 3, Duration::from_secs(5)).await);
    assert_eq!(sink.writes_for("sbx-0"), 0, "a monitor's WebSocket marked");
    assert_eq!(
        sink.writes_for("sbx-1"),
        0,
        "a WebSocket on an ignored port marked"
    );
    assert_eq!(
        proxy.app.activity.open_streams(),
        1,
        "only the user's WebSocket is a stream"
    );
    drop((monitor, ignored, user));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sent_event_stream_counts_while_events_flow_in_traffic_mode() {
    let runner = support::runner::Runner::start("k").await;
    let config = "throttle = \"0s\"\nflush_interval = \"20ms\"\nheartbeat = \"100ms\"";
    let proxy = start(runner.addr, config, 1).await;
    let request = support::request("GET", "3000-sbx-0.preview.localhost", "/sse")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let response = support::send_streaming(proxy.addr, request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    let sink = proxy.activity_sink.clone();
    // The open, then the heartbeat after the first event; then the stream is quiet.
    assert!(wait_until(|| sink.writes_for("sbx-0") >= 2, Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet = sink.writes_for("sbx-0");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.writes_for("sbx-0"), quiet, "a quiet stream marked");
    assert_eq!(proxy.app.activity.open_streams(), 1);

    runner.release();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&second[..], b"data: second\n\n");
    assert!(
        wait_until(|| sink.writes_for("sbx-0") > quiet, Duration::from_secs(5)).await,
        "an event that moved did not count"
    );
    proxy.shutdown().await;
}
