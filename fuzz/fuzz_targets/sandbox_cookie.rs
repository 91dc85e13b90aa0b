//! The sandbox cookie: one issued for (sandbox, label) opens exactly that pair; any value read
//! from a request is parsed without panicking and never opens another sandbox.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgate::auth::cookie::{check, issue, CookieCheck};
use sandgate::auth::sign::Signer;

fuzz_target!(|input: (&str, &str, &str, &str)| {
    let (sandbox, label, other, raw) = input;
    let signer = Signer::new(vec![b"c".repeat(32)]);
    let _ = check(&signer, sandbox, label, raw);
    let Some(value) = issue(&signer, sandbox, label, 60) else {
        return;
    };
    assert_eq!(check(&signer, sandbox, label, &value), CookieCheck::Valid);
    if other != sandbox {
        assert_eq!(check(&signer, other, label, &value), CookieCheck::Invalid);
    }
    if other != label {
        assert_eq!(check(&signer, sandbox, other, &value), CookieCheck::Invalid);
    }
});
