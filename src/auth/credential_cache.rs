//! Credential verdicts cached per (sandbox, credential kind, SHA-256 of the credential): never
//! the raw credential. Valid answers live 2 min (never past the token's own expiry), invalid
//! ones 5 s. Bounded: cleared whole when full (rare, and only costs re-verification).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use super::identity::Subject;
use super::AuthError;

/// A credential's verdict: who it speaks for (when the identity header needs it), or why not.
pub type Verdict = Result<Option<Subject>, AuthError>;

const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Bearer,
}

/// `sandbox ‖ 0 ‖ kind ‖ hash` as one byte string: a lookup borrows it as `[u8]` from a stack
/// buffer, so the hit path allocates nothing.
type Key = Box<[u8]>;

/// Sandbox ids are at most 128 bytes (route and registry enforce it); longer ones are not cached.
const MAX_ID: usize = 128;
const KEY_CAPACITY: usize = MAX_ID + 2 + 32;

fn key<'b>(
    buf: &'b mut [u8; KEY_CAPACITY],
    sandbox: &str,
    kind: Kind,
    hash: &[u8; 32],
) -> Option<&'b [u8]> {
    let id = sandbox.as_bytes();
    if id.len() > MAX_ID {
        return None;
    }
    let n = id.len();
    buf[..n].copy_from_slice(id);
    buf[n] = 0;
    buf[n + 1] = kind as u8;
    buf[n + 2..n + 34].copy_from_slice(hash);
    Some(&buf[..n + 34])
}

pub struct CredentialCache {
    valid_ttl: Duration,
    invalid_ttl: Duration,
    map: DashMap<Key, (Verdict, Instant)>,
}

impl CredentialCache {
    pub fn new(valid_ttl: Duration, invalid_ttl: Duration) -> Self {
        CredentialCache {
            valid_ttl,
            invalid_ttl,
            map: DashMap::new(),
        }
    }

    pub fn get(&self, sandbox: &str, kind: Kind, hash: &[u8; 32]) -> Option<Verdict> {
        let mut buf = [0u8; KEY_CAPACITY];
        let entry = self.map.get(key(&mut buf, sandbox, kind, hash)?)?;
        (entry.1 > Instant::now()).then(|| entry.0.clone())
    }

    /// `expires_at`: the credential's own expiry (unix seconds), which caps a valid verdict.
    pub fn put(
        &self,
        sandbox: &str,
        kind: Kind,
        hash: [u8; 32],
        verdict: Verdict,
        expires_at: Option<u64>,
    ) {
        let mut ttl = if verdict.is_ok() {
            self.valid_ttl
        } else {
            self.invalid_ttl
        };
        if let Some(exp) = expires_at {
            // To the instant, not the second: a verdict must not outlive the token.
            let left = (UNIX_EPOCH + Duration::from_secs(exp))
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            ttl = ttl.min(left);
        }
        if ttl.is_zero() {
            return;
        }
        if self.map.len() >= MAX_ENTRIES {
            let now = Instant::now();
            self.map.retain(|_, v| v.1 > now);
            if self.map.len() >= MAX_ENTRIES {
                self.map.clear();
            }
        }
        let mut buf = [0u8; KEY_CAPACITY];
        if let Some(key) = key(&mut buf, sandbox, kind, &hash) {
            self.map.insert(key.into(), (verdict, Instant::now() + ttl));
        }
    }

    pub fn clear(&self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_per_sandbox_and_expire() {
        let c = CredentialCache::new(Duration::from_secs(120), Duration::from_millis(30));
        let h = [7u8; 32];
        c.put("a", Kind::Bearer, h, Ok(None), None);
        c.put("b", Kind::Bearer, h, Err(AuthError::Forbidden), None);
        assert_eq!(c.get("a", Kind::Bearer, &h), Some(Ok(None)));
        assert_eq!(
            c.get("b", Kind::Bearer, &h),
            Some(Err(AuthError::Forbidden))
        );
        assert_eq!(c.get("c", Kind::Bearer, &h), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get("b", Kind::Bearer, &h), None);
        c.put("d", Kind::Bearer, h, Ok(None), Some(0));
        assert_eq!(
            c.get("d", Kind::Bearer, &h),
            None,
            "capped by the token's expiry"
        );
        // Capped to the instant of expiry, not to the end of a whole second.
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 1;
        c.put("e", Kind::Bearer, h, Ok(None), Some(exp));
        let expiry = UNIX_EPOCH + Duration::from_secs(exp);
        std::thread::sleep(expiry.duration_since(SystemTime::now()).unwrap_or_default());
        assert_eq!(
            c.get("e", Kind::Bearer, &h),
            None,
            "gone when the token expires"
        );
    }
}
