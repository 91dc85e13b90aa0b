//! Issue #15, identity for the app: a user's credential (bearer JWT, API key, OIDC session)
//! reaches the app as `X-Sandgate-Identity`, a JWT signed by the proxy, verified here by the
//! documented verifiers (`examples/identity/verify.py` with PyJWT, `verify.mjs` with Node's
//! crypto) against the proxy's JWKS. The attacks: a client's own header never reaches the app
//! (any credential or none, any route, trailers too), a token for one sandbox is refused by a
//! sibling's verifier, and no private key part leaves the proxy.
mod support;

use std::process::Command;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use support::browser::Browser;
use support::oidc::{now, sign_hs256, Idp};
use support::runner::{Runner, Seen};
use support::{raw, send, Proxy, Reply};

const JWT_SECRET: &str = "identity-test-secret-0123456789abcdef";
const API_KEY: &str = "apikey-org-1";
const HEADER: &str = "x-sandgate-identity";
const FORGED: &str = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `[identity]` with the Ed25519 key signing and the P-256 key published (a rotation).
fn identity_section(enabled: bool) -> String {
    format!(
        r#"
[identity]
enabled = {enabled}
issuer = "sandgate"
[[identity.keys]]
kid = "ed-1"
algorithm = "EdDSA"
private_key_file = "{}"
[[identity.keys]]
kid = "ec-2"
algorithm = "ES256"
private_key_file = "{}"
"#,
        fixture("identity_ed25519.pem"),
        fixture("ec_pk8.pem"),
    )
}

/// On `runner-1`: `sbx-a` and `sbx-b` opted in, `sbx-off` not, `sbx-pub` public and opted in;
/// all of `org-1`.
fn config(runner: &Runner, enabled: bool) -> String {
    runner.config(&format!(
        r#"
[auth]
cookie_keys = ["0123456789abcdef0123456789abcdef"]
max_failures_per_minute = 1000
[auth.jwt]
hs256_secret = "{JWT_SECRET}"
[[registry.api_keys]]
key = "{API_KEY}"
organization = "org-1"
[[registry.sandboxes]]
id = "sbx-a"
runner = "runner-1"
organization = "org-1"
auth_token = "tok-a"
identity = true
[[registry.sandboxes]]
id = "sbx-b"
runner = "runner-1"
organization = "org-1"
identity = true
[[registry.sandboxes]]
id = "sbx-off"
runner = "runner-1"
organization = "org-1"
[[registry.sandboxes]]
id = "sbx-pub"
runner = "runner-1"
organization = "org-1"
public = true
identity = true
[[registry.signed_previews]]
token = "signedlinktok001"
port = 3000
sandbox = "sbx-a"
{}"#,
        identity_section(enabled)
    ))
}

fn user_jwt(sub: &str) -> String {
    sign_hs256(
        JWT_SECRET.as_bytes(),
        &serde_json::json!({"sub": sub, "exp": now() + 300, "organization_id": "org-1"}),
    )
}

