//! Prometheus metrics. Label sets are small and fixed (no per-sandbox labels), and every handle
//! the hot path touches is created at startup, so recording is an atomic add.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Which door a request came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Preview = 0,
    Toolbox = 1,
    Own = 2,
}

/// The `kind` label values (and the access log's `kind` field), indexed by [`RouteKind`].
const KINDS: [&str; 3] = ["preview", "toolbox", "own"];

impl RouteKind {
    /// The name in metrics labels and the access log.
    pub fn name(self) -> &'static str {
        KINDS[self as usize]
    }
}
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

/// What the resolver's caches hold, read at each scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheEntries {
    /// Sandbox routes (the route cache).
    pub routes: usize,
    /// Credential checks: preview token checks, signed links, SSH tokens.
    pub credentials: usize,
}

/// Reads the running proxy's cache sizes; `None` once that proxy is gone.
type CacheSampler = Box<dyn Fn() -> Option<CacheEntries> + Send + Sync>;

/// The runtimes whose alive tasks `sandgate_tasks_alive` adds up, by registration number.
type Runtimes = Vec<(u64, tokio::runtime::Handle)>;

pub struct Metrics {
    registry: Registry,
    requests: [[Counter; 5]; 3],
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub connections_active: Gauge,
    /// Client connections admitted (after the connection limits); with `connections_active`,
    /// shows how many connections clients open (one per host or one for many sandboxes).
    pub connections_accepted: Counter,
    pub websockets_active: Gauge,
    pub upstream_connect_errors: Counter,
    pub upstream_timeouts: Counter,
    pub upstream_other_errors: Counter,
    pub upstream_connects: Counter,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_coalesced: Counter,
    pub cache_stale: Counter,
    pub registry_duration: Histogram,
    pub registry_errors: Counter,
    pub activity_writes: Counter,
    pub activity_flush_errors: Counter,
    pub activity_drops: Counter,
    pub access_log_dropped: Counter,
    auth_failures: Family<CodeLabels, Counter>,
    pub tls_handshake_errors: Counter,
    pub connections_refused: Counter,
    pub ssh_sessions_active: Gauge,
    pub ssh_sessions_total: Counter,
    pub ssh_auth_failures: Counter,
    pub ssh_refused: Counter,
    pub ssh_upstream_errors: Counter,
    /// Channel payload bytes, client → sandbox and sandbox → client.
    pub ssh_bytes_up: Counter,
    pub ssh_bytes_down: Counter,
    pub wakes_started: Counter,
    pub wakes_succeeded: Counter,
    pub wakes_failed: Counter,
    /// Time from a wake's start to the sandbox reported running.
    pub wake_duration: Histogram,
    /// Requests held while their sandbox starts.
    pub wake_held: Gauge,
    wake_dropped: Family<ReasonLabels, Counter>,
    /// Filled at each scrape from `cache_sampler` (gauges a soak watches stay flat).
    cache_entries: [Gauge; 2],
    cache_sampler: Mutex<Option<CacheSampler>>,
    /// Filled at each scrape from `runtimes`.
    tasks_alive: Gauge,
    runtimes: Mutex<Runtimes>,
    /// Custom domain lookups by answer (`verified`, `pending`, `unknown`, `error`).
    domain_lookups: Family<ResultLabels, Counter>,
    /// DNS TXT checks of pending domains by outcome (`verified`, `mismatch`, `absent`, `error`).
    domain_txt_checks: Family<ResultLabels, Counter>,
    /// Custom domain answers held by the domain cache (bounded by `domains.cache_entries`).
    pub domain_cache_entries: Gauge,
    /// Certificates obtained by ACME and held for handshakes.
    pub acme_certificates: Gauge,
    /// Seconds until the soonest `not_after` of the held ACME certificates (0 when none).
    pub acme_soonest_expiry: Gauge,
    pub acme_orders_issued: Counter,
    pub acme_orders_failed: Counter,
    acme_order_failures: Family<ReasonLabels, Counter>,
}

/// A runtime counted in `sandgate_tasks_alive` until this is dropped.
#[must_use = "the runtime is counted only while this lives"]
pub struct TrackedRuntime {
    id: u64,
}

impl Drop for TrackedRuntime {
    fn drop(&mut self) {
        let mut runtimes = lock(&metrics().runtimes);
        runtimes.retain(|(id, _)| *id != self.id);
    }
}

