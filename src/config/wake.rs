//! `[registry.wake]`: waking sandboxes that are not running, and holding their requests meanwhile.

use std::time::Duration;

use http::HeaderValue;
use serde::{Deserialize, Serialize};

/// `registry.wake.backend`: who starts a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartBackend {
    /// `POST` to `url` (with `{id}`).
    Hook,
    /// `POST {daytona.api_url}/sandbox/{id}/start` with `daytona.api_key`.
    Daytona,
    /// `PUBLISH {channel} {id}` for whatever orchestrator runs the sandboxes.
    Redis,
    /// No waking: a stopped sandbox answers 503.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WakeConfig {
    /// Who starts sandboxes; unset: `hook` when `url` is set, else `none`.
    pub backend: Option<StartBackend>,
    /// `hook`: `POST` target with `{id}` for the sandbox id, e.g.
    /// `http://api:3000/api/sandbox/{id}/start`.
    pub url: String,
    /// `hook`: sent as `Authorization: Bearer <api_key>` when set.
    pub api_key: String,
    /// One start call gives up after this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Hold requests until the sandbox runs (`false`: start it, answer 503 at once).
    pub hold: bool,
    /// A held request waits at most this long, then gets 503 with `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// A wake that has not seen the sandbox running after this long has failed.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
    /// After a failed wake, requests get its error at once (no new start) for this long.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub max_held_per_sandbox: usize,
    pub max_held: usize,
    /// Wakes under way at once (each polls the registry); beyond: 503 without waking.
    pub max_wakes: usize,
    /// Held requests per client address (one client cannot take every slot).
    pub max_held_per_client: usize,
    /// Largest `Content-Length` of a held request; larger bodies, and bodies of unknown length,
    /// get 503 at once (the sandbox is still started).
    pub max_body: u64,
    /// HTML navigations still waiting after this get the "Starting…" page.
    #[serde(with = "humantime_serde")]
    pub page_after: Duration,
    /// Registry polling while waiting: from `poll_min`, growing by half up to `poll_max` (a pushed
    /// invalidation cuts a wait short).
    #[serde(with = "humantime_serde")]
    pub poll_min: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_max: Duration,
    /// `SET {redis.key_prefix}wake-lock:{id} NX PX` when Redis is configured: one replica calls
    /// start.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// `redis` backend: the channel start requests are published on.
    pub channel: String,
}

impl Default for WakeConfig {
    fn default() -> Self {
        WakeConfig {
            backend: None,
            url: String::new(),
            api_key: String::new(),
            timeout: Duration::from_secs(5),
            hold: true,
            max_wait: Duration::from_secs(60),
            start_timeout: Duration::from_secs(300),
            interval: Duration::from_secs(30),
            max_held_per_sandbox: 1000,
            max_held: 10_000,
            max_wakes: 256,
            max_held_per_client: 256,
            max_body: 1 << 20,
            page_after: Duration::from_secs(1),
            poll_min: Duration::from_millis(100),
            poll_max: Duration::from_secs(1),
            lock_ttl: Duration::from_secs(30),
            channel: "sandgate:wake".into(),
        }
    }
}

/// Longest duration a wake setting may have (and an `Instant` can surely add).
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

impl WakeConfig {
    /// The backend in force (an unset one follows `url`).
    pub fn start_backend(&self) -> StartBackend {
        match self.backend {
            Some(backend) => backend,
            None if self.url.is_empty() => StartBackend::None,
            None => StartBackend::Hook,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let durations = [
            ("registry.wake.timeout", self.timeout),
            ("registry.wake.max_wait", self.max_wait),
            ("registry.wake.start_timeout", self.start_timeout),
            ("registry.wake.interval", self.interval),
            ("registry.wake.poll_min", self.poll_min),
            ("registry.wake.lock_ttl", self.lock_ttl),
            ("registry.wake.page_after", self.page_after),
        ];
        for (key, duration) in durations {
            if duration.is_zero() && key != "registry.wake.page_after" {
                return Err(format!("{key} must be more than 0"));
            }
            if duration > MAX_DURATION {
                return Err(format!("{key} must be at most a day"));
            }
        }
        if self.poll_max < self.poll_min {
            return Err("registry.wake.poll_max must be at least registry.wake.poll_min".into());
        }
        let counts = [
            self.max_held_per_sandbox,
            self.max_held,
            self.max_wakes,
            self.max_held_per_client,
        ];
        if counts.contains(&0) {
            return Err(
                "registry.wake.max_held_per_sandbox, max_held, max_held_per_client and max_wakes must be more than 0 (hold = false turns holding off)"
                    .into(),
            );
        }
        if self.channel.is_empty() || self.channel.chars().any(char::is_whitespace) {
            return Err("registry.wake.channel must be a channel name without spaces".into());
        }
        if self.start_backend() != StartBackend::Hook {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn load(text: &str) -> Result<Config, String> {
        Config::from_toml_str(&format!("[registry.wake]\n{text}")).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_settings_name_their_key() {
        let hook = |extra: &str| -> String {
            load(&format!("url = \"http://h:1/{{id}}/start\"\n{extra}"))
                .err()
                .unwrap_or_default()
        };
        for (extra, key) in [
            ("max_wait = \"0s\"", "registry.wake.max_wait"),
            (
                "poll_min = \"1s\"\npoll_max = \"10ms\"",
                "registry.wake.poll_max",
            ),
            ("max_held = 0", "max_held"),
            ("channel = \"a b\"", "registry.wake.channel"),
            ("api_key = \"a\\nb\"", "registry.wake.api_key"),
        ] {
            assert!(hook(extra).contains(key), "{extra}: {}", hook(extra));
        }
        let no_id = load("url = \"http://h:1/start\"").err().unwrap_or_default();
        assert!(no_id.contains("{id}"), "{no_id}");
        assert_eq!(hook(""), "");
        let daytona = load("backend = \"daytona\"").err().unwrap_or_default();
        assert!(daytona.contains("needs registry.backend"), "{daytona}");
    }

    #[test]
    fn the_backend_follows_the_url_unless_set() {
        let backend = |text: &str| load(text).unwrap().registry.wake.start_backend();
        assert_eq!(backend(""), StartBackend::None);
        assert_eq!(backend("url = \"http://h/{id}\""), StartBackend::Hook);
        let redis = Config::from_toml_str(
            "[registry]\nbackend = \"redis\"\n[registry.wake]\nbackend = \"redis\"",
        );
        assert_eq!(
            redis.unwrap().registry.wake.start_backend(),
            StartBackend::Redis
        );
        assert_eq!(
            backend("backend = \"none\"\nurl = \"http://h/{id}\""),
            StartBackend::None
        );
    }
}