/// One request through the proxy; returns what the runner saw of it.
async fn through(
    proxy: &Proxy,
    runner: &Runner,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Seen {
    let before = runner.seen().len();
    let reply = send(proxy.addr, "GET", host, path, headers, b"").await;
    assert_eq!(reply.status, 200, "{host}{path}: {}", reply.text());
    runner.wait_requests(before + 1).await;
    runner.last()
}

fn claims_of(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Runs a documented verifier; `Ok(claims)` or `Err(its stderr)`. A missing interpreter or
/// library is a failure, not a skip (CI installs them: `.ci/run`).
fn run_verifier(
    program: &str,
    script: &str,
    jwks: &str,
    token: &str,
    aud: &str,
) -> Result<serde_json::Value, String> {
    let path = format!("{}/examples/identity/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(program)
        .args([&path, jwks, token, aud])
        .output()
        .unwrap_or_else(|e| panic!("{program} is needed to run {script}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(stderr);
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{script} printed no claims ({e}): {stderr}"))
}

const VERIFIERS: [(&str, &str); 2] = [("python3", "verify.py"), ("node", "verify.mjs")];

async fn verifiers(
    jwks: String,
    token: String,
    aud: String,
) -> Vec<(&'static str, Result<serde_json::Value, String>)> {
    tokio::task::spawn_blocking(move || {
        VERIFIERS
            .iter()
            .map(|(program, script)| (*script, run_verifier(program, script, &jwks, &token, &aud)))
            .collect()
    })
    .await
    .unwrap()
}

fn jwks_url(proxy: &Proxy) -> String {
    format!("http://{}/.well-known/sandgate-jwks.json", proxy.addr)
}

#[tokio::test]
async fn user_credentials_reach_the_app_as_an_identity_its_verifier_accepts_and_a_sibling_refuses()
{
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(&runner, true));
    let jwt = user_jwt("alice");
    let cases = [
        (format!("Bearer {jwt}"), "alice".to_string(), "jwt"),
        (
            format!("Bearer {API_KEY}"),
            format!(
                "api-key:{}",
                &hex::encode(Sha256::digest(API_KEY.as_bytes()))[..16]
            ),
            "api_key",
        ),
    ];
    for (authorization, sub, kind) in cases {
        let seen = through(
            &proxy,
            &runner,
            "3000-sbx-a.preview.localhost",
            "/echo",
            &[("authorization", &authorization), (HEADER, FORGED)],
        )
        .await;
        let values = seen.all(HEADER);
        assert_eq!(
            values.len(),
            1,
            "{kind}: one header, the proxy's: {values:?}"
        );
        let token = values[0].clone();
        assert_ne!(token, FORGED);
        let claims = claims_of(&token);
        assert_eq!(claims["sub"], sub.as_str(), "{claims}");
        assert_eq!(claims["kind"], kind);
        assert_eq!(claims["org"], "org-1");
        assert_eq!(claims["aud"], "sbx-a:3000");
        let life = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert!(life <= 60, "{claims}");
        assert!(
            seen.header("authorization").is_none(),
            "the credential itself never reaches the app"
        );

        // The app's verifiers accept it for its own sandbox and port ...
        for (script, result) in
            verifiers(jwks_url(&proxy), token.clone(), "sbx-a:3000".into()).await
        {
            let verified = result.unwrap_or_else(|e| panic!("{script} refused a valid token: {e}"));
            assert_eq!(verified["sub"], sub.as_str(), "{script}");
        }
        // ... a sibling sandbox (or another port) refuses it: no replay across sandboxes ...
        for aud in ["sbx-b:3000", "sbx-a:3001"] {
            for (script, result) in verifiers(jwks_url(&proxy), token.clone(), aud.into()).await {
                assert!(
                    result.is_err(),
                    "{script} accepted a token for sbx-a:3000 as {aud}"
                );
            }
        }
        // ... and a token whose claims were changed is refused.
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let mut forged_claims = claims.clone();
        forged_claims["sub"] = "admin".into();
        parts[1] = URL_SAFE_NO_PAD.encode(forged_claims.to_string());
        let tampered = parts.join(".");
        for (script, result) in verifiers(jwks_url(&proxy), tampered, "sbx-a:3000".into()).await {
            assert!(result.is_err(), "{script} accepted a tampered token");
        }
    }

    // Reused while fresh (signing is not per request), and bound to its sandbox.
    let auth = format!("Bearer {jwt}");
    let headers = [("authorization", auth.as_str())];
    let via = |host| through(&proxy, &runner, host, "/", &headers);
    let first = via("3000-sbx-a.preview.localhost").await;
    let again = via("3000-sbx-a.preview.localhost").await;
    assert_eq!(first.header(HEADER), again.header(HEADER));
    let sibling = via("3000-sbx-b.preview.localhost").await;
    assert_eq!(
        claims_of(&sibling.header(HEADER).unwrap())["aud"],
        "sbx-b:3000"
    );
}

/// One request with a forged identity header: does the app see the proxy's own header?
struct Case<'a> {
    name: &'a str,
    proxy: &'a Proxy,
    host: &'a str,
    path: &'a str,
    credential: Option<(&'a str, &'a str)>,
    expected: bool,
}

#[tokio::test]
async fn a_spoofed_identity_header_never_reaches_the_app() {
    let runner = Runner::start("runner-key").await;
    let enabled = Proxy::start(&config(&runner, true));
    let disabled = Proxy::start(&config(&runner, false));
    let jwt = format!("Bearer {}", user_jwt("alice"));
    let bearer = Some(("authorization", jwt.as_str()));
    let preview = "3000-sbx-a.preview.localhost";
    let public = "3000-sbx-pub.preview.localhost";
    let (own, toolbox) = ("proxy.localhost", "/toolbox/sbx-a/files");
    let on = |name, host, path, credential, expected| Case {
        name,
        proxy: &enabled,
        host,
        path,
        credential,
        expected,
    };
    let off = |name, host, path, credential| Case {
        proxy: &disabled,
        ..on(name, host, path, credential, false)
    };
    let token = Some(("x-daytona-preview-token", "tok-a"));
    let signed = "3000-signedlinktok001.preview.localhost";
    let cases = [
        on("public sandbox, no credential", public, "/", None, false),
        on("preview token", preview, "/", token, false),
        on("signed link", signed, "/", None, false),
        on("valid JWT", preview, "/", bearer, true),
        on(
            "sandbox not opted in",
            "3000-sbx-off.preview.localhost",
            "/",
            bearer,
            false,
        ),
        on("toolbox", own, toolbox, bearer, false),
        off("identity off, valid JWT", preview, "/", bearer),
        off("identity off, public", public, "/", None),
        off("identity off, toolbox", own, toolbox, bearer),
    ];
    let mut failures = Vec::new();
    for Case {
        name,
        proxy,
        host,
        path,
        credential,
        expected,
    } in cases
    {
        let mut headers = vec![(HEADER, FORGED), ("X-Sandgate-Identity", "second-forgery")];
        headers.extend(credential);
        let seen = through(proxy, &runner, host, path, &headers).await;
        let values = seen.all(HEADER);
        let forged = values.iter().any(|v| v == FORGED || v == "second-forgery");
        let ok = !forged && values.len() == usize::from(expected);
        if !ok {
            failures.push(format!("{name}: the app saw {values:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nor as a trailer.
    let request = "POST /echo HTTP/1.1\r\nHost: 3000-sbx-pub.preview.localhost\r\n\
         Transfer-Encoding: chunked\r\nTrailer: x-sandgate-identity, x-checksum\r\n\
         Connection: close\r\n\r\n4\r\nbody\r\n0\r\n\
         x-sandgate-identity: forged.in.trailer\r\nx-checksum: abc\r\n\r\n";
    let reply = tokio::time::timeout(Duration::from_secs(20), raw(enabled.addr, request))
        .await
        .expect("an answer");
    assert_eq!(support::status_of(&reply), 200, "{reply}");
    let echo: serde_json::Value = serde_json::from_str(support::body_of(&reply)).unwrap();
    assert_eq!(
        echo["trailers"],
        serde_json::json!([["x-checksum", "abc"]]),
        "{echo}"
    );
}

#[tokio::test]
async fn the_jwks_publishes_every_public_key_and_no_private_part() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(&runner, true));
    let reply: Reply = send(
        proxy.addr,
        "GET",
        "proxy.localhost",
        "/.well-known/sandgate-jwks.json",
        &[],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["content-type"], "application/jwk-set+json");
    assert_eq!(reply.headers["cache-control"], "public, max-age=300");
    let jwks = reply.json();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(
        kids,
        ["ed-1", "ec-2"],
        "every key published, the signing one first"
    );
    for key in jwks["keys"].as_array().unwrap() {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                key.get(private).is_none(),
                "private part {private:?} in {key}"
            );
        }
    }

    // The private keys appear nowhere the sandbox or a client can see.
    let seen = through(
        &proxy,
        &runner,
        "3000-sbx-a.preview.localhost",
        "/",
        &[("authorization", &format!("Bearer {}", user_jwt("alice")))],
    )
    .await;
    let everything = format!("{:?} {}", seen.headers, reply.text());
    for file in ["identity_ed25519.pem", "ec_pk8.pem"] {
        for secret in private_key_encodings(&fixture(file)) {
            assert!(
                !everything.contains(&secret),
                "{file}'s private key leaked: {everything}"
            );
        }
    }
    assert_eq!(claims_of(&seen.header(HEADER).unwrap())["kind"], "jwt");
    let header = seen.header(HEADER).unwrap();
    let jwt_header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(header.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (jwt_header["alg"].as_str(), jwt_header["kid"].as_str()),
        (Some("EdDSA"), Some("ed-1"))
    );

    // On a preview host the path is the sandbox's own: it reaches the app, not the proxy's keys.
    let app_path = through(
        &proxy,
        &runner,
        "3000-sbx-pub.preview.localhost",
        "/.well-known/sandgate-jwks.json",
        &[],
    )
    .await;
    assert!(app_path
        .target
        .ends_with("/proxy/3000/.well-known/sandgate-jwks.json"));

    // Off: no JWKS.
    let off = Proxy::start(&config(&runner, false));
    let reply = send(
        off.addr,
        "GET",
        "proxy.localhost",
        "/.well-known/sandgate-jwks.json",
        &[],
        b"",
    )
    .await;
    assert_eq!(reply.status, 404);
}

/// The PEM body, and the key's trailing 32 bytes (the Ed25519 seed, the P-256 scalar sits
/// inside) in base64url, as a JWK `d` would carry them.
fn private_key_encodings(path: &str) -> Vec<String> {
    let pem = std::fs::read_to_string(path).unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .unwrap();
    let mut out = vec![body.clone()];
    if der.len() == 48 {
        out.push(URL_SAFE_NO_PAD.encode(&der[16..]));
    } else {
        // PKCS#8 P-256: the 32-byte scalar follows `04 20` after the version and algorithm.
        if let Some(at) = der.windows(2).position(|w| w == [0x04, 0x20]) {
            out.push(URL_SAFE_NO_PAD.encode(&der[at + 2..at + 34]));
        }
    }
    out
}

#[tokio::test]
async fn an_oidc_login_reaches_the_app_as_its_user() {
    let idp = Idp::start("sandgate-client").await;
    let runner = Runner::start("runner-key").await;
    let port = support::free_port();
    let login = format!("login.localhost:{port}");
    let proxy = Proxy::start(&runner.config(&format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
[auth]
cookie_keys = ["0123456789abcdef0123456789abcdef"]
max_failures_per_minute = 1000
[auth.oidc]
issuer = "{issuer}"
client_id = "sandgate-client"
login_host = "{login}"
[[registry.sandboxes]]
id = "priv"
runner = "runner-1"
organization = "org-1"
identity = true
{identity}"#,
        issuer = idp.issuer(),
        identity = identity_section(true),
    )));
    let mut b = Browser::new(proxy.addr);
    b.route(&idp.addr.to_string(), idp.addr);
    let start = format!("http://3000-priv.preview.localhost:{port}/app");
    let (reply, url) = b.navigate(&start).await;
    assert_eq!(reply.status, 200, "{url}: {}", reply.text());
    let seen = runner.last();
    let token = seen.header(HEADER).expect("the app got an identity");
    let claims = claims_of(&token);
    assert_eq!(
        (
            claims["sub"].as_str(),
            claims["org"].as_str(),
            claims["kind"].as_str(),
            claims["aud"].as_str()
        ),
        (
            Some("user-1"),
            Some("org-1"),
            Some("oidc"),
            Some("priv:3000")
        ),
        "{claims}"
    );
    for (script, result) in verifiers(jwks_url(&proxy), token, "priv:3000".into()).await {
        result.unwrap_or_else(|e| panic!("{script}: {e}"));
    }
}

#[tokio::test]
async fn an_es256_key_from_keygen_signs_tokens_both_verifiers_accept() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("identity-p256.pem");
    let keygen = || {
        Command::new(support::BIN)
            .args(["identity", "keygen", "--algorithm", "es256", "--out"])
            .arg(&key)
            .output()
            .unwrap()
    };
    let first = keygen();
    assert!(first.status.success(), "{first:?}");
    assert!(
        !keygen().status.success(),
        "an existing key is never overwritten"
    );
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&runner.config(&format!(
        r#"
[auth.jwt]
hs256_secret = "{JWT_SECRET}"
[[registry.sandboxes]]
id = "sbx-a"
runner = "runner-1"
organization = "org-1"
identity = true
[identity]
enabled = true
[[identity.keys]]
kid = "p256"
algorithm = "ES256"
private_key_file = "{}"
"#,
        key.display()
    )));
    let seen = through(
        &proxy,
        &runner,
        "8080-sbx-a.preview.localhost",
        "/",
        &[("authorization", &format!("Bearer {}", user_jwt("bob")))],
    )
    .await;
    let token = seen.header(HEADER).expect("an identity");
    for (script, result) in verifiers(jwks_url(&proxy), token.clone(), "sbx-a:8080".into()).await {
        let claims = result.unwrap_or_else(|e| panic!("{script} refused an ES256 token: {e}"));
        assert_eq!(claims["sub"], "bob");
    }
    for (script, result) in verifiers(jwks_url(&proxy), token, "sbx-a:3000".into()).await {
        assert!(
            result.is_err(),
            "{script} accepted a token for another port"
        );
    }
}

