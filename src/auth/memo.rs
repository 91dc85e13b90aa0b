//! A connection's memory of the preview token it last entered with.

use std::sync::Arc;

use crate::registry::SandboxRecord;

/// The preview token one client connection last entered a sandbox with, and the sandbox
/// record it was checked against: the connection's next requests with the same token skip the
/// SHA-256 (a constant-time comparison of the bytes instead). A new record (refresh, token
/// rotation, revocation) is another `Arc` and misses, so nothing outlives what it was checked
/// against. Only tokens checked locally against the record's hash are remembered.
#[derive(Default)]
pub struct TokenMemo(std::sync::Mutex<Option<RememberedToken>>);

type RememberedToken = (Arc<SandboxRecord>, Box<[u8]>);

impl TokenMemo {
    pub(super) fn matches(&self, sandbox: &Arc<SandboxRecord>, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        let Ok(memo) = self.0.lock() else {
            return false;
        };
        memo.as_ref().is_some_and(|(record, known)| {
            Arc::ptr_eq(record, sandbox)
                && known.len() == token.len()
                && bool::from(known.as_ref().ct_eq(token.as_bytes()))
        })
    }

    pub(super) fn remember(&self, sandbox: &Arc<SandboxRecord>, token: &str) {
        if let Ok(mut memo) = self.0.lock() {
            *memo = Some((sandbox.clone(), token.as_bytes().into()));
        }
    }
}
