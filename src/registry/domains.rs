//! Custom domains: a host name the registry maps to a sandbox's port, verified by a DNS TXT
//! record (`_sandgate-challenge.<host>`) or by the control plane. [`CustomDomains`] puts a
//! bounded cache and the TXT check in front of the registry backend.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::OnceCell;

use super::{Registry, RegistryError};
use crate::base::FastMap;
use crate::config::DomainsConfig;
use crate::metrics::metrics;

/// The TXT record whose value proves a pending domain: `_sandgate-challenge.<host>`.
pub const CHALLENGE_LABEL: &str = "_sandgate-challenge";

/// While the registry fails, an answer this much past its `cache_ttl` still serves (the
/// sandbox cache's default `stale_if_error`).
const STALE_IF_ERROR: Duration = Duration::from_secs(600);

/// A TXT lookup gives up after this long (the domain stays pending; a later lookup retries).
const TXT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecord {
    /// Lower-case, no trailing dot.
    pub host: Box<str>,
    pub sandbox: Box<str>,
    pub port: u16,
    /// Prepended to the request path (`/app`: starts with `/`, no trailing `/`).
    pub path_prefix: Option<Box<str>>,
    pub state: DomainState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainState {
    Verified,
    Pending(Verification),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// `_sandgate-challenge.<host>` must hold this TXT value.
    DnsTxt { token: Box<str> },
    /// The control plane (the registry) marks it verified.
    ControlPlane,
}

/// A field of a domain record that is not valid, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DomainError {
    /// `host`, `sandbox`, `port`, `path_prefix`, `state`, `verification` or `token`.
    pub field: &'static str,
    pub reason: String,
}

fn refused<T>(field: &'static str, reason: impl Into<String>) -> Result<T, DomainError> {
    Err(DomainError {
        field,
        reason: reason.into(),
    })
}

impl DomainRecord {
    /// A checked record: the host lower-cased (a trailing dot dropped), the sandbox id
    /// lower-cased; every field as [`check_host`], [`check_path_prefix`] and [`check_token`] want.
    pub fn new(
        host: &str,
        sandbox: &str,
        port: u16,
        path_prefix: Option<&str>,
        state: DomainState,
    ) -> Result<DomainRecord, DomainError> {
        let host = check_host(host)?;
        let sandbox = check_sandbox(sandbox)?;
        if port == 0 {
            return refused("port", "must be 1..65535");
        }
        let path_prefix = path_prefix.map(check_path_prefix).transpose()?;
        if let DomainState::Pending(Verification::DnsTxt { token }) = &state {
            check_token(token)?;
        }
        Ok(DomainRecord {
            host: host.into(),
            sandbox: sandbox.into(),
            port,
            path_prefix: path_prefix.map(Into::into),
            state,
        })
    }

    /// `_sandgate-challenge.<host>`: where a `dns` verification looks for the token.
    pub fn challenge_name(&self) -> String {
        challenge_name(&self.host)
    }

    pub fn state_name(&self) -> &'static str {
        match self.state {
            DomainState::Verified => "verified",
            DomainState::Pending(_) => "pending",
        }
    }

    /// `dns` or `control-plane` while pending; `None` once verified.
    pub fn verification_name(&self) -> Option<&'static str> {
        match &self.state {
            DomainState::Verified => None,
            DomainState::Pending(Verification::DnsTxt { .. }) => Some("dns"),
            DomainState::Pending(Verification::ControlPlane) => Some("control-plane"),
        }
    }

    /// The TXT value a `dns`-pending domain waits for.
    pub fn token(&self) -> Option<&str> {
        match &self.state {
            DomainState::Pending(Verification::DnsTxt { token }) => Some(token),
            _ => None,
        }
    }

    fn verified(&self) -> DomainRecord {
        DomainRecord {
            state: DomainState::Verified,
            ..self.clone()
        }
    }
}

/// `_sandgate-challenge.<host>`.
pub fn challenge_name(host: &str) -> String {
    format!("{CHALLENGE_LABEL}.{host}")
}

