//! Certificates obtained on demand by ACME for verified custom domains.
//!
//! A handshake for a name without a certificate calls [`Acme::obtain`]: the certificate held in
//! memory, else the one in storage (ours from before a restart, or another replica's), else a
//! new order. Orders for one name are shared by every caller (one in-flight task per name),
//! run in a spawned task bounded by `acme.order_timeout` (a handshake that stops waiting does
//! not cancel it), and only start when the [`NameAuthority`] allows the name right before, the
//! name is not paused after a failure, the hourly budget has a token, and this process holds the
//! storage lock for the name (another replica holding it means: wait for its result in storage).
//! [`Acme::maintain`] renews at 2/3 of the lifetime and picks up other replicas' renewals.
//!
//! The wildcards of `acme.dns01.names` are ordered the same way (DNS-01 through the operator's
//! hook instead of our listeners, allowed by the config instead of the [`NameAuthority`]), at
//! start and at each maintenance pass while missing, and serve every name one label below them.

mod challenge;
mod dns_hook;
mod limits;
mod order;
mod storage;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures_util::future::{FutureExt, Shared};
use instant_acme::Account;
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use self::challenge::Challenges;
use self::dns_hook::DnsHook;
use self::limits::{Backoffs, OrderBucket};
use self::order::{FailureReason, OrderFailure, Proof};
use self::storage::{Issued, Storage};
use crate::base::{BoxFuture, FastMap};
use crate::config::{AcmeConfig, ChallengeKind};
use crate::metrics::metrics;
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

/// The ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A lock outlives the order it guards by this much (a crashed holder's lock then expires).
const LOCK_MARGIN: Duration = Duration::from_secs(30);
/// How often a replica waiting for another's order looks in storage.
const STORAGE_POLL: Duration = Duration::from_millis(250);

/// On-demand certificates: held in memory for the handshake, kept in storage, ordered when
/// missing, renewed at 2/3 of their lifetime.
pub struct Acme {
    engine: Arc<Engine>,
}

/// One name's lookup-or-order, shared by every caller waiting for it.
type Fetch = Shared<BoxFuture<'static, Result<Arc<Issued>, AcmeError>>>;

/// What a fetch accepts from storage.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Any certificate not expired (none is held).
    Any,
    /// One expiring after the held one's `not_after` (renewal).
    NewerThan(SystemTime),
}

impl Want {
    fn accepts(self, issued: &Issued, now: SystemTime) -> bool {
        !issued.expired(now)
            && match self {
                Want::Any => true,
                Want::NewerThan(not_after) => issued.not_after > not_after,
            }
    }
}

/// A configured wildcard: `*.<base>` serves `<label>.<base>`.
struct Wildcard {
    base: String,
    /// `*.<base>`: its key in `held` and in storage.
    name: String,
}

struct Engine {
    config: AcmeConfig,
    authority: Arc<dyn NameAuthority>,
    wildcards: Vec<Wildcard>,
    dns_hook: Option<Arc<DnsHook>>,
    storage: Storage,
    held: FastMap<String, Arc<Issued>>,
    challenges: Arc<Challenges>,
    in_flight: Mutex<HashMap<String, Fetch>>,
    backoffs: Backoffs,
    bucket: OrderBucket,
    account: tokio::sync::OnceCell<Account>,
    orders_started: AtomicU64,
}

impl Acme {
    pub fn new(
        config: &AcmeConfig,
        redis: Option<Arc<RedisHandle>>,
        authority: Arc<dyn NameAuthority>,
    ) -> Result<Arc<Acme>, String> {
        if let Some(root) = &config.ca_root {
            check_ca_root(root)?;
        }
        let storage = Storage::new(config, redis)?;
        let dns_hook = DnsHook::from_config(&config.dns01)?.map(Arc::new);
        let wildcards = config
            .dns01
            .wildcard_bases()
            .into_iter()
            .map(|base| Wildcard {
                name: format!("*.{base}"),
                base,
            })
            .collect();
        let engine = Engine {
            config: config.clone(),
            authority,
            wildcards,
            dns_hook,
            storage,
            held: FastMap::default(),
            challenges: Arc::new(Challenges::default()),
            in_flight: Mutex::new(HashMap::new()),
            backoffs: Backoffs::new(config.retry_min, config.retry_max),
            bucket: OrderBucket::new(config.orders_per_hour, Instant::now()),
            account: tokio::sync::OnceCell::new(),
            orders_started: AtomicU64::new(0),
        };
        Ok(Arc::new(Acme {
            engine: Arc::new(engine),
        }))
    }

