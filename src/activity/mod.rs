//! Activity phase: marks a sandbox active in memory (no I/O on the request path); a background
//! flusher writes throttled, batched marks to a sink.
//!
//! Long-lived connections hold a [`StreamGuard`]: it counts open streams per sandbox, and the
//! flusher re-marks every sandbox with open streams once per heartbeat — in `streams = "open"`
//! mode always, in `"traffic"` mode only when bytes moved on one of them since the last
//! heartbeat ([`StreamGuard::touch`], a flag shared with the sandbox's mark). There is no timer
//! per connection, so none can leak: dropping the guard is the whole close path.

pub mod daytona;
pub mod redis;
pub mod rules;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;

use crate::base::FastMap;

pub use crate::base::clock::now_ms;
use crate::base::header_scan::Present;
use crate::base::BoxFuture;
use crate::config::activity::Streams;
pub use crate::config::ActivityConfig;
use crate::metrics::metrics;
pub use rules::Rules;

#[derive(Debug, thiserror::Error)]
#[error("activity sink: {0}")]
pub struct SinkError(pub String);

/// Where activity goes. A write gets the newest mark (epoch ms) per sandbox.
pub trait ActivitySink: Send + Sync + 'static {
    fn write<'a>(&'a self, batch: &'a [(Arc<str>, u64)]) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Like [`ActivitySink::write`], but a sink that writes entry by entry can say which ones
    /// went through, so only the rest stay pending. Default: all or nothing.
    fn write_partial<'a>(
        &'a self,
        batch: &'a [(Arc<str>, u64)],
    ) -> BoxFuture<'a, Result<(), PartialWrite>> {
        Box::pin(async move {
            self.write(batch).await.map_err(|error| PartialWrite {
                written: Vec::new(),
                error,
            })
        })
    }
}

/// A write that failed in part: `written` indexes the batch entries that were written.
#[derive(Debug)]
pub struct PartialWrite {
    pub written: Vec<usize>,
    pub error: SinkError,
}

/// Keeps the last write per sandbox in memory (the embedded default; also what tests read).
#[derive(Default)]
pub struct MemorySink {
    /// Newest mark written per sandbox, and how many writes each sandbox got.
    pub last: DashMap<Arc<str>, (u64, usize)>,
    pub writes: AtomicUsize,
    pub batches: AtomicUsize,
}

impl MemorySink {
    /// Writes so far for one sandbox.
    pub fn writes_for(&self, sandbox_id: &str) -> usize {
        self.last.get(sandbox_id).map_or(0, |e| e.1)
    }
}

