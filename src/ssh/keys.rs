//! The gateway's keys: `sandgate ssh-gateway keygen` and loading them at start.

use std::path::{Path, PathBuf};

use russh::keys::{PrivateKey, PublicKey};

use super::SshError;

/// Writes a new Ed25519 private key to `out` (mode 0600) and its public key to `out.pub`.
pub fn keygen(out: &Path) -> Result<PublicKey, SshError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key_error = |reason: String| SshError::Key {
        path: out.to_path_buf(),
        reason,
    };
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    for path in [out, pub_path.as_path()] {
        if path.exists() {
            return Err(SshError::Exists {
                path: path.to_path_buf(),
            });
        }
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| key_error(format!("no randomness: {e}")))?;
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    seed.fill(0);
    let key = PrivateKey::from(pair);
    let private = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| key_error(e.to_string()))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| key_error(e.to_string()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| key_error(e.to_string()))?;
    file.write_all(private.as_bytes())
        .map_err(|e| key_error(e.to_string()))?;
    std::fs::write(&pub_path, format!("{public}\n")).map_err(|e| key_error(e.to_string()))?;
    Ok(key.public_key().clone())
}

pub(super) fn load_key(path: &Path, what: &str) -> Result<PrivateKey, SshError> {
    if !path.exists() {
        return Err(SshError::Key {
            path: path.to_path_buf(),
            reason: format!(
                "the {what} does not exist; create it with `sandgate ssh-gateway keygen --out {}`",
                path.display()
            ),
        });
    }
    russh::keys::load_secret_key(path, None).map_err(|e| SshError::Key {
        path: path.to_path_buf(),
        reason: format!("cannot load the {what}: {e}"),
    })
}