    pub fn challenge_kind(&self) -> ChallengeKind {
        self.engine.config.challenge
    }

    /// The certificate for `name` already in memory, its own or a configured wildcard's
    /// (sync: the rustls resolver calls it).
    pub fn held(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = normalized(name);
        let engine = &self.engine;
        let issued = engine.held.get(name.as_ref()).or_else(|| {
            let wildcard = engine.wildcard_over(&name)?;
            engine.held.get(wildcard)
        })?;
        Some(issued.key.clone())
    }

    /// Held, stored by another replica, or ordered now; at most `acme.handshake_wait`. A name
    /// under a configured wildcard gets the wildcard.
    pub async fn obtain(&self, name: &str) -> Result<Arc<CertifiedKey>, AcmeError> {
        let name = normalized(name);
        if let Some(key) = self.held(&name) {
            return Ok(key);
        }
        let name = match self.engine.wildcard_over(&name) {
            Some(wildcard) => {
                // Paused after a failure: fail at once (the maintenance pass still picks up
                // another replica's certificate), so a flood of preview names costs nothing.
                if let Some(paused) = self.engine.backoffs.check(wildcard, Instant::now()) {
                    return Err(AcmeError::Backoff {
                        name: wildcard.to_owned(),
                        retry_in_secs: paused.remaining.as_secs().max(1),
                        reason: paused.reason,
                    });
                }
                Cow::Owned(wildcard.to_owned())
            }
            None => name,
        };
        if !self.engine.may_order(&name).await {
            return Err(AcmeError::NotAllowed(name.into_owned()));
        }
        let fetch = self.engine.start(&name, Want::Any);
        match tokio::time::timeout(self.engine.config.handshake_wait, fetch).await {
            Ok(issued) => issued.map(|issued| issued.key.clone()),
            Err(_) => Err(AcmeError::Pending(name.into_owned())),
        }
    }

    /// The TLS-ALPN-01 certificate for `name` while its challenge is open.
    pub fn alpn_challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.engine.challenges.alpn(&normalized(name))
    }

    /// A server config for a TLS-ALPN-01 validation handshake for `name` (ALPN
    /// [`ACME_TLS_ALPN`] offered): the challenge certificate, `acme-tls/1` as the only
    /// protocol. `None` when no challenge is open for `name`: refuse the handshake.
    pub fn alpn_challenge_config(&self, name: &str) -> Option<Arc<rustls::ServerConfig>> {
        let key = self.alpn_challenge(name)?;
        super::challenge_config_with(Arc::new(rustls::sign::SingleCertAndKey::from(key))).ok()
    }

    /// The HTTP-01 key authorization for `token` while its challenge is open.
    pub fn http_challenge(&self, token: &str) -> Option<Arc<str>> {
        self.engine.challenges.http(token)
    }

    /// Renewal and re-reading shared storage, until `shutdown`; the configured wildcards are
    /// fetched at once and again at each pass while missing.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = self.engine.config.renew_check_interval;
        self.engine.fetch_missing_wildcards();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.engine.check_held() => {}
            }
            self.engine.fetch_missing_wildcards();
        }
    }

    /// Orders this process started (each one a `new-order` at the CA), for tests and logs.
    pub fn orders_started(&self) -> u64 {
        self.engine.orders_started.load(Ordering::Relaxed)
    }

    /// The held certificate's validity for `name`.
    pub fn held_validity(&self, name: &str) -> Option<StoredCertificate> {
        let issued = self.engine.held.get(normalized(name).as_ref())?;
        Some(StoredCertificate {
            not_before: issued.not_before,
            not_after: issued.not_after,
        })
    }

    /// Challenges currently answered (none once every order ended).
    pub fn open_challenges(&self) -> usize {
        self.engine.challenges.open_count()
    }
}

