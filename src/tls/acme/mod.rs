//! Certificates obtained on demand by ACME for verified custom domains (interface; the
//! implementation lands with #19).

use std::sync::Arc;
use std::time::SystemTime;

use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use crate::base::BoxFuture;
use crate::config::{AcmeConfig, ChallengeKind};
use crate::registry::redis::RedisHandle;

/// Who says a name may get a certificate: the registry's verified custom domains.
pub trait NameAuthority: Send + Sync + 'static {
    /// May a certificate be ordered (or served from storage) for `name` now?
    fn may_order<'a>(&'a self, name: &'a str) -> BoxFuture<'a, bool>;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AcmeError {
    #[error("{0} is not a verified custom domain")]
    NotAllowed(String),
    #[error("no certificate for {0} yet: the order is still under way")]
    Pending(String),
    #[error("orders for {name} are paused for {retry_in_secs} s after a failure: {reason}")]
    Backoff {
        name: String,
        retry_in_secs: u64,
        reason: String,
    },
    #[error("the global order rate limit is reached")]
    RateLimited,
    #[error("ACME order for {name} failed: {reason}")]
    Order { name: String, reason: String },
    #[error("certificate storage: {0}")]
    Storage(String),
}

/// A certificate as `sandgate domain list` shows it.
#[derive(Debug, Clone)]
pub struct StoredCertificate {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// On-demand certificates: held in memory for the handshake, kept in storage, ordered when
/// missing, renewed at 2/3 of their lifetime.
pub struct Acme {
    challenge: ChallengeKind,
}

impl Acme {
    pub fn new(
        config: &AcmeConfig,
        _redis: Option<Arc<RedisHandle>>,
        _authority: Arc<dyn NameAuthority>,
    ) -> Result<Arc<Acme>, String> {
        Ok(Arc::new(Acme {
            challenge: config.challenge,
        }))
    }

    pub fn challenge_kind(&self) -> ChallengeKind {
        self.challenge
    }

    /// The certificate for `name` already in memory (sync: the rustls resolver calls it).
    pub fn held(&self, _name: &str) -> Option<Arc<CertifiedKey>> {
        None
    }

    /// Held, stored by another replica, or ordered now; at most `acme.handshake_wait`.
    pub async fn obtain(&self, name: &str) -> Result<Arc<CertifiedKey>, AcmeError> {
        Err(AcmeError::NotAllowed(name.into()))
    }

    /// The TLS-ALPN-01 certificate for `name` while its challenge is open.
    pub fn alpn_challenge(&self, _name: &str) -> Option<Arc<CertifiedKey>> {
        None
    }

    /// The HTTP-01 key authorization for `token` while its challenge is open.
    pub fn http_challenge(&self, _token: &str) -> Option<Arc<str>> {
        None
    }

    /// Renewal and re-reading shared storage, until `shutdown`.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        shutdown.cancelled().await
    }
}

/// The stored certificate for `host`, if any (for `sandgate domain list`).
pub async fn stored_certificate(
    _config: &AcmeConfig,
    _redis: Option<Arc<RedisHandle>>,
    _host: &str,
) -> Result<Option<StoredCertificate>, AcmeError> {
    Ok(None)
}