impl ActivitySink for MemorySink {
    fn write<'a>(&'a self, batch: &'a [(Arc<str>, u64)]) -> BoxFuture<'a, Result<(), SinkError>> {
        for (id, ms) in batch {
            let mut entry = self.last.entry(id.clone()).or_insert((0, 0));
            *entry = (*ms, entry.1 + 1);
        }
        self.writes.fetch_add(batch.len(), Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
}

#[derive(Default)]
struct Mark {
    seen_ms: AtomicU64,
    written_ms: AtomicU64,
    open_streams: AtomicUsize,
    /// Bytes moved on one of the open streams since the last heartbeat (traffic mode).
    moved: Touch,
}

/// A sandbox marked within this long skips the user-agent check ([`Activity::mark_if_counts`]).
const RECENT_MS: u64 = 1000;

pub struct Activity {
    enabled: bool,
    throttle_ms: u64,
    heartbeat_ms: u64,
    streams: Streams,
    rules: Rules,
    marks: FastMap<Arc<str>, Mark>,
}

impl Activity {
    pub fn new(config: &ActivityConfig) -> Arc<Activity> {
        Arc::new(Activity {
            enabled: config.enabled,
            throttle_ms: config.throttle.as_millis() as u64,
            heartbeat_ms: config.heartbeat.as_millis() as u64,
            streams: config.streams,
            rules: Rules::new(config),
            marks: FastMap::default(),
        })
    }

    /// Whether a request counts as use of its sandbox (see [`Rules`]): one that does not must
    /// neither mark nor wake it. Pure and allocation-free; `port` is the preview port (`None`
    /// for the toolbox).
    pub fn counts_as_activity(
        &self,
        port: Option<u16>,
        headers: &http::HeaderMap,
        present: Present,
    ) -> bool {
        self.rules.counts(port, headers, present)
    }

    /// Activity phase: marks the sandbox when the request counts ([`Rules`]); `true` when it
    /// does. The user-agent check (the part that costs: ~1,500 instructions for a browser's
    /// agent) is skipped while the sandbox was marked within the last second, and such a request
    /// leaves the mark as it is: a busy sandbox pays the check about once a second (its mark
    /// then moves), and monitors' probes never move it, however closely they follow each other.
    pub fn mark_if_counts(
        &self,
        sandbox_id: &str,
        port: Option<u16>,
        headers: &http::HeaderMap,
        present: Present,
    ) -> bool {
        if !self.rules.counts_but_for_agent(port, headers, present) {
            return false;
        }
        if !self.enabled {
            return !self.rules.sent_by_ignored_agent(headers);
        }
        let now = now_ms();
        if let Some(mark) = self.marks.get(sandbox_id) {
            if now.saturating_sub(mark.seen_ms.load(Ordering::Relaxed)) < RECENT_MS {
                return true;
            }
            if self.rules.sent_by_ignored_agent(headers) {
                return false;
            }
            mark.seen_ms.fetch_max(now, Ordering::Relaxed);
            return true;
        }
        if self.rules.sent_by_ignored_agent(headers) {
            return false;
        }
        self.mark(sandbox_id);
        true
    }

    /// Marks a sandbox active now. In memory only; allocates once per sandbox, not per request.
    pub fn mark(&self, sandbox_id: &str) {
        if !self.enabled {
            return;
        }
        let now = now_ms();
        if let Some(mark) = self.marks.get(sandbox_id) {
            mark.seen_ms.fetch_max(now, Ordering::Relaxed);
            return;
        }
        self.marks
            .entry(sandbox_id.into())
            .or_default()
            .seen_ms
            .fetch_max(now, Ordering::Relaxed);
    }

    /// Marks now and keeps the sandbox active every heartbeat until the guard is dropped.
    pub fn stream(self: &Arc<Self>, sandbox_id: &str) -> Option<StreamGuard> {
        if !self.enabled {
            return None;
        }
        self.mark(sandbox_id);
        let mark = self.marks.get(sandbox_id)?;
        mark.open_streams.fetch_add(1, Ordering::Relaxed);
        let (id, _) = mark.pair();
        Some(StreamGuard {
            activity: self.clone(),
            sandbox_id: id.clone(),
            moved: mark.moved.clone(),
        })
    }

    /// Whether open streams keep their sandbox active now: always in `open` mode; in `traffic`
    /// mode when bytes moved since the last time this was asked (which resets it).
    fn streams_count(&self, mark: &Mark) -> bool {
        self.streams == Streams::Open || mark.moved.take()
    }

    /// Marks due for writing: newer than the last write and outside the throttle window.
    /// Sandboxes with open streams are re-marked once per heartbeat first.
    fn due(&self, now: u64) -> Vec<(Arc<str>, u64)> {
        let mut batch = Vec::new();
        for entry in self.marks.iter() {
            let mark = entry.value();
            if mark.open_streams.load(Ordering::Relaxed) > 0
                && now.saturating_sub(mark.seen_ms.load(Ordering::Relaxed)) >= self.heartbeat_ms
                && self.streams_count(mark)
            {
                mark.seen_ms.fetch_max(now, Ordering::Relaxed);
            }
            let seen = mark.seen_ms.load(Ordering::Relaxed);
            let written = mark.written_ms.load(Ordering::Relaxed);
            if seen > written && now.saturating_sub(written) >= self.throttle_ms {
                batch.push((entry.key().clone(), seen));
            }
        }
        batch
    }

    fn confirm(&self, batch: &[(Arc<str>, u64)]) {
        for (id, ms) in batch {
            if let Some(mark) = self.marks.get(&**id) {
                mark.written_ms.fetch_max(*ms, Ordering::Relaxed);
            }
        }
    }

    /// Forgets sandboxes with no open stream and nothing pending that went quiet long ago, so
    /// memory follows the set of active sandboxes.
    fn forget_idle(&self, now: u64) {
        let horizon = (self.throttle_ms + self.heartbeat_ms).max(60_000) * 10;
        self.marks.retain(|_, m| {
            m.open_streams.load(Ordering::Relaxed) > 0
                || m.seen_ms.load(Ordering::Relaxed) > m.written_ms.load(Ordering::Relaxed)
                || now.saturating_sub(m.seen_ms.load(Ordering::Relaxed)) < horizon
        });
    }

    /// One flush: write what is due; on a sink error keep it pending for the next flush.
    pub async fn flush(&self, sink: &dyn ActivitySink) -> Result<usize, SinkError> {
        let now = now_ms();
        let batch = self.due(now);
        if batch.is_empty() {
            return Ok(0);
        }
        if let Err(PartialWrite { written, error }) = sink.write_partial(&batch).await {
            let done: Vec<_> = written
                .iter()
                .filter_map(|&i| batch.get(i).cloned())
                .collect();
            metrics().activity_flush_errors.inc();
            metrics().activity_writes.inc_by(done.len() as u64);
            self.confirm(&done);
            return Err(error);
        }
        metrics().activity_writes.inc_by(batch.len() as u64);
        self.confirm(&batch);
        self.forget_idle(now);
        Ok(batch.len())
    }

    /// Open long-lived streams, all sandboxes together (a gauge).
    pub fn open_streams(&self) -> usize {
        self.marks
            .iter()
            .map(|m| m.open_streams.load(Ordering::Relaxed))
            .sum()
    }

    /// Runs the flusher until `stop` fires, then flushes once more.
    pub async fn run_flusher(
        self: Arc<Self>,
        sink: Arc<dyn ActivitySink>,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            if let Err(e) = self.flush(&*sink).await {
                tracing::warn!(error = %e, "activity flush failed; marks kept for the next flush");
            }
        }
        if let Err(e) = self.flush(&*sink).await {
            tracing::warn!(error = %e, "final activity flush failed");
        }
    }
}

/// Held by a WebSocket relay, a streaming response body or an SSH session while it is open.
pub struct StreamGuard {
    activity: Arc<Activity>,
    sandbox_id: Arc<str>,
    moved: Touch,
}

impl StreamGuard {
    /// Bytes moved on this stream (either way): what keeps it counting in traffic mode.
    pub fn touch(&self) {
        self.moved.touch();
    }

