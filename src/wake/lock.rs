//! The cross-replica wake lock: `SET {prefix}wake-lock:{id} <nonce> NX PX <ttl>`, so one replica
//! calls start; released (only by its holder) when that wake ends.

use std::sync::Arc;
use std::time::Duration;

use crate::registry::redis::RedisHandle;

/// Deletes the lock only while it still holds our nonce (it may have expired and been taken).
const RELEASE: &str =
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

pub struct WakeLock {
    redis: Arc<RedisHandle>,
    prefix: String,
    ttl_ms: u64,
}

impl WakeLock {
    pub fn new(redis: Arc<RedisHandle>, ttl: Duration) -> WakeLock {
        let prefix = format!("{}wake-lock:", redis.config().key_prefix);
        WakeLock {
            redis,
            prefix,
            ttl_ms: ttl.as_millis() as u64,
        }
    }

    /// The nonce when this replica took the lock; `None` when another holds it. Redis failing
    /// counts as taken (with nonce 0, never released): a start call is better than none.
    pub async fn take(&self, id: &str) -> Option<u64> {
        let nonce = rand::random::<u64>() | 1;
        let mut set = redis::cmd("SET");
        set.arg(format!("{}{id}", self.prefix))
            .arg(nonce)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_ms);
        match self.redis.query::<Option<String>>(&set).await {
            Ok(taken) => taken.map(|_| nonce),
            Err(e) => {
                tracing::warn!(sandbox = id, error = %e, "wake lock unavailable; starting anyway");
                Some(0)
            }
        }
    }

    pub async fn release(&self, id: &str, nonce: u64) {
        if nonce == 0 {
            return;
        }
        let mut eval = redis::cmd("EVAL");
        eval.arg(RELEASE)
            .arg(1)
            .arg(format!("{}{id}", self.prefix))
            .arg(nonce);
        if let Err(e) = self.redis.query::<i64>(&eval).await {
            tracing::debug!(sandbox = id, error = %e, "wake lock not released; it expires");
        }
    }
}
