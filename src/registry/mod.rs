//! Resolve phase: sandbox id → [`SandboxRecord`] (where it runs, how to reach it, who may enter).
//!
//! Backends implement [`Registry`]; the [`Resolver`] puts an in-process cache in front of any of
//! them, so the hot path is a map read.

mod cache;
pub mod daytona;
pub mod domains;
pub mod link_uses;
pub mod ports;
pub mod redis;
mod side_cache;
pub mod signed_preview;
mod static_backend;
pub mod upstream_host;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use sha2::{Digest, Sha256};

pub use cache::{Resolver, Watch};
pub use daytona::DaytonaRegistry;
pub use ports::{PortAccess, PortPolicy, PortRule, PortsMode, ScopedToken};
pub use static_backend::{check as check_static, StaticRegistry};
pub use upstream_host::UpstreamHosts;

pub use crate::base::BoxFuture;
// The record values a config file spells (`protocol`, `cors`) are defined with the config.
pub use crate::config::{CorsMode, Protocol};

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("registry backend unavailable: {0}")]
    Unavailable(String),
    #[error("registry holds invalid data for {key}: {reason}")]
    BadData { key: String, reason: String },
}

/// A registry backend: the source of truth for where sandboxes run.
///
/// Callers go through [`Resolver`], which caches every answer; backends need not cache.
pub trait Registry: Send + Sync + 'static {
    /// `Ok(None)` when the sandbox is unknown.
    fn sandbox<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<SandboxRecord>>, RegistryError>>;

    /// Is `token` this sandbox's preview token? By default, compared with the record's hash.
    fn preview_token_valid<'a>(
        &'a self,
        sandbox: &'a SandboxRecord,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, RegistryError>> {
        let valid = sandbox.token_matches(token);
        Box::pin(async move { Ok(valid) })
    }

    /// A signed preview token (`<port>-<token>.<domain>`) → the sandbox id and how long the
    /// token stays valid, if it exists, has not expired and is bound to `port`.
    fn signed_preview<'a>(
        &'a self,
        _token: &'a str,
        _port: u16,
    ) -> BoxFuture<'a, Result<Option<TokenGrant>, RegistryError>> {
        Box::pin(async { Ok(None) })
    }

    /// An API key, by the SHA-256 of the key → who it belongs to.
    fn api_key<'a>(
        &'a self,
        _sha256: &'a [u8; 32],
    ) -> BoxFuture<'a, Result<Option<Principal>, RegistryError>> {
        Box::pin(async { Ok(None) })
    }

    /// May the holder of `bearer` (a user's token or API key) enter this sandbox, as the backend
    /// decides? `None`: this backend does not decide by bearer (local checks are final).
    fn bearer_access<'a>(
        &'a self,
        _sandbox_id: &'a str,
        _bearer: &'a str,
        _client_ip: std::net::IpAddr,
    ) -> BoxFuture<'a, Result<Option<BearerVerdict>, RegistryError>> {
        Box::pin(async { Ok(None) })
    }

    /// An SSH access token → the sandbox id, and how long the token stays valid.
    fn ssh_token<'a>(
        &'a self,
        _token: &'a str,
    ) -> BoxFuture<'a, Result<Option<TokenGrant>, RegistryError>> {
        Box::pin(async { Ok(None) })
    }

    /// A custom domain's record by its host (lower-case, no trailing dot); `Ok(None)` when the
    /// registry holds none.
    fn domain<'a>(
        &'a self,
        _host: &'a str,
    ) -> BoxFuture<'a, Result<Option<domains::DomainRecord>, RegistryError>> {
        Box::pin(async { Ok(None) })
    }

    /// The proxy found a pending domain's DNS TXT record: keep it verified (a backend that
    /// cannot write keeps it in memory, or ignores it: the proxy checks again later). Only the
    /// record that was checked: same sandbox, same token (a record replaced since is not).
    fn domain_verified<'a>(
        &'a self,
        _host: &'a str,
        _sandbox: &'a str,
        _token: &'a str,
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async { Ok(()) })
    }

    /// Does the backend keep when signed links were last used ([`Registry::record_link_uses`])?
    fn records_link_uses(&self) -> bool {
        false
    }

    /// Records when signed links were last used (called off the request path, throttled).
    fn record_link_uses<'a>(
        &'a self,
        _uses: &'a [link_uses::LinkUse],
    ) -> BoxFuture<'a, Result<(), RegistryError>> {
        Box::pin(async { Ok(()) })
    }

    /// A start backend reported the sandbox running. A backend that learns states by itself
    /// (Redis, the control plane) ignores it; the static one keeps it until its next reload.
    fn start_reported(&self, _id: &str) {}

    /// Does the backend learn a sandbox's new state by itself? When it does not (the static
    /// one: each replica learns only from its own start call), replicas do not share a wake.
    fn learns_states(&self) -> bool {
        true
    }

    /// Can the backend answer right now? (Readiness; the cache may serve when it cannot.)
    fn ready(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}

