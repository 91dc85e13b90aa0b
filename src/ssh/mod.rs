//! The SSH gateway (`sandgate ssh-gateway`): `ssh -p 2222 <token>@gateway` reaches the sandbox the
//! access token opens.
//!
//! The username is the credential, so the gateway accepts the `none` method and decides on the
//! username alone. A refused login (invalid token, unknown or stopped sandbox, a limit, an
//! unreachable sandbox) is accepted and then disconnected at once with a reason: OpenSSH prints a
//! disconnect reason, while a plain auth failure would only say "Permission denied".
//!
//! Each accepted session opens one SSH connection to the sandbox's sshd (the runner's SSH endpoint,
//! or `address:ssh_port` in direct mode) with the gateway's key, and every channel the client opens
//! (`session`, `direct-tcpip`) is mirrored there; channel requests, data, EOF, exit status and
//! close are relayed both ways, and request replies are relayed in order.

mod gateway;
mod keys;
mod relay;
mod session;

use std::path::PathBuf;

pub use crate::config::SshConfig;
pub use gateway::{GatewayKeys, SshGateway};
pub use keys::keygen;

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
}
