//! Wake on request: a request for a sandbox that is not running is held while the sandbox starts,
//! then goes on.
//!
//! One wake per sandbox per process: the first held request spawns its driver, which reads the
//! sandbox's state from the registry, waits out a transition (`stopping`…), asks the start
//! backend once (across replicas too, with a Redis lock), then polls the registry (backoff, cut
//! short by pushed invalidations) until the sandbox runs, fails, or `start_timeout` passes. Held
//! requests wait on the wake's [`Notify`] with their own `max_wait`.

mod lock;
pub mod start;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::activity::Activity;
pub use crate::config::{StartBackend, WakeConfig};
use crate::metrics::metrics;
use crate::registry::redis::RedisHandle;
use crate::registry::{Resolver, SandboxRecord};
use lock::WakeLock;
use start::{StartError, Started, Starter};

/// What a wake needs from the running proxy: the registry (through its cache) and activity.
pub trait Context: Send + Sync + 'static {
    fn resolver(&self) -> &Resolver;
    fn activity(&self) -> &Activity;
}

/// Why a request was not (or no longer) held; each maps to a 503 with `Retry-After`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WakeError {
    /// Too many requests are already waiting (for this sandbox, or in total), or too many
    /// sandboxes are starting.
    #[error("the sandbox is starting and too many requests are waiting; retry shortly")]
    TooMany,
    /// The start failed; the reason is for the caller, the backend's own words (`detail`) only
    /// for one who may see them ([`WakeError::without_detail`]).
    #[error("the sandbox could not be started: {reason}{}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Failed {
        reason: Arc<str>,
        detail: Option<Arc<str>>,
    },
    /// Still starting after the wait this request may take.
    #[error("the sandbox is still starting (state: {state}) after {}s; retry shortly", .elapsed.as_secs())]
    StillStarting { state: Box<str>, elapsed: Duration },
    /// The start was asked, but this registry cannot tell when the sandbox runs (the static one
    /// with a start backend that answers "accepted"): retry.
    #[error("the sandbox is being started; retry in a few seconds")]
    Asked,
    #[error("the proxy is shutting down")]
    ShuttingDown,
}

impl WakeError {
    /// The error without the start backend's own message (for anonymous visitors of a public
    /// sandbox: a control plane's refusal may speak of quotas or billing).
    pub fn without_detail(self) -> WakeError {
        match self {
            WakeError::Failed { reason, .. } => WakeError::Failed {
                reason,
                detail: None,
            },
            other => other,
        }
    }
}

/// How a wake is going.
#[derive(Debug, Clone)]
enum Progress {
    Waiting { state: Box<str> },
    Ready(Arc<SandboxRecord>),
    Ended(WakeError),
}

/// One sandbox's wake: its progress and who waits for it.
struct Wake {
    id: Box<str>,
    started: Instant,
    progress: Mutex<Progress>,
    changed: Notify,
    held: AtomicUsize,
    /// The sandbox was found not running (a real wake, counted in the metrics).
    real: AtomicBool,
    /// When an ended wake may be replaced by a new one.
    retry_at: Mutex<Option<Instant>>,
}

impl Wake {
    fn new(id: &str, state: &str) -> Arc<Wake> {
        Arc::new(Wake {
            id: id.into(),
            started: Instant::now(),
            progress: Mutex::new(Progress::Waiting {
                state: state.into(),
            }),
            changed: Notify::new(),
            held: AtomicUsize::new(0),
            real: AtomicBool::new(false),
            retry_at: Mutex::new(None),
        })
    }

    fn progress(&self) -> Progress {
        match self.progress.lock() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, progress: Progress) {
        match self.progress.lock() {
            Ok(mut p) => *p = progress,
            Err(p) => *p.into_inner() = progress,
        }
        self.changed.notify_waiters();
    }

    fn set_state(&self, state: &str) {
        if let Ok(mut p) = self.progress.lock() {
            if let Progress::Waiting { state: s } = &mut *p {
                if **s != *state {
                    *s = state.into();
                }
            }
        }
    }

    /// Ended and past its retry time: a new wake may replace it.
    fn replaceable(&self) -> bool {
        let retry_at = self.retry_at.lock().ok().and_then(|r| *r);
        retry_at.is_some_and(|at| Instant::now() >= at)
    }

    fn end_for(&self, retry: Duration) {
        if let Ok(mut retry_at) = self.retry_at.lock() {
            *retry_at = Some(Instant::now() + retry);
        }
    }
}