/// What a valid token (a signed preview token, an SSH access token) opens, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub sandbox: Box<str>,
    pub lifetime: Lifetime,
}

/// How long a credential stays valid, as its backend knows it: bounds how long its verdict may
/// be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// It has no expiry.
    Unlimited,
    /// It expires after this much longer.
    Remaining(Duration),
    /// The backend does not say: cache it only briefly.
    Unknown,
}

impl Lifetime {
    /// Until `expires_at` (unix seconds), or unlimited.
    pub fn until_unix(expires_at: Option<u64>) -> Lifetime {
        match expires_at {
            None => Lifetime::Unlimited,
            Some(secs) => Lifetime::Remaining(
                (UNIX_EPOCH + Duration::from_secs(secs))
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO),
            ),
        }
    }
}

/// Who a credential (API key, JWT) speaks for: it opens the sandboxes of its organisation.
/// A backend's answer about a bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerVerdict {
    Allowed,
    /// A valid token that may not enter this sandbox.
    Denied,
    /// Not a valid token.
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub organization: Box<str>,
}

#[derive(Debug)]
pub struct RunnerRecord {
    pub id: Box<str>,
    /// Base URL without a trailing slash, e.g. `http://10.0.0.5:3003`.
    pub url: Box<str>,
    /// Pre-rendered `Bearer <api key>` for `X-Daytona-Authorization`.
    pub auth_header: HeaderValue,
    /// `host:port` of the runner's SSH endpoint, for the SSH gateway.
    pub ssh_endpoint: Option<Box<str>>,
    /// `host:port` to connect to (port 80 when the URL has none).
    pub authority: Box<str>,
    /// The `Host` header sent to the runner: the URL's authority as written.
    pub host_header: HeaderValue,
    /// The URL's path without the trailing slash (usually empty).
    pub base_path: Box<str>,
    /// HTTP/1.1 (default) or h2c with prior knowledge.
    pub protocol: Protocol,
}

impl RunnerRecord {
    pub fn new(id: &str, url: &str, api_key: &str) -> Result<RunnerRecord, String> {
        let url = url.trim_end_matches('/');
        // Only for errors: the URL as a message may show it, without a password.
        let shown = || crate::config::redact::shown_url(url);
        let parsed: http::Uri = url
            .parse()
            .map_err(|e| format!("runner {id}: url {:?} is not a URL: {e}", shown()))?;
        if parsed.scheme_str() != Some("http") || parsed.authority().is_none() {
            return Err(format!(
                "runner {id}: url {:?} must be http://host:port",
                shown()
            ));
        }
        let host = parsed
            .authority()
            .ok_or_else(|| format!("runner {id}: url {:?} must be http://host:port", shown()))?;
        if parsed.query().is_some() {
            return Err(format!(
                "runner {id}: url {:?} must not have a query",
                shown()
            ));
        }
        if host.as_str().contains('@') {
            return Err(format!(
                "runner {id}: url {:?} must not carry credentials",
                shown()
            ));
        }
        // Connect to host:port (80 by default); send Host as a client would for that URL.
        let authority = format!("{}:{}", host.host(), host.port_u16().unwrap_or(80));
        let host_header = match host.port_u16() {
            Some(port) => HeaderValue::try_from(format!("{}:{port}", host.host())),
            None => HeaderValue::try_from(host.host()),
        }
        .map_err(|_| format!("runner {id}: url {:?} has an invalid host", shown()))?;
        let mut auth_header = HeaderValue::try_from(format!("Bearer {api_key}"))
            .map_err(|_| format!("runner {id}: api_key has characters not allowed in a header"))?;
        auth_header.set_sensitive(true);
        Ok(RunnerRecord {
            id: id.into(),
            url: url.into(),
            auth_header,
            ssh_endpoint: None,
            authority: authority.into(),
            host_header,
            base_path: parsed.path().trim_end_matches('/').into(),
            protocol: Protocol::Http1,
        })
    }

    pub fn with_protocol(mut self, protocol: Protocol) -> RunnerRecord {
        self.protocol = protocol;
        self
    }
}

#[derive(Debug, Clone)]
pub enum Upstream {
    /// Through the runner's proxy: `{url}/sandboxes/{id}/toolbox/...`.
    Runner(Arc<RunnerRecord>),
    /// Straight to the sandbox: `http://{address}:{port}`.
    Direct { address: Box<str> },
}

