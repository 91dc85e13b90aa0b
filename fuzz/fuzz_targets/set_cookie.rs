//! The upstream `Set-Cookie` filter: whatever a sandbox sends, what the browser would store has
//! no `Domain` attribute and none of the proxy's names; a kept cookie keeps its other bytes.
#![no_main]

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use sandgate::auth::cookie::{filter_set_cookie, SetCookieVerdict};

const RESERVED: [&str; 3] = ["daytona-sandbox-auth-", "daytona-preview-page-accepted", "sandgate-"];

/// The name a browser stores, lower-cased, without `__Host-`/`__Secure-` (an oracle written
/// apart from the filter).
fn stored_name(pair: &str) -> String {
    let name = |s: &str| s.split('=').next().unwrap_or("").trim_matches([' ', '\t']).to_string();
    let mut stored = name(pair);
    if stored.is_empty() {
        stored = name(pair.split_once('=').map_or(pair, |(_, v)| v));
    }
    for prefix in ["__host-", "__secure-"] {
        if let Some(rest) = stored.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    stored
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(bytes) else {
        return;
    };
    let out = match filter_set_cookie(&value) {
        SetCookieVerdict::Drop => return,
        SetCookieVerdict::Keep => value.as_bytes().to_vec(),
        SetCookieVerdict::Rewrite(v) => v.as_bytes().to_vec(),
    };
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    let mut parts = text.split(';');
    let stored = stored_name(parts.next().unwrap_or_default());
    assert!(!RESERVED.iter().any(|r| stored.starts_with(r)), "{text:?} stores {stored:?}");
    assert!(
        !parts.any(|a| a.split('=').next().unwrap_or("").trim_matches([' ', '\t']) == "domain"),
        "{text:?} keeps a Domain"
    );
    // Only Domain attributes are ever removed: the output is the input minus some `;…` parts.
    assert!(out.len() <= bytes.len());
    assert!(bytes.starts_with(out.split(|&b| b == b';').next().unwrap_or_default()));
});
