//! The `redis` activity sink: `ZADD {redis_key} <epoch-ms> <id>`, the sorted set Daytona's
//! auto-stop already reads. One pipeline (one round trip) per flush.
//!
//! With `dedupe_across_replicas` a script takes each sandbox's lock and writes the winners, in
//! one atomic step. On a Cluster the locks carry the sorted set's hash tag
//! (`P activity-lock:{<set>}:<id>`) so they share its slot and the same script runs there.

use std::sync::Arc;

use redis::cluster_routing::Slot;

use crate::activity::{ActivityConfig, ActivitySink, SinkError};
use crate::base::BoxFuture;
use crate::registry::redis::RedisHandle;

/// Members per ZADD (and per script call): keeps single commands bounded.
const CHUNK: usize = 1000;

/// ARGV = lock prefix, lock ms, then (id, ms) pairs. Writes only the sandboxes whose lock it
/// took, so replicas share one throttle window.
const DEDUPE_LUA: &str = r"
local n = 0
for i = 3, #ARGV, 2 do
  if redis.call('SET', ARGV[1] .. ARGV[i], '1', 'NX', 'PX', ARGV[2]) then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
    n = n + 1
  end
end
return n
";

pub struct RedisActivitySink {
    redis: Arc<RedisHandle>,
    key: String,
    lock_prefix: String,
    /// The locks share the sorted set's slot (always, except on a Cluster whose names defeat
    /// the hash tag): the script can take them.
    script_locks: bool,
    /// Lock lifetime for cross-replica de-duplication; `None` when off.
    dedupe_ms: Option<u64>,
}

impl RedisActivitySink {
    pub fn new(redis: Arc<RedisHandle>, config: &ActivityConfig) -> RedisActivitySink {
        let plain = format!("{}activity-lock:", redis.config().key_prefix);
        let tagged = redis
            .is_cluster()
            .then(|| slot_local_lock_prefix(&plain, &config.redis_key));
        let (lock_prefix, script_locks) = match tagged {
            None => (plain, true),
            Some(Some(tagged)) => (tagged, true),
            Some(None) => (plain, false),
        };
        RedisActivitySink {
            redis,
            key: config.redis_key.clone(),
            lock_prefix,
            script_locks,
            dedupe_ms: config
                .dedupe_across_replicas
                .then(|| (config.throttle.as_millis() as u64).max(1)),
        }
    }

    async fn write_batch(&self, batch: &[(Arc<str>, u64)]) -> Result<(), SinkError> {
        let mut pipe = redis::pipe();
        match self.dedupe_ms {
            None => {
                for chunk in batch.chunks(CHUNK) {
                    let cmd = pipe.cmd("ZADD").arg(&self.key);
                    for (id, ms) in chunk {
                        cmd.arg(*ms).arg(&**id);
                    }
                    cmd.ignore();
                }
            }
            Some(lock_ms) if self.script_locks => {
                for chunk in batch.chunks(CHUNK) {
                    let cmd = pipe
                        .cmd("EVAL")
                        .arg(DEDUPE_LUA)
                        .arg(1)
                        .arg(&self.key)
                        .arg(&self.lock_prefix)
                        .arg(lock_ms);
                    for (id, ms) in chunk {
                        cmd.arg(&**id).arg(*ms);
                    }
                    cmd.ignore();
                }
            }
            Some(lock_ms) => return self.write_cluster_dedupe(batch, lock_ms).await,
        }
        self.redis
            .pipe::<()>(&pipe)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }

    async fn take_lock(&self, key: String, lock_ms: u64) -> Result<bool, SinkError> {
        let mut set = redis::cmd("SET");
        set.arg(key).arg(1).arg("NX").arg("PX").arg(lock_ms);
        let taken: Option<String> = self
            .redis
            .query(&set)
            .await
            .map_err(|e| SinkError(e.to_string()))?;
        Ok(taken.is_some())
    }

    /// Cluster whose key names defeat the hash tag: the locks live in many slots, so neither a
    /// script nor one pipeline can take them; the SETs go out concurrently (the cluster connection pipelines them per node),
    /// then one ZADD for the winners.
    async fn write_cluster_dedupe(
        &self,
        batch: &[(Arc<str>, u64)],
        lock_ms: u64,
    ) -> Result<(), SinkError> {
        let mut winners = Vec::new();
        for chunk in batch.chunks(256) {
            let mut calls = Vec::with_capacity(chunk.len());
            for (id, _) in chunk {
                calls.push(self.take_lock(format!("{}{id}", self.lock_prefix), lock_ms));
            }
            for (mark, taken) in chunk
                .iter()
                .zip(futures_util::future::join_all(calls).await)
            {
                if taken? {
                    winners.push(mark);
                }
            }
        }
        if winners.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for chunk in winners.chunks(CHUNK) {
            let cmd = pipe.cmd("ZADD").arg(&self.key);
            for (id, ms) in chunk {
                cmd.arg(*ms).arg(&**id);
            }
            cmd.ignore();
        }
        self.redis
            .pipe::<()>(&pipe)
            .await
            .map_err(|e| SinkError(e.to_string()))
    }
}

/// `plain` with the sorted set's hash tag (`P activity-lock:{<tag>}:`), so every lock hashes to
/// `set_key`'s slot; `None` when braces in the prefix would pick another slot.
fn slot_local_lock_prefix(plain: &str, set_key: &str) -> Option<String> {
    let tag = hash_tag(set_key).unwrap_or(set_key);
    let prefix = format!("{plain}{{{tag}}}:");
    (Slot::for_key(format!("{prefix}id")) == Slot::for_key(set_key)).then_some(prefix)
}

/// What Redis Cluster hashes in `key`: the text inside the first `{…}`, when not empty.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

impl ActivitySink for RedisActivitySink {
    fn write<'a>(&'a self, batch: &'a [(Arc<str>, u64)]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if batch.is_empty() {
                return Ok(());
            }
            self.write_batch(batch).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_locks_share_the_sorted_sets_slot() {
        let cases = [
            ("sandgate:activity-lock:", "sandbox:activity", true),
            ("sandgate:activity-lock:", "{activity}:marks", true),
            ("sandgate:activity-lock:", "a{}b", false),
            ("{p}activity-lock:", "sandbox:activity", false),
        ];
        for (plain, set_key, expect) in cases {
            let prefix = slot_local_lock_prefix(plain, set_key);
            assert_eq!(prefix.is_some(), expect, "{plain} {set_key}: {prefix:?}");
            if let Some(prefix) = prefix {
                assert!(prefix.starts_with(plain), "{prefix}");
                let lock = format!("{prefix}sbx-1");
                assert_eq!(Slot::for_key(&lock), Slot::for_key(set_key), "{lock}");
            }
        }
    }
}
