//! Brute-force guard: failed credential checks per client address, as a token bucket in a bounded
//! map. Only failed attempts reach it (the credential is checked first), so it never refuses a
//! valid one.

use std::net::IpAddr;
use std::time::Instant;

use dashmap::DashMap;

const MAX_TRACKED: usize = 100_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct FailureLimiter {
    per_minute: f64,
    buckets: DashMap<IpAddr, Bucket>,
}

impl FailureLimiter {
    /// `per_minute = 0` disables the guard.
    pub fn new(per_minute: u32) -> Self {
        FailureLimiter {
            per_minute: f64::from(per_minute),
            buckets: DashMap::new(),
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_minute / 60.0).min(self.per_minute);
        bucket.last = now;
    }

    /// Counts one failed attempt from `ip`. `Err(seconds)` when `ip` had no failures left: this
    /// attempt is refused (429, retry after that many seconds) and not counted again. Only
    /// failed attempts reach the limiter, so it never refuses a valid credential.
    pub fn fail(&self, ip: IpAddr) -> Result<(), u32> {
        if self.per_minute <= 0.0 {
            return Ok(());
        }
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&ip) {
            self.evict();
        }
        let now = Instant::now();
        let mut bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: self.per_minute,
            last: now,
        });
        self.refill(&mut bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) * 60.0 / self.per_minute;
        Err(wait.ceil().max(1.0) as u32)
    }

    /// Drops buckets that have refilled (they carry no information); if that is not enough,
    /// everything (bounded memory wins over perfect accounting).
    fn evict(&self) {
        let now = Instant::now();
        let full = self.per_minute;
        let rate = self.per_minute / 60.0;
        self.buckets
            .retain(|_, b| b.tokens + now.duration_since(b.last).as_secs_f64() * rate < full);
        if self.buckets.len() >= MAX_TRACKED {
            self.buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_beyond_the_budget_are_refused_per_ip() {
        let l = FailureLimiter::new(3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.fail(a).is_ok());
        }
        let wait = l.fail(a).unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        assert!(l.fail(b).is_ok());
        let off = FailureLimiter::new(0);
        assert!((0..10).all(|_| off.fail(a).is_ok()));
    }
}
