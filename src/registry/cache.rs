//! The in-process route cache in front of any [`Registry`] backend.
//!
//! - Hit path: one sharded map read and a clock compare; no I/O, no await, no allocation.
//! - Absolute expiry: a hit never extends an entry's life.
//! - Coalescing: concurrent misses for one key share one backend call.
//! - Stale-if-error: when the backend fails, a recently expired entry keeps serving.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::base::FastMap;
use tokio::sync::{Notify, OnceCell};

use super::link_uses::LinkUses;
use super::side_cache::SideCache;
use super::{Lifetime, Registry, RegistryError, SandboxRecord, TokenCheck, TokenGrant};
use crate::config::CacheConfig;
use crate::metrics::{metrics, CacheEntries};

/// How long a valid credential whose backend does not say when it expires (Daytona's
/// `/preview/{token}/{port}/sandbox-id`) is trusted without asking again.
pub const UNKNOWN_EXPIRY_TTL: Duration = Duration::from_secs(10);

type Lookup = Option<Arc<SandboxRecord>>;
/// A signed token's 16 bytes (`signed_preview::is_signed_token`) and a port: no allocation.
type SignedKey = (u16, [u8; 16]);
type Flight = Arc<OnceCell<Result<Lookup, RegistryError>>>;

struct Slot {
    value: Lookup,
    expires: Instant,
}

/// What a resolution produced, and whether it came from a stale entry.
pub struct Resolved {
    pub sandbox: Lookup,
    pub stale: bool,
}

pub struct Resolver {
    backend: Arc<dyn Registry>,
    ttls: CacheConfig,
    slots: FastMap<Box<str>, Slot>,
    flights: FastMap<Box<str>, Flight>,
    /// (port, signed preview token) → sandbox id; absent = invalid on that port. Keyed by both,
    /// so requests alternating ports of one token each keep their entry.
    signed: SideCache<SignedKey, Option<Box<str>>>,
    /// (sandbox id, SHA-256 of a preview token) → valid?; never the raw token.
    token_checks: SideCache<(Box<str>, [u8; 32]), bool>,
    /// SHA-256 of an SSH access token → sandbox id if valid.
    ssh_tokens: SideCache<[u8; 32], Option<Box<str>>>,
    /// When signed links were last used, if the backend records it.
    link_uses: Option<Arc<LinkUses>>,
    /// Sandboxes a wake is waiting on: an invalidation of one wakes its waiter at once.
    watched: FastMap<Box<str>, Arc<Notify>>,
    /// Counts invalidations: a backend answer read while one arrived is handed to its callers
    /// but never cached (it may predate the change the invalidation announced).
    invalidations: AtomicU64,
}

/// A sandbox watched for invalidations ([`Resolver::watch`]); unwatched when dropped.
pub struct Watch<'a> {
    resolver: &'a Resolver,
    id: Box<str>,
    pub changed: Arc<Notify>,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        let changed = &self.changed;
        self.resolver
            .watched
            .remove_if(&self.id, |_, n| Arc::ptr_eq(n, changed));
    }
}

impl Resolver {
    pub fn new(backend: Arc<dyn Registry>, ttls: CacheConfig) -> Resolver {
        Resolver {
            ttls,
            slots: FastMap::default(),
            flights: FastMap::default(),
            signed: SideCache::new(ttls.max_entries),
            token_checks: SideCache::new(ttls.max_entries),
            ssh_tokens: SideCache::new(ttls.max_entries),
            link_uses: backend
                .records_link_uses()
                .then(|| Arc::new(LinkUses::new(ttls.max_entries))),
            backend,
            watched: FastMap::default(),
            invalidations: AtomicU64::new(0),
        }
    }

    fn generation(&self) -> u64 {
        self.invalidations.load(Ordering::SeqCst)
    }

    /// No invalidation arrived since `generation` was read: an answer read since may be cached.
    fn unchanged_since(&self, generation: u64) -> bool {
        self.generation() == generation
    }

    fn invalidated(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
    }

    /// The signed links' last-use marks, for their flusher (when the backend records them).
    pub fn link_uses(&self) -> Option<Arc<LinkUses>> {
        self.link_uses.clone()
    }

    pub fn backend(&self) -> &Arc<dyn Registry> {
        &self.backend
    }

