//! Issue #12, class 6: a credential with an expiry must stop working when it expires, not when
//! the proxy's cache entry for it does (2 min by default). Each row uses a short-lived
//! credential once (so a verdict is cached), waits until just past its expiry, and uses it
//! again: the second use must be refused at once.
mod support;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::oidc::sign_hs256;
use support::redis::RedisServer;
use support::{recorder, send, Proxy};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[derive(Debug, Clone, Copy)]
enum Credential {
    /// `[[registry.signed_previews]]` with `expires_at`.
    StaticSignedLink,
    /// Daytona's `sandbox:signed-preview-url-token:{port}:{token}` key with a Redis TTL.
    RedisSignedLink,
    /// `Authorization: Bearer` JWT with `exp`.
    Jwt,
}

/// What one row sets up: the proxy, the host and headers to use, and when the credential
/// expires (plus how long past that the credential's own check may still accept it).
struct Arranged {
    proxy: Proxy,
    host: String,
    headers: Vec<(&'static str, String)>,
    expires: SystemTime,
    grace: Duration,
    _redis: Option<RedisServer>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn private_sandbox_toml() -> &'static str {
    "[[registry.sandboxes]]\nid = \"priv\"\naddress = \"127.0.0.1\"\norganization = \"org-1\"\n"
}

fn common_toml() -> String {
    format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [auth]\ncookie_keys = [\"{SECRET}\"]\nmax_failures_per_minute = 0\n"
    )
}

fn arrange(credential: Credential, upstream: SocketAddr) -> Arranged {
    let port = upstream.port();
    let token = "shortlived000001";
    match credential {
        Credential::StaticSignedLink => {
            let expires_at = unix_now() + 2;
            let proxy = Proxy::start(&format!(
                "{}{}[[registry.signed_previews]]\ntoken = \"{token}\"\nport = {port}\n\
                 sandbox = \"priv\"\nexpires_at = {expires_at}\n",
                common_toml(),
                private_sandbox_toml(),
            ));
            Arranged {
                proxy,
                host: format!("{port}-{token}.preview.localhost"),
                headers: Vec::new(),
                expires: UNIX_EPOCH + Duration::from_secs(expires_at),
                grace: Duration::ZERO,
                _redis: None,
            }
        }
        Credential::RedisSignedLink => {
            let redis = RedisServer::start();
            redis.cli(&[
                "HSET",
                "sandgate:sandbox:priv",
                "address",
                "127.0.0.1",
                "organization",
                "org-1",
            ]);
            let proxy = Proxy::start(&format!(
                "{}[registry]\nbackend = \"redis\"\n[redis]\nurl = \"{}\"\n",
                common_toml(),
                redis.url()
            ));
            // Its first subscription clears the cache: fill the cache only after it.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !proxy.stderr().contains("subscribed to cache invalidations") {
                assert!(std::time::Instant::now() < deadline, "no subscription");
                std::thread::sleep(Duration::from_millis(5));
            }
            let key = format!("sandbox:signed-preview-url-token:{port}:{token}");
            redis.cli(&["SET", &key, "priv", "PX", "1500"]);
            let expires = SystemTime::now() + Duration::from_millis(1500);
            Arranged {
                proxy,
                host: format!("{port}-{token}.preview.localhost"),
                headers: Vec::new(),
                expires,
                grace: Duration::ZERO,
                _redis: Some(redis),
            }
        }
        Credential::Jwt => {
            let proxy = Proxy::start(&format!(
                "{}[auth.jwt]\nhs256_secret = \"{SECRET}\"\nleeway = \"0s\"\n{}",
                common_toml(),
                private_sandbox_toml(),
            ));
            let exp = unix_now() + 2;
            let jwt = sign_hs256(
                SECRET.as_bytes(),
                &serde_json::json!({"sub": "u1", "exp": exp, "organization_id": "org-1"}),
            );
            Arranged {
                proxy,
                host: format!("{port}-priv.preview.localhost"),
                headers: vec![("authorization", format!("Bearer {jwt}"))],
                expires: UNIX_EPOCH + Duration::from_secs(exp),
                // The JWT library treats `exp` as valid through its whole second.
                grace: Duration::from_secs(1),
                _redis: None,
            }
        }
    }
}

#[tokio::test]
async fn expired_credentials_stop_working_when_they_expire_not_when_the_cache_does() {
    let upstream = recorder::start().await;
    let rows = [
        Credential::StaticSignedLink,
        Credential::RedisSignedLink,
        Credential::Jwt,
    ];
    let mut failures = Vec::new();
    for credential in rows {
        let arranged = arrange(credential, upstream);
        let headers: Vec<(&str, &str)> = arranged
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let call = || {
            send(
                arranged.proxy.addr,
                "GET",
                &arranged.host,
                "/",
                &headers,
                b"",
            )
        };

        let fresh = call().await;
        assert_eq!(
            fresh.status,
            200,
            "{credential:?} before expiry: {}",
            fresh.text()
        );

        let after = arranged.expires + arranged.grace + Duration::from_millis(150);
        if let Ok(wait) = after.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        let expired = call().await;
        if !matches!(expired.status, 401 | 404) {
            failures.push(format!(
                "{credential:?} used after its expiry got {}: {}",
                expired.status,
                expired.text()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
