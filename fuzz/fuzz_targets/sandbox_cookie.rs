//! The sandbox cookie: one issued for (sandbox, label[, port]) opens exactly that pair (and that
//! port); any value read from a request is parsed without panicking and never opens another
//! sandbox.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgate::auth::cookie::{check, issue, CookieCheck};
use sandgate::auth::sign::Signer;

fuzz_target!(|input: (&str, &str, &str, &str, Option<u16>, u16)| {
    let (sandbox, label, other, raw, port, other_port) = input;
    let signer = Signer::new(vec![b"c".repeat(32)]);
    let _ = check(&signer, sandbox, label, Some(other_port), raw);
    let Some(value) = issue(&signer, sandbox, label, port, 60) else {
        return;
    };
    let here = port.or(Some(other_port));
    assert_eq!(check(&signer, sandbox, label, here, &value), CookieCheck::Valid);
    if other != sandbox {
        assert_eq!(check(&signer, other, label, here, &value), CookieCheck::Invalid);
    }
    if other != label {
        assert_eq!(check(&signer, sandbox, other, here, &value), CookieCheck::Invalid);
    }
    if port.is_some_and(|p| p != other_port) {
        let elsewhere = check(&signer, sandbox, label, Some(other_port), &value);
        assert_eq!(elsewhere, CookieCheck::Invalid, "a port-bound cookie on another port");
    }
});
