//! Redirect targets built from user input never leave the host (no open redirect).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgate::auth::return_to::same_host_path;

fuzz_target!(|input: (&str, &str)| {
    let (raw, host) = input;
    let path = same_host_path(raw, host);
    assert!(path.starts_with('/'), "{path}");
    assert!(!path.starts_with("//"), "{path}");
    assert!(!path.bytes().any(|b| b == b'\\' || b.is_ascii_control()), "{path}");
    let second = path.get(1..4).unwrap_or("");
    assert!(!second.eq_ignore_ascii_case("%2f") && !second.eq_ignore_ascii_case("%5c"), "{path}");
});