/// Scrape-time state is plain data: a panic elsewhere leaves it usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 50 µs .. ~26 s
    exponential_buckets(0.000_05, 2.0, 20)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sandgate");
        let requests_family = Family::<RequestLabels, Counter>::default();
        let requests = std::array::from_fn(|k| {
            std::array::from_fn(|c| {
                let labels = RequestLabels {
                    kind: KINDS[k],
                    class: CLASSES[c],
                };
                requests_family.get_or_create(&labels).clone()
            })
        });
        registry.register(
            "requests",
            "Requests by route kind and status class",
            requests_family,
        );

        let upstream_errors = Family::<ReasonLabels, Counter>::default();
        let upstream = |reason| {
            upstream_errors
                .get_or_create(&ReasonLabels { reason })
                .clone()
        };
        let (upstream_connect_errors, upstream_timeouts, upstream_other_errors) =
            (upstream("connect"), upstream("timeout"), upstream("other"));
        registry.register(
            "upstream_errors",
            "Upstream failures before a response",
            upstream_errors,
        );

        let cache = Family::<ReasonLabels, Counter>::default();
        let cache_result = |reason| cache.get_or_create(&ReasonLabels { reason }).clone();
        let (cache_hits, cache_misses, cache_coalesced, cache_stale) = (
            cache_result("hit"),
            cache_result("miss"),
            cache_result("coalesced"),
            cache_result("stale"),
        );
        registry.register(
            "route_cache",
            "Route cache lookups by result (reason label)",
            cache,
        );

        let caches = Family::<CacheLabels, Gauge>::default();
        let cache_entries = ["routes", "credentials"]
            .map(|cache| caches.get_or_create(&CacheLabels { cache }).clone());
        registry.register(
            "cache_entries",
            "Entries in the resolver's caches (routes; credential checks)",
            caches,
        );

        let acme_orders = Family::<ResultLabels, Counter>::default();
        // One statement each: a guard of `get_or_create` held while the next one takes the
        // family's write lock would deadlock.
        let acme_orders_issued = acme_orders
            .get_or_create(&ResultLabels { result: "issued" })
            .clone();
        let acme_orders_failed = acme_orders
            .get_or_create(&ResultLabels { result: "failed" })
            .clone();
        let m = Metrics {
            requests,
            request_duration: Histogram::new(latency_buckets()),
            upstream_duration: Histogram::new(latency_buckets()),
            connections_active: Gauge::default(),
            connections_accepted: Counter::default(),
            websockets_active: Gauge::default(),
            upstream_connect_errors,
            upstream_timeouts,
            upstream_other_errors,
            upstream_connects: Counter::default(),
            cache_hits,
            cache_misses,
            cache_coalesced,
            cache_stale,
            registry_duration: Histogram::new(latency_buckets()),
            registry_errors: Counter::default(),
            activity_writes: Counter::default(),
            activity_flush_errors: Counter::default(),
            activity_drops: Counter::default(),
            access_log_dropped: Counter::default(),
            auth_failures: Family::default(),
            tls_handshake_errors: Counter::default(),
            connections_refused: Counter::default(),
            ssh_sessions_active: Gauge::default(),
            ssh_sessions_total: Counter::default(),
            ssh_auth_failures: Counter::default(),
            ssh_refused: Counter::default(),
            ssh_upstream_errors: Counter::default(),
            ssh_bytes_up: Counter::default(),
            ssh_bytes_down: Counter::default(),
            wakes_started: Counter::default(),
            wakes_succeeded: Counter::default(),
            wakes_failed: Counter::default(),
            // 10 ms .. ~5.5 min
            wake_duration: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            wake_held: Gauge::default(),
            wake_dropped: Family::default(),
            cache_entries,
            cache_sampler: Mutex::new(None),
            tasks_alive: Gauge::default(),
            runtimes: Mutex::new(Vec::new()),
            domain_lookups: Family::default(),
            domain_txt_checks: Family::default(),
            domain_cache_entries: Gauge::default(),
            acme_certificates: Gauge::default(),
            acme_soonest_expiry: Gauge::default(),
            acme_orders_issued,
            acme_orders_failed,
            acme_order_failures: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "request_duration_seconds",
            "Time to response headers",
            m.request_duration.clone(),
        );
        r.register(
            "upstream_duration_seconds",
            "Upstream time to response headers",
            m.upstream_duration.clone(),
        );
        r.register(
            "upstream_connects",
            "Upstream connections opened (a low rate means keep-alive reuse works)",
            m.upstream_connects.clone(),
        );
        r.register(
            "connections_active",
            "Open client connections",
            m.connections_active.clone(),
        );
        r.register(
            "connections_accepted",
            "Client connections admitted",
            m.connections_accepted.clone(),
        );
        r.register(
            "websockets_active",
            "Open proxied WebSockets",
            m.websockets_active.clone(),
        );
        r.register(
            "registry_call_duration_seconds",
            "Registry backend call latency",
            m.registry_duration.clone(),
        );
        r.register(
            "registry_errors",
            "Registry backend call failures",
            m.registry_errors.clone(),
        );
        r.register(
            "activity_writes",
            "Activity marks written to the sink",
            m.activity_writes.clone(),
        );
        r.register(
            "activity_flush_errors",
            "Activity flushes that failed (marks kept)",
            m.activity_flush_errors.clone(),
        );
        r.register(
            "activity_drops",
            "Activity marks dropped",
            m.activity_drops.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind (log.access_overflow = drop)",
            m.access_log_dropped.clone(),
        );
        r.register(
            "auth_failures",
            "Refused credentials by code",
            m.auth_failures.clone(),
        );
        r.register(
            "tls_handshake_errors",
            "Failed or timed-out TLS handshakes",
            m.tls_handshake_errors.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed at accept by a limit",
            m.connections_refused.clone(),
        );
        r.register(
            "ssh_sessions_active",
            "Open SSH gateway sessions (authenticated connections)",
            m.ssh_sessions_active.clone(),
        );
        r.register(
            "ssh_sessions",
            "SSH gateway sessions accepted",
            m.ssh_sessions_total.clone(),
        );
        r.register(
            "ssh_auth_failures",
            "SSH logins refused: invalid token, unknown or stopped sandbox",
            m.ssh_auth_failures.clone(),
        );
        r.register(
            "ssh_refused",
            "SSH connections refused by a session limit or the auth timeout",
            m.ssh_refused.clone(),
        );
        r.register(
            "ssh_upstream_errors",
            "SSH sessions whose sandbox sshd could not be reached or refused the gateway",
            m.ssh_upstream_errors.clone(),
        );
        r.register(
            "ssh_bytes_up",
            "SSH channel bytes from clients to sandboxes",
            m.ssh_bytes_up.clone(),
        );
        r.register(
            "ssh_bytes_down",
            "SSH channel bytes from sandboxes to clients",
            m.ssh_bytes_down.clone(),
        );
        r.register(
            "wakes_started",
            "Wakes of stopped sandboxes begun by a request",
            m.wakes_started.clone(),
        );
        r.register(
            "wakes_succeeded",
            "Wakes that saw their sandbox running",
            m.wakes_succeeded.clone(),
        );
        r.register(
            "wakes_failed",
            "Wakes that failed (start refused or unreachable, error state, start timeout)",
            m.wakes_failed.clone(),
        );
        r.register(
            "wake_seconds",
            "Time from a wake's start to its sandbox running",
            m.wake_duration.clone(),
        );
        r.register(
            "wake_held",
            "Requests held while their sandbox starts",
            m.wake_held.clone(),
        );
        r.register(
            "wake_dropped",
            "Requests not held (or given up) while their sandbox starts, by reason",
            m.wake_dropped.clone(),
        );
        r.register(
            "tasks_alive",
            "Tasks alive on the proxy's runtimes (connections, relays, background work)",
            m.tasks_alive.clone(),
        );
        r.register(
            "domain_lookups",
            "Custom domain lookups, by answer (verified, pending, unknown, error)",
            m.domain_lookups.clone(),
        );
        r.register(
            "domain_txt_checks",
            "DNS TXT checks of pending custom domains, by outcome",
            m.domain_txt_checks.clone(),
        );
        r.register(
            "domain_cache_entries",
            "Custom domain answers (found and not found) held in memory",
            m.domain_cache_entries.clone(),
        );
        r.register(
            "acme_certificates",
            "Certificates obtained by ACME held for handshakes",
            m.acme_certificates.clone(),
        );
        r.register(
            "acme_soonest_expiry_seconds",
            "Seconds until the soonest expiry of the held ACME certificates (0 when none)",
            m.acme_soonest_expiry.clone(),
        );
        r.register(
            "acme_orders",
            "ACME orders finished, by result (issued, failed)",
            acme_orders,
        );
        r.register(
            "acme_order_failures",
            "Failed ACME orders by reason (challenge, rate_limited, budget, network, ca_error, storage, timeout)",
            m.acme_order_failures.clone(),
        );
        // Every reason exported from the start (at 0), so `increase()` alerts see the first one.
        for reason in [
            "challenge",
            "rate_limited",
            "budget",
            "network",
            "ca_error",
            "storage",
            "timeout",
            "dns_hook",
        ] {
            drop(
                m.acme_order_failures
                    .get_or_create(&ReasonLabels { reason }),
            );
        }
        Metrics { registry, ..m }
    }

    /// Makes `sample` the source of `sandgate_cache_entries` (the proxy started last wins).
    pub fn sample_caches(&self, sample: impl Fn() -> Option<CacheEntries> + Send + Sync + 'static) {
        *lock(&self.cache_sampler) = Some(Box::new(sample));
    }

    /// Counts the tasks of the runtime behind `handle` in `sandgate_tasks_alive` while the
    /// returned guard lives.
    pub fn track_runtime(&self, handle: &tokio::runtime::Handle) -> TrackedRuntime {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        lock(&self.runtimes).push((id, handle.clone()));
        TrackedRuntime { id }
    }

    /// Reads the scrape-time gauges.
    fn sample(&self) {
        let alive: usize = lock(&self.runtimes)
            .iter()
            .map(|(_, handle)| handle.metrics().num_alive_tasks())
            .sum();
        self.tasks_alive.set(gauge_value(alive));
        let entries = lock(&self.cache_sampler)
            .as_ref()
            .and_then(|sample| sample())
            .unwrap_or_default();
        let [routes, credentials] = &self.cache_entries;
        routes.set(gauge_value(entries.routes));
        credentials.set(gauge_value(entries.credentials));
    }

    /// A request that was not held for a wake, or stopped waiting: `body`, `sandbox_limit`,
    /// `total_limit`, `timeout`.
    pub fn wake_dropped(&self, reason: &'static str) {
        self.wake_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A failed ACME order (or an issued one that could not be stored): `challenge`,
    /// `rate_limited`, `budget`, `network`, `ca_error`, `storage`, `timeout`.
    pub fn acme_order_failure(&self, reason: &'static str) {
        self.acme_order_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn request(&self, kind: RouteKind, status: u16, elapsed: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.requests[kind as usize][class].inc();
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    /// The counter of custom domain lookups that answered `result` (kept by the caller, so
    /// counting is an atomic add).
    pub fn domain_lookups(&self, result: &'static str) -> Counter {
        self.domain_lookups
            .get_or_create(&ResultLabels { result })
            .clone()
    }

    /// A pending domain's TXT record was checked: `result`.
    pub fn domain_txt_check(&self, result: &'static str) {
        self.domain_txt_checks
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    pub fn auth_failure(&self, code: &'static str) {
        self.auth_failures.get_or_create(&CodeLabels { code }).inc();
    }

    /// The Prometheus text exposition.
    /// The OpenMetrics text: the registry, then `sandgate_build_info` and the `process_*`
    /// metrics (read from `/proc/self` at each scrape), before the closing `# EOF`.
    pub fn render(&self) -> String {
        self.sample();
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        let eof = out.strip_suffix("# EOF\n").map(str::len);
        out.truncate(eof.unwrap_or(out.len()));
        build_info(&mut out);
        process::render(&mut out);
        out.push_str("# EOF\n");
        out
    }
}

/// The running binary: its version, the git commit it was built from and its cargo features.
pub mod build {
    pub const VERSION: &str = env!("CARGO_PKG_VERSION");
    /// The short hash of the commit built (`unknown` outside a git checkout), from `build.rs`.
    pub const COMMIT: &str = env!("SANDGATE_COMMIT");
    #[cfg(feature = "mimalloc")]
    pub const FEATURES: &str = "mimalloc";
    #[cfg(not(feature = "mimalloc"))]
    pub const FEATURES: &str = "";
    /// `sandgate --version`: `0.1.0 (commit 1a2b3c4d5e6f, features: mimalloc)`.
    #[cfg(feature = "mimalloc")]
    pub const LONG_VERSION: &str = concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("SANDGATE_COMMIT"),
        ", features: mimalloc)"
    );
    #[cfg(not(feature = "mimalloc"))]
    pub const LONG_VERSION: &str = concat!(
        env!("CARGO_PKG_VERSION"),
        " (commit ",
        env!("SANDGATE_COMMIT"),
        ", features: none)"
    );
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn build_info(out: &mut String) {
    use std::fmt::Write;
    let _ = write!(
        out,
        "# HELP sandgate_build_info The running build (always 1).\n\
         # TYPE sandgate_build_info gauge\n\
         sandgate_build_info{{version=\"{}\",commit=\"{}\",features=\"{}\"}} 1\n",
        build::VERSION,
        build::COMMIT,
        build::FEATURES
    );
}

/// The standard `process_*` metrics of Prometheus client libraries, from `/proc/self` (absent
/// where it cannot be read).
mod process {
    use std::fmt::Write;
    use std::sync::LazyLock;

    /// Clock ticks per second of `/proc` times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
    const TICKS_PER_SECOND: f64 = 100.0;

    /// A `kB` line of `/proc/self/status` (`VmRSS:  1234 kB`), in bytes.
    fn status_bytes(status: &str, key: &str) -> Option<f64> {
        let line = status.lines().find_map(|l| l.strip_prefix(key))?;
        let kib: f64 = line.split_whitespace().next()?.parse().ok()?;
        Some(kib * 1024.0)
    }

    /// The fields of `/proc/self/stat` after the command name, numbered from 3 (`state`) as in
    /// proc(5).
    fn stat_field(stat: &str, field: usize) -> Option<f64> {
        let after_name = &stat[stat.rfind(')')? + 1..];
        after_name.split_whitespace().nth(field - 3)?.parse().ok()
    }

    fn boot_time() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    }

    /// When the process started, in seconds since the epoch (read once).
    static START_TIME: LazyLock<Option<f64>> = LazyLock::new(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        Some(boot_time()? + stat_field(&stat, 22)? / TICKS_PER_SECOND)
    });

    fn max_fds() -> Option<f64> {
        let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn open_fds() -> Option<f64> {
        Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
    }

    fn sample(out: &mut String, name: &str, kind: &str, help: &str, value: Option<f64>) {
        let Some(value) = value else { return };
        let family = name.strip_suffix("_total").unwrap_or(name);
        let _ = write!(
            out,
            "# HELP {family} {help}\n# TYPE {family} {kind}\n{name} {value}\n"
        );
    }

    pub fn render(out: &mut String) {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let field = |n| stat_field(&stat, n);
        let cpu = field(14)
            .zip(field(15))
            .map(|(user, system)| (user + system) / TICKS_PER_SECOND);
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let rss = status_bytes(&status, "VmRSS:");
        sample(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent in seconds.",
            cpu,
        );
        sample(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        );
        sample(
            out,
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            field(23),
        );
        sample(
            out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open_fds(),
        );
        sample(
            out,
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max_fds(),
        );
        sample(
            out,
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            field(20),
        );
        sample(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            *START_TIME,
        );
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn stat_fields_count_after_the_command_name() {
            let stat = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22";
            assert_eq!(super::stat_field(stat, 4), Some(1.0));
            assert_eq!(super::stat_field(stat, 14), Some(11.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_fixed_labels() {
        metrics().request(RouteKind::Preview, 204, Duration::from_millis(1));
        metrics().auth_failure("TOKEN_INVALID");
        let text = metrics().render();
        assert!(
            text.contains("sandgate_requests_total{kind=\"preview\",class=\"2xx\"}"),
            "{text}"
        );
        assert!(text.contains("sandgate_auth_failures_total{code=\"TOKEN_INVALID\"}"));
        assert!(text.contains("sandgate_request_duration_seconds_bucket"));
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.contains("sandgate_build_info{version=\""), "{text}");
        for name in [
            "sandgate_tasks_alive",
            "sandgate_cache_entries{cache=\"routes\"}",
            "sandgate_cache_entries{cache=\"credentials\"}",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name}: {text}");
        }
    }

    /// The value of a gauge line `NAME VALUE` in the exposition.
    fn gauge(text: &str, name: &str) -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {text}"))
    }

    #[test]
    fn scrape_reads_tasks_alive_on_tracked_runtimes() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let _parked: Vec<_> = (0..5)
            .map(|_| runtime.spawn(std::future::pending::<()>()))
            .collect();
        let untracked = gauge(&metrics().render(), "sandgate_tasks_alive");
        let tracked = metrics().track_runtime(runtime.handle());
        let with = gauge(&metrics().render(), "sandgate_tasks_alive");
        drop(tracked);
        let without = gauge(&metrics().render(), "sandgate_tasks_alive");
        // Other tests may track runtimes meanwhile: compare against what this one adds.
        assert!(with >= untracked + 5, "{untracked} then {with}");
        assert!(without <= with - 5, "{with} then {without}");
    }

    #[test]
    fn scrape_reads_cache_entries_from_the_sampler() {
        metrics().sample_caches(|| {
            Some(CacheEntries {
                routes: 7,
                credentials: 3,
            })
        });
        let text = metrics().render();
        assert_eq!(gauge(&text, "sandgate_cache_entries{cache=\"routes\"}"), 7);
        assert_eq!(
            gauge(&text, "sandgate_cache_entries{cache=\"credentials\"}"),
            3
        );
        metrics().sample_caches(|| None);
        let text = metrics().render();
        assert_eq!(gauge(&text, "sandgate_cache_entries{cache=\"routes\"}"), 0);
    }
}