    /// What the caches hold now (for `sandgate_cache_entries`).
    pub fn entries(&self) -> CacheEntries {
        CacheEntries {
            routes: self.slots.len(),
            credentials: self.signed.len() + self.token_checks.len() + self.ssh_tokens.len(),
        }
    }

    pub async fn ready(&self) -> bool {
        self.backend.ready().await
    }

    /// The sandbox a signed preview token opens on `port`, cached (valid: `found` but never past
    /// the token's expiry, invalid: `not_found`). A token bound to another port opens nothing.
    pub async fn signed_preview(
        &self,
        token: &str,
        port: u16,
    ) -> Result<Option<Box<str>>, RegistryError> {
        let key = <[u8; 16]>::try_from(token.as_bytes())
            .ok()
            .map(|bytes| (port, bytes));
        let cached = key.and_then(|key| self.signed.get(&key));
        let sandbox = match cached {
            Some(sandbox) => sandbox,
            None => {
                let generation = self.generation();
                let found = self.backend.signed_preview(token, port).await?;
                let ttl = self.grant_ttl(found.as_ref());
                let sandbox = found.map(|f| f.sandbox);
                if let Some(key) = key.filter(|_| !ttl.is_zero()) {
                    self.signed
                        .insert_if_current(key, sandbox.clone(), ttl, || {
                            self.unchanged_since(generation)
                        });
                }
                sandbox
            }
        };
        if let (Some(uses), Some((port, token)), Some(id)) = (&self.link_uses, key, &sandbox) {
            uses.mark(port, token, id);
        }
        Ok(sandbox)
    }

    /// How long a token's answer may be cached: a valid token's never outlives the token.
    fn grant_ttl(&self, found: Option<&TokenGrant>) -> Duration {
        match found.map(|f| f.lifetime) {
            None => self.ttls.negative_ttl,
            Some(Lifetime::Unlimited) => self.ttls.ttl,
            Some(Lifetime::Remaining(left)) => self.ttls.ttl.min(left),
            Some(Lifetime::Unknown) => self.ttls.ttl.min(UNKNOWN_EXPIRY_TTL),
        }
    }

    /// The sandbox an SSH access token opens, cached by the token's hash (valid: `found` but
    /// never past the token's expiry, invalid: `not_found`).
    pub async fn ssh_token(&self, token: &str) -> Result<Option<Box<str>>, RegistryError> {
        let key = super::sha256(token);
        if let Some(sandbox) = self.ssh_tokens.get(&key) {
            return Ok(sandbox);
        }
        let generation = self.generation();
        let found = self.backend.ssh_token(token).await?;
        let ttl = self.grant_ttl(found.as_ref());
        let sandbox = found.map(|f| f.sandbox);
        if !ttl.is_zero() {
            self.ssh_tokens
                .insert_if_current(key, sandbox.clone(), ttl, || {
                    self.unchanged_since(generation)
                });
        }
        Ok(sandbox)
    }

    /// What `token` opens on `port`: a local comparison with the record's hashes when it has
    /// any, else the backend's answer (an all-ports token or nothing), cached per (sandbox,
    /// token hash).
    pub async fn preview_token(
        &self,
        sandbox: &SandboxRecord,
        token: &str,
        port: Option<u16>,
    ) -> Result<TokenCheck, RegistryError> {
        if sandbox.has_local_tokens() {
            return Ok(sandbox.check_token(token, port));
        }
        let key = (sandbox.id.clone(), super::sha256(token));
        let valid = match self.token_checks.get(&key) {
            Some(valid) => valid,
            None => {
                let generation = self.generation();
                let valid = self.backend.preview_token_valid(sandbox, token).await?;
                let ttl = if valid {
                    self.ttls.ttl
                } else {
                    self.ttls.negative_ttl
                };
                self.token_checks
                    .insert_if_current(key, valid, ttl, || self.unchanged_since(generation));
                valid
            }
        };
        Ok(if valid {
            TokenCheck::AllPorts
        } else {
            TokenCheck::Invalid
        })
    }

    pub async fn sandbox(&self, id: &str) -> Result<Resolved, RegistryError> {
        let id = lower(id);
        let now = Instant::now();
        if let Some(slot) = self.slots.get(&*id) {
            if slot.expires > now {
                metrics().cache_hits.inc();
                return Ok(Resolved {
                    sandbox: slot.value.clone(),
                    stale: false,
                });
            }
        }
        self.miss(&id, false).await
    }

