//! The path check: a path the proxy accepts, put under a sandbox's prefix and normalised as a
//! hop behind the proxy might (percent-decoded once, `\` as `/`, `;` parameters dropped, RFC 3986
//! dot-segment removal), never leaves that prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgate::route::check_path;

const PREFIX: [&[u8]; 5] = [b"sandboxes", b"attacker", b"toolbox", b"proxy", b"3000"];

fn normalised_segments(path: &str) -> Vec<Vec<u8>> {
    let full = format!("/sandboxes/attacker/toolbox/proxy/3000{path}");
    let decoded: Vec<u8> = percent_encoding::percent_decode(full.as_bytes())
        .map(|b| if b == b'\\' { b'/' } else { b })
        .collect();
    let mut out: Vec<Vec<u8>> = Vec::new();
    for segment in decoded[1..].split(|&b| b == b'/') {
        match segment.split(|&b| b == b';').next().unwrap_or_default() {
            b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s.to_vec()),
        }
    }
    out
}

fuzz_target!(|path: &str| {
    if check_path(path).is_ok() {
        let segments = normalised_segments(path);
        assert!(
            segments.len() >= PREFIX.len() && segments.iter().zip(PREFIX).all(|(s, p)| s == p),
            "{path:?} normalises to {segments:?}"
        );
    }
});
