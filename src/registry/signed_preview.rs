//! Signed preview URLs (`{port}-{token}.{domain}`): the token's shape, its Daytona-compatible
//! Redis key, and new tokens. The gate, the `redis` backend and the admin CLI all use these.

use rand::Rng;

/// The Daytona-compatible signed preview key (no prefix: Daytona's API writes it).
pub fn signed_preview_key(port: u16, token: &str) -> String {
    format!("sandbox:signed-preview-url-token:{port}:{token}")
}

/// `P signed-links:{sandbox}`: a sorted set of the sandbox's signed links, member
/// [`link_member`], score the link's expiry (epoch ms). Written by `preview-url sign`, read by
/// `preview-url list`.
pub fn links_index_key(prefix: &str, sandbox: &str) -> String {
    format!("{prefix}signed-links:{sandbox}")
}

/// `P signed-link-uses:{sandbox}`: a hash, field [`link_member`], value the link's last use
/// (epoch ms), written by the proxies at most once per link per `[activity] throttle`.
pub fn link_uses_key(prefix: &str, sandbox: &str) -> String {
    format!("{prefix}signed-link-uses:{sandbox}")
}

/// `{port}:{sha256 hex of the token}`: names a link in the index without its raw token.
pub fn link_member(port: u16, token: &str) -> String {
    format!("{port}:{}", hex::encode(super::sha256(token)))
}

/// How long the index and the uses outlive the last link written (links live at most 24 h).
pub const LINK_RECORDS_TTL_MS: u64 = 25 * 3600 * 1000;

/// A signed preview token is 16 characters `[a-z0-9]`; a host label of that shape may be one.
pub fn is_signed_token(token: &str) -> bool {
    token.len() == 16
        && token
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// 16 characters `[a-z0-9]` from the OS-seeded CSPRNG (`rand::rng()` is ChaCha-based).
pub fn new_signed_token() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..16)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_are_16_lowercase_alphanumerics() {
        assert!(is_signed_token("abcdefgh12345678"));
        assert!(!is_signed_token("ABCDEFGH12345678"));
        assert!(!is_signed_token("abc"));
        assert!(!is_signed_token("abcdefgh1234567:"));
        let token = new_signed_token();
        assert!(is_signed_token(&token), "{token}");
    }
}