/// The per-sandbox opt-in from the other backends: a Redis hash field, a Daytona label.
#[tokio::test]
async fn redis_fields_and_daytona_labels_opt_sandboxes_in() {
    use support::control_plane::{ControlPlane, FakeSandbox};
    use support::redis::RedisServer;
    let runner = Runner::start("runner-key").await;
    let common = format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n[auth]\nmax_failures_per_minute = 1000\n\
         [auth.jwt]\nhs256_secret = \"{JWT_SECRET}\"\n{}",
        identity_section(true)
    );

    let redis = RedisServer::start();
    let runner_url = format!("http://{}", runner.addr);
    redis.cli(&[
        "HSET",
        "sandgate:runner:r1",
        "url",
        &runner_url,
        "api_key",
        "runner-key",
    ]);
    for (id, identity) in [("red-on", "true"), ("red-off", "false")] {
        redis.cli(&[
            "HSET",
            &format!("sandgate:sandbox:{id}"),
            "runner",
            "r1",
            "organization",
            "org-1",
            "identity",
            identity,
        ]);
    }
    let via_redis = Proxy::start(&format!(
        "{common}[registry]\nbackend = \"redis\"\n[redis]\nurl = \"{}\"\ntimeout = \"500ms\"\n",
        redis.url()
    ));

    let cp = ControlPlane::start("svc-key").await;
    cp.add_runner("runner-1", &runner_url, "runner-key");
    let mut on = FakeSandbox::new("runner-1", false);
    on.labels
        .insert("sandgate.io/identity".into(), "true".into());
    cp.add_sandbox("day-on", on);
    cp.add_sandbox("day-off", FakeSandbox::new("runner-1", false));
    let via_daytona = Proxy::start(&format!(
        "{common}[registry]\nbackend = \"daytona\"\n\
         [daytona]\napi_url = \"{}\"\napi_key = \"svc-key\"\ntimeout = \"1s\"\n",
        cp.api_url()
    ));

    let bearer = format!("Bearer {}", user_jwt("carol"));
    for (proxy, id, expected) in [
        (&via_redis, "red-on", true),
        (&via_redis, "red-off", false),
        (&via_daytona, "day-on", true),
        (&via_daytona, "day-off", false),
    ] {
        let host = format!("3000-{id}.preview.localhost");
        let seen = through(proxy, &runner, &host, "/", &[("authorization", &bearer)]).await;
        let token = seen.header(HEADER);
        assert_eq!(token.is_some(), expected, "{id}: {token:?}");
        if let Some(token) = token {
            let claims = claims_of(&token);
            assert_eq!(claims["aud"], format!("{id}:3000"));
            assert_eq!(claims["sub"], "carol");
        }
    }
}