#[derive(Debug)]
pub struct SandboxRecord {
    pub id: Box<str>,
    pub upstream: Upstream,
    pub public: bool,
    pub state: Box<str>,
    /// SHA-256 of the preview auth token; raw tokens are never kept.
    pub auth_token_sha256: Option<[u8; 32]>,
    /// The owning organisation (API keys and JWTs open the sandboxes of their organisation).
    pub organization: Option<Box<str>>,
    /// The upstream path prefix, rendered once: `/sandboxes/{id}/toolbox` through a runner,
    /// empty in direct mode.
    pub path_prefix: Box<str>,
    /// Requests (and WebSockets) in flight through this replica, for the per-sandbox limit.
    /// Kept on the cached record so counting costs one atomic, not a map lookup; a refreshed
    /// record starts a fresh count, which can admit a little more for one moment.
    pub inflight: std::sync::atomic::AtomicUsize,
    /// Direct mode: the sandbox's sshd port (the SSH gateway's upstream is `address:ssh_port`).
    pub ssh_port: u16,
    pub cors: CorsMode,
    /// This sandbox's ring in the request log (`http::request_log`), found without a map
    /// lookup once set; a refreshed record finds it again through the log's table.
    pub request_ring: std::sync::OnceLock<Arc<crate::base::request_ring::Ring>>,
    /// Opted in to the signed identity header (`[identity]`).
    pub identity: bool,
    /// The `Host` the app sees, per port (empty: the proxy's default).
    pub upstream_hosts: UpstreamHosts,
    /// Which preview ports are public, private or not exposed.
    pub ports: PortPolicy,
    /// Preview tokens bound to some ports (the all-ports token is `auth_token_sha256`).
    pub scoped_tokens: Box<[ScopedToken]>,
    /// A request may wake it when it is not running (`[registry.wake]`); `false` opts out.
    pub wake: bool,
}

/// What a preview token opens on the request's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    Invalid,
    /// The sandbox's token: every port.
    AllPorts,
    /// A port-scoped token bound to this port (and perhaps others, but not all).
    ThisPort,
}

impl TokenCheck {
    pub fn is_valid(self) -> bool {
        self != TokenCheck::Invalid
    }
}

/// One request in flight for a sandbox; released when dropped (end of body or relay).
pub struct InflightGuard(Arc<SandboxRecord>);

