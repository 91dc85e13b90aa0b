//! Issue #12, class 3: a sandbox's forwarded path never leaves `/sandboxes/<id>/toolbox/proxy/
//! <port>/` (preview), `/sandboxes/<id>/toolbox/` (toolbox) or the root (direct mode). Every
//! request path with a dot-segment (raw, percent-encoded in any case, behind `;` parameters), an
//! encoded slash or backslash, or a raw backslash is a 400 `BAD_PATH`; ordinary paths pass byte
//! for byte. Checked straight against the runner emulator and through nginx as a normalising hop
//! in front of it, the setup where a dot-segment would reach another sandbox.
mod support;

use std::net::SocketAddr;

use support::nginx::Nginx;
use support::runner::Runner;
use support::{body_of, raw, status_of, Proxy};

const PREVIEW_PREFIX: &str = "/sandboxes/attacker/toolbox/proxy/3000";
const TOOLBOX_PREFIX: &str = "/sandboxes/attacker/toolbox";

/// Paths an attacker appends to its own sandbox's URL to reach out of it. Each is sent as a
/// preview path, as a toolbox `<rest>` and in direct mode.
const ATTACKS: &[&str] = &[
    "/../",
    "/..",
    "/a/../../x",
    "/../../../../victim/toolbox/proxy/3000/secret",
    "/../../victim/toolbox/secret",
    "/%2e%2e/",
    "/%2E%2e/",
    "/.%2e/",
    "/%2e./",
    "/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fvictim/toolbox/proxy/3000/secret",
    "/..%2f",
    "/..%2F..%2f",
    "/a%2fb",
    "/..\\",
    "/..\\..\\..\\..\\victim\\toolbox\\proxy\\3000\\secret",
    "/%5c..",
    "/a%5Cb",
    "/..;/",
    "/..;x=1/..;/victim",
    "/.;/",
    "/.;x",
    "/..%3b/",
    "/./",
    "/.",
    "/%2e/",
    "/%2E",
    "/%252e%252e/",
    "/%c0%ae%c0%ae/",
    "/a%00b",
];

/// Ordinary paths (and queries) that must reach the app unchanged.
const ORDINARY: &[&str] = &[
    "/",
    "/a..b/",
    "/...",
    "/..../x",
    "/.well-known/x",
    "/a.b/c",
    "/files/archive.tar.gz",
    "/a%20b",
    "/%E2%9C%93/caf%C3%A9",
    "/x;param=1/y",
    "/x;..",
    "/100%25",
    "/q?path=../../victim&enc=%2e%2e%2f&bs=%5c",
];

#[derive(Clone, Copy, Debug)]
enum Via {
    Preview,
    Toolbox,
    /// Direct mode: the sandbox's address and the preview port, no runner prefix.
    Direct,
}

struct Setup {
    proxy: Proxy,
    /// The direct-mode sandbox's port (the emulator's, so it answers there too).
    direct_port: u16,
}

/// `attacker` (public) and `victim` (private) on one runner at `runner_url`, and a direct-mode
/// sandbox whose app is the emulator at `direct`.
fn start(runner_url: SocketAddr, key: &str, direct: SocketAddr) -> Setup {
    let config = format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [[registry.runners]]\nid = \"runner-1\"\nurl = \"http://{runner_url}\"\napi_key = \"{key}\"\n\
         [[registry.sandboxes]]\nid = \"attacker\"\nrunner = \"runner-1\"\npublic = true\n\
         auth_token = \"tok-attacker\"\n\
         [[registry.sandboxes]]\nid = \"victim\"\nrunner = \"runner-1\"\nauth_token = \"tok-victim\"\n\
         [[registry.sandboxes]]\nid = \"direct\"\naddress = \"127.0.0.1\"\npublic = true\n"
    );
    Setup {
        proxy: Proxy::start(&config),
        direct_port: direct.port(),
    }
}

/// The raw request for `path` via `via` (clients normalise paths, so no HTTP client is used),
/// and the target prefix the runner must see it under.
fn request(setup: &Setup, via: Via, path: &str, accept: &str) -> (Vec<u8>, String) {
    let (host, target, credential, prefix) = match via {
        Via::Preview => (
            "3000-attacker.preview.localhost".to_string(),
            path.to_string(),
            "",
            PREVIEW_PREFIX.to_string(),
        ),
        Via::Toolbox => (
            "localhost".to_string(),
            format!("/toolbox/attacker{path}"),
            "X-Daytona-Preview-Token: tok-attacker\r\n",
            TOOLBOX_PREFIX.to_string(),
        ),
        // Under `/app`: the emulator keeps `GET /` for its health check.
        Via::Direct => (
            format!("{}-direct.preview.localhost", setup.direct_port),
            format!("/app{path}"),
            "",
            "/app".to_string(),
        ),
    };
    let bytes = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\n{credential}Accept: {accept}\r\n\
         Connection: close\r\n\r\n"
    );
    (bytes.into_bytes(), prefix)
}

/// Targets the runner received since `before` that are not inside `prefix` + `/`.
fn escapes(runner: &Runner, before: usize, prefix: &str) -> Vec<String> {
    let inside = format!("{prefix}/");
    runner.seen()[before..]
        .iter()
        .map(|s| s.target.clone())
        .filter(|t| !t.starts_with(&inside))
        .collect()
}

