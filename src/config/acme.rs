//! `[domains]` (custom domains: verification and routing) and `[acme]` (certificates obtained
//! on demand for them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DomainsConfig {
    /// Route hosts the registry holds as custom domains (`sandgate domain add`).
    pub enabled: bool,
    /// The DNS server asked for `_sandgate-challenge.<host>` TXT records: `system` (the
    /// machine's resolv.conf) or an address (`127.0.0.1:8053`).
    pub dns_resolver: String,
    /// How long a domain lookup (found or not) is kept before the registry is asked again.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// A pending domain's TXT record is looked up at most this often.
    #[serde(with = "humantime_serde")]
    pub verify_interval: Duration,
    /// Domain lookups kept at once (found and not found); past it the oldest half goes.
    pub cache_entries: usize,
}

impl Default for DomainsConfig {
    fn default() -> Self {
        DomainsConfig {
            enabled: false,
            dns_resolver: "system".into(),
            cache_ttl: Duration::from_secs(10),
            verify_interval: Duration::from_secs(10),
            cache_entries: 100_000,
        }
    }
}

impl DomainsConfig {
    /// `None`: the system's resolvers.
    pub fn resolver_address(&self) -> Result<Option<SocketAddr>, String> {
        match self.dns_resolver.as_str() {
            "system" => Ok(None),
            text => text.parse().map(Some).map_err(|_| {
                format!("domains.dns_resolver must be system or an address like 127.0.0.1:53, not {text:?}")
            }),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.resolver_address()?;
        if self.cache_entries == 0 {
            return Err("domains.cache_entries must be at least 1".into());
        }
        Ok(())
    }
}

/// `acme.challenge`: how the CA checks we hold the name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChallengeKind {
    /// Answered by the HTTPS listener (`tls.listen`, which must be reachable on port 443).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// Answered by the plain listener (`server.listen`, port 80) under
    /// `/.well-known/acme-challenge/`.
    #[serde(rename = "http-01")]
    Http01,
}

/// `acme.storage`: where certificates and the account key are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertStorageKind {
    /// Files under `acme.dir` (one process, or replicas sharing the directory).
    File,
    /// `[redis]`, encrypted with `acme.encryption_key_file`; one replica orders, all serve.
    Redis,
}

/// `[acme.dns01]`: wildcard certificates (the preview domains') by DNS-01, the TXT record
/// published by an operator's hook command.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns01Config {
    /// Wildcard names to obtain and renew, e.g. `*.preview.example.com`.
    pub names: Vec<String>,
    /// Run as `<hook> set <record> <value>` to publish the TXT record `<record>` (e.g.
    /// `_acme-challenge.preview.example.com`) and as `<hook> clear <record> <value>` to remove
    /// it. It should return once the record is served (or see `propagation_wait`).
    pub hook: Option<PathBuf>,
    /// A hook run still going after this is killed, and the order fails.
    #[serde(with = "humantime_serde")]
    pub hook_timeout: Duration,
    /// Waited after `set` before the CA is told to look (DNS servers still catching up).
    #[serde(with = "humantime_serde")]
    pub propagation_wait: Duration,
}

impl Default for Dns01Config {
    fn default() -> Self {
        Dns01Config {
            names: Vec::new(),
            hook: None,
            hook_timeout: Duration::from_secs(60),
            propagation_wait: Duration::ZERO,
        }
    }
}

impl Dns01Config {
    /// The configured wildcards' base domains (`*.a.example.com` → `a.example.com`), lower
    /// case. Call after `validate`: names without `*.` are skipped.
    pub fn wildcard_bases(&self) -> Vec<String> {
        self.names
            .iter()
            .filter_map(|name| name.strip_prefix("*."))
            .map(|base| base.trim_end_matches('.').to_ascii_lowercase())
            .collect()
    }

    fn validate(&self) -> Result<(), String> {
        for name in &self.names {
            let base = name.strip_prefix("*.").unwrap_or("");
            if !is_dns_name(base.trim_end_matches('.')) {
                return Err(format!(
                    "acme.dns01.names: {name:?} must be a wildcard name like \"*.preview.example.com\""
                ));
            }
        }
        if !self.names.is_empty() && self.hook.is_none() {
            return Err("acme.dns01.names needs acme.dns01.hook (the command that publishes the TXT record)".into());
        }
        if self.hook_timeout.is_zero() {
            return Err("acme.dns01.hook_timeout must be above zero".into());
        }
        Ok(())
    }
}