/// The attack, through the doors the other parts of issue 15 opened: a header-routed request
/// names its sandbox by header, so the identity's audience must be that sandbox's (never the
/// host's), and a spoofed header is removed there and on a WebSocket upgrade too.
#[tokio::test]
async fn header_routed_and_upgraded_requests_carry_only_the_proxys_identity_for_their_sandbox() {
    let runner = Runner::start("runner-key").await;
    let proxy = Proxy::start(&config(&runner, true));
    let bearer = format!("Bearer {}", user_jwt("alice"));
    let routed = |id: &'static str| {
        vec![
            ("x-daytona-sandbox-id", id),
            ("x-daytona-sandbox-port", "3000"),
            (HEADER, FORGED),
        ]
    };
    // A JWT on the own host naming sbx-b: the app gets sbx-b's audience.
    let mut headers = routed("SBX-B");
    headers.push(("authorization", &bearer));
    let seen = through(&proxy, &runner, "proxy.localhost", "/", &headers).await;
    let values = seen.all(HEADER);
    assert_eq!(values.len(), 1, "{values:?}");
    assert_eq!(claims_of(&values[0])["aud"], "sbx-b:3000");
    // A preview token names no user: the forged header is only removed.
    let mut headers = routed("sbx-a");
    headers.push(("x-daytona-preview-token", "tok-a"));
    let seen = through(&proxy, &runner, "proxy.localhost", "/", &headers).await;
    assert_eq!(seen.all(HEADER), Vec::<String>::new());

    // A WebSocket upgrade: with a preview token, nothing; with a JWT, the proxy's own.
    for (credential, expected) in [
        (("x-daytona-preview-token", "tok-a"), 0),
        (("authorization", bearer.as_str()), 1),
    ] {
        let before = runner.seen().len();
        let (ws, response) = support::ws_connect(
            proxy.addr,
            "3000-sbx-a.preview.localhost",
            "/ws",
            &[credential, (HEADER, FORGED)],
        )
        .await
        .expect("upgraded");
        assert_eq!(response.status(), 101);
        drop(ws);
        runner.wait_requests(before + 1).await;
        let values = runner.last().all(HEADER);
        assert!(
            values.len() == expected && !values.iter().any(|v| v == FORGED),
            "{}: {values:?}",
            credential.0
        );
    }
}