impl Engine {
    fn wildcard_over(&self, name: &str) -> Option<&str> {
        wildcard_over(&self.wildcards, name)
    }

    fn is_wildcard(&self, name: &str) -> bool {
        self.wildcards.iter().any(|w| w.name == name)
    }

    /// A configured wildcard always may; any other name when the authority says so now.
    async fn may_order(&self, name: &str) -> bool {
        self.is_wildcard(name) || self.authority.may_order(name).await
    }

    /// Starts fetching each configured wildcard not held, in the background. A failed order
    /// is logged (and paused) where it fails; what else stops it (storage unreachable) is
    /// logged here.
    fn fetch_missing_wildcards(self: &Arc<Self>) {
        for wildcard in &self.wildcards {
            if self.held.contains_key(&wildcard.name) {
                continue;
            }
            let fetch = self.start(&wildcard.name, Want::Any);
            let name = wildcard.name.clone();
            tokio::spawn(async move {
                if let Err(e @ (AcmeError::Storage(_) | AcmeError::Pending(_))) = fetch.await {
                    tracing::warn!(host = name, error = %e, "ACME wildcard not obtained yet");
                }
            });
        }
    }

    /// The fetch in flight for `name`, or a new one.
    fn start(self: &Arc<Self>, name: &str, want: Want) -> Fetch {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(fetch) = in_flight.get(name) {
            return fetch.clone();
        }
        let engine = self.clone();
        let owned = name.to_owned();
        let task = tokio::spawn(async move {
            let result = engine.fetch(&owned, want).await;
            engine
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&owned);
            result
        });
        let failed_name = name.to_owned();
        let fetch = async move {
            task.await.unwrap_or_else(|e| {
                Err(AcmeError::Order {
                    name: failed_name,
                    reason: format!("the order task ended: {e}"),
                })
            })
        }
        .boxed()
        .shared();
        in_flight.insert(name.to_owned(), fetch.clone());
        fetch
    }

    async fn fetch(&self, name: &str, want: Want) -> Result<Arc<Issued>, AcmeError> {
        if let Some(stored) = self.stored(name, want).await? {
            return Ok(self.hold(name, stored));
        }
        if let Some(paused) = self.backoffs.check(name, Instant::now()) {
            return Err(AcmeError::Backoff {
                name: name.to_owned(),
                retry_in_secs: paused.remaining.as_secs().max(1),
                reason: paused.reason,
            });
        }
        let ttl = self.config.order_timeout + LOCK_MARGIN;
        let Some(token) = self.storage.lock(name, ttl).await? else {
            return self.await_other_replica(name, want, ttl).await;
        };
        let result = self.order_locked(name, want).await;
        self.storage.unlock(name, token).await;
        result
    }

    /// The stored certificate for `name` if `want` accepts it; an unreadable one (bad PEM,
    /// another host's) counts as none.
    async fn stored(&self, name: &str, want: Want) -> Result<Option<Issued>, AcmeError> {
        let Some(pem) = self.storage.load_cert(name).await? else {
            return Ok(None);
        };
        match Issued::parse(&pem, name) {
            Ok(issued) if want.accepts(&issued, SystemTime::now()) => Ok(Some(issued)),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(host = name, error = %e, "stored certificate unusable; ignored");
                Ok(None)
            }
        }
    }

    /// Another process holds the lock: its certificate appears in storage, or the wait ends.
    async fn await_other_replica(
        &self,
        name: &str,
        want: Want,
        limit: Duration,
    ) -> Result<Arc<Issued>, AcmeError> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            tokio::time::sleep(STORAGE_POLL).await;
            if let Some(stored) = self.stored(name, want).await? {
                return Ok(self.hold(name, stored));
            }
        }
        Err(AcmeError::Pending(name.to_owned()))
    }

    async fn order_locked(&self, name: &str, want: Want) -> Result<Arc<Issued>, AcmeError> {
        // Another process may have finished between our look and our lock.
        if let Some(stored) = self.stored(name, want).await? {
            return Ok(self.hold(name, stored));
        }
        if !self.may_order(name).await {
            return Err(AcmeError::NotAllowed(name.to_owned()));
        }
        // The configured wildcards spend no budget: tenants' custom domains must not be able
        // to use it up and leave every preview host without its certificate.
        if !self.is_wildcard(name) && !self.bucket.take(Instant::now()) {
            tracing::warn!(
                host = name,
                "ACME order not started: acme.orders_per_hour reached"
            );
            metrics().acme_order_failure("budget");
            return Err(AcmeError::RateLimited);
        }
        self.orders_started.fetch_add(1, Ordering::Relaxed);
        tracing::info!(host = name, "ACME order started");
        let ordered = tokio::time::timeout(self.config.order_timeout, self.order(name))
            .await
            .unwrap_or_else(|_| {
                Err(OrderFailure::new(
                    FailureReason::Timeout,
                    format!("no certificate within {:?}", self.config.order_timeout),
                ))
            })
            .and_then(|pem| {
                Issued::parse(pem.as_bytes(), name)
                    .map(|issued| (pem, issued))
                    .map_err(|e| OrderFailure::new(FailureReason::CaError, e))
            });
        tracing::debug!(host = name, ok = ordered.is_ok(), "ACME order ended");
        match ordered {
            Ok((pem, issued)) => Ok(self.issued(name, &pem, issued).await),
            Err(failure) => Err(self.failed(name, &failure)),
        }
    }

    async fn order(&self, name: &str) -> Result<String, OrderFailure> {
        let account = self
            .account
            .get_or_try_init(|| order::account(&self.config, &self.storage))
            .await?;
        let proof = match (&self.dns_hook, self.is_wildcard(name)) {
            (Some(hook), true) => Proof::Dns(hook),
            _ => Proof::Listener(self.config.challenge, &self.challenges),
        };
        order::order_certificate(account, name, proof, self.config.order_timeout).await
    }

    async fn issued(&self, name: &str, pem: &str, issued: Issued) -> Arc<Issued> {
        metrics().acme_orders_issued.inc();
        self.backoffs.succeeded(name);
        tracing::info!(host = name, "ACME certificate issued");
        if let Err(e) = self.storage.store_cert(name, pem.as_bytes()).await {
            // Served from memory; other replicas (and the next start) order again.
            metrics().acme_order_failure(FailureReason::Storage.label());
            tracing::error!(host = name, error = %e, "ACME certificate not stored");
        }
        self.hold(name, issued)
    }

    fn failed(&self, name: &str, failure: &OrderFailure) -> AcmeError {
        let reason = failure.describe();
        let pause = self.backoffs.failed(name, &reason, Instant::now());
        metrics().acme_orders_failed.inc();
        metrics().acme_order_failure(failure.reason.label());
        tracing::warn!(host = name, error = %reason, pause_secs = pause.as_secs(), "ACME order failed");
        AcmeError::Order {
            name: name.to_owned(),
            reason,
        }
    }

    /// Puts `issued` in memory for handshakes (replacing the older one at once; connections
    /// already made keep theirs).
    fn hold(&self, name: &str, issued: Issued) -> Arc<Issued> {
        let issued = Arc::new(issued);
        if self.held.insert(name.to_owned(), issued.clone()).is_none() {
            metrics().acme_certificates.inc();
        }
        self.update_soonest_expiry();
        issued
    }

    fn update_soonest_expiry(&self) {
        let now = SystemTime::now();
        let soonest = self
            .held
            .iter()
            .map(|entry| entry.not_after.duration_since(now).unwrap_or_default())
            .min()
            .unwrap_or_default();
        let seconds = i64::try_from(soonest.as_secs()).unwrap_or(i64::MAX);
        metrics().acme_soonest_expiry.set(seconds);
    }

    /// One maintenance pass: adopt renewals other replicas stored, drop expired certificates,
    /// renew those due.
    async fn check_held(self: &Arc<Self>) {
        let held: Vec<(String, Arc<Issued>)> = self
            .held
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect();
        let mut renewals = Vec::new();
        for (name, current) in held {
            let newer = Want::NewerThan(current.not_after);
            match self.stored(&name, newer).await {
                Ok(Some(stored)) => {
                    tracing::info!(host = name, "ACME certificate renewed by another process");
                    self.hold(&name, stored);
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(host = name, error = %e, "ACME storage not read"),
            }
            let now = SystemTime::now();
            if current.expired(now) && self.held.remove(&name).is_some() {
                metrics().acme_certificates.dec();
            }
            if current.renewal_due(now) {
                let fetch = self.start(&name, newer);
                renewals.push(async move { (name, fetch.await) });
            }
        }
        for (name, result) in futures_util::future::join_all(renewals).await {
            if let Err(e) = result {
                tracing::warn!(host = name, error = %e, "ACME renewal not done");
            }
        }
        self.update_soonest_expiry();
    }
}