/// A held request; counted while it lives.
struct Held<'a> {
    waker: &'a Waker,
    wake: Arc<Wake>,
    client: IpAddr,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.wake.held.fetch_sub(1, Ordering::AcqRel);
        self.waker.held.fetch_sub(1, Ordering::AcqRel);
        self.waker.release_client(self.client);
        metrics().wake_held.dec();
    }
}

/// What a sandbox's state means for a wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateClass {
    Running,
    /// Starting by itself: wait, do not call start.
    Starting,
    /// Stopping, pausing, archiving: wait for the end, then start.
    Transition,
    /// Needs a start call (stopped, archived, paused, unknown states).
    Stopped,
    /// Will not start by waiting: fail at once.
    Broken,
    Deleted,
}

pub fn classify(state: &str) -> StateClass {
    let state = state.to_ascii_lowercase();
    match state.as_str() {
        "started" | "running" => StateClass::Running,
        "starting" | "restoring" | "creating" | "pulling_snapshot" | "pending_build"
        | "building_snapshot" | "resizing" | "resuming" => StateClass::Starting,
        "stopping" | "pausing" | "archiving" => StateClass::Transition,
        "error" | "build_failed" => StateClass::Broken,
        "destroyed" | "destroying" | "deleted" => StateClass::Deleted,
        _ => StateClass::Stopped,
    }
}

