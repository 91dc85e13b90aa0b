//! Header routing on the proxy's own host (`X-Daytona-Sandbox-Id` + `X-Daytona-Sandbox-Port`, or
//! the `X-Sandgate-*` pair) through the real binary: it routes like the preview host, with
//! header credentials only, no cookie in or out, no CORS grant, no login redirect or warning
//! page; the routing headers never reach an app; one HTTP/2 connection serves many sandboxes
//! and never lets one sandbox's token open another.
mod support;

use std::net::SocketAddr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use sha2::Sha256;
use support::oidc::Idp;
use support::runner::Runner;
use support::table::*;
use support::{get, Proxy};

const KEY: &str = "test-cookie-key-0123456789abcdef0123";
/// The proxy's own host as SDKs address it (not under the preview domain).
const OWN: &str = "sandgate.localhost:8443";
/// Request headers of one case.
type Headers<'a> = &'a [(&'a str, &'a str)];

const ROUTING: [&str; 4] = [
    "x-daytona-sandbox-id",
    "x-daytona-sandbox-port",
    "x-sandgate-sandbox-id",
    "x-sandgate-sandbox-port",
];

struct Setup {
    proxy: Proxy,
    runner: Runner,
    admin: SocketAddr,
    /// The sandboxes' app port (the runner emulator's, in direct mode).
    port: String,
    _idp: Idp,
}

/// `priv-a` (org-1, token `tok-a`), `priv-b` (org-2, token `tok-b`), public `pub`, all in
/// direct mode on the runner emulator's port; OIDC and the preview warning on, so their
/// absence on the own host is tested.
async fn setup() -> Setup {
    let runner = Runner::start("unused").await;
    let idp = Idp::start("sandgate-client").await;
    let port = runner.addr.port();
    let proxy = Proxy::start(&format!(
        r#"
[proxy]
domains = ["preview.localhost", "other.localhost"]
[admin]
listen = "127.0.0.1:0"
[auth]
cookie_keys = ["{KEY}"]
max_failures_per_minute = 1000
preview_warning = true
[auth.oidc]
issuer = "{issuer}"
client_id = "sandgate-client"
login_host = "login.localhost"
[[registry.sandboxes]]
id = "priv-a"
address = "127.0.0.1"
auth_token = "tok-a"
organization = "org-1"
[[registry.sandboxes]]
id = "priv-b"
address = "127.0.0.1"
auth_token = "tok-b"
organization = "org-2"
[[registry.sandboxes]]
id = "pub"
address = "127.0.0.1"
public = true
organization = "org-1"
[[registry.api_keys]]
key = "apikey-org-1"
organization = "org-1"
[[registry.signed_previews]]
token = "signedtoken00001"
port = {port}
sandbox = "priv-a"
"#,
        issuer = idp.issuer(),
    ));
    let admin = proxy.admin_addr();
    Setup {
        proxy,
        runner,
        admin,
        port: port.to_string(),
        _idp: idp,
    }
}

