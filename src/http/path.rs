//! The path check of the route phase: a forwarded path must never leave the prefix it is
//! appended to, whatever a hop behind the proxy decodes or normalises.

use super::route::RouteError;

/// Refuses a path that could leave the prefix it is appended to (`/sandboxes/<id>/toolbox/
/// proxy/<port>`, `/sandboxes/<id>/toolbox`, or the root in direct mode) once anything on the
/// way decodes or normalises it: a `.` or `..` segment, raw or percent-encoded in any case
/// (also behind `;` path parameters, `..;/`, or double-encoded, `%252e`), an encoded `/` or `\`,
/// a raw `\`, an overlong UTF-8 byte (`%c0%ae`) or an encoded NUL. The forwarded path keeps its
/// raw bytes, so refusing is the only way to be sure: a byte scan, no allocation.
pub fn check_path(path: &str) -> Result<(), RouteError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(RouteError::BadPath("the path must start with '/'"));
    };
    rest.as_bytes()
        .split(|&b| b == b'/')
        .try_for_each(check_segment)
}

fn check_segment(segment: &[u8]) -> Result<(), RouteError> {
    let mut dots = 0;
    let mut other = false;
    // After `;` (raw or encoded) come path parameters: servers that honour them (Tomcat, Jetty)
    // drop them, so only what precedes the first `;` decides whether this is a dot-segment.
    let mut in_parameters = false;
    let mut i = 0;
    while i < segment.len() {
        let (byte, len) = match segment[i] {
            b'%' => decode_escape(&segment[i..]),
            b => (b, 1),
        };
        let escaped = len > 1;
        match byte {
            b'\\' if escaped => return Err(RouteError::BadPath("encoded backslash")),
            b'\\' => return Err(RouteError::BadPath("backslash")),
            b'/' if escaped => return Err(RouteError::BadPath("encoded slash")),
            0 if escaped => return Err(RouteError::BadPath("encoded NUL")),
            0xC0 | 0xC1 if escaped => {
                return Err(RouteError::BadPath("overlong UTF-8 encoding"));
            }
            b';' => in_parameters = true,
            _ if in_parameters => {}
            b'.' => dots += 1,
            _ => other = true,
        }
        i += len;
    }
    if !other && (dots == 1 || dots == 2) {
        return Err(RouteError::BadPath("dot-segment"));
    }
    Ok(())
}

/// The byte the escape at the start of `s` (which starts with `%`) stands for once fully
/// decoded, through any number of encodings of `%` itself (`%252e` is `.` to a hop that
/// decodes twice), and how many bytes it spans. A `%` not followed by two hex digits is itself.
fn decode_escape(s: &[u8]) -> (u8, usize) {
    let mut byte = b'%';
    let mut len = 1;
    while byte == b'%' {
        match s.get(len..len + 2).and_then(hex_pair) {
            Some(decoded) => {
                byte = decoded;
                len += 2;
            }
            None => break,
        }
    }
    (byte, len)
}

fn hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_leave_their_prefix_are_refused() {
        for path in [
            "/..",
            "/../",
            "/.",
            "/./",
            "/a/../../x",
            "/a/..",
            "/a/.",
            "/a/./b",
            "/%2e%2e/",
            "/%2E%2e/",
            "/%2e%2E",
            "/.%2e/",
            "/%2e./",
            "/%2e/",
            "/%2E",
            "/..%2f",
            "/..%2F..%2f",
            "/a%2fb",
            "/a%2Fb",
            "/%5c..",
            "/a%5Cb",
            "/..\\",
            "/a\\b",
            "/..;/",
            "/.;/",
            "/.;x",
            "/..;x=1/y",
            "/%2e%2e;/",
            "/..%3b/",
            "/.%3Bx",
            "/%252e%252e/",
            "/%25252e/",
            "/a%252fb",
            "/%c0%ae%c0%ae/",
            "/%C1%9c",
            "/a%00b",
            "*",
            "",
            "a/b",
            "x",
        ] {
            assert!(
                matches!(check_path(path), Err(RouteError::BadPath(_))),
                "{path:?} was accepted"
            );
        }
    }

    #[test]
    fn ordinary_paths_pass() {
        for path in [
            "/",
            "//",
            "/a..b/",
            "/...",
            "/..../x",
            "/.well-known/x",
            "/a.b/c",
            "/a/b.",
            "/.a",
            "/a%20b",
            "/%E2%9C%93",
            "/%41%42",
            "/a;b=1/c",
            "/x;..",
            "/%25",
            "/%2",
            "/%zz",
            "/100%",
            "/%252",
            "/a%2e%2eb",
            "/files/a.tar.gz",
        ] {
            assert_eq!(check_path(path), Ok(()), "{path:?}");
        }
    }

    const PREFIX: [&[u8]; 5] = [b"sandboxes", b"attacker", b"toolbox", b"proxy", b"3000"];

    /// What a normalising hop makes of `prefix + path`, as segments: percent-decoded once,
    /// backslashes taken as slashes (WHATWG URLs, Windows), `;` parameters dropped (Tomcat),
    /// then RFC 3986 remove_dot_segments.
    fn normalised_segments(path: &str) -> Vec<Vec<u8>> {
        let full = format!("/sandboxes/attacker/toolbox/proxy/3000{path}");
        let decoded: Vec<u8> = percent_encoding::percent_decode(full.as_bytes())
            .map(|b| if b == b'\\' { b'/' } else { b })
            .collect();
        let mut out: Vec<Vec<u8>> = Vec::new();
        for segment in decoded[1..].split(|&b| b == b'/') {
            let segment = segment.split(|&b| b == b';').next().unwrap_or_default();
            match segment {
                b"." => {}
                b".." => {
                    out.pop();
                }
                s => out.push(s.to_vec()),
            }
        }
        out
    }

    fn tricky_path() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let token = proptest::sample::select(vec![
            "/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", ";", ";x", "%3b",
            "a", "b.c", "%25", "%", "%41", "%c0%ae", "...", "%00", "%2", "e",
        ]);
        proptest::collection::vec(token, 0..12).prop_map(|t| format!("/{}", t.concat()))
    }

    proptest::proptest! {
        #[test]
        fn accepted_paths_never_leave_their_prefix(path in tricky_path()) {
            if check_path(&path).is_ok() {
                let segments = normalised_segments(&path);
                proptest::prop_assert!(
                    segments.len() >= PREFIX.len()
                        && segments.iter().zip(PREFIX).all(|(s, p)| s == p),
                    "{path:?} normalises to {segments:?}"
                );
            }
        }

        #[test]
        fn paths_without_dot_segments_pass(
            segments in proptest::collection::vec(
                "[a-zA-Z0-9_~-]{1,4}(\\.[a-zA-Z0-9_~-]{0,3}){0,2}|\\.{3,5}|\\.[a-z]{1,4}|%[346][0-9A]",
                0..6,
            ),
        ) {
            let path = format!("/{}", segments.join("/"));
            proptest::prop_assert_eq!(check_path(&path), Ok(()), "{}", path);
        }

        #[test]
        fn check_path_never_panics(path in "\\PC{0,60}") {
            let _ = check_path(&path);
        }
    }
}
