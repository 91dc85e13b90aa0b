//! Signed preview URLs (`{port}-{token}.{domain}`): the token's shape, its Daytona-compatible
//! Redis key, and new tokens. The gate, the `redis` backend and the admin CLI all use these.

use rand::Rng;

/// The Daytona-compatible signed preview key (no prefix: Daytona's API writes it).
pub fn signed_preview_key(port: u16, token: &str) -> String {
    format!("sandbox:signed-preview-url-token:{port}:{token}")
}

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
