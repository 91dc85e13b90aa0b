//! `[registry.wake]`: the optional start hook for sandboxes that are not running.

use std::time::Duration;

use http::HeaderValue;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WakeConfig {
    /// `POST` target with `{id}` for the sandbox id, e.g.
    /// `http://api:3000/api/sandbox/{id}/start`; empty: no auto-wake (the default).
    pub url: String,
    /// Sent as `Authorization: Bearer <api_key>` when set.
    pub api_key: String,
    /// At most one call per sandbox per interval.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Each call gives up after this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for WakeConfig {
    fn default() -> Self {
        WakeConfig {
            url: String::new(),
            api_key: String::new(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

impl WakeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.url.is_empty() {
            return Ok(());
        }
        let probe = self.url.replace("{id}", "x");
        let uri: http::Uri = probe
            .parse()
            .map_err(|e| format!("registry.wake.url: {e}"))?;
        if uri.scheme_str() != Some("http") || !self.url.contains("{id}") {
            return Err("registry.wake.url must be an http:// URL containing {id}".into());
        }
        if HeaderValue::try_from(format!("Bearer {}", self.api_key)).is_err() {
            return Err("registry.wake.api_key has characters not allowed in a header".into());
        }
        Ok(())
    }
}
