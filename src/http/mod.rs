//! The HTTP side: the server (listeners, connections, limits) and the request pipeline with its
//! phases, each in its own file. [`pipeline`] is the order of the phases and nothing else.

pub mod access_log;
pub mod body;
pub mod client_addr;
pub mod client_io;
pub mod forward;
pub mod gate;
pub mod head_timer;
pub mod header_route;
pub mod headers;
pub mod hold;
pub mod pages;
pub mod path;
pub mod pipeline;
pub mod relay;
pub mod reload;
pub mod request_log;
pub mod respond;
pub mod route;
pub mod server;
pub mod tls_accept;
pub mod upstream;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use crate::activity::Activity;
use crate::auth::{Auth, TokenMemo};
pub use crate::base::ConnectionSlots;
use crate::registry::{Resolver, StaticRegistry};
use client_io::ConnectionEnd;
use forward::{DeadlineTimer, Forwarder};
use route::Domains;

/// Shared state of the proxy; built once by `main`, read by every request.
pub struct App {
    pub domains: Domains,
    pub resolver: Resolver,
    /// Kept for reloads when the backend is the static registry.
    pub static_registry: Option<Arc<StaticRegistry>>,
    /// Auto-wake hook for sandboxes that are not running.
    pub waker: Option<Arc<crate::wake::Waker>>,
    /// TLS certificates, kept for reloads.
    pub certs: Option<Arc<crate::tls::CertResolver>>,
    pub activity: Arc<Activity>,
    pub forwarder: Forwarder,
    /// Most requests in flight per sandbox (0: no limit); beyond: 429.
    pub max_requests_per_sandbox: usize,
    pub auth: Auth,
    /// One line per request, when `log.access` is on and the log level lets
    /// `sandgate::access` through.
    pub access_log: Option<access_log::AccessLog>,
    /// The last requests per sandbox for the admin listener, when `log.requests_per_sandbox`
    /// is not 0.
    pub request_log: Option<Arc<request_log::RequestLog>>,
    /// Accept or generate `X-Request-Id`, forward it and return it.
    pub request_ids: bool,
    /// Peers whose `X-Forwarded-For`/`Forwarded` (and PROXY headers) are believed.
    pub trusted_proxies: client_addr::TrustedProxies,
    /// The operator's error page templates (`[pages] dir`), kept for reloads.
    pub pages: pages::Pages,
    /// Custom domains, when `domains.enabled`.
    pub custom_domains: Option<Arc<crate::registry::domains::CustomDomains>>,
    /// Certificates obtained on demand, when `acme.enabled` (answers HTTP-01 challenges).
    pub acme: Option<Arc<crate::tls::acme::Acme>>,
}

impl crate::wake::Context for App {
    fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    fn activity(&self) -> &Activity {
        &self.activity
    }
}

/// The client end of a connection (the TCP peer, or the PROXY protocol's source address), with
/// its IP pre-rendered for `X-Forwarded-For`.
pub struct Peer {
    pub addr: SocketAddr,
    pub ip_header: HeaderValue,
    /// The connection came over TLS.
    pub https: bool,
    pub slots: Option<ConnectionSlots>,
    pub deadline_timer: DeadlineTimer,
    pub token_memo: TokenMemo,
    /// How the connection closes (lingering after early answers, reset after cut bodies).
    pub end: Arc<ConnectionEnd>,
}

impl Peer {
    pub fn new(addr: SocketAddr, https: bool) -> Peer {
        let ip_header = HeaderValue::try_from(addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Peer {
            addr,
            ip_header,
            https,
            slots: None,
            deadline_timer: Default::default(),
            token_memo: Default::default(),
            end: Default::default(),
        }
    }

    pub fn with_end(mut self, end: Arc<ConnectionEnd>) -> Peer {
        self.end = end;
        self
    }

    pub fn with_slots(mut self, slots: ConnectionSlots) -> Peer {
        self.slots = Some(slots);
        self
    }
}