/// The wildcard of `wildcards` serving `name` (normalized), one label below its base, if any.
fn wildcard_over<'a>(wildcards: &'a [Wildcard], name: &str) -> Option<&'a str> {
    if wildcards.is_empty() {
        return None;
    }
    let (label, parent) = name.split_once('.')?;
    if label.is_empty() || label == "*" {
        return None;
    }
    let wildcard = wildcards.iter().find(|w| w.base == parent)?;
    Some(&wildcard.name)
}

/// Names as certificates hold them: lower case, no trailing dot (allocates only otherwise).
fn normalized(name: &str) -> Cow<'_, str> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// The stored certificate for `host`, if any (for `sandgate domain list`).
pub async fn stored_certificate(
    config: &AcmeConfig,
    redis: Option<Arc<RedisHandle>>,
    host: &str,
) -> Result<Option<StoredCertificate>, AcmeError> {
    let storage = Storage::new(config, redis).map_err(AcmeError::Storage)?;
    let host = normalized(host);
    let Some(pem) = storage.load_cert(&host).await? else {
        return Ok(None);
    };
    let issued = Issued::parse(&pem, &host).map_err(AcmeError::Storage)?;
    Ok(Some(StoredCertificate {
        not_before: issued.not_before,
        not_after: issued.not_after,
    }))
}