    /// A handle for code that moves the bytes but does not hold the guard (SSH channels).
    pub fn toucher(&self) -> Touch {
        self.moved.clone()
    }
}

impl Drop for StreamGuard {
    /// The close counts as one last mark (traffic mode: if bytes moved since the last heartbeat,
    /// e.g. a WebSocket close frame).
    fn drop(&mut self) {
        if let Some(mark) = self.activity.marks.get(&*self.sandbox_id) {
            mark.open_streams.fetch_sub(1, Ordering::Relaxed);
            if self.activity.streams_count(&mark) {
                mark.seen_ms.fetch_max(now_ms(), Ordering::Relaxed);
            }
        }
    }
}

/// "Bytes moved" flag of a sandbox's open streams, shared by their guards and its mark.
#[derive(Clone, Default)]
pub struct Touch(Arc<AtomicBool>);

impl Touch {
    /// A relaxed store, skipped while already set (no cache-line ping-pong per chunk).
    pub fn touch(&self) {
        if !self.0.load(Ordering::Relaxed) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    fn take(&self) -> bool {
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity(throttle_ms: u64, heartbeat_ms: u64) -> Arc<Activity> {
        activity_in(Streams::Open, throttle_ms, heartbeat_ms)
    }

    fn activity_in(streams: Streams, throttle_ms: u64, heartbeat_ms: u64) -> Arc<Activity> {
        Activity::new(&ActivityConfig {
            throttle: Duration::from_millis(throttle_ms),
            heartbeat: Duration::from_millis(heartbeat_ms),
            streams,
            ..ActivityConfig::default()
        })
    }

    /// Flushes after each of `heartbeats` heartbeats of 20 ms, calling `between` before each;
    /// returns how many writes they made.
    async fn heartbeat_writes(a: &Activity, heartbeats: usize, between: impl Fn()) -> usize {
        let sink = MemorySink::default();
        let mut writes = 0;
        for _ in 0..heartbeats {
            between();
            tokio::time::sleep(Duration::from_millis(25)).await;
            writes += a.flush(&sink).await.unwrap();
        }
        writes
    }

    #[tokio::test]
    async fn in_traffic_mode_only_streams_that_move_bytes_heartbeat() {
        let a = activity_in(Streams::Traffic, 0, 20);
        let sink = MemorySink::default();
        let guard = a.stream("ws").unwrap();
        assert_eq!(a.flush(&sink).await.unwrap(), 1, "the open marks");
        assert_eq!(
            heartbeat_writes(&a, 5, || {}).await,
            0,
            "quiet: no heartbeat"
        );
        let busy = heartbeat_writes(&a, 5, || guard.touch()).await;
        assert!(
            busy >= 4,
            "bytes moved before each heartbeat: {busy} writes"
        );
        let toucher = guard.toucher();
        assert!(heartbeat_writes(&a, 3, || toucher.touch()).await >= 2);
        a.flush(&sink).await.unwrap();
        drop(guard);
        assert_eq!(a.flush(&sink).await.unwrap(), 0, "a quiet close is no mark");
    }

    #[tokio::test]
    async fn in_open_mode_quiet_streams_heartbeat() {
        let a = activity_in(Streams::Open, 0, 20);
        let _guard = a.stream("ws").unwrap();
        assert!(heartbeat_writes(&a, 5, || {}).await >= 4);
    }

    #[tokio::test]
    async fn many_marks_in_one_interval_make_one_write() {
        let a = activity(60_000, 60_000);
        let sink = MemorySink::default();
        for _ in 0..10_000 {
            a.mark("sbx");
        }
        assert_eq!(a.flush(&sink).await.unwrap(), 1);
        a.mark("sbx");
        assert_eq!(a.flush(&sink).await.unwrap(), 0, "throttled");
        assert_eq!(sink.writes.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn many_sandboxes_go_out_in_one_batch() {
        let a = activity(0, 60_000);
        let sink = MemorySink::default();
        for i in 0..1000 {
            a.mark(&format!("sbx-{i}"));
        }
        assert_eq!(a.flush(&sink).await.unwrap(), 1000);
        assert_eq!(sink.batches.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn open_streams_heartbeat_and_stop_when_dropped() {
        let a = activity(0, 20);
        let sink = MemorySink::default();
        let guard = a.stream("ws").unwrap();
        let mut writes = 0;
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            writes += a.flush(&sink).await.unwrap();
        }
        assert!(writes >= 3, "heartbeats while open: {writes}");
        drop(guard);
        a.flush(&sink).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(a.flush(&sink).await.unwrap(), 0, "no marks after close");
        assert_eq!(a.open_streams(), 0);
    }

    struct Failing;
    impl ActivitySink for Failing {
        fn write<'a>(&'a self, _: &'a [(Arc<str>, u64)]) -> BoxFuture<'a, Result<(), SinkError>> {
            Box::pin(async { Err(SinkError("down".into())) })
        }
    }

    #[tokio::test]
    async fn marks_survive_a_sink_outage() {
        let a = activity(0, 60_000);
        a.mark("sbx");
        assert!(a.flush(&Failing).await.is_err());
        let sink = MemorySink::default();
        assert_eq!(a.flush(&sink).await.unwrap(), 1);
        assert!(sink.last.contains_key("sbx"));
    }

    #[test]
    fn a_monitor_marks_only_within_a_second_of_real_use() {
        let activity = activity(0, 1000);
        let mut monitor = http::HeaderMap::new();
        monitor.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("Mozilla/5.0+(compatible; UptimeRobot/2.0)"),
        );
        let present = Present::scan(&monitor);
        let browser = http::HeaderMap::new();
        assert!(!activity.mark_if_counts("quiet", Some(3000), &monitor, present));
        assert!(activity.marks.get("quiet").is_none(), "never marked");
        assert!(activity.mark_if_counts("busy", Some(3000), &browser, Present::UNKNOWN));
        let seen = |id: &str| {
            activity
                .marks
                .get(id)
                .unwrap()
                .seen_ms
                .load(Ordering::Relaxed)
        };
        let marked = seen("busy");
        std::thread::sleep(Duration::from_millis(5));
        assert!(activity.mark_if_counts("busy", Some(3000), &monitor, present));
        assert_eq!(
            seen("busy"),
            marked,
            "a probe within the second leaves the mark"
        );
        activity
            .marks
            .get("busy")
            .unwrap()
            .seen_ms
            .store(0, Ordering::Relaxed);
        assert!(!activity.mark_if_counts("busy", Some(3000), &monitor, present));
        assert_eq!(
            activity
                .marks
                .get("busy")
                .unwrap()
                .seen_ms
                .load(Ordering::Relaxed),
            0
        );
    }
}
