//! Same-host redirect targets: every redirect the proxy builds from user input goes through
//! [`same_host_path`], so none can leave the host it was made for (no open redirect).

/// A path (with query) on `host` that is safe to put in `Location`, or `/`.
///
/// Accepts `/path?query` (not `//…`, no backslashes, no control characters) and absolute
/// `http(s)://<host>/…` URLs whose authority is exactly `host`.
pub fn same_host_path(raw: &str, host: &str) -> String {
    let fallback = || "/".to_string();
    if raw.is_empty()
        || raw.len() > 4096
        || raw
            .bytes()
            .any(|b| b.is_ascii_control() || b == b'\\' || b == b' ')
    {
        return fallback();
    }
    let path = if raw.starts_with('/') {
        raw
    } else {
        match split_absolute(raw) {
            Some((authority, path)) if authority.eq_ignore_ascii_case(host) => path,
            _ => return fallback(),
        }
    };
    if !path.starts_with('/') || path.starts_with("//") || looks_encoded_escape(path) {
        return fallback();
    }
    path.to_string()
}

/// `http(s)://authority/path` → (authority, path-or-"/").
pub fn split_absolute(url: &str) -> Option<(&str, &str)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    match path.chars().next() {
        None => Some((authority, "/")),
        Some('/') => Some((authority, path)),
        _ => None,
    }
}

/// `/%2F…` or `/%5C…`: a path that some decoder downstream could turn into `//host`.
fn looks_encoded_escape(path: &str) -> bool {
    let second = path.get(1..4).unwrap_or("");
    second.eq_ignore_ascii_case("%2f") || second.eq_ignore_ascii_case("%5c")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "3000-sbx.preview.localhost:8080";

    #[test]
    fn open_redirect_attempts_fall_back_to_root() {
        for evil in [
            "//evil.com",
            "//evil.com/x",
            "https://evil.com",
            "http://evil.com/",
            "/\\evil.com",
            "\\\\evil.com",
            "\\evil.com",
            "%2F%2Fevil.com",
            "/%2F%2Fevil.com",
            "/%5cevil.com",
            "/a\r\nLocation: http://evil.com",
            "/a\nb",
            "javascript:alert(1)",
            "http://3000-sbx.preview.localhost:8080@evil.com/",
            "https://3000-sbx.preview.localhost:8080.evil.com/",
            "http:evil.com",
            "",
        ] {
            assert_eq!(same_host_path(evil, HOST), "/", "{evil:?}");
        }
    }

    #[test]
    fn same_host_targets_keep_path_and_query() {
        assert_eq!(same_host_path("/a/b?c=1&d=%2F", HOST), "/a/b?c=1&d=%2F");
        assert_eq!(
            same_host_path("http://3000-SBX.preview.localhost:8080/x?y", HOST),
            "/x?y"
        );
        assert_eq!(
            same_host_path("https://3000-sbx.preview.localhost:8080", HOST),
            "/"
        );
        assert_eq!(
            same_host_path("http://3000-sbx.preview.localhost:8080//evil", HOST),
            "/"
        );
    }
}