/// `acme.ca_root` must hold a certificate now, not at the first order minutes later.
fn check_ca_root(path: &std::path::Path) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject;
    let mut certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("acme.ca_root {}: {e}", path.display()))?;
    match certs.next() {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(format!("acme.ca_root {}: {e}", path.display())),
        None => Err(format!(
            "acme.ca_root {}: no PEM certificate in the file",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_serves_names_one_label_below_its_base_only() {
        let wildcards = [Wildcard {
            base: "preview.example.com".into(),
            name: "*.preview.example.com".into(),
        }];
        // (name as the handshake gives it, served by the wildcard)
        let rows = [
            ("3000-sbx-1.preview.example.com", true),
            ("3000-SBX-1.Preview.Example.COM.", true),
            ("preview.example.com", false),
            ("a.b.preview.example.com", false),
            ("x.preview.example.com.evil.test", false),
            ("xpreview.example.com", false),
            (".preview.example.com", false),
            ("*.preview.example.com", false),
            ("example.com", false),
        ];
        for (name, served) in rows {
            let found = wildcard_over(&wildcards, &normalized(name));
            assert_eq!(found.is_some(), served, "{name}");
        }
        assert_eq!(wildcard_over(&[], "a.preview.example.com"), None);
    }

    #[test]
    fn names_are_normalized_without_allocating_when_already_so() {
        // (given, normalized, borrowed)
        let rows = [
            ("a.example.com", "a.example.com", true),
            ("a.example.com.", "a.example.com", true),
            ("A.Example.COM", "a.example.com", false),
            ("A.example.com.", "a.example.com", false),
        ];
        for (given, expected, borrowed) in rows {
            let name = normalized(given);
            assert_eq!(name, expected);
            assert_eq!(matches!(name, Cow::Borrowed(_)), borrowed, "{given}");
        }
    }
}