/// The state a waiting wake last read, lower-case.
fn wake_state(wake: &Wake) -> String {
    match wake.progress() {
        Progress::Waiting { state } => state.to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// How a wake that did not see its sandbox running ended.
enum Unready {
    /// Failed; later requests get the reason for `retry`.
    Failed {
        reason: String,
        detail: Option<String>,
        retry: Duration,
    },
    /// Asked, but the registry cannot tell when it runs.
    Asked,
    /// Nobody has waited for `max_wait`: stop polling (a later request starts a new wake).
    Abandoned,
}

/// Consecutive failed registry lookups after which a wake gives up.
const REGISTRY_FAILURES: u32 = 5;
/// How long a wake that gave up on the registry keeps answering so.
const REGISTRY_RETRY: Duration = Duration::from_secs(5);

pub struct Waker {
    config: WakeConfig,
    starter: Box<dyn Starter>,
    /// One start call across replicas, when Redis is configured.
    lock: Option<WakeLock>,
    wakes: DashMap<Box<str>, Arc<Wake>>,
    /// Wakes whose driver runs (ended ones kept for their answer do not count).
    active: AtomicUsize,
    held: AtomicUsize,
    /// Held requests per client address.
    per_client: DashMap<IpAddr, usize>,
    shutdown: CancellationToken,
}

impl Waker {
    /// `None` when no start backend is configured (`registry.wake.backend = "none"`).
    pub fn new(
        config: &WakeConfig,
        starter: Option<Box<dyn Starter>>,
        redis: Option<Arc<RedisHandle>>,
        shutdown: CancellationToken,
    ) -> Option<Arc<Waker>> {
        let starter = starter?;
        Some(Arc::new(Waker {
            config: config.clone(),
            starter,
            lock: redis.map(|redis| WakeLock::new(redis, config.lock_ttl)),
            wakes: DashMap::new(),
            active: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            per_client: DashMap::new(),
            shutdown,
        }))
    }

    /// Requests are held (`hold = true`), not answered 503 at once.
    pub fn holds(&self) -> bool {
        self.config.hold
    }

    pub fn max_body(&self) -> u64 {
        self.config.max_body
    }

    pub fn page_after(&self) -> Duration {
        self.config.page_after
    }

    /// Starts waking `sandbox` unless a wake is under way (or ended within `interval`);
    /// returns at once.
    pub fn trigger(self: &Arc<Self>, sandbox: &SandboxRecord, ctx: &Arc<dyn Context>) {
        let _ = self.wake_for(&sandbox.id, &sandbox.state, ctx);
    }

    /// Holds the caller until `sandbox` runs (its fresh record), the wake fails, or `wait`
    /// (at most `max_wait`) passes.
    pub async fn hold(
        self: &Arc<Self>,
        sandbox: &SandboxRecord,
        ctx: &Arc<dyn Context>,
        wait: Option<Duration>,
        client: IpAddr,
    ) -> Result<Arc<SandboxRecord>, WakeError> {
        let wake = self.wake_for(&sandbox.id, &sandbox.state, ctx)?;
        let _held = self.admit(&wake, client)?;
        let limit = wait.map_or(self.config.max_wait, |w| w.min(self.config.max_wait));
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let changed = wake.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let state = match wake.progress() {
                Progress::Ready(record) => return Ok(record),
                Progress::Ended(error) => return Err(error),
                Progress::Waiting { state } => state,
            };
            tokio::select! {
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(deadline) => {
                    if wait.is_none() {
                        metrics().wake_dropped("timeout");
                    }
                    let elapsed = wake.started.elapsed();
                    return Err(WakeError::StillStarting { state, elapsed });
                }
                _ = self.shutdown.cancelled() => return Err(WakeError::ShuttingDown),
            }
        }
    }

    /// Counts a held request, within the bounds.
    fn admit<'a>(&'a self, wake: &Arc<Wake>, client: IpAddr) -> Result<Held<'a>, WakeError> {
        {
            let mut count = self.per_client.entry(client).or_insert(0);
            if *count >= self.config.max_held_per_client {
                metrics().wake_dropped("client_limit");
                return Err(WakeError::TooMany);
            }
            *count += 1;
        }
        let held = self.admit_counted(wake, client);
        if held.is_err() {
            self.release_client(client);
        }
        held
    }

    fn release_client(&self, client: IpAddr) {
        if let dashmap::Entry::Occupied(mut count) = self.per_client.entry(client) {
            *count.get_mut() -= 1;
            if *count.get() == 0 {
                count.remove();
            }
        }
    }

    fn admit_counted<'a>(
        &'a self,
        wake: &Arc<Wake>,
        client: IpAddr,
    ) -> Result<Held<'a>, WakeError> {
        if wake.held.fetch_add(1, Ordering::AcqRel) >= self.config.max_held_per_sandbox {
            wake.held.fetch_sub(1, Ordering::AcqRel);
            metrics().wake_dropped("sandbox_limit");
            return Err(WakeError::TooMany);
        }
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.config.max_held {
            self.held.fetch_sub(1, Ordering::AcqRel);
            wake.held.fetch_sub(1, Ordering::AcqRel);
            metrics().wake_dropped("total_limit");
            return Err(WakeError::TooMany);
        }
        metrics().wake_held.inc();
        Ok(Held {
            waker: self,
            wake: wake.clone(),
            client,
        })
    }

    /// The wake under way for `id`, or a new one (its driver spawned) while fewer than
    /// `max_wakes` are under way (each polls the registry).
    fn wake_for(
        self: &Arc<Self>,
        id: &str,
        state: &str,
        ctx: &Arc<dyn Context>,
    ) -> Result<Arc<Wake>, WakeError> {
        if let Some(wake) = self.wakes.get(id) {
            if !wake.replaceable() {
                return Ok(wake.clone());
            }
        }
        if self.active.load(Ordering::Acquire) >= self.config.max_wakes {
            metrics().wake_dropped("wake_limit");
            return Err(WakeError::TooMany);
        }
        let mut spawned = None;
        let wake = self
            .wakes
            .entry(id.into())
            .and_modify(|wake| {
                if wake.replaceable() {
                    *wake = Wake::new(id, state);
                    spawned = Some(wake.clone());
                }
            })
            .or_insert_with(|| {
                let wake = Wake::new(id, state);
                spawned = Some(wake.clone());
                wake
            })
            .clone();
        if let Some(wake) = spawned {
            self.active.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(self.clone().drive(wake, ctx.clone()));
        }
        Ok(wake)
    }

    /// The driver: runs the wake to its end and tells every held request.
    async fn drive(self: Arc<Self>, wake: Arc<Wake>, ctx: Arc<dyn Context>) {
        let mut lock = None;
        let run = self.run(&wake, &*ctx, &mut lock);
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(self.config.start_timeout, run) => match outcome {
                Ok(outcome) => outcome,
                Err(_) => Err(Unready::Failed {
                    detail: None,
                    reason: format!(
                        "it did not start within {}",
                        humantime::format_duration(self.config.start_timeout)
                    ),
                    retry: self.config.interval,
                }),
            },
            _ = self.shutdown.cancelled() => Err(Unready::Abandoned),
        };
        self.active.fetch_sub(1, Ordering::AcqRel);
        if let (Some(lock), Some(nonce)) = (&self.lock, lock) {
            lock.release(&wake.id, nonce).await;
        }
        let real = wake.real.load(Ordering::Acquire);
        match outcome {
            Ok(record) => {
                if real {
                    metrics().wakes_succeeded.inc();
                    metrics()
                        .wake_duration
                        .observe(wake.started.elapsed().as_secs_f64());
                    // The request that woke it counts, so it is not stopped again at once.
                    ctx.activity().mark(&wake.id);
                    tracing::info!(sandbox = &*wake.id, elapsed = ?wake.started.elapsed(), "sandbox woken");
                }
                wake.set(Progress::Ready(record));
                self.forget(&wake);
            }
            Err(Unready::Failed {
                reason,
                detail,
                retry,
            }) => {
                metrics().wakes_failed.inc();
                tracing::warn!(sandbox = &*wake.id, reason, "sandbox wake failed");
                wake.end_for(retry);
                wake.set(Progress::Ended(WakeError::Failed {
                    reason: reason.into(),
                    detail: detail.map(Into::into),
                }));
                self.forget_after(wake, retry);
            }
            Err(Unready::Asked) => {
                wake.end_for(self.config.interval);
                wake.set(Progress::Ended(WakeError::Asked));
                self.forget_after(wake, self.config.interval);
            }
            Err(Unready::Abandoned) => {
                let state = match wake.progress() {
                    Progress::Waiting { state } => state,
                    _ => "unknown".into(),
                };
                let elapsed = wake.started.elapsed();
                wake.end_for(Duration::ZERO);
                wake.set(Progress::Ended(WakeError::StillStarting { state, elapsed }));
                self.forget(&wake);
            }
        }
    }

    fn forget(&self, wake: &Arc<Wake>) {
        self.wakes.remove_if(&wake.id, |_, w| Arc::ptr_eq(w, wake));
    }

    /// Keeps an ended wake (its answer) for `after`, then forgets it.
    fn forget_after(self: &Arc<Self>, wake: Arc<Wake>, after: Duration) {
        let waker = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(waker) = waker.upgrade() {
                waker.forget(&wake);
            }
        });
    }

    /// Reads the state, starts the sandbox when it needs it, and waits until it runs. `lock`
    /// gets the nonce of the cross-replica lock when this replica took it.
    async fn run(
        &self,
        wake: &Wake,
        ctx: &dyn Context,
        lock: &mut Option<u64>,
    ) -> Result<Arc<SandboxRecord>, Unready> {
        let resolver = ctx.resolver();
        let watch = resolver.watch(&wake.id);
        let learns = resolver.backend().learns_states();
        let mut called = false;
        let mut failures = 0;
        let mut poll = self.config.poll_min;
        let mut last_held = Instant::now();
        loop {
            match resolver.refresh(&wake.id).await {
                Ok(Some(record)) => {
                    failures = 0;
                    wake.set_state(&record.state);
                    let class = classify(&record.state);
                    if class != StateClass::Running && !wake.real.swap(true, Ordering::AcqRel) {
                        metrics().wakes_started.inc();
                    }
                    match class {
                        StateClass::Running => return Ok(record),
                        StateClass::Broken => {
                            return Err(self.failed(format!("it is in state {:?}", &*record.state)))
                        }
                        StateClass::Deleted => {
                            return Err(self.failed("the sandbox was deleted".into()))
                        }
                        StateClass::Starting | StateClass::Transition => {}
                        StateClass::Stopped if called => {}
                        StateClass::Stopped => {
                            match self.start(&wake.id, resolver, learns, lock).await? {
                                Some(Started::Running) => {
                                    called = true;
                                    // Read it again at once: even a zero sleep waits for the
                                    // timer's next millisecond tick.
                                    continue;
                                }
                                Some(Started::Accepted) if !learns => return Err(Unready::Asked),
                                Some(Started::Accepted) => called = true,
                                // Another replica holds the lock: try again next time.
                                None => {}
                            }
                        }
                    }
                }
                Ok(None) => return Err(self.failed("the sandbox no longer exists".into())),
                Err(e) => {
                    failures += 1;
                    tracing::debug!(sandbox = &*wake.id, error = %e, "wake: registry lookup failed");
                    if failures >= REGISTRY_FAILURES {
                        return Err(Unready::Failed {
                            detail: None,
                            reason: "the sandbox registry is unavailable".into(),
                            retry: REGISTRY_RETRY,
                        });
                    }
                }
            }
            if wake.held.load(Ordering::Acquire) > 0 {
                last_held = Instant::now();
            } else if last_held.elapsed() >= self.config.max_wait {
                return Err(Unready::Abandoned);
            }
            tokio::select! {
                _ = watch.changed.notified() => {}
                _ = tokio::time::sleep(poll) => {}
            }
            // Half as long again each time: a start seen within a third of its duration. States
            // that take minutes (a restore, a build) are asked about five times less often.
            let slow = matches!(
                wake_state(wake).as_str(),
                "restoring"
                    | "archived"
                    | "pending_build"
                    | "building_snapshot"
                    | "pulling_snapshot"
            );
            let max = if slow {
                self.config.poll_max * 5
            } else {
                self.config.poll_max
            };
            poll = (poll * 3 / 2).clamp(self.config.poll_min, max);
        }
    }

    fn refused(&self, id: &str, error: StartError) -> Unready {
        let (reason, detail) = match error {
            StartError::Refused(summary) => (summary, None),
            StartError::RefusedSaying(summary, said) => (summary, Some(said)),
            StartError::Unreachable(m) => {
                tracing::warn!(sandbox = id, error = m, "start backend unreachable");
                ("the start backend is unreachable".into(), None)
            }
        };
        Unready::Failed {
            reason,
            detail,
            retry: self.config.interval,
        }
    }

    fn failed(&self, reason: String) -> Unready {
        Unready::Failed {
            reason,
            detail: None,
            retry: self.config.interval,
        }
    }

    /// One start call, unless another replica holds the lock (`None`: it is calling). A
    /// refusal is final unless the sandbox is in fact starting or running (a race with
    /// another caller).
    async fn start(
        &self,
        id: &str,
        resolver: &Resolver,
        learns: bool,
        lock: &mut Option<u64>,
    ) -> Result<Option<Started>, Unready> {
        if let (Some(wake_lock), true, None) = (&self.lock, learns, *lock) {
            match wake_lock.take(id).await {
                Some(nonce) => *lock = Some(nonce),
                None => return Ok(None),
            }
        }
        match self.starter.start(id).await {
            Ok(Started::Running) => {
                resolver.backend().start_reported(id);
                Ok(Some(Started::Running))
            }
            Ok(Started::Accepted) => Ok(Some(Started::Accepted)),
            Err(error) => {
                let now = resolver.refresh(id).await.ok().flatten();
                match now.map(|r| classify(&r.state)) {
                    Some(StateClass::Running | StateClass::Starting) => Ok(Some(Started::Accepted)),
                    _ => Err(self.refused(id, error)),
                }
            }
        }
    }
}