    /// Asks the backend again, whatever the cache holds (a wake polling for the sandbox's state).
    /// The cached entry stays until the answer replaces it, so other requests keep it (and its
    /// stale-if-error) meanwhile.
    pub async fn refresh(&self, id: &str) -> Result<Option<Arc<SandboxRecord>>, RegistryError> {
        let id = lower(id);
        match self.miss(&id, true).await? {
            Resolved { stale: true, .. } => Err(RegistryError::Unavailable(
                "only a stale entry is left".into(),
            )),
            fresh => Ok(fresh.sandbox),
        }
    }

    /// Watches `id` for invalidations (pushed by the backend) until the guard is dropped. One
    /// watcher per sandbox: a wake.
    pub fn watch(&self, id: &str) -> Watch<'_> {
        let id: Box<str> = lower(id).into();
        let changed = self.watched.entry(id.clone()).or_default().clone();
        Watch {
            resolver: self,
            id,
            changed,
        }
    }

    fn notify_watchers(&self, id: Option<&str>) {
        if self.watched.is_empty() {
            return;
        }
        match id {
            Some(id) => {
                if let Some(watch) = self.watched.get(id) {
                    watch.notify_one();
                }
            }
            None => self.watched.iter().for_each(|watch| watch.notify_one()),
        }
    }

    /// Asks the backend (one call per key at a time); `fresh`: never answered from the cache.
    async fn miss(&self, id: &str, fresh: bool) -> Result<Resolved, RegistryError> {
        let flight: Flight = self.flights.entry(id.into()).or_default().clone();
        let mut led = false;
        let result = flight
            .get_or_init(|| async {
                // However this ends (an answer, or the request going away mid-call), the flight
                // leaves the map, so abandoned flights never pile up.
                let _landed = Landed {
                    flights: &self.flights,
                    id,
                    flight: &flight,
                };
                // A flight that ended between our cache miss and joining it has stored a fresh
                // answer: use it rather than asking the backend again.
                if let Some(slot) = self.slots.get(id).filter(|_| !fresh) {
                    if slot.expires > Instant::now() {
                        return Ok(slot.value.clone());
                    }
                }
                led = true;
                metrics().cache_misses.inc();
                let generation = self.generation();
                let started = Instant::now();
                let result = self.backend.sandbox(id).await;
                metrics()
                    .registry_duration
                    .observe(started.elapsed().as_secs_f64());
                match &result {
                    Ok(value) => self.store(id, value.clone(), generation),
                    Err(e) => {
                        metrics().registry_errors.inc();
                        tracing::warn!(sandbox = id, error = %e, "registry lookup failed");
                    }
                }
                result
            })
            .await;
        if !led {
            metrics().cache_coalesced.inc();
        }
        match result {
            Ok(value) => Ok(Resolved {
                sandbox: value.clone(),
                stale: false,
            }),
            Err(error) => self.stale(id).ok_or_else(|| error.clone()),
        }
    }

    /// Caches `value` unless an invalidation came since `generation`: checked before and after
    /// the insert, which is undone if one came in between.
    fn store(&self, id: &str, value: Lookup, generation: u64) {
        if !self.unchanged_since(generation) {
            return;
        }
        if self.slots.len() >= self.ttls.max_entries {
            self.evict_expired();
        }
        // A sandbox that is not running may start any moment (auto-wake, a user): remember that
        // only as long as a negative answer.
        let ttl = if value.as_ref().is_some_and(|s| s.is_running()) {
            self.ttls.ttl
        } else {
            self.ttls.negative_ttl
        };
        self.slots.insert(
            id.into(),
            Slot {
                value,
                expires: Instant::now() + ttl,
            },
        );
        if !self.unchanged_since(generation) {
            self.slots.remove(id);
        }
    }

    fn stale(&self, id: &str) -> Option<Resolved> {
        let slot = self.slots.get(id)?;
        let age_past_expiry = Instant::now().checked_duration_since(slot.expires)?;
        if age_past_expiry > self.ttls.stale_if_error || slot.value.is_none() {
            return None;
        }
        metrics().cache_stale.inc();
        Some(Resolved {
            sandbox: slot.value.clone(),
            stale: true,
        })
    }

    /// Drops expired entries; if that is not enough, drops everything (a rare, bounded event).
    fn evict_expired(&self) {
        let now = Instant::now();
        self.slots.retain(|_, slot| slot.expires > now);
        if self.slots.len() >= self.ttls.max_entries {
            self.slots.clear();
        }
    }

    /// Forgets one sandbox (push invalidation) or everything (`None`: an operator's `all`, a
    /// reload): what was removed or rotated is never served again, not even stale-if-error.
    /// A lookup already under way is left to its callers, but later ones ask the backend anew.
    pub fn invalidate(&self, id: Option<&str>) {
        self.invalidated();
        match id {
            Some(id) => {
                let id = lower(id);
                self.flights.remove(&*id);
                self.slots.remove(&*id);
                self.notify_watchers(Some(&id));
            }
            None => {
                self.flights.clear();
                self.slots.clear();
                self.forget_credentials();
            }
        }
    }

    /// Messages may have been missed (a resubscription): every sandbox is read again before it
    /// is used, but kept as the stale-if-error fallback, so a Redis node's death does not fail
    /// every cached sandbox while Redis fails. Credentials are forgotten.
    pub fn expire_all(&self) {
        self.invalidated();
        self.flights.clear();
        let now = Instant::now();
        for mut slot in self.slots.iter_mut() {
            slot.expires = slot.expires.min(now);
        }
        self.forget_credentials();
    }

    fn forget_credentials(&self) {
        self.signed.clear();
        self.token_checks.clear();
        self.ssh_tokens.clear();
        self.notify_watchers(None);
    }

    /// Forgets a signed preview token on every port (revocation; rare, so a scan).
    pub fn invalidate_signed(&self, token: &str) {
        self.invalidated();
        self.signed
            .retain(|(_, bytes)| bytes.as_slice() != token.as_bytes());
    }
}