#[tokio::test]
async fn dot_segments_and_encoded_slashes_are_refused_before_the_runner() {
    let runner = Runner::start("runner-key").await;
    let setup = start(runner.addr, "runner-key", runner.addr);
    for via in [Via::Preview, Via::Toolbox, Via::Direct] {
        for (i, path) in ATTACKS.iter().enumerate() {
            // Browsers get the HTML page, API clients JSON: alternate to cover both.
            let html = i % 2 == 1;
            let accept = if html {
                "text/html"
            } else {
                "application/json"
            };
            let (bytes, _) = request(&setup, via, path, accept);
            let before = runner.seen().len();
            let answer = raw(setup.proxy.addr, bytes).await;
            let reached: Vec<String> = runner.seen()[before..]
                .iter()
                .map(|s| s.target.clone())
                .collect();
            assert!(
                reached.is_empty(),
                "{via:?} {path:?} reached the runner as {reached:?}"
            );
            assert_eq!(status_of(&answer), 400, "{via:?} {path:?}: {answer}");
            if html {
                assert!(
                    answer.contains("text/html") && body_of(&answer).contains("BAD_PATH"),
                    "{via:?} {path:?}: {answer}"
                );
            } else {
                let json: serde_json::Value = serde_json::from_str(body_of(&answer))
                    .unwrap_or_else(|e| panic!("{via:?} {path:?}: not JSON ({e}): {answer}"));
                assert_eq!(json["code"], "BAD_PATH", "{via:?} {path:?}");
            }
        }
    }
}

#[tokio::test]
async fn ordinary_paths_pass_byte_for_byte() {
    let runner = Runner::start("runner-key").await;
    let setup = start(runner.addr, "runner-key", runner.addr);
    for via in [Via::Preview, Via::Toolbox, Via::Direct] {
        for path in ORDINARY {
            let (bytes, prefix) = request(&setup, via, path, "*/*");
            let before = runner.seen().len();
            let answer = raw(setup.proxy.addr, bytes).await;
            assert_eq!(status_of(&answer), 200, "{via:?} {path:?}: {answer}");
            let seen: Vec<String> = runner.seen()[before..]
                .iter()
                .map(|s| s.target.clone())
                .collect();
            assert_eq!(seen, [format!("{prefix}{path}")], "{via:?} {path:?}");
        }
    }
}

/// nginx in front of the runner emulator (`proxy_pass http://emulator/;`) decodes and resolves
/// dot-segments: with sandgate in front of it, no request may reach any path outside the
/// attacker's own prefix, let alone the victim's.
#[tokio::test]
async fn nothing_leaves_the_sandbox_through_a_normalising_hop() {
    let runner = Runner::start("runner-key").await;
    let Some(nginx) = Nginx::normalising_proxy_to(runner.addr) else {
        return;
    };
    let setup = start(nginx.addr, "runner-key", runner.addr);
    for via in [Via::Preview, Via::Toolbox] {
        for path in ATTACKS {
            let (bytes, prefix) = request(&setup, via, path, "*/*");
            let before = runner.seen().len();
            let answer = raw(setup.proxy.addr, bytes).await;
            let escaped = escapes(&runner, before, &prefix);
            assert!(
                escaped.is_empty(),
                "{via:?} {path:?} left {prefix}/ through nginx: the runner saw {escaped:?}\n\
                 nginx access log:\n{}",
                nginx.access_log()
            );
            assert_eq!(status_of(&answer), 400, "{via:?} {path:?}: {answer}");
        }
        for path in ORDINARY {
            let (bytes, prefix) = request(&setup, via, path, "*/*");
            let before = runner.seen().len();
            let answer = raw(setup.proxy.addr, bytes).await;
            assert_eq!(status_of(&answer), 200, "{via:?} {path:?}: {answer}");
            let escaped = escapes(&runner, before, &prefix);
            assert!(escaped.is_empty(), "{via:?} {path:?}: {escaped:?}");
            assert_eq!(runner.seen().len(), before + 1, "{via:?} {path:?}");
        }
    }
    assert!(
        runner
            .seen()
            .iter()
            .all(|s| !s.target.contains("/sandboxes/victim")),
        "the victim sandbox was reached"
    );
    // Control: the hop does normalise. Sent to nginx directly (as sandgate used to forward it),
    // the same path lands in the victim's sandbox.
    let before = runner.seen().len();
    let direct = format!(
        "GET {PREVIEW_PREFIX}/../../../../victim/toolbox/proxy/3000/secret HTTP/1.1\r\n\
         Host: runner\r\nX-Daytona-Authorization: Bearer runner-key\r\nConnection: close\r\n\r\n"
    );
    let answer = raw(nginx.addr, direct).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(
        escapes(&runner, before, PREVIEW_PREFIX),
        ["/sandboxes/victim/toolbox/proxy/3000/secret"]
    );
}

/// Over HTTP/2 (h2c prior knowledge) the path arrives as `:path`: the same rule.
#[tokio::test]
async fn http2_paths_get_the_same_rule() {
    use bytes::Bytes;
    use http_body_util::Empty;
    let runner = Runner::start("runner-key").await;
    let setup = start(runner.addr, "runner-key", runner.addr);
    let stream = tokio::net::TcpStream::connect(setup.proxy.addr)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let rows: Vec<(&str, u16)> = ATTACKS
        .iter()
        .map(|p| (*p, 400))
        .chain(ORDINARY.iter().map(|p| (*p, 200)))
        .collect();
    for (path, status) in rows {
        let uri = format!("http://3000-attacker.preview.localhost{path}");
        let request = http::Request::get(&uri)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let before = runner.seen().len();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), status, "{path:?}");
        let seen: Vec<String> = runner.seen()[before..]
            .iter()
            .map(|s| s.target.clone())
            .collect();
        let expected: Vec<String> = (status == 200)
            .then(|| format!("{PREVIEW_PREFIX}{path}"))
            .into_iter()
            .collect();
        assert_eq!(seen, expected, "{path:?}");
    }
}