/// The state as stored (`verified` | `pending`, default pending), with its verification
/// (`dns` (default) | `control-plane`) and, for `dns`, the token.
pub fn parse_state(
    state: Option<&str>,
    verification: Option<&str>,
    token: Option<&str>,
) -> Result<DomainState, DomainError> {
    match state.unwrap_or("pending") {
        "verified" => return Ok(DomainState::Verified),
        "pending" => {}
        other => {
            return refused(
                "state",
                format!("must be verified or pending, not {other:?}"),
            )
        }
    }
    match verification.unwrap_or("dns") {
        "dns" => match token {
            Some(token) => {
                check_token(token)?;
                Ok(DomainState::Pending(Verification::DnsTxt {
                    token: token.into(),
                }))
            }
            None => refused("token", "a dns-pending domain needs its token"),
        },
        "control-plane" => Ok(DomainState::Pending(Verification::ControlPlane)),
        other => refused(
            "verification",
            format!("must be dns or control-plane, not {other:?}"),
        ),
    }
}

/// A host name as a custom domain: at least two labels of 1–63 `[a-z0-9-]` (no leading or
/// trailing `-`), at most 253 characters, no wildcard, not an IP address. Answers it
/// lower-cased, without a trailing dot.
pub fn check_host(host: &str) -> Result<String, DomainError> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.contains('*') {
        return refused(
            "host",
            format!("{host:?}: wildcards are not custom domains"),
        );
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
        return refused("host", format!("{host:?} is an IP address, not a name"));
    }
    if !is_dns_name(&host) {
        return refused(
            "host",
            format!(
                "{host:?} is not a DNS name (two or more labels of 1-63 [a-z0-9-], no label \
                 starting or ending in '-', 253 characters at most)"
            ),
        );
    }
    Ok(host)
}

/// Is `host` (already lower-case, no trailing dot) a name [`check_host`] accepts? No
/// allocation: the lookup path runs it on every unknown host.
pub fn is_dns_name(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    let mut labels = 0;
    for label in host.split('.') {
        let bytes = label.as_bytes();
        let well_formed = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes.first() != Some(&b'-')
            && bytes.last() != Some(&b'-');
        if !well_formed {
            return false;
        }
        labels += 1;
    }
    // The last label of a name is never all digits (that is an IPv4 address).
    let tld_numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    labels >= 2 && !tld_numeric
}

fn check_sandbox(id: &str) -> Result<String, DomainError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return refused("sandbox", format!("{id:?} must be [A-Za-z0-9_-]+"));
    }
    Ok(id.to_ascii_lowercase())
}

/// A path prefix: starts with `/`, no trailing `/`, no `..` or `//` segments, no `%`, `?`,
/// `#`, spaces or control characters (it is pasted in front of the request's path as is).
pub fn check_path_prefix(prefix: &str) -> Result<&str, DomainError> {
    let why = if !prefix.starts_with('/') {
        Some("must start with /")
    } else if prefix.len() < 2 || prefix.ends_with('/') {
        Some("must name a path and not end with /")
    } else if prefix.contains("//") {
        Some("must not contain //")
    } else if prefix
        .split('/')
        .any(|segment| segment == ".." || segment == ".")
    {
        Some("must not contain . or .. segments")
    } else if prefix.len() > 1024 {
        Some("is longer than 1024 characters")
    } else if prefix
        .bytes()
        .any(|b| matches!(b, b'%' | b'?' | b'#' | b'\\') || !b.is_ascii_graphic())
    {
        Some("must not contain %, ?, #, \\, spaces or control characters")
    } else {
        None
    };
    match why {
        Some(why) => refused("path_prefix", format!("{prefix:?} {why}")),
        None => Ok(prefix),
    }
}

/// A verification token: 16–128 characters `[A-Za-z0-9_-]`.
pub fn check_token(token: &str) -> Result<(), DomainError> {
    let valid = (16..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return refused("token", "must be 16-128 characters [A-Za-z0-9_-]");
    }
    Ok(())
}

/// A new verification token: 32 random hex digits.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A host's answer, as the proxy acts on it.
#[derive(Debug, Clone)]
pub enum DomainLookup {
    Unknown,
    Pending(Arc<DomainRecord>),
    Verified(Arc<DomainRecord>),
}

/// What a TXT check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtOutcome {
    /// A TXT string equals the token.
    Verified,
    /// TXT records exist, none equals the token (they are listed).
    Mismatch(Vec<String>),
    /// No TXT record at the name.
    Absent,
    /// The DNS server did not answer (within 2 s) or answered an error.
    Error(String),
}