impl InflightGuard {
    /// `None` when the sandbox already has `max` requests in flight.
    pub fn acquire(sandbox: &Arc<SandboxRecord>, max: usize) -> Option<InflightGuard> {
        use std::sync::atomic::Ordering;
        let before = sandbox.inflight.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            sandbox.inflight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InflightGuard(sandbox.clone()))
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl SandboxRecord {
    pub fn new(
        id: &str,
        upstream: Upstream,
        public: bool,
        state: &str,
        auth_token: Option<&str>,
    ) -> Self {
        let path_prefix = match &upstream {
            Upstream::Runner(r) => format!("{}/sandboxes/{id}/toolbox", r.base_path),
            Upstream::Direct { .. } => String::new(),
        };
        SandboxRecord {
            id: id.into(),
            upstream,
            public,
            state: state.into(),
            auth_token_sha256: auth_token.map(sha256),
            organization: None,
            path_prefix: path_prefix.into(),
            inflight: Default::default(),
            ssh_port: 22,
            cors: CorsMode::Managed,
            ports: PortPolicy::default(),
            scoped_tokens: Box::default(),
            identity: false,
            wake: true,
            upstream_hosts: UpstreamHosts::default(),
            request_ring: Default::default(),
        }
    }

    pub fn with_ports(mut self, ports: PortPolicy) -> Self {
        self.ports = ports;
        self
    }

    pub fn with_scoped_tokens(mut self, tokens: Vec<ScopedToken>) -> Self {
        self.scoped_tokens = tokens.into();
        self
    }

    /// The port policy's rule for a request on `port` (`None`: toolbox traffic).
    pub fn port_rule(&self, port: Option<u16>) -> PortRule {
        self.ports.rule(port, self.public)
    }

    /// Does the record hold the hashes to check preview tokens itself?
    pub fn has_local_tokens(&self) -> bool {
        self.auth_token_sha256.is_some() || !self.scoped_tokens.is_empty()
    }

    /// `token` against the all-ports hash and every port-scoped hash (constant-time each): a
    /// scoped token opens only its ports, never the toolbox.
    pub fn check_token(&self, token: &str, port: Option<u16>) -> TokenCheck {
        use subtle::ConstantTimeEq;
        let hash = sha256(token);
        if self
            .auth_token_sha256
            .is_some_and(|expected| bool::from(hash.ct_eq(&expected)))
        {
            return TokenCheck::AllPorts;
        }
        let mut check = TokenCheck::Invalid;
        for scoped in self.scoped_tokens.iter() {
            if bool::from(hash.ct_eq(&scoped.sha256)) && scoped.opens(port) {
                check = TokenCheck::ThisPort;
            }
        }
        check
    }

    pub fn with_cors(mut self, cors: CorsMode) -> Self {
        self.cors = cors;
        self
    }

    pub fn with_wake(mut self, wake: bool) -> Self {
        self.wake = wake;
        self
    }

    /// The same record in another state (its in-flight count starts afresh).
    pub fn with_state(&self, state: &str) -> SandboxRecord {
        SandboxRecord {
            id: self.id.clone(),
            upstream: self.upstream.clone(),
            public: self.public,
            state: state.into(),
            auth_token_sha256: self.auth_token_sha256,
            organization: self.organization.clone(),
            path_prefix: self.path_prefix.clone(),
            inflight: Default::default(),
            ssh_port: self.ssh_port,
            cors: self.cors,
            request_ring: Default::default(),
            identity: self.identity,
            upstream_hosts: self.upstream_hosts.clone(),
            ports: self.ports.clone(),
            scoped_tokens: self.scoped_tokens.clone(),
            wake: self.wake,
        }
    }

    pub fn with_identity(mut self, identity: bool) -> Self {
        self.identity = identity;
        self
    }

    pub fn with_upstream_hosts(mut self, hosts: UpstreamHosts) -> Self {
        self.upstream_hosts = hosts;
        self
    }

    pub fn with_ssh_port(mut self, port: u16) -> Self {
        self.ssh_port = port;
        self
    }

    /// `host:port` of the sshd the SSH gateway connects to: the runner's SSH endpoint (default
    /// its url's host, port 2220) or, in direct mode, `address:ssh_port`.
    pub fn ssh_target(&self) -> Option<String> {
        match &self.upstream {
            Upstream::Runner(r) => match &r.ssh_endpoint {
                Some(endpoint) => Some(endpoint.to_string()),
                None => {
                    let uri: http::Uri = r.url.parse().ok()?;
                    Some(format!("{}:2220", uri.host()?))
                }
            },
            Upstream::Direct { address } => Some(format!("{address}:{}", self.ssh_port)),
        }
    }

    pub fn with_organization(mut self, organization: Option<&str>) -> Self {
        self.organization = organization.map(Into::into);
        self
    }

    /// Constant-time comparison of `token` with the stored hash.
    pub fn token_matches(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.auth_token_sha256
            .is_some_and(|expected| bool::from(sha256(token).ct_eq(&expected)))
    }

    pub fn is_running(&self) -> bool {
        is_running_state(&self.state)
    }

    pub fn runner_auth(&self) -> Option<&HeaderValue> {
        match &self.upstream {
            Upstream::Runner(r) => Some(&r.auth_header),
            Upstream::Direct { .. } => None,
        }
    }
}

/// `started` or `running`, in any case (Redis and static states are free text).
pub fn is_running_state(state: &str) -> bool {
    state.eq_ignore_ascii_case("started") || state.eq_ignore_ascii_case("running")
}

pub fn sha256(data: &str) -> [u8; 32] {
    Sha256::digest(data.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_urls_give_authority_host_and_base_path() {
        let r = RunnerRecord::new("r", "http://runner.internal:3003/api/", "k").unwrap();
        assert_eq!(
            (
                &*r.authority,
                r.host_header.to_str().unwrap(),
                &*r.base_path
            ),
            ("runner.internal:3003", "runner.internal:3003", "/api")
        );
        let r = RunnerRecord::new("r", "http://10.0.0.5", "k").unwrap();
        assert_eq!(
            (
                &*r.authority,
                r.host_header.to_str().unwrap(),
                &*r.base_path
            ),
            ("10.0.0.5:80", "10.0.0.5", "")
        );
        let s = SandboxRecord::new("sbx", Upstream::Runner(Arc::new(r)), false, "started", None);
        assert_eq!(&*s.path_prefix, "/sandboxes/sbx/toolbox");
        assert!(RunnerRecord::new("r", "http://h:1/?x=1", "k").is_err());
        assert!(RunnerRecord::new("r", "https://h:1", "k").is_err());
        assert!(RunnerRecord::new("r", "h:1", "k").is_err());
        assert!(RunnerRecord::new("r", "http://user:pw@h:1", "k").is_err());
        let r = RunnerRecord::new("r", "http://h:/", "k").unwrap();
        assert_eq!(
            (&*r.authority, r.host_header.to_str().unwrap()),
            ("h:80", "h")
        );
        let r = RunnerRecord::new("r", "http://[::1]:9000", "k").unwrap();
        assert_eq!(&*r.authority, "[::1]:9000");
    }
}
