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

fn is_secret_key(key: &str) -> bool {
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

/// `scheme://user:pass@host…` → `scheme://user:<redacted>@host…` (None: nothing to hide).
fn without_url_password(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (userinfo, host) = rest[..authority_end].rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':').unwrap_or(("", userinfo));
    if password.is_empty() {
        return None;
    }
    let tail = &rest[authority_end..];
    Some(format!("{scheme}://{user}:{REDACTED}@{host}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::without_url_password;

    #[test]
    fn url_passwords_are_hidden() {
        for (url, want) in [
            ("redis://:pw@r:6379/0", Some("redis://:<redacted>@r:6379/0")),
            ("redis://u:pw@r", Some("redis://u:<redacted>@r")),
            (
                "https://tok@h/p?q=a@b",
                Some("https://:<redacted>@h/p?q=a@b"),
            ),
            ("redis://r:6379", None),
            ("not a url", None),
        ] {
            assert_eq!(without_url_password(url).as_deref(), want, "{url}");
        }
    }
}
