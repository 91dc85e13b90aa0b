//! The resolver's side caches (signed preview tokens, SSH tokens, preview token checks): one
//! small map type with an expiry per entry and a bound on its size.

use std::borrow::Borrow;
use std::hash::Hash;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// A concurrent map whose entries expire (absolute: a hit never extends an entry's life) and
/// whose size stays within `max` entries (cleared whole when full: rare and bounded).
pub(super) struct SideCache<K, V> {
    map: DashMap<K, (V, Instant)>,
    max: usize,
}

impl<K: Eq + Hash, V: Clone> SideCache<K, V> {
    pub(super) fn new(max: usize) -> SideCache<K, V> {
        SideCache {
            map: DashMap::new(),
            max,
        }
    }

    /// The value under `key`, unless absent or expired.
    pub(super) fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.map.get(key)?;
        let (value, expires) = entry.value();
        (*expires > Instant::now()).then(|| value.clone())
    }

    /// Keeps `value` under `key` for `ttl`.
    pub(super) fn insert(&self, key: K, value: V, ttl: Duration) {
        if self.map.len() >= self.max {
            self.map.clear();
        }
        self.map.insert(key, (value, Instant::now() + ttl));
    }

    /// [`SideCache::insert`] while `current()` holds: checked again after the insert, which is
    /// undone if an invalidation came in between (it may have cleared the map before the insert).
    pub(super) fn insert_if_current(
        &self,
        key: K,
        value: V,
        ttl: Duration,
        current: impl Fn() -> bool,
    ) where
        K: Clone,
    {
        if !current() {
            return;
        }
        self.insert(key.clone(), value, ttl);
        if !current() {
            self.map.remove(&key);
        }
    }

    /// Drops every entry whose key fails `keep`.
    pub(super) fn retain(&self, keep: impl Fn(&K) -> bool) {
        self.map.retain(|key, _| keep(key));
    }

    pub(super) fn clear(&self) {
        self.map.clear();
    }

    /// Entries held, expired ones included (they go when overwritten or cleared).
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// When the entry under `key` expires (expired or not).
    #[cfg(test)]
    pub(super) fn expiry<Q>(&self, key: &Q) -> Option<Instant>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map(|entry| entry.value().1)
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_size_stays_bounded() {
        let cache: SideCache<Box<str>, u8> = SideCache::new(2);
        cache.insert("a".into(), 1, Duration::from_secs(60));
        cache.insert("gone".into(), 2, Duration::ZERO);
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.get("gone"), None, "expired");
        cache.insert("b".into(), 3, Duration::from_secs(60));
        assert_eq!(cache.get("a"), None, "full: cleared whole");
        assert_eq!(cache.get("b"), Some(3));
        cache.retain(|key| &**key != "b");
        assert_eq!(cache.get("b"), None);
    }
}
