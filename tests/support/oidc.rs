//! A test identity provider over real sockets: OIDC discovery, a JWKS endpoint whose keys the
//! test can switch (rotation), an authorize endpoint that redirects straight back with a code,
//! and a token endpoint that checks PKCE (S256) and issues RS256 ID tokens signed with the
//! fixture keys in `tests/fixtures/`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};

pub fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The public JWK of fixture key `a` or `b` (RSA, kid `key-a`/`key-b`) or `ec` (P-256).
pub fn jwk(name: &str) -> serde_json::Value {
    serde_json::from_str(&fixture(&format!("{name}.jwk.json"))).unwrap()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An RS256 token signed with fixture key `rsa_<name>.pem`, header kid `key-<name>`.
pub fn sign_rs256(name: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(format!("key-{name}"));
    let key = EncodingKey::from_rsa_pem(fixture(&format!("rsa_{name}.pem")).as_bytes()).unwrap();
    encode(&header, claims, &key).unwrap()
}

pub fn sign_es256(claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("key-ec".into());
    let key = EncodingKey::from_ec_pem(fixture("ec_pk8.pem").as_bytes()).unwrap();
    encode(&header, claims, &key).unwrap()
}

pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

struct Code {
    nonce: Option<String>,
    challenge: String,
    redirect_uri: String,
}

pub struct IdpState {
    pub issuer: String,
    pub client_id: String,
    /// Keys served at `/jwks`.
    pub jwks: Mutex<Vec<serde_json::Value>>,
    /// Fixture key signing ID tokens (`a` or `b`).
    pub signing_key: Mutex<String>,
    /// `organization_id` claim of issued ID tokens.
    pub organization: Mutex<String>,
    codes: Mutex<HashMap<String, Code>>,
    pub jwks_fetches: AtomicUsize,
    pub codes_issued: AtomicUsize,
    /// Issue ID tokens with a nonce other than the one requested.
    pub wrong_nonce: std::sync::atomic::AtomicBool,
    pub pkce_failures: AtomicUsize,
    pub tokens_issued: AtomicUsize,
}

pub struct Idp {
    pub addr: SocketAddr,
    pub state: Arc<IdpState>,
}

impl Idp {
    pub async fn start(client_id: &str) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState {
            issuer: format!("http://{addr}"),
            client_id: client_id.into(),
            jwks: Mutex::new(vec![jwk("rsa_a")]),
            signing_key: Mutex::new("a".into()),
            organization: Mutex::new("org-1".into()),
            codes: Mutex::new(HashMap::new()),
            jwks_fetches: AtomicUsize::new(0),
            codes_issued: AtomicUsize::new(0),
            wrong_nonce: std::sync::atomic::AtomicBool::new(false),
            pkce_failures: AtomicUsize::new(0),
            tokens_issued: AtomicUsize::new(0),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Idp { addr, state }
    }

    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.state.issuer)
    }
}

fn params(raw: &str) -> HashMap<String, String> {
    raw.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let v = v.replace('+', " ");
            (
                percent_encoding::percent_decode_str(k)
                    .decode_utf8_lossy()
                    .into_owned(),
                percent_encoding::percent_decode_str(&v)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        })
        .collect()
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

async fn handle(state: &IdpState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = params(req.uri().query().unwrap_or(""));
    let issuer = &state.issuer;
    match path.as_str() {
        "/.well-known/openid-configuration" => json(
            StatusCode::OK,
            serde_json::json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{issuer}/authorize"),
                "token_endpoint": format!("{issuer}/token"),
                "jwks_uri": format!("{issuer}/jwks"),
            }),
        ),
        "/jwks" => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys = state.jwks.lock().unwrap().clone();
            json(StatusCode::OK, serde_json::json!({ "keys": keys }))
        }
        "/authorize" => {
            let ok = query.get("response_type").map(String::as_str) == Some("code")
                && query.get("client_id") == Some(&state.client_id)
                && query.get("code_challenge_method").map(String::as_str) == Some("S256")
                && query.get("code_challenge").is_some_and(|c| c.len() == 43);
            if !ok {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "invalid_request"}),
                );
            }
            let n = state.codes_issued.fetch_add(1, Ordering::SeqCst) + 1;
            let code = format!("code-{n}");
            let redirect_uri = query["redirect_uri"].clone();
            state.codes.lock().unwrap().insert(
                code.clone(),
                Code {
                    nonce: query.get("nonce").cloned(),
                    challenge: query["code_challenge"].clone(),
                    redirect_uri: redirect_uri.clone(),
                },
            );
            let mut r = Response::new(Full::default());
            *r.status_mut() = StatusCode::FOUND;
            let location = format!(
                "{redirect_uri}?code={}&state={}",
                enc(&code),
                enc(query.get("state").map(String::as_str).unwrap_or(""))
            );
            r.headers_mut()
                .insert("location", location.parse().unwrap());
            r
        }
        "/token" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form = params(std::str::from_utf8(&body).unwrap());
            let code = form
                .get("code")
                .and_then(|c| state.codes.lock().unwrap().remove(c));
            let Some(code) = code else {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "invalid_grant"}),
                );
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            if computed != code.challenge
                || form.get("redirect_uri") != Some(&code.redirect_uri)
                || form.get("grant_type").map(String::as_str) != Some("authorization_code")
                || form.get("client_id") != Some(&state.client_id)
            {
                eprintln!(
                    "IDP token refused: form {form:?} challenge {}",
                    code.challenge
                );
                state.pkce_failures.fetch_add(1, Ordering::SeqCst);
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "invalid_grant"}),
                );
            }
            let key = state.signing_key.lock().unwrap().clone();
            let nonce = if state.wrong_nonce.load(Ordering::SeqCst) {
                Some("another-login".to_string())
            } else {
                code.nonce.clone()
            };
            let org = state.organization.lock().unwrap().clone();
            let id_token = sign_rs256(
                &key,
                &serde_json::json!({
                    "iss": issuer, "aud": state.client_id, "sub": "user-1",
                    "iat": now(), "exp": now() + 300, "organization_id": org,
                    "nonce": nonce,
                }),
            );
            state.tokens_issued.fetch_add(1, Ordering::SeqCst);
            json(
                StatusCode::OK,
                serde_json::json!({
                    "access_token": "opaque-access-token", "token_type": "Bearer",
                    "expires_in": 300, "id_token": id_token,
                }),
            )
        }
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not_found"}),
        ),
    }
}
