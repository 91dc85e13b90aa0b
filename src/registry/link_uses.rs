//! When each signed preview link was last used: marked in memory when a link opens a request
//! (one map read and an atomic; an allocation only for a link's first use), written by a
//! background flusher at most once per link per throttle interval, like activity.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::base::clock::now_ms;
use crate::base::FastMap;

use super::Registry;

/// A signed link (port, its token's 16 bytes) used at `at_ms`, for the backend to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkUse {
    pub sandbox: Box<str>,
    pub port: u16,
    pub token: [u8; 16],
    pub at_ms: u64,
}

impl LinkUse {
    /// The token as text (it is 16 characters `[a-z0-9]`).
    pub fn token_str(&self) -> &str {
        std::str::from_utf8(&self.token).unwrap_or("")
    }
}

struct Mark {
    sandbox: Box<str>,
    seen_ms: AtomicU64,
    written_ms: AtomicU64,
}

/// The marks, bounded by `max` links (cleared whole when full: a few last-use times are lost,
/// never a request).
pub struct LinkUses {
    marks: FastMap<(u16, [u8; 16]), Mark>,
    max: usize,
}

impl LinkUses {
    pub fn new(max: usize) -> LinkUses {
        LinkUses {
            marks: FastMap::default(),
            max,
        }
    }

    pub fn mark(&self, port: u16, token: [u8; 16], sandbox: &str) {
        let now = now_ms();
        if let Some(mark) = self.marks.get(&(port, token)) {
            mark.seen_ms.fetch_max(now, Ordering::Relaxed);
            return;
        }
        if self.marks.len() >= self.max {
            self.marks.clear();
        }
        self.marks
            .entry((port, token))
            .or_insert_with(|| Mark {
                sandbox: sandbox.into(),
                seen_ms: AtomicU64::new(0),
                written_ms: AtomicU64::new(0),
            })
            .seen_ms
            .fetch_max(now, Ordering::Relaxed);
    }

    /// Uses not yet written whose link was last written at least `throttle` ago.
    fn due(&self, throttle: Duration) -> Vec<LinkUse> {
        let now = now_ms();
        let throttle = throttle.as_millis() as u64;
        self.marks
            .iter()
            .filter_map(|entry| {
                let mark = entry.value();
                let seen = mark.seen_ms.load(Ordering::Relaxed);
                let written = mark.written_ms.load(Ordering::Relaxed);
                let due = seen > written && now.saturating_sub(written) >= throttle;
                due.then(|| LinkUse {
                    sandbox: mark.sandbox.clone(),
                    port: entry.key().0,
                    token: entry.key().1,
                    at_ms: seen,
                })
            })
            .collect()
    }

    /// Writes what is due through `backend`; on failure the marks stay for the next round.
    async fn flush(&self, backend: &dyn Registry, throttle: Duration) {
        let due = self.due(throttle);
        if due.is_empty() {
            return;
        }
        match backend.record_link_uses(&due).await {
            Ok(()) => {
                for used in &due {
                    if let Some(mark) = self.marks.get(&(used.port, used.token)) {
                        mark.written_ms.fetch_max(used.at_ms, Ordering::Relaxed);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "recording signed link uses failed; retrying"),
        }
    }

    pub async fn run_flusher(
        self: Arc<Self>,
        backend: Arc<dyn Registry>,
        interval: Duration,
        throttle: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            self.flush(&*backend, throttle).await;
        }
        self.flush(&*backend, Duration::ZERO).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_due_once_per_throttle_interval() {
        let uses = LinkUses::new(100);
        let token = *b"abcdefgh12345678";
        uses.mark(3000, token, "sbx");
        uses.mark(3001, token, "sbx");
        let due = uses.due(Duration::from_secs(60));
        assert_eq!(due.len(), 2, "never written: due");
        for used in &due {
            let mark = uses.marks.get(&(used.port, used.token)).unwrap();
            mark.written_ms.store(used.at_ms, Ordering::Relaxed);
        }
        uses.mark(3000, token, "sbx");
        assert!(
            uses.due(Duration::from_secs(60)).is_empty(),
            "written within the interval"
        );
        assert_eq!(due[0].token_str(), "abcdefgh12345678");
    }

    #[test]
    fn the_marks_stay_bounded() {
        let uses = LinkUses::new(2);
        for port in 1..=5 {
            uses.mark(port, *b"abcdefgh12345678", "sbx");
        }
        assert!(uses.marks.len() <= 2);
    }
}
