//! How often orders may start: a pause per name after a failed order (doubling from
//! `acme.retry_min` to `acme.retry_max`) and a token bucket of `acme.orders_per_hour` for all
//! names together. Plain data behind short, sync locks: nothing here awaits.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The pause after the last failed order for one name.
#[derive(Debug, Clone)]
struct Pause {
    until: Instant,
    length: Duration,
    reason: String,
}

/// Failed names and when they may be ordered again. Only names the authority allowed get an
/// entry, so the map is bounded by the verified domains.
#[derive(Debug)]
pub struct Backoffs {
    min: Duration,
    max: Duration,
    paused: Mutex<HashMap<String, Pause>>,
}

/// A name still paused: how long for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paused {
    pub remaining: Duration,
    pub reason: String,
}

impl Backoffs {
    pub fn new(min: Duration, max: Duration) -> Backoffs {
        Backoffs {
            min,
            max,
            paused: Mutex::new(HashMap::new()),
        }
    }

    /// `Some` while `name` may not be ordered (at `now`).
    pub fn check(&self, name: &str, now: Instant) -> Option<Paused> {
        let paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
        let pause = paused.get(name)?;
        let remaining = pause.until.checked_duration_since(now)?;
        (!remaining.is_zero()).then(|| Paused {
            remaining,
            reason: pause.reason.clone(),
        })
    }

    /// An order for `name` failed at `now`: pauses it for twice the last pause (at least
    /// `min`, at most `max`). Returns the new pause's length.
    pub fn failed(&self, name: &str, reason: &str, now: Instant) -> Duration {
        let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
        // A pause over for longer than `max` no longer doubles anything: forget it (names
        // removed from the registry would stay otherwise).
        paused.retain(|_, pause| pause.until + self.max > now);
        let length = match paused.get(name) {
            Some(last) => last.length.saturating_mul(2).clamp(self.min, self.max),
            None => self.min,
        };
        paused.insert(
            name.to_owned(),
            Pause {
                until: now + length,
                length,
                reason: reason.to_owned(),
            },
        );
        length
    }

    pub fn succeeded(&self, name: &str) {
        let mut paused = self.paused.lock().unwrap_or_else(PoisonError::into_inner);
        paused.remove(name);
    }
}

/// A token bucket: `per_hour` tokens at most, refilled evenly over the hour.
#[derive(Debug)]
pub struct OrderBucket {
    per_hour: u32,
    state: Mutex<(f64, Instant)>,
}

impl OrderBucket {
    pub fn new(per_hour: u32, now: Instant) -> OrderBucket {
        OrderBucket {
            per_hour,
            state: Mutex::new((f64::from(per_hour), now)),
        }
    }

    /// Takes one token at `now`; `false` when the bucket is empty.
    pub fn take(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = &mut *state;
        let refill =
            now.saturating_duration_since(*last).as_secs_f64() * f64::from(self.per_hour) / 3600.0;
        *tokens = (*tokens + refill).min(f64::from(self.per_hour));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);
    const MAX: Duration = Duration::from_secs(300);

    #[test]
    fn pauses_double_from_min_to_max_and_end() {
        let backoffs = Backoffs::new(MIN, MAX);
        let start = Instant::now();
        // (failures so far, pause expected after the next failure)
        let rows = [(0, 60), (1, 120), (2, 240), (3, 300), (4, 300)];
        for (failures, expected) in rows {
            let length = backoffs.failed("a.example.com", "challenge", start);
            assert_eq!(length.as_secs(), expected, "after {failures} failures");
        }
        let paused = backoffs.check("a.example.com", start + Duration::from_secs(10));
        assert_eq!(
            paused,
            Some(Paused {
                remaining: Duration::from_secs(290),
                reason: "challenge".into()
            })
        );
        assert_eq!(backoffs.check("b.example.com", start), None, "other names");
        assert_eq!(
            backoffs.check("a.example.com", start + MAX),
            None,
            "over once the pause ends"
        );
        let much_later = start + MAX * 2 + Duration::from_secs(1);
        backoffs.failed("b.example.com", "network", much_later);
        assert_eq!(
            backoffs
                .failed("a.example.com", "network", much_later)
                .as_secs(),
            60,
            "a pause long over is forgotten"
        );
        assert_eq!(backoffs.paused.lock().unwrap().len(), 2);
        backoffs.succeeded("a.example.com");
        assert_eq!(
            backoffs.failed("a.example.com", "network", start).as_secs(),
            60,
            "a success starts over from min"
        );
    }

    #[test]
    fn bucket_allows_per_hour_then_refills() {
        let start = Instant::now();
        let bucket = OrderBucket::new(3, start);
        let taken: Vec<bool> = (0..4).map(|_| bucket.take(start)).collect();
        assert_eq!(taken, [true, true, true, false]);
        // 3 per hour: one token every 20 minutes.
        assert!(!bucket.take(start + Duration::from_secs(19 * 60)));
        assert!(bucket.take(start + Duration::from_secs(20 * 60 + 1)));
        assert!(!bucket.take(start + Duration::from_secs(20 * 60 + 2)));
    }

    #[test]
    fn bucket_never_holds_more_than_per_hour() {
        let start = Instant::now();
        let bucket = OrderBucket::new(2, start);
        let later = start + Duration::from_secs(10 * 3600);
        let taken: Vec<bool> = (0..3).map(|_| bucket.take(later)).collect();
        assert_eq!(taken, [true, true, false]);
    }
}
