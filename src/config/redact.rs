//! The effective config as TOML with every secret replaced by `"<redacted>"` (`check-config
//! --print`): values of secret-named keys, and passwords inside URLs (`redis://:pass@host`).

use serde_json::Value;

use super::Config;

pub const REDACTED: &str = "<redacted>";

/// Keys whose values are secrets wherever they appear, alone or as a name's last word
/// (`auth_token`, `hs256_secret`, `client_secret`).
const SECRET_WORDS: &[&str] = &[
    "api_key",
    "token",
    "tokens",
    "secret",
    "password",
    "cookie_keys",
];

pub fn is_secret_key(key: &str) -> bool {
    SECRET_WORDS.iter().any(|word| {
        key.strip_suffix(word)
            .is_some_and(|head| head.is_empty() || head.ends_with('_'))
    })
}

/// Keys that hold a secret only inside the named list (`registry.api_keys[].key` is an API
/// key; `tls.certs[].key` is a path).
const SECRET_IN: &[(&str, &str)] = &[("api_keys", "key")];

/// `config` as TOML, secrets redacted.
pub fn redacted_toml(config: &Config) -> Result<String, String> {
    let mut value = serde_json::to_value(config).map_err(|e| e.to_string())?;
    redact(&mut value, "", false);
    toml::to_string(&value).map_err(|e| e.to_string())
}

/// Walks `value` (found under `parent`), redacting in place; drops nulls (TOML has none).
fn redact(value: &mut Value, parent: &str, secret: bool) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            for (key, v) in map.iter_mut() {
                let secret =
                    secret || is_secret_key(key) || SECRET_IN.contains(&(parent, key.as_str()));
                redact(v, key, secret);
            }
        }
        Value::Array(items) => {
            items.retain(|v| !v.is_null());
            for item in items {
                redact(item, parent, secret);
            }
        }
        Value::String(text) if secret && !text.is_empty() => *text = REDACTED.into(),
        Value::String(text) => {
            if let Some(clean) = without_url_password(text) {
                *text = clean;
            }
        }
        Value::Number(_) | Value::Bool(_) if secret => *value = Value::String(REDACTED.into()),
        _ => {}
    }
}

/// `text` as an error message may show it: a URL without its password.
pub fn shown_url(text: &str) -> String {
    without_url_password(text).unwrap_or_else(|| text.to_string())
}

/// `scheme://user:pass@host…` → `scheme://user:<redacted>@host…` (None: nothing to hide).
/// A password may hold `/`, `?` or `#` unencoded, so everything up to the last `@` counts as
/// userinfo (an `@` in a path or query hides too much, never too little).
pub fn without_url_password(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let (userinfo, tail) = rest.rsplit_once('@')?;
    let user = match userinfo.split_once(':') {
        _ if userinfo.is_empty() => return None,
        Some((user, _)) if user.contains(['/', '?', '#']) => "",
        Some((_, "")) => return None,
        Some((user, _)) => user,
        None => "",
    };
    Some(format!("{scheme}://{user}:{REDACTED}@{tail}"))
}

#[cfg(test)]
mod tests {
    use super::without_url_password;

    #[test]
    fn url_passwords_are_hidden() {
        for (url, want) in [
            ("redis://:pw@r:6379/0", Some("redis://:<redacted>@r:6379/0")),
            ("redis://u:pw@r", Some("redis://u:<redacted>@r")),
            ("https://tok@h/p", Some("https://:<redacted>@h/p")),
            ("https://tok@h/p?q=a@b", Some("https://:<redacted>@b")),
            ("redis://:pa/ss@h:6379", Some("redis://:<redacted>@h:6379")),
            ("redis://u:p#w@h", Some("redis://u:<redacted>@h")),
            ("redis://u:p?w@h/0", Some("redis://u:<redacted>@h/0")),
            ("redis://u:p@w@h", Some("redis://u:<redacted>@h")),
            ("https://h/p?to=a:b@c", Some("https://:<redacted>@c")),
            ("redis://u:@h", None),
            ("redis://@h", None),
            ("redis://r:6379", None),
            ("not a url", None),
        ] {
            assert_eq!(without_url_password(url).as_deref(), want, "{url}");
        }
    }
}