impl TxtOutcome {
    fn label(&self) -> &'static str {
        match self {
            TxtOutcome::Verified => "verified",
            TxtOutcome::Mismatch(_) => "mismatch",
            TxtOutcome::Absent => "absent",
            TxtOutcome::Error(_) => "error",
        }
    }
}

/// Looks up `_sandgate-challenge.<host>` TXT records with `domains.dns_resolver`.
pub struct TxtVerifier {
    resolver: hickory_resolver::TokioResolver,
}

impl TxtVerifier {
    pub fn new(config: &DomainsConfig) -> Result<TxtVerifier, String> {
        use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
        use hickory_resolver::net::runtime::TokioRuntimeProvider;
        let provider = TokioRuntimeProvider::default();
        let mut builder = match config.resolver_address()? {
            None => hickory_resolver::TokioResolver::builder(provider)
                .map_err(|e| format!("domains.dns_resolver = \"system\": {e}"))?,
            Some(address) => {
                let on_port = |mut connection: ConnectionConfig| {
                    connection.port = address.port();
                    connection
                };
                let server = NameServerConfig::new(
                    address.ip(),
                    true,
                    vec![
                        on_port(ConnectionConfig::udp()),
                        on_port(ConnectionConfig::tcp()),
                    ],
                );
                hickory_resolver::TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    provider,
                )
            }
        };
        // A record just created must count at the next check, not after its TTL.
        let options = builder.options_mut();
        options.timeout = TXT_TIMEOUT;
        options.attempts = 1;
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        let resolver = builder
            .build()
            .map_err(|e| format!("domains.dns_resolver: {e}"))?;
        Ok(TxtVerifier { resolver })
    }

    /// Does `_sandgate-challenge.<host>` hold `token`? (A record split into several strings
    /// counts as their concatenation.)
    pub async fn check(&self, host: &str, token: &str) -> TxtOutcome {
        use hickory_resolver::proto::rr::RData;
        let name = format!("{}.", challenge_name(host));
        let lookup = match tokio::time::timeout(
            TXT_TIMEOUT,
            self.resolver.txt_lookup(name.as_str()),
        )
        .await
        {
            Err(_) => return TxtOutcome::Error(format!("no answer within {TXT_TIMEOUT:?}")),
            Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => return TxtOutcome::Absent,
            Ok(Err(e)) => return TxtOutcome::Error(e.to_string()),
            Ok(Ok(lookup)) => lookup,
        };
        let values: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        if values.iter().any(|value| value == token) {
            TxtOutcome::Verified
        } else if values.is_empty() {
            TxtOutcome::Absent
        } else {
            TxtOutcome::Mismatch(values)
        }
    }
}

type Answer = Option<Arc<DomainRecord>>;
type Flight = Arc<OnceCell<Result<Answer, RegistryError>>>;

struct Slot {
    answer: Answer,
    stored: Instant,
}

/// A pending domain's last TXT check: when, and the token it found (if it did).
struct TxtMemo {
    at: Option<Instant>,
    verified_token: Option<Box<str>>,
}

/// The registry's custom domains behind a bounded cache, with DNS TXT verification.
pub struct CustomDomains {
    registry: Arc<dyn Registry>,
    ttl: Duration,
    verify_interval: Duration,
    max_entries: usize,
    slots: FastMap<Box<str>, Slot>,
    flights: FastMap<Box<str>, Flight>,
    txt_memos: FastMap<Box<str>, TxtMemo>,
    verifier: TxtVerifier,
    /// `sandgate_domain_lookups_total` by answer: verified, pending, unknown, error.
    counted: [Counter; 4],
    /// TXT lookups made by this instance (the metric adds up every instance).
    txt_checks: AtomicU64,
    /// Counts invalidations: an answer read while one arrived is used but never cached.
    invalidations: AtomicU64,
}

impl CustomDomains {
    pub fn new(
        registry: Arc<dyn Registry>,
        config: &DomainsConfig,
    ) -> Result<CustomDomains, String> {
        config.validate()?;
        let counted =
            ["verified", "pending", "unknown", "error"].map(|r| metrics().domain_lookups(r));
        Ok(CustomDomains {
            registry,
            ttl: config.cache_ttl,
            verify_interval: config.verify_interval,
            max_entries: config.cache_entries,
            slots: FastMap::default(),
            flights: FastMap::default(),
            txt_memos: FastMap::default(),
            verifier: TxtVerifier::new(config)?,
            counted,
            txt_checks: Default::default(),
            invalidations: Default::default(),
        })
    }

