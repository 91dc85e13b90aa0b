//! Signed tokens (cookies, OIDC state, login tickets, CSRF): parsing arbitrary input never
//! panics, a signed payload round-trips, and any change to a signed token never verifies for the
//! same or another purpose.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgate::auth::sign::Signer;

fuzz_target!(|input: (&str, String, u8, u8)| {
    let (raw, payload, position, flip) = input;
    let signer = Signer::new(vec![b"k".repeat(32)]);
    let _ = signer.verify::<serde_json::Value>("cookie", raw);

    let Some(token) = signer.sign("cookie", &payload) else {
        // Only a token longer than `verify` accepts is refused.
        let json = serde_json::to_string(&payload).unwrap_or_default();
        assert!(json.len().div_ceil(3) * 4 + 44 > 4096, "{} bytes of JSON", json.len());
        return;
    };
    assert_eq!(signer.verify::<String>("cookie", &token).as_deref(), Some(payload.as_str()));
    assert!(signer.verify::<String>("state", &token).is_none(), "purpose-bound");

    let mut tampered = token.clone().into_bytes();
    let at = position as usize % tampered.len();
    tampered[at] ^= flip.max(1);
    if let Ok(tampered) = String::from_utf8(tampered) {
        // Base64 decoding is strict (no trailing bits), so every changed byte either fails to
        // decode or changes what the MAC covers.
        assert!(signer.verify::<String>("cookie", &tampered).is_none(), "tampered: {tampered}");
    }
    let other = Signer::new(vec![b"o".repeat(32)]);
    assert!(other.verify::<String>("cookie", &token).is_none(), "another key");
});