/// The start backend `config` names, or `None` (no waking).
pub fn starter(
    config: &crate::config::Config,
    redis: Option<&Arc<RedisHandle>>,
) -> Result<Option<Box<dyn Starter>>, String> {
    let wake = &config.registry.wake;
    Ok(match wake.start_backend() {
        StartBackend::None => None,
        StartBackend::Hook => Some(Box::new(start::HookStarter::new(wake))),
        StartBackend::Daytona => Some(Box::new(start::DaytonaStarter::new(&config.daytona)?)),
        StartBackend::Redis => {
            let redis = redis.ok_or("registry.wake.backend = \"redis\" needs [redis]")?;
            Some(Box::new(start::RedisStarter::new(redis.clone(), wake)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::BoxFuture;
    use crate::config::{ActivityConfig, CacheConfig};
    use crate::registry::{Registry, RegistryError, Upstream};

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn states_are_classified() {
        for (state, class) in [
            ("started", StateClass::Running),
            ("starting", StateClass::Starting),
            ("restoring", StateClass::Starting),
            ("stopping", StateClass::Transition),
            ("archiving", StateClass::Transition),
            ("stopped", StateClass::Stopped),
            ("archived", StateClass::Stopped),
            ("paused", StateClass::Stopped),
            ("error", StateClass::Broken),
            ("build_failed", StateClass::Broken),
            ("destroyed", StateClass::Deleted),
        ] {
            assert_eq!(classify(state), class, "{state}");
        }
    }

    /// One sandbox whose state the test (and the fake start backend) changes.
    struct World {
        state: Mutex<&'static str>,
        reads: AtomicUsize,
        /// Lookups fail (the registry is down).
        down: AtomicBool,
        /// The static registry's trait answer.
        learns: bool,
    }

    impl Registry for World {
        fn sandbox<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<Option<Arc<SandboxRecord>>, RegistryError>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                let down = RegistryError::Unavailable("down".into());
                return Box::pin(async move { Err(down) });
            }
            let state = *self.state.lock().unwrap();
            let upstream = Upstream::Direct {
                address: "127.0.0.1".into(),
            };
            let record = SandboxRecord::new(id, upstream, true, state, None);
            Box::pin(async move { Ok(Some(Arc::new(record))) })
        }

        fn learns_states(&self) -> bool {
            self.learns
        }
    }

    struct Proxy {
        resolver: Resolver,
        activity: Arc<Activity>,
    }

    impl Context for Proxy {
        fn resolver(&self) -> &Resolver {
            &self.resolver
        }
        fn activity(&self) -> &Activity {
            &self.activity
        }
    }

    /// Sets the world's state to `then` after `delay`, or refuses.
    struct FakeStarter {
        world: Arc<World>,
        delay: Duration,
        then: Result<&'static str, &'static str>,
        calls: Arc<AtomicUsize>,
    }

    impl Starter for FakeStarter {
        fn start<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<Started, StartError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match self.then {
                    Err(message) => Err(StartError::Refused(message.into())),
                    Ok("accepted-only") => Ok(Started::Accepted),
                    Ok(state) => {
                        *self.world.state.lock().unwrap() = "starting";
                        let world = self.world.clone();
                        let delay = self.delay;
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            *world.state.lock().unwrap() = state;
                        });
                        Ok(Started::Accepted)
                    }
                }
            })
        }
    }

    struct Setup {
        waker: Arc<Waker>,
        ctx: Arc<dyn Context>,
        world: Arc<World>,
        calls: Arc<AtomicUsize>,
    }

    fn setup(
        state: &'static str,
        then: Result<&'static str, &'static str>,
        config: WakeConfig,
    ) -> Setup {
        let world = Arc::new(World {
            state: Mutex::new(state),
            reads: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            learns: !matches!(then, Ok("accepted-only")),
        });
        let calls = Arc::new(AtomicUsize::new(0));
        let starter = FakeStarter {
            world: world.clone(),
            delay: Duration::from_millis(200),
            then,
            calls: calls.clone(),
        };
        let waker = Waker::new(
            &config,
            Some(Box::new(starter)),
            None,
            CancellationToken::new(),
        )
        .unwrap();
        let ctx: Arc<dyn Context> = Arc::new(Proxy {
            resolver: Resolver::new(world.clone(), CacheConfig::default()),
            activity: Activity::new(&ActivityConfig::default()),
        });
        Setup {
            waker,
            ctx,
            world,
            calls,
        }
    }

    fn stopped() -> SandboxRecord {
        let upstream = Upstream::Direct {
            address: "127.0.0.1".into(),
        };
        SandboxRecord::new("sbx", upstream, true, "stopped", None)
    }

    fn fast() -> WakeConfig {
        WakeConfig {
            poll_min: Duration::from_millis(10),
            poll_max: Duration::from_millis(20),
            ..WakeConfig::default()
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_start_and_all_get_the_running_record() {
        let s = setup("stopped", Ok("started"), fast());
        let holds = (0..50).map(|_| {
            let (waker, ctx) = (s.waker.clone(), s.ctx.clone());
            tokio::spawn(async move { waker.hold(&stopped(), &ctx, None, LOCAL).await })
        });
        for hold in futures_util::future::join_all(holds).await {
            let record = hold.unwrap().expect("held, then released");
            assert!(record.is_running());
        }
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            s.waker.held.load(Ordering::SeqCst),
            0,
            "every hold released"
        );
    }

    #[tokio::test]
    async fn a_refused_start_answers_every_waiter_and_later_ones_without_a_new_call() {
        let s = setup("stopped", Err("quota exceeded"), fast());
        let holds = (0..10).map(|_| {
            let (waker, ctx) = (s.waker.clone(), s.ctx.clone());
            tokio::spawn(async move { waker.hold(&stopped(), &ctx, None, LOCAL).await })
        });
        for hold in futures_util::future::join_all(holds).await {
            let error = hold.unwrap().unwrap_err().to_string();
            assert!(error.contains("quota exceeded"), "{error}");
        }
        let again = s
            .waker
            .hold(&stopped(), &s.ctx, None, LOCAL)
            .await
            .unwrap_err();
        assert!(matches!(again, WakeError::Failed { .. }));
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn broken_and_deleted_states_fail_without_a_start_call() {
        for (state, says) in [("error", "state \"error\""), ("destroyed", "deleted")] {
            let s = setup(state, Ok("started"), fast());
            let error = s
                .waker
                .hold(&stopped(), &s.ctx, None, LOCAL)
                .await
                .unwrap_err();
            assert!(error.to_string().contains(says), "{state}: {error}");
            assert_eq!(s.calls.load(Ordering::SeqCst), 0, "{state}");
        }
    }

    #[tokio::test]
    async fn a_transition_is_waited_out_before_the_start_call() {
        let s = setup("stopping", Ok("started"), fast());
        let world = s.world.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            *world.state.lock().unwrap() = "stopped";
        });
        let record = s.waker.hold(&stopped(), &s.ctx, None, LOCAL).await.unwrap();
        assert!(record.is_running());
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
        assert!(s.world.reads.load(Ordering::SeqCst) >= 3, "polled");
    }

    #[tokio::test]
    async fn bounds_refuse_extra_waiters_and_max_wait_ends_a_wait() {
        let config = WakeConfig {
            max_held_per_sandbox: 2,
            max_wait: Duration::from_millis(50),
            ..fast()
        };
        let s = setup("stopped", Ok("started"), config);
        let sandbox = stopped();
        let (a, b, c) = tokio::join!(
            s.waker.hold(&sandbox, &s.ctx, None, LOCAL),
            s.waker.hold(&sandbox, &s.ctx, None, LOCAL),
            s.waker.hold(&sandbox, &s.ctx, None, LOCAL),
        );
        let errors: Vec<WakeError> = [a, b, c].into_iter().map(|r| r.unwrap_err()).collect();
        let count = |f: fn(&WakeError) -> bool| errors.iter().filter(|e| f(e)).count();
        assert_eq!(count(|e| matches!(e, WakeError::TooMany)), 1, "{errors:?}");
        let waited = |e: &WakeError| matches!(e, WakeError::StillStarting { .. });
        assert_eq!(count(waited), 2, "{errors:?}");
    }

    #[tokio::test]
    async fn a_registry_that_cannot_learn_the_state_answers_at_once_after_asking() {
        let s = setup("stopped", Ok("accepted-only"), fast());
        let error = s
            .waker
            .hold(&stopped(), &s.ctx, None, LOCAL)
            .await
            .unwrap_err();
        assert!(matches!(error, WakeError::Asked), "{error:?}");
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_registry_outage_fails_the_wake_instead_of_holding_to_the_end() {
        let s = setup("stopped", Ok("started"), fast());
        s.world.down.store(true, Ordering::SeqCst);
        let error = s
            .waker
            .hold(&stopped(), &s.ctx, None, LOCAL)
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("registry is unavailable"),
            "{error}"
        );
        assert_eq!(s.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_wake_nobody_waits_for_stops_polling() {
        let config = WakeConfig {
            max_wait: Duration::from_millis(100),
            ..fast()
        };
        let s = setup("starting", Ok("started"), config);
        s.waker.trigger(&stopped(), &s.ctx);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(s.waker.wakes.is_empty(), "abandoned and forgotten");
        let reads = s.world.reads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            s.world.reads.load(Ordering::SeqCst),
            reads,
            "no more polling"
        );
    }

    #[tokio::test]
    async fn one_client_cannot_take_every_held_slot() {
        let config = WakeConfig {
            max_held_per_client: 2,
            max_wait: Duration::from_millis(50),
            ..fast()
        };
        let s = setup("stopped", Ok("started"), config);
        let sandbox = stopped();
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
        let (a, b, c, d) = tokio::join!(
            s.waker.hold(&sandbox, &s.ctx, None, LOCAL),
            s.waker.hold(&sandbox, &s.ctx, None, LOCAL),
            s.waker.hold(&sandbox, &s.ctx, None, LOCAL),
            s.waker.hold(&sandbox, &s.ctx, None, other),
        );
        let too_many = [&a, &b, &c]
            .iter()
            .filter(|r| matches!(r, Err(WakeError::TooMany)))
            .count();
        assert_eq!(too_many, 1, "{a:?} {b:?} {c:?}");
        assert!(matches!(d, Err(WakeError::StillStarting { .. })), "{d:?}");
        assert!(s.waker.per_client.is_empty(), "counts released");
    }
}