    /// Answers held now (found and not found), for tests and the cache gauge.
    pub fn entries(&self) -> usize {
        self.slots.len()
    }

    /// Is `host` a verified custom domain now? What an ACME name authority asks before
    /// ordering: a pending, unknown or unreadable name is never "yes".
    pub async fn is_verified(&self, host: &str) -> bool {
        matches!(self.lookup(host).await, Ok(DomainLookup::Verified(_)))
    }

    /// Forgets every answer (an operator's `all`; a reloaded static registry may have changed
    /// any record).
    pub fn forget_all(&self) {
        self.invalidated();
        self.flights.clear();
        self.slots.clear();
        self.txt_memos.clear();
        self.invalidated();
        metrics().domain_cache_entries.set(0);
    }

    /// Forgets `host` (its record was added, changed or removed): the next request asks the
    /// registry, and a lookup already under way is not cached.
    pub fn forget(&self, host: &str) {
        self.invalidated();
        let host = lower(host);
        self.flights.remove(&*host);
        self.slots.remove(&*host);
        self.txt_memos.remove(&*host);
        self.invalidated();
        metrics().domain_cache_entries.set(self.slots.len() as i64);
    }

    /// Invalidations may have been missed (a resubscription): every answer is read again before
    /// use but kept as the stale-if-error fallback, as the sandbox cache does.
    pub fn expire_all(&self) {
        self.invalidated();
        self.flights.clear();
        let now = Instant::now();
        self.slots
            .retain(|_, slot| match now.checked_sub(self.ttl) {
                Some(expired) => {
                    slot.stored = slot.stored.min(expired);
                    true
                }
                None => false,
            });
        self.invalidated();
        metrics().domain_cache_entries.set(self.slots.len() as i64);
    }

    fn generation(&self) -> u64 {
        self.invalidations.load(Ordering::SeqCst)
    }

    /// Called before an invalidation's removals (a lookup under way is not cached) and after
    /// them (a lookup that read the cache before they landed does not cache what it made of it:
    /// a pending record found verified by its TXT record).
    fn invalidated(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
    }

    /// TXT lookups this instance has made.
    pub fn txt_checks(&self) -> u64 {
        self.txt_checks.load(Ordering::Relaxed)
    }

    /// `host`: lower-case, without port or trailing dot.
    pub async fn lookup(&self, host: &str) -> Result<DomainLookup, RegistryError> {
        let answer = self.lookup_inner(host).await;
        let index = match &answer {
            Ok(DomainLookup::Verified(_)) => 0,
            Ok(DomainLookup::Pending(_)) => 1,
            Ok(DomainLookup::Unknown) => 2,
            Err(_) => 3,
        };
        self.counted[index].inc();
        answer
    }

    async fn lookup_inner(&self, host: &str) -> Result<DomainLookup, RegistryError> {
        let host = lower(host);
        // Names no registry can hold never reach it nor take a cache entry.
        if !is_dns_name(&host) {
            return Ok(DomainLookup::Unknown);
        }
        let generation = self.generation();
        let answer = match self.cached(&host) {
            Some(answer) => answer,
            None => self.miss(&host).await?,
        };
        let Some(record) = answer else {
            return Ok(DomainLookup::Unknown);
        };
        match &record.state {
            DomainState::Verified => Ok(DomainLookup::Verified(record)),
            DomainState::Pending(Verification::ControlPlane) => Ok(DomainLookup::Pending(record)),
            DomainState::Pending(Verification::DnsTxt { token }) => {
                match self.txt_verified(&host, token).await {
                    true => Ok(DomainLookup::Verified(
                        self.mark_verified(&record, generation),
                    )),
                    false => Ok(DomainLookup::Pending(record)),
                }
            }
        }
    }

    fn cached(&self, host: &str) -> Option<Answer> {
        let slot = self.slots.get(host)?;
        (slot.stored.elapsed() < self.ttl).then(|| slot.answer.clone())
    }