/// Removes a flight from the map when dropped (unless an invalidation already replaced it).
struct Landed<'a> {
    flights: &'a FastMap<Box<str>, Flight>,
    id: &'a str,
    flight: &'a Flight,
}

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        self.flights
            .remove_if(self.id, |_, f| Arc::ptr_eq(f, self.flight));
    }
}

fn lower(id: &str) -> Cow<'_, str> {
    if id.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(id.to_ascii_lowercase())
    } else {
        Cow::Borrowed(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{BoxFuture, Upstream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    struct Counting {
        calls: AtomicUsize,
        fail: Mutex<bool>,
        /// What `signed_preview` says of every token's lifetime.
        signed_lifetime: Mutex<Lifetime>,
    }

    impl Registry for Counting {
        fn signed_preview<'a>(
            &'a self,
            _token: &'a str,
            _port: u16,
        ) -> BoxFuture<'a, Result<Option<crate::registry::TokenGrant>, RegistryError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let lifetime = *self.signed_lifetime.lock().unwrap();
            Box::pin(async move {
                Ok(Some(crate::registry::TokenGrant {
                    sandbox: "sbx".into(),
                    lifetime,
                }))
            })
        }

        fn ssh_token<'a>(
            &'a self,
            token: &'a str,
        ) -> BoxFuture<'a, Result<Option<crate::registry::TokenGrant>, RegistryError>> {
            self.signed_preview(token, 22)
        }

        fn sandbox<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Lookup, RegistryError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                if *self.fail.lock().unwrap() {
                    return Err(RegistryError::Unavailable("down".into()));
                }
                let upstream = Upstream::Direct {
                    address: "127.0.0.1".into(),
                };
                Ok((id != "missing")
                    .then(|| Arc::new(SandboxRecord::new(id, upstream, true, "started", None))))
            })
        }
    }

    fn resolver(ttls: CacheConfig) -> (Arc<Counting>, Arc<Resolver>) {
        let backend = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            fail: Mutex::new(false),
            signed_lifetime: Mutex::new(Lifetime::Unlimited),
        });
        (backend.clone(), Arc::new(Resolver::new(backend, ttls)))
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_backend_call() {
        let (backend, resolver) = resolver(CacheConfig::default());
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let r = resolver.clone();
                tokio::spawn(async move { r.sandbox("sbx").await.unwrap().sandbox.is_some() })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(backend.calls.load(Ordering::SeqCst), 1);
        resolver.sandbox("SBX").await.unwrap();
        assert_eq!(
            backend.calls.load(Ordering::SeqCst),
            1,
            "ids are case-insensitive"
        );
    }

    #[tokio::test]
    async fn expiry_is_absolute_and_negative_answers_are_cached() {
        let ttls = CacheConfig {
            ttl: Duration::from_millis(100),
            ..CacheConfig::default()
        };
        let (backend, resolver) = resolver(ttls);
        resolver.sandbox("sbx").await.unwrap();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            resolver.sandbox("sbx").await.unwrap();
        }
        assert_eq!(
            backend.calls.load(Ordering::SeqCst),
            2,
            "a hot key still refreshes"
        );
        assert!(resolver.sandbox("missing").await.unwrap().sandbox.is_none());
        assert!(resolver.sandbox("missing").await.unwrap().sandbox.is_none());
        assert_eq!(backend.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_abandoned_lookup_leaves_no_flight_behind() {
        let (backend, resolver) = resolver(CacheConfig::default());
        let abandoned =
            tokio::time::timeout(Duration::from_millis(5), resolver.sandbox("gone")).await;
        assert!(abandoned.is_err(), "the backend takes 20 ms");
        assert_eq!(resolver.flights.len(), 0);
        assert!(resolver.sandbox("gone").await.unwrap().sandbox.is_some());
        assert_eq!(backend.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn missed_messages_reread_but_keep_a_stale_fallback_and_all_forgets() {
        let (backend, resolver) = resolver(CacheConfig::default());
        resolver.sandbox("sbx").await.unwrap();
        resolver.expire_all();
        resolver.sandbox("sbx").await.unwrap();
        assert_eq!(backend.calls.load(Ordering::SeqCst), 2, "read again");
        resolver.expire_all();
        *backend.fail.lock().unwrap() = true;
        let resolved = resolver.sandbox("sbx").await.unwrap();
        assert!(resolved.stale && resolved.sandbox.is_some());
        // An operator's `all` (a runner removed, a key rotated) is never served stale.
        resolver.invalidate(None);
        assert!(resolver.sandbox("sbx").await.is_err(), "all forgets");
    }

    #[tokio::test]
    async fn an_answer_read_before_an_invalidation_is_never_cached() {
        // A sandbox removed (or moved) while a lookup of it is under way: that lookup's answer
        // predates the change and must not outlive it in the cache.
        type Invalidate = fn(&Resolver);
        let invalidations: [(&str, Invalidate); 3] = [
            ("this sandbox", |r| r.invalidate(Some("sbx"))),
            ("all", |r| r.invalidate(None)),
            ("missed messages", |r| r.expire_all()),
        ];
        for (name, invalidate) in invalidations {
            let (backend, resolver) = resolver(CacheConfig::default());
            let calls = || backend.calls.load(Ordering::SeqCst);
            let start = || {
                let resolver = resolver.clone();
                tokio::spawn(async move { resolver.sandbox("sbx").await.map(|r| r.sandbox) })
            };
            // The backend takes 20 ms: the invalidation lands while the first lookup waits.
            let before = start();
            tokio::time::sleep(Duration::from_millis(5)).await;
            invalidate(&resolver);
            let answered = before.await.unwrap().unwrap();
            assert!(answered.is_some(), "{name}: its caller is answered");
            resolver.sandbox("sbx").await.unwrap();
            assert_eq!(calls(), 2, "{name}: that answer was not cached");
            // A lookup after an invalidation does not join one from before it.
            invalidate(&resolver);
            let before = start();
            tokio::time::sleep(Duration::from_millis(5)).await;
            invalidate(&resolver);
            resolver.sandbox("sbx").await.unwrap();
            assert_eq!(calls(), 4, "{name}: asked anew, not joined");
            before.await.unwrap().unwrap();
            resolver.sandbox("sbx").await.unwrap();
            assert_eq!(calls(), 4, "{name}: the newer answer is cached");
        }
    }

    #[tokio::test]
    async fn stale_entries_serve_while_the_backend_fails() {
        let ttls = CacheConfig {
            ttl: Duration::from_millis(10),
            ..CacheConfig::default()
        };
        let (backend, resolver) = resolver(ttls);
        resolver.sandbox("sbx").await.unwrap();
        *backend.fail.lock().unwrap() = true;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let resolved = resolver.sandbox("sbx").await.unwrap();
        assert!(resolved.stale && resolved.sandbox.is_some());
        assert!(resolver.sandbox("other").await.is_err());
    }

    #[tokio::test]
    async fn a_signed_token_is_cached_no_longer_than_it_lives() {
        let (backend, resolver) = resolver(CacheConfig::default());
        let expiry_of = |token: &str| {
            let bytes: [u8; 16] = token.as_bytes().try_into().unwrap();
            resolver.signed.expiry(&(3000, bytes))
        };
        let cases = [
            (Lifetime::Unlimited, CacheConfig::default().ttl),
            (Lifetime::Unknown, UNKNOWN_EXPIRY_TTL),
            (
                Lifetime::Remaining(Duration::from_secs(3)),
                Duration::from_secs(3),
            ),
            (
                Lifetime::Remaining(Duration::from_secs(600)),
                CacheConfig::default().ttl,
            ),
        ];
        for (i, (lifetime, most)) in cases.into_iter().enumerate() {
            *backend.signed_lifetime.lock().unwrap() = lifetime;
            let token = format!("token{i:011}");
            let before = Instant::now();
            let found = resolver.signed_preview(&token, 3000).await.unwrap();
            let after = Instant::now();
            assert_eq!(found.as_deref(), Some("sbx"));
            let expires = expiry_of(&token).unwrap();
            assert!(expires <= after + most, "{lifetime:?}: cached too long");
            assert!(
                expires + Duration::from_secs(1) > before + most,
                "{lifetime:?}"
            );
        }
        // An expired token is not cached at all; a nearly expired one goes with its expiry.
        *backend.signed_lifetime.lock().unwrap() = Lifetime::Remaining(Duration::ZERO);
        resolver
            .signed_preview("expiresnow000000", 3000)
            .await
            .unwrap();
        assert!(expiry_of("expiresnow000000").is_none());
        *backend.signed_lifetime.lock().unwrap() = Lifetime::Remaining(Duration::from_millis(30));
        let calls = backend.calls.load(Ordering::SeqCst);
        resolver
            .signed_preview("shortlived000000", 3000)
            .await
            .unwrap();
        resolver
            .signed_preview("shortlived000000", 3000)
            .await
            .unwrap();
        assert_eq!(backend.calls.load(Ordering::SeqCst), calls + 1, "a hit");
        tokio::time::sleep(Duration::from_millis(40)).await;
        resolver
            .signed_preview("shortlived000000", 3000)
            .await
            .unwrap();
        assert_eq!(
            backend.calls.load(Ordering::SeqCst),
            calls + 2,
            "asked again once the token expired"
        );
    }

    #[tokio::test]
    async fn alternating_ports_of_one_signed_token_keep_both_entries() {
        let (backend, resolver) = resolver(CacheConfig::default());
        for _ in 0..10 {
            for port in [3000, 3001] {
                let found = resolver.signed_preview("alternating00000", port).await;
                assert_eq!(found.unwrap().as_deref(), Some("sbx"));
            }
        }
        assert_eq!(backend.calls.load(Ordering::SeqCst), 2, "one read per port");
        resolver.invalidate_signed("alternating00000");
        resolver
            .signed_preview("alternating00000", 3000)
            .await
            .unwrap();
        resolver
            .signed_preview("alternating00000", 3001)
            .await
            .unwrap();
        assert_eq!(
            backend.calls.load(Ordering::SeqCst),
            4,
            "revocation forgets every port"
        );
    }

    #[tokio::test]
    async fn an_ssh_token_is_cached_no_longer_than_it_lives() {
        let (backend, resolver) = resolver(CacheConfig::default());
        *backend.signed_lifetime.lock().unwrap() = Lifetime::Remaining(Duration::ZERO);
        resolver.ssh_token("expired").await.unwrap();
        assert!(
            resolver.ssh_tokens.is_empty(),
            "an expired token is not cached"
        );
        *backend.signed_lifetime.lock().unwrap() = Lifetime::Remaining(Duration::from_millis(30));
        let calls = backend.calls.load(Ordering::SeqCst);
        for _ in 0..2 {
            let found = resolver.ssh_token("short-lived").await.unwrap();
            assert_eq!(found.as_deref(), Some("sbx"));
        }
        assert_eq!(backend.calls.load(Ordering::SeqCst), calls + 1, "a hit");
        tokio::time::sleep(Duration::from_millis(40)).await;
        resolver.ssh_token("short-lived").await.unwrap();
        assert_eq!(
            backend.calls.load(Ordering::SeqCst),
            calls + 2,
            "asked again once the token expired"
        );
    }
}
