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
}

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
        }
    }
}