    /// Asks the registry (one call per host at a time); when it fails, a cached answer up to
    /// [`STALE_IF_ERROR`] past its expiry is served rather than failing.
    async fn miss(&self, host: &str) -> Result<Answer, RegistryError> {
        let flight: Flight = self.flights.entry(host.into()).or_default().clone();
        let result = flight
            .get_or_init(|| async {
                let _landed = Landed {
                    flights: &self.flights,
                    host,
                    flight: &flight,
                };
                if let Some(answer) = self.cached(host) {
                    return Ok(answer);
                }
                let generation = self.generation();
                let found = self.registry.domain(host).await.map(|found| {
                    // A backend answering for another host than asked must not route it.
                    found.filter(|r| &*r.host == host).map(Arc::new)
                });
                match &found {
                    Ok(answer) => self.store(host, answer.clone(), generation),
                    Err(e) => tracing::warn!(host, error = %e, "custom domain lookup failed"),
                }
                found
            })
            .await;
        match result {
            Ok(answer) => Ok(answer.clone()),
            Err(error) => match self.slots.get(host) {
                Some(slot) if slot.stored.elapsed() < self.ttl + STALE_IF_ERROR => {
                    Ok(slot.answer.clone())
                }
                _ => Err(error.clone()),
            },
        }
    }

    /// Caches `answer` unless an invalidation came since `generation`: checked before and after
    /// the insert, which is undone if one came in between.
    fn store(&self, host: &str, answer: Answer, generation: u64) {
        if self.generation() != generation {
            return;
        }
        if self.slots.len() >= self.max_entries && !self.slots.contains_key(host) {
            self.evict();
        }
        let slot = Slot {
            answer,
            stored: Instant::now(),
        };
        self.slots.insert(host.into(), slot);
        if self.generation() != generation {
            self.slots.remove(host);
        }
        metrics().domain_cache_entries.set(self.slots.len() as i64);
    }

    /// Drops expired answers; if that is not enough, the older half.
    fn evict(&self) {
        let ttl = self.ttl;
        self.slots.retain(|_, slot| slot.stored.elapsed() < ttl);
        if self.slots.len() < self.max_entries {
            return;
        }
        let mut ages: Vec<Instant> = self.slots.iter().map(|slot| slot.stored).collect();
        let middle = ages.len() / 2;
        let (_, median, _) = ages.select_nth_unstable(middle);
        let median = *median;
        self.slots.retain(|_, slot| slot.stored > median);
    }

    /// Has `_sandgate-challenge.<host>` shown `token`? Asks DNS at most once per
    /// `verify_interval` per host; between checks, the last check's answer stands.
    async fn txt_verified(&self, host: &str, token: &str) -> bool {
        let now = Instant::now();
        let due = |memo: &TxtMemo| {
            memo.at
                .is_none_or(|at| now.saturating_duration_since(at) >= self.verify_interval)
        };
        // Between checks, a read without allocating the key.
        if let Some(memo) = self.txt_memos.get(host).filter(|memo| !due(memo)) {
            return memo.verified_token.as_deref() == Some(token);
        }
        {
            if self.txt_memos.len() >= self.max_entries && !self.txt_memos.contains_key(host) {
                self.txt_memos.clear();
            }
            let mut memo = self.txt_memos.entry(host.into()).or_insert(TxtMemo {
                at: None,
                verified_token: None,
            });
            if !due(&memo) {
                return memo.verified_token.as_deref() == Some(token);
            }
            // Claimed: concurrent lookups see a fresh check and wait for the next interval.
            memo.at = Some(now);
        }
        self.txt_checks.fetch_add(1, Ordering::Relaxed);
        let outcome = self.verifier.check(host, token).await;
        metrics().domain_txt_check(outcome.label());
        match &outcome {
            TxtOutcome::Error(e) => tracing::warn!(host, error = %e, "TXT check failed"),
            other => tracing::debug!(host, outcome = ?other, "TXT check"),
        }
        let Some(mut memo) = self.txt_memos.get_mut(host) else {
            return outcome == TxtOutcome::Verified;
        };
        match outcome {
            TxtOutcome::Verified => memo.verified_token = Some(token.into()),
            // A resolver's bad moment is no answer: what the last answer proved still stands.
            TxtOutcome::Error(_) => {}
            _ => memo.verified_token = None,
        }
        memo.verified_token.as_deref() == Some(token)
    }