/// A valid sandbox cookie in the documented format (as the preview host issues it).
fn sandbox_cookie(sandbox: &str) -> String {
    let exp = support::oidc::now() + 600;
    let body = URL_SAFE_NO_PAD.encode(format!(r#"{{"s":"{sandbox}","t":"{sandbox}","e":{exp}}}"#));
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(b"sandbox-cookie\0");
    mac.update(body.as_bytes());
    let mac = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("daytona-sandbox-auth-{sandbox}={body}.{mac}")
}

/// `expects`, and: the upstream received none of the routing headers.
fn reaching(expects: impl IntoIterator<Item = Expect>) -> Vec<Expect> {
    let mut all: Vec<Expect> = expects.into_iter().collect();
    all.extend(ROUTING.iter().map(|name| not_sent(name)));
    all
}

fn with<'a>(
    headers: &[(&'a str, &'a str)],
    more: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    [headers, more].concat()
}

#[tokio::test]
async fn header_routes_are_preview_routes_with_header_credentials_only() {
    let s = setup().await;
    let p = s.port.as_str();
    let a = [
        ("x-daytona-sandbox-id", "priv-a"),
        ("x-daytona-sandbox-port", p),
    ];
    let pub_ = [
        ("x-daytona-sandbox-id", "pub"),
        ("x-daytona-sandbox-port", p),
    ];
    let own_a = [
        ("x-sandgate-sandbox-id", "priv-a"),
        ("x-sandgate-sandbox-port", p),
    ];
    let canonical_a = format!("{p}-priv-a.preview.localhost:8443");
    let preview_a = format!("{p}-priv-a.preview.localhost");
    let preview_pub = format!("{p}-pub.preview.localhost");
    let cookie_a = sandbox_cookie("priv-a");
    let navigate = [("accept", "text/html"), ("sec-fetch-mode", "navigate")];
    let origin_a = format!("http://{preview_a}");
    let signed = [
        ("x-daytona-sandbox-id", "signedtoken00001"),
        ("x-daytona-sandbox-port", p),
    ];

    #[rustfmt::skip]
    let mut rows = vec![
        Row::get("preview token: path, query and credentials as on the preview host", OWN, "/app/a%20b?q=1",
            &with(&a, &[("x-daytona-preview-token", "tok-a")]),
            reaching([status(200), target("/app/a%20b?q=1"), sent("x-forwarded-host", [&canonical_a]),
             not_sent("x-daytona-preview-token"), no_credentials(&["tok-a"])])),
        Row::get("sandgate's own names", OWN, "/x", &with(&own_a, &[("x-daytona-preview-token", "tok-a")]),
            [status(200), sent("x-forwarded-host", [&canonical_a])]),
        Row::get("both pairs naming the same sandbox and port", OWN, "/x",
            &with(&with(&a, &own_a), &[("x-daytona-preview-token", "tok-a")]), reaching([status(200)])),
        Row::get("an API key of the sandbox's organisation, consumed", OWN, "/x",
            &with(&a, &[("authorization", "Bearer apikey-org-1")]),
            [status(200), not_sent("authorization")]),
        Row::get("a public sandbox needs no credential", OWN, "/p", &pub_, reaching([status(200), path("/p")])),
        Row::get("a public sandbox's reserved port does", OWN, "/x",
            &[("x-daytona-sandbox-id", "pub"), ("x-daytona-sandbox-port", "22222")],
            [status(401), code("AUTH_REQUIRED")]),
        Row::get("no credential", OWN, "/x", &a, [status(401), code("AUTH_REQUIRED")]),
        Row::get("another sandbox's token", OWN, "/x", &with(&a, &[("x-daytona-preview-token", "tok-b")]),
            [status(401), code("TOKEN_INVALID")]),
        Row::get("an API key of another organisation", OWN, "/x",
            &with(&[("x-daytona-sandbox-id", "priv-b"), ("x-daytona-sandbox-port", p)],
                  &[("authorization", "Bearer apikey-org-1")]),
            [status(403), code("FORBIDDEN")]),
        Row::get("no query-token login", OWN, "/?DAYTONA_SANDBOX_AUTH_KEY=tok-a", &a,
            [status(401), code("AUTH_REQUIRED"), no_header("set-cookie"), no_header("location")]),
        Row::get("no query-token login for a browser either", OWN, "/?DAYTONA_SANDBOX_AUTH_KEY=tok-a",
            &with(&a, &navigate), [status(401), no_header("set-cookie"), no_header("location")]),
        Row::get("the crafted cookie opens the preview host", &preview_a, "/x", &[("cookie", &cookie_a)],
            [status(200)]),
        Row::get("the same valid sandbox cookie is not a credential here", OWN, "/x",
            &with(&a, &[("cookie", &cookie_a)]), [status(401), code("AUTH_REQUIRED")]),
        Row::get("no OIDC login redirect for a navigation", OWN, "/x", &with(&a, &navigate),
            [status(401), no_header("location")]),
        Row::get("no preview-warning page: the app answers", OWN, "/w", &with(&pub_, &navigate),
            [status(200), path("/w")]),
        Row::get("the app's Set-Cookie never reaches the shared host's cookie jar", OWN, "/x",
            &with(&pub_, &[("x-reply-set-cookie", "app=1; Path=/")]),
            [status(200), no_header("set-cookie")]),
        Row::get("the app's cookies and the proxy's: only the app's go on", OWN, "/x",
            &with(&a, &[("x-daytona-preview-token", "tok-a"), ("cookie", &format!("app=2; {cookie_a}"))]),
            [status(200), sent("cookie", ["app=2"])]),
        Row::get("no CORS grant for a sandbox's own origin", OWN, "/x",
            &with(&a, &[("x-daytona-preview-token", "tok-a"), ("origin", &origin_a)]),
            [status(200), no_header("access-control-allow-origin"), no_header("access-control-allow-credentials")]),
        Row::new("a preflight-shaped OPTIONS goes to the app, not granted by the proxy", "OPTIONS", OWN, "/x",
            &with(&pub_, &[("origin", &origin_a), ("access-control-request-method", "PUT")]),
            [status(200), method("OPTIONS"), no_header("access-control-allow-origin")]),
        Row::get("the OIDC session path is the app's", OWN, "/__sandgate/session?ticket=x", &pub_,
            [status(200), path("/__sandgate/session")]),
        Row::get("the proxy's own paths are the app's too", OWN, "/health", &pub_,
            [status(200), path("/health")]),
        Row::get("a signed preview token is not an id", OWN, "/x", &signed,
            [status(404), code("SANDBOX_NOT_FOUND")]),
        Row::get("an unknown sandbox", OWN, "/x",
            &[("x-daytona-sandbox-id", "nope"), ("x-daytona-sandbox-port", p)],
            [status(404), code("SANDBOX_NOT_FOUND")]),
        Row::get("paths are checked as on preview hosts", OWN, "/a/../../etc", &pub_,
            [status(400), code("BAD_PATH")]),
        // A preview host and a toolbox path route by themselves; the headers are only dropped.
        Row::get("a preview host ignores headers naming another sandbox", &preview_pub, "/x",
            &[("x-daytona-sandbox-id", "priv-a"), ("x-daytona-sandbox-port", p)],
            reaching([status(200), sent("x-forwarded-host", [&preview_pub])])),
        Row::get("a private preview host is not opened by headers naming a public one", &preview_a, "/x",
            &pub_, [status(401), code("AUTH_REQUIRED")]),
        Row::get("a toolbox path is not re-routed to a public sandbox", OWN, "/toolbox/priv-a/files",
            &pub_, [status(401), code("AUTH_REQUIRED")]),
    ];
    // The 400 cases (nothing reaches the app).
    let bad: [(&str, Headers, &str); 7] = [
        (
            "id without port",
            &[("x-daytona-sandbox-id", "pub")],
            "ROUTING_HEADERS_INCOMPLETE",
        ),
        (
            "port without id",
            &[("x-sandgate-sandbox-port", p)],
            "ROUTING_HEADERS_INCOMPLETE",
        ),
        (
            "port 0",
            &[
                ("x-daytona-sandbox-id", "pub"),
                ("x-daytona-sandbox-port", "0"),
            ],
            "BAD_SANDBOX_PORT",
        ),
        (
            "port 65536",
            &[
                ("x-daytona-sandbox-id", "pub"),
                ("x-daytona-sandbox-port", "65536"),
            ],
            "BAD_SANDBOX_PORT",
        ),
        (
            "port not a number",
            &[
                ("x-daytona-sandbox-id", "pub"),
                ("x-daytona-sandbox-port", "http"),
            ],
            "BAD_SANDBOX_PORT",
        ),
        (
            "id with a dot",
            &[
                ("x-daytona-sandbox-id", "pub.evil"),
                ("x-daytona-sandbox-port", p),
            ],
            "BAD_SANDBOX_ID",
        ),
        (
            "pairs naming two sandboxes",
            &[
                ("x-daytona-sandbox-id", "pub"),
                ("x-daytona-sandbox-port", p),
                ("x-sandgate-sandbox-id", "priv-a"),
                ("x-sandgate-sandbox-port", p),
            ],
            "ROUTING_HEADERS_CONFLICT",
        ),
    ];
    for (name, headers, want) in bad {
        rows.push(Row::get(
            name,
            OWN,
            "/x",
            headers,
            [status(400), code(want)],
        ));
    }
    run(s.proxy.addr, Upstream::Runner(&s.runner), rows).await;
}

#[tokio::test]
async fn without_routing_headers_the_own_host_is_the_proxys() {
    let s = setup().await;
    let health = get(s.proxy.addr, OWN, "/health").await;
    assert_eq!(health.json()["status"], "ok");
    let other = get(s.proxy.addr, OWN, "/app").await;
    assert_eq!(other.status, 404);
    assert_eq!(other.json()["code"], "NOT_FOUND");
    assert!(s.runner.seen().is_empty());
    // The same app response keeps its cookie on its own preview host: the stripping above is
    // the header route's, not an accident of the setup.
    let preview = format!("{}-pub.preview.localhost", s.port);
    let reply = support::send(
        s.proxy.addr,
        "GET",
        &preview,
        "/x",
        &[("x-reply-set-cookie", "app=1; Path=/")],
        b"",
    )
    .await;
    assert_eq!(reply.headers["set-cookie"], "app=1; Path=/");
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h2_connection(addr: SocketAddr) -> H2 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// One header-routed request on `h2`: status, response headers, body.
async fn h2_get(
    h2: &H2,
    sandbox: &str,
    port: &str,
    extra: &[(&str, &str)],
) -> (u16, http::HeaderMap, serde_json::Value) {
    let mut builder = http::Request::builder()
        .uri(format!("http://{OWN}/who?sandbox={sandbox}"))
        .header("x-daytona-sandbox-id", sandbox)
        .header("x-daytona-sandbox-port", port);
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(Bytes::new())).unwrap();
    let response = h2.clone().send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (parts.status.as_u16(), parts.headers, json)
}

fn forwarded_host(echo: &serde_json::Value) -> Option<String> {
    echo["headers"].as_array()?.iter().find_map(|pair| {
        (pair[0] == "x-forwarded-host").then(|| pair[1].as_str().unwrap().to_string())
    })
}

/// (client connections accepted, preview requests answered 2xx) from the admin listener.
async fn counters(admin: SocketAddr) -> (f64, f64) {
    let metrics = get(admin, "admin", "/metrics").await.text();
    let preview_2xx = "sandgate_requests_total{kind=\"preview\",class=\"2xx\"}";
    (
        support::sample(&metrics, "sandgate_connections_accepted_total"),
        support::sample(&metrics, preview_2xx),
    )
}

#[tokio::test]
async fn one_h2_connection_multiplexes_many_sandboxes() {
    let s = setup().await;
    let before = counters(s.admin).await;
    let h2 = h2_connection(s.proxy.addr).await;
    let sandboxes = [("priv-a", "tok-a"), ("priv-b", "tok-b"), ("pub", "")];
    let requests = (0..30).map(|i| {
        let (sandbox, token) = sandboxes[i % 3];
        let (h2, port) = (&h2, s.port.as_str());
        async move {
            let token = [("x-daytona-preview-token", token)];
            let extra: &[(&str, &str)] = if token[0].1.is_empty() { &[] } else { &token };
            let extra = [extra, &[("x-reply-set-cookie", "app=1")]].concat();
            (sandbox, h2_get(h2, sandbox, port, &extra).await)
        }
    });
    let replies = futures_util::future::join_all(requests).await;
    for (sandbox, (status, headers, echo)) in replies {
        assert_eq!(status, 200, "{sandbox}: {echo}");
        let want = format!("{}-{sandbox}.preview.localhost:8443", s.port);
        assert_eq!(forwarded_host(&echo), Some(want), "{sandbox}");
        assert_eq!(echo["query"], format!("sandbox={sandbox}"));
        assert!(
            !headers.contains_key("set-cookie"),
            "{sandbox}: {headers:?}"
        );
    }
    assert_eq!(s.runner.seen().len(), 30);
    let after = counters(s.admin).await;
    // The admin listener's scrapes are not counted: the proxy saw the one HTTP/2 connection.
    assert_eq!(
        after.0 - before.0,
        1.0,
        "client connections accepted during the run"
    );
    assert_eq!(
        after.1 - before.1,
        30.0,
        "header-routed requests count as previews"
    );
}

/// The per-connection token memo remembers the last preview token for one sandbox record: on
/// one multiplexed connection, A's token must never open B, whatever the order.
#[tokio::test]
async fn one_sandboxs_token_never_opens_another_over_one_h2_connection() {
    let s = setup().await;
    let h2 = h2_connection(s.proxy.addr).await;
    let p = s.port.as_str();
    let token_a = [("x-daytona-preview-token", "tok-a")];
    for round in 0..10 {
        let (status, _, _) = h2_get(&h2, "priv-a", p, &token_a).await;
        assert_eq!(status, 200, "round {round}: A with A's token");
        let (status, _, body) = h2_get(&h2, "priv-b", p, &token_a).await;
        assert_eq!(status, 401, "round {round}: B with A's token: {body}");
    }
    // Concurrently too: the memo is warm for A while B is asked with the same token.
    let mixed = (0..40).map(|i| {
        let sandbox = if i % 2 == 0 { "priv-a" } else { "priv-b" };
        let h2 = &h2;
        async move { (sandbox, h2_get(h2, sandbox, p, &token_a).await.0) }
    });
    for (sandbox, status) in futures_util::future::join_all(mixed).await {
        let want = if sandbox == "priv-a" { 200 } else { 401 };
        assert_eq!(status, want, "{sandbox} with A's token");
    }
    let b_reached = s
        .runner
        .seen()
        .iter()
        .filter(|r| {
            r.header("x-forwarded-host")
                .is_some_and(|h| h.contains("priv-b"))
        })
        .count();
    assert_eq!(b_reached, 0, "no request reached sandbox B");
}

/// The same over HTTP/1.1: pipelined requests on one keep-alive connection alternate the
/// routed sandbox (its id in either case), and A's token opens A alone.
#[tokio::test]
async fn pipelined_http1_requests_alternating_sandboxes_keep_their_own_verdicts() {
    let s = setup().await;
    let p = s.port.as_str();
    let request = |id: &str, port: &str| {
        format!(
            "GET /x HTTP/1.1\r\nHost: {OWN}\r\nx-daytona-sandbox-id: {id}\r\n\
             x-daytona-sandbox-port: {port}\r\nx-daytona-preview-token: tok-a\r\n\r\n"
        )
    };
    let pipelined = [
        request("priv-a", p),
        request("priv-b", p),
        request("PRIV-A", p),
        request("priv-b", p),
    ]
    .concat();
    let raw = support::raw_until_idle(
        s.proxy.addr,
        pipelined,
        std::time::Duration::from_millis(500),
    )
    .await;
    assert_eq!(support::statuses(&raw), vec![200, 401, 200, 401], "{raw}");
}

/// A WebSocket upgrade routes by header like any request: same credentials, the routing
/// headers and the token consumed, and another sandbox's token refused before any upgrade.
#[tokio::test]
async fn websockets_upgrade_through_header_routing_with_the_same_auth() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Error, Message};
    let s = setup().await;
    let p = s.port.as_str();
    let route = |id| {
        [
            ("x-daytona-sandbox-id", id),
            ("x-daytona-sandbox-port", p),
            ("x-daytona-preview-token", "tok-a"),
        ]
    };
    let (mut ws, response) = support::ws_connect(s.proxy.addr, OWN, "/ws", &route("priv-a"))
        .await
        .expect("upgrade through header routing");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("over one shared host"))
        .await
        .unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(text))) => assert_eq!(text.as_str(), "over one shared host"),
        other => panic!("no echo: {other:?}"),
    }
    let upgrade = s.runner.last();
    assert_eq!(upgrade.target, "/ws");
    for name in ROUTING.iter().chain(&["x-daytona-preview-token"]) {
        assert!(upgrade.header(name).is_none(), "{name} reached the app");
    }
    let canonical = format!("{p}-priv-a.preview.localhost:8443");
    assert_eq!(upgrade.all("x-forwarded-host"), [canonical]);
    ws.close(None).await.unwrap();

    // Attack: A's token on headers naming B, and headers naming nobody's port.
    let before = s.runner.seen().len();
    match support::ws_connect(s.proxy.addr, OWN, "/ws", &route("priv-b")).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!(
            "B opened with A's token: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    let incomplete = [("x-daytona-sandbox-id", "priv-a")];
    match support::ws_connect(s.proxy.addr, OWN, "/ws", &incomplete).await {
        Err(Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!(
            "an incomplete route upgraded: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    assert_eq!(s.runner.seen().len(), before, "nothing reached an app");
}

/// Header-routed requests and WebSockets keep their own sandbox awake, never the one a refused
/// request named: activity is marked after admission, for the sandbox the headers named.
#[tokio::test]
async fn header_routed_traffic_marks_activity_for_its_sandbox_only() {
    let redis = support::redis::RedisServer::start();
    let runner = Runner::start("unused").await;
    let proxy = Proxy::start(&format!(
        r#"
[proxy]
domains = ["preview.localhost"]
[activity]
sink = "redis"
throttle = "0s"
flush_interval = "20ms"
[redis]
url = "{}"
[[registry.sandboxes]]
id = "priv-a"
address = "127.0.0.1"
auth_token = "tok-a"
[[registry.sandboxes]]
id = "priv-b"
address = "127.0.0.1"
auth_token = "tok-b"
[[registry.sandboxes]]
id = "ws-only"
address = "127.0.0.1"
auth_token = "tok-ws"
"#,
        redis.url()
    ));
    let port = runner.addr.port().to_string();
    let route = |id, token| {
        [
            ("x-daytona-sandbox-id", id),
            ("x-daytona-sandbox-port", port.as_str()),
            ("x-daytona-preview-token", token),
        ]
    };
    let marked = |id: &str| {
        !redis
            .cli(&["ZSCORE", "sandbox:activity", id])
            .trim()
            .is_empty()
    };
    // Refused first, so a wrongly marked priv-b would be flushed no later than priv-a.
    let (refused, admitted) = (route("priv-b", "tok-a"), route("priv-a", "tok-a"));
    for _ in 0..5 {
        let reply = support::send(proxy.addr, "GET", OWN, "/x", &refused, b"").await;
        assert_eq!(reply.status, 401);
    }
    let reply = support::send(proxy.addr, "GET", OWN, "/x", &admitted, b"").await;
    assert_eq!(reply.status, 200);
    let (ws, _) = support::ws_connect(proxy.addr, OWN, "/ws", &route("ws-only", "tok-ws"))
        .await
        .expect("upgrade");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !(marked("priv-a") && marked("ws-only")) {
        assert!(
            std::time::Instant::now() < deadline,
            "header-routed activity never reached redis"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!marked("priv-b"), "a refused request kept priv-b awake");
    drop(ws);
}
