//! `[ssh]`: the gateway's section of the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use russh::keys::PublicKey;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SshConfig {
    /// Address of the SSH listener.
    #[serde(with = "super::listen")]
    pub listen: SocketAddr,
    /// The gateway's host key (OpenSSH format; `sandgate ssh-gateway keygen --out PATH`).
    pub host_key: PathBuf,
    /// The gateway's private key for the sandboxes' (or runners') sshd.
    pub upstream_key: PathBuf,
    /// User the gateway logs in as upstream; `{sandbox}` is replaced by the sandbox id (Daytona
    /// runners' SSH endpoints expect the sandbox id).
    pub upstream_user: String,
    /// Pin the upstream host key (`ssh-ed25519 AAAA...`); empty: any host key is accepted (the
    /// upstream is reached over the platform's internal network).
    pub upstream_host_key: String,
    /// Time to connect to and log in to the upstream sshd.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time a client gets from connecting to being logged in.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// A session with nothing received from the client for this long is closed (0s: never).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open sessions one access token may hold (0: no limit).
    pub max_sessions_per_token: usize,
    /// Open sessions in all (0: no limit).
    pub max_sessions: usize,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 2222)),
            host_key: "ssh_host_ed25519_key".into(),
            upstream_key: "ssh_upstream_ed25519_key".into(),
            upstream_user: "daytona".into(),
            upstream_host_key: String::new(),
            connect_timeout: Duration::from_secs(5),
            auth_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            max_sessions_per_token: 32,
            max_sessions: 10_000,
        }
    }
}

impl SshConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.upstream_user.is_empty() {
            return Err("ssh.upstream_user must not be empty".into());
        }
        if !self.upstream_host_key.is_empty() {
            PublicKey::from_openssh(&self.upstream_host_key)
                .map_err(|e| format!("ssh.upstream_host_key is not an OpenSSH public key: {e}"))?;
        }
        if self.auth_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err("ssh.auth_timeout and ssh.connect_timeout must be positive".into());
        }
        Ok(())
    }
}