    /// Keeps `record` verified in the cache (unless it was invalidated since `generation`) and
    /// tells the registry (in the background; it checks the record is still this one).
    fn mark_verified(&self, record: &DomainRecord, generation: u64) -> Arc<DomainRecord> {
        let verified = Arc::new(record.verified());
        self.store(&record.host, Some(verified.clone()), generation);
        let registry = self.registry.clone();
        let host = record.host.clone();
        let sandbox = record.sandbox.clone();
        let token: Box<str> = record.token().unwrap_or_default().into();
        tokio::spawn(async move {
            match registry.domain_verified(&host, &sandbox, &token).await {
                Ok(()) => tracing::info!(host = &*host, "custom domain verified by its TXT record"),
                Err(e) => {
                    tracing::warn!(host = &*host, error = %e, "could not record a domain as verified")
                }
            }
        });
        verified
    }
}

/// Removes a flight from the map when dropped (unless an invalidation already replaced it).
struct Landed<'a> {
    flights: &'a FastMap<Box<str>, Flight>,
    host: &'a str,
    flight: &'a Flight,
}

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        self.flights
            .remove_if(self.host, |_, f| Arc::ptr_eq(f, self.flight));
    }
}

fn lower(host: &str) -> Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{BoxFuture, SandboxRecord};

    /// Answers every host with a verified record for `sbx-<n>`, n counting its calls, after 20 ms.
    #[derive(Default)]
    struct Slow {
        calls: std::sync::atomic::AtomicUsize,
    }

    impl Registry for Slow {
        fn sandbox<'a>(
            &'a self,
            _id: &'a str,
        ) -> BoxFuture<'a, Result<Option<Arc<SandboxRecord>>, RegistryError>> {
            Box::pin(async { Ok(None) })
        }

        fn domain<'a>(
            &'a self,
            host: &'a str,
        ) -> BoxFuture<'a, Result<Option<DomainRecord>, RegistryError>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let sandbox = format!("sbx-{call}");
                Ok(DomainRecord::new(host, &sandbox, 80, None, DomainState::Verified).ok())
            })
        }
    }

    #[tokio::test]
    async fn an_answer_read_before_an_invalidation_is_never_cached() {
        // A domain moved to another sandbox while a lookup of it is under way: that lookup's
        // answer predates the move and must not be cached, nor joined by later lookups.
        type Invalidate = fn(&CustomDomains);
        let invalidations: [(&str, Invalidate); 3] = [
            ("this host", |d| d.forget("app.example.com")),
            ("all", |d| d.forget_all()),
            ("missed messages", |d| d.expire_all()),
        ];
        let sandbox = |lookup: DomainLookup| match lookup {
            DomainLookup::Verified(record) => record.sandbox.to_string(),
            _ => "not verified".into(),
        };
        for (name, invalidate) in invalidations {
            let registry = Arc::new(Slow::default());
            let domains =
                Arc::new(CustomDomains::new(registry.clone(), &DomainsConfig::default()).unwrap());
            let start = || {
                let domains = domains.clone();
                tokio::spawn(async move { domains.lookup("app.example.com").await })
            };
            let lookup = || async { sandbox(domains.lookup("app.example.com").await.unwrap()) };
            // The registry takes 20 ms: the invalidation lands while the first lookup waits.
            let before = start();
            tokio::time::sleep(Duration::from_millis(5)).await;
            invalidate(&domains);
            let answered = sandbox(before.await.unwrap().unwrap());
            assert_eq!(answered, "sbx-1", "{name}: its caller is answered");
            assert_eq!(
                lookup().await,
                "sbx-2",
                "{name}: that answer was not cached"
            );
            // A lookup after an invalidation does not join one from before it.
            invalidate(&domains);
            let before = start();
            tokio::time::sleep(Duration::from_millis(5)).await;
            invalidate(&domains);
            assert_eq!(lookup().await, "sbx-4", "{name}: asked anew, not joined");
            let answered = sandbox(before.await.unwrap().unwrap());
            assert_eq!(answered, "sbx-3", "{name}: its caller is answered");
            assert_eq!(
                lookup().await,
                "sbx-4",
                "{name}: the newer answer is cached"
            );
        }
    }

    #[test]
    fn hosts_are_checked() {
        let cases: [(&str, Result<&str, &str>); 16] = [
            ("App.Example.COM", Ok("app.example.com")),
            ("app.example.com.", Ok("app.example.com")),
            ("a-b.c0.dev", Ok("a-b.c0.dev")),
            ("xn--bcher-kva.example", Ok("xn--bcher-kva.example")),
            ("localhost", Err("not a DNS name")),
            ("", Err("not a DNS name")),
            ("*.example.com", Err("wildcard")),
            ("10.0.0.1", Err("IP address")),
            ("1.2.3.999", Err("not a DNS name")),
            ("::1", Err("IP address")),
            ("-a.example.com", Err("not a DNS name")),
            ("a-.example.com", Err("not a DNS name")),
            ("a..example.com", Err("not a DNS name")),
            ("a_b.example.com", Err("not a DNS name")),
            ("exa mple.com", Err("not a DNS name")),
            ("example.com:443", Err("not a DNS name")),
        ];
        for (host, expected) in cases {
            match (check_host(host), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{host}"),
                (Err(e), Err(want)) => {
                    assert_eq!(e.field, "host");
                    assert!(e.reason.contains(want), "{host}: {e}");
                }
                (got, want) => panic!("{host}: {got:?}, expected {want:?}"),
            }
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(check_host(&long_label).is_err(), "a label of 64");
        let long_name = format!("{}.com", vec!["a".repeat(60); 5].join("."));
        assert!(long_name.len() > 253 && check_host(&long_name).is_err());
        let max_label = format!("{}.com", "a".repeat(63));
        assert!(check_host(&max_label).is_ok());
    }

    #[test]
    fn path_prefixes_are_checked() {
        let cases: [(&str, bool); 14] = [
            ("/app", true),
            ("/a/b-c_d.e~f", true),
            ("app", false),
            ("/", false),
            ("/app/", false),
            ("/a//b", false),
            ("/a/../b", false),
            ("/a/./b", false),
            ("/..", false),
            ("/a%2e", false),
            ("/a?x=1", false),
            ("/a#x", false),
            ("/a b", false),
            ("/a\\b", false),
        ];
        for (prefix, ok) in cases {
            let got = check_path_prefix(prefix);
            assert_eq!(got.is_ok(), ok, "{prefix:?}: {got:?}");
        }
    }

    #[test]
    fn tokens_ports_and_states_are_checked() {
        let token = new_token();
        assert_eq!(token.len(), 32);
        assert!(check_token(&token).is_ok());
        let cases: [(&str, bool); 6] = [
            ("0123456789abcdef", true),
            ("0123456789abcde", false),
            ("A-_z0123456789abcdef", true),
            ("0123456789abcdef!", false),
            ("0123456789abcdef 0", false),
            (&"a".repeat(129), false),
        ];
        for (token, ok) in cases {
            assert_eq!(check_token(token).is_ok(), ok, "{token:?}");
        }
        let pending = DomainState::Pending(Verification::ControlPlane);
        let zero = DomainRecord::new("a.example.com", "sbx", 0, None, pending.clone());
        assert_eq!(zero.unwrap_err().field, "port");
        let bad_sandbox = DomainRecord::new("a.example.com", "a/b", 1, None, pending);
        assert_eq!(bad_sandbox.unwrap_err().field, "sandbox");
        type Fields<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
        let states: [(Fields, Result<&str, &str>); 7] = [
            ((Some("verified"), None, None), Ok("verified")),
            ((None, None, Some("0123456789abcdef")), Ok("pending")),
            ((None, Some("control-plane"), None), Ok("pending")),
            ((None, None, None), Err("token")),
            ((Some("ok"), None, None), Err("state")),
            ((None, Some("email"), None), Err("verification")),
            ((None, Some("dns"), Some("short")), Err("token")),
        ];
        for ((state, verification, token), expected) in states {
            let got = parse_state(state, verification, token);
            match (got, expected) {
                (Ok(DomainState::Verified), Ok("verified")) => {}
                (Ok(DomainState::Pending(_)), Ok("pending")) => {}
                (Err(e), Err(field)) => assert_eq!(e.field, field),
                (got, want) => panic!("{state:?} {verification:?}: {got:?} vs {want:?}"),
            }
        }
    }
}
