//! `[activity]`: recording sandbox activity and where it goes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `activity.sink`: where activity marks are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sink {
    /// In this process only (read by tests and the embedded use).
    #[default]
    Memory,
    /// A sorted set in Redis.
    Redis,
    /// `POST /sandbox/{id}/last-activity` on the control-plane API.
    Daytona,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActivityConfig {
    /// Record activity at all.
    pub enabled: bool,
    /// At most one write per sandbox per this interval (per replica).
    #[serde(with = "humantime_serde")]
    pub throttle: Duration,
    /// How often pending marks are flushed.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Open WebSockets and streams re-mark their sandbox this often.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// `memory` (embedded default), `redis` (`ZADD {redis_key} <epoch-ms> <id>`) or `daytona`.
    pub sink: Sink,
    /// `daytona` sink: most `last-activity` calls in flight at once.
    pub daytona_concurrency: usize,
    /// Sorted set the `redis` sink writes (Daytona's own is `sandbox:activity`).
    pub redis_key: String,
    /// `redis` sink: replicas share the throttle through `SET {prefix}activity-lock:{id} NX PX`.
    pub dedupe_across_replicas: bool,
    /// Preview ports whose requests never count (e.g. a health-check port).
    pub ignore_ports: Vec<u16>,
    /// Requests whose `User-Agent` contains one of these (ASCII case-insensitive) never count;
    /// `[]` counts every user agent.
    pub ignore_user_agents: Vec<String>,
    /// What keeps a sandbox active while a WebSocket or long stream is open.
    pub streams: Streams,
}

/// `activity.streams`: what an open WebSocket, long stream or SSH session counts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Streams {
    /// A heartbeat re-marks only if bytes moved either way since the last one.
    #[default]
    Traffic,
    /// A heartbeat re-marks while the stream is open, even when nothing moves.
    Open,
}

/// Uptime monitors and load-balancer probes: their requests say nothing about real use.
pub const DEFAULT_IGNORED_USER_AGENTS: [&str; 11] = [
    "UptimeRobot",
    "Pingdom",
    "StatusCake",
    "Site24x7",
    "Better Uptime",
    "kube-probe",
    "ELB-HealthChecker",
    "GoogleHC",
    "Datadog/Synthetics",
    "Checkly",
    "Uptime-Kuma",
];

impl Default for ActivityConfig {
    fn default() -> Self {
        ActivityConfig {
            enabled: true,
            throttle: Duration::from_secs(10),
            flush_interval: Duration::from_secs(1),
            heartbeat: Duration::from_secs(30),
            sink: Sink::Memory,
            daytona_concurrency: 16,
            redis_key: "sandbox:activity".into(),
            dedupe_across_replicas: false,
            ignore_ports: Vec::new(),
            ignore_user_agents: DEFAULT_IGNORED_USER_AGENTS.map(String::from).to_vec(),
            streams: Streams::Traffic,
        }
    }
}

impl ActivityConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.ignore_ports.contains(&0) {
            return Err("activity.ignore_ports: 0 is not a port".into());
        }
        if let Some(bad) = self.ignore_user_agents.iter().find(|p| {
            p.trim().is_empty() || p.len() > 64 || p.bytes().any(|b| b.is_ascii_control())
        }) {
            return Err(format!(
                "activity.ignore_user_agents: {bad:?} must be 1 to 64 bytes without control characters (an empty pattern would match every request)"
            ));
        }
        // Bounds the automaton: a DFA of 100 patterns of 64 bytes stays within a few MiB.
        if self.ignore_user_agents.len() > 100 {
            return Err("activity.ignore_user_agents: at most 100 patterns".into());
        }
        if !self.ignore_user_agents.is_empty() {
            // The same automaton `activity::rules` builds: a failure is reported here, at load.
            aho_corasick::dfa::DFA::builder()
                .ascii_case_insensitive(true)
                .build(&self.ignore_user_agents)
                .map_err(|e| format!("activity.ignore_user_agents: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn error_of(toml: &str) -> String {
        Config::from_toml_str(toml)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn bad_values_are_refused_and_errors_name_the_key() {
        let long_pattern = format!("ignore_user_agents = [\"{}\"]", "x".repeat(65));
        let patterns: Vec<String> = (0..101).map(|i| format!("\"probe-{i}\"")).collect();
        let too_many = format!("ignore_user_agents = [{}]", patterns.join(", "));
        for (toml, key) in [
            ("ignore_ports = [0]", "activity.ignore_ports"),
            ("ignore_ports = [70000]", "activity.ignore_ports"),
            ("ignore_ports = \"8080\"", "activity.ignore_ports"),
            ("ignore_user_agents = [\"\"]", "activity.ignore_user_agents"),
            (&long_pattern, "activity.ignore_user_agents"),
            (&too_many, "activity.ignore_user_agents"),
            (
                "ignore_user_agents = [\"  \"]",
                "activity.ignore_user_agents",
            ),
            (
                "ignore_user_agents = [\"a\\nb\"]",
                "activity.ignore_user_agents",
            ),
            (
                "ignore_user_agents = \"UptimeRobot\"",
                "activity.ignore_user_agents",
            ),
            ("streams = \"always\"", "activity.streams"),
            ("stream = \"open\"", "stream"),
        ] {
            let error = error_of(&format!("[activity]\n{toml}\n"));
            assert!(error.contains(key), "{toml}: {error:?}");
        }
    }

    #[test]
    fn defaults_ignore_monitors_and_count_traffic() {
        let config = Config::from_toml_str("").unwrap().activity;
        assert_eq!(config.streams, super::Streams::Traffic);
        assert!(config.ignore_ports.is_empty());
        assert!(config.ignore_user_agents.iter().any(|p| p == "UptimeRobot"));
        let set = Config::from_toml_str(
            "[activity]\nignore_ports = [9090, 8081]\nignore_user_agents = []\nstreams = \"open\"\n",
        )
        .unwrap()
        .activity;
        assert_eq!(set.ignore_ports, [9090, 8081]);
        assert!(set.ignore_user_agents.is_empty());
        assert_eq!(set.streams, super::Streams::Open);
    }
}