/// Two or more labels of 1–63 `[A-Za-z0-9-]` (no label starting or ending in `-`), 253
/// characters at most.
fn is_dns_name(name: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    name.len() <= 253 && name.split('.').count() >= 2 && name.split('.').all(label_ok)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// Obtain certificates on demand for verified custom domains (needs `domains.enabled`) and
    /// the wildcards of `acme.dns01` (needs `tls.enabled`).
    pub enabled: bool,
    /// The ACME directory.
    pub directory_url: String,
    /// An extra root certificate (PEM) trusted for the directory's HTTPS (a private CA, pebble).
    pub ca_root: Option<PathBuf>,
    /// Contact URLs for the account, e.g. `mailto:ops@example.com`.
    pub contact: Vec<String>,
    pub challenge: ChallengeKind,
    pub storage: CertStorageKind,
    /// `file` storage: the directory (created 0700).
    pub dir: PathBuf,
    /// `redis` storage: a file holding 32 random bytes as 64 hex digits (AES-256-GCM).
    pub encryption_key_file: Option<PathBuf>,
    /// A handshake for a name without a certificate waits this long for the order, then fails.
    #[serde(with = "humantime_serde")]
    pub handshake_wait: Duration,
    /// How often certificates are checked for renewal (due at 2/3 of their lifetime) and
    /// re-read from shared storage.
    #[serde(with = "humantime_serde")]
    pub renew_check_interval: Duration,
    /// After a failed order for a name, the next waits this long, doubling up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Orders started per hour by this process, for all names together.
    pub orders_per_hour: u32,
    /// An order (challenge, finalize, download) gives up after this long.
    #[serde(with = "humantime_serde")]
    pub order_timeout: Duration,
    pub dns01: Dns01Config,
}

pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

impl Default for AcmeConfig {
    fn default() -> Self {
        AcmeConfig {
            enabled: false,
            directory_url: LETS_ENCRYPT.into(),
            ca_root: None,
            contact: Vec::new(),
            challenge: ChallengeKind::TlsAlpn01,
            storage: CertStorageKind::File,
            dir: PathBuf::from("/var/lib/sandgate/acme"),
            encryption_key_file: None,
            handshake_wait: Duration::from_secs(20),
            renew_check_interval: Duration::from_secs(3600),
            retry_min: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            orders_per_hour: 60,
            order_timeout: Duration::from_secs(90),
            dns01: Dns01Config::default(),
        }
    }
}

impl AcmeConfig {
    pub fn validate(&self, domains: &DomainsConfig, tls_enabled: bool) -> Result<(), String> {
        if !self.enabled {
            if !self.dns01.names.is_empty() {
                return Err("acme.dns01.names needs acme.enabled = true".into());
            }
            return Ok(());
        }
        self.dns01.validate()?;
        let hook_time = self.dns01.hook_timeout + self.dns01.propagation_wait;
        if !self.dns01.names.is_empty() && hook_time >= self.order_timeout {
            return Err(format!(
                "acme.dns01.hook_timeout plus acme.dns01.propagation_wait ({hook_time:?}) must be below acme.order_timeout ({:?}): an order includes both",
                self.order_timeout
            ));
        }
        if !domains.enabled && self.dns01.names.is_empty() {
            return Err("acme.enabled needs domains.enabled or acme.dns01.names: certificates are only ordered for verified custom domains and the configured wildcards".into());
        }
        if !tls_enabled {
            return Err(
                "acme.enabled needs tls.enabled (the HTTPS listener serves the certificates)"
                    .into(),
            );
        }
        if !self.directory_url.starts_with("https://") {
            return Err(format!(
                "acme.directory_url must be an https:// URL, not {:?}",
                self.directory_url
            ));
        }
        if self.storage == CertStorageKind::Redis && self.encryption_key_file.is_none() {
            return Err("acme.storage = \"redis\" needs acme.encryption_key_file (certificates' keys are encrypted at rest)".into());
        }
        if self.orders_per_hour == 0 {
            return Err("acme.orders_per_hour must be at least 1".into());
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return Err("acme.retry_min must be above zero and at most acme.retry_max".into());
        }
        if self.handshake_wait.is_zero() || self.renew_check_interval.is_zero() {
            return Err(
                "acme.handshake_wait and acme.renew_check_interval must be above zero".into(),
            );
        }
        Ok(())
    }
}
