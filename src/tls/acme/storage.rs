//! Where certificates, the account and the order locks live: files under `acme.dir` for one
//! process, or Redis for replicas (values sealed with AES-256-GCM, the key name as associated
//! data so a value copied under another host's key does not open).
//!
//! A certificate is stored as one PEM text, private key first then the chain, so a reader never
//! sees a chain with another order's key.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::AcmeError;
use crate::config::{AcmeConfig, CertStorageKind};
use crate::registry::redis::RedisHandle;

/// A certificate ready for handshakes, with its validity.
#[derive(Debug)]
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Issued {
    /// Parses a stored PEM (key, then chain) and checks that the leaf names `name`.
    pub fn parse(pem: &[u8], name: &str) -> Result<Issued, String> {
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("private key: {e}"))?;
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("certificate chain: {e}"))?;
        let leaf = chain.first().ok_or("no certificate in the PEM")?;
        let (not_before, not_after) = validity_naming(leaf, name)?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| format!("the key does not match the certificate: {e}"))?;
        Ok(Issued {
            key: Arc::new(key),
            not_before,
            not_after,
        })
    }

    /// Due for renewal: 2/3 of its lifetime has passed.
    pub fn renewal_due(&self, now: SystemTime) -> bool {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        now >= self.not_before + lifetime * 2 / 3
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

fn validity_naming(
    leaf: &CertificateDer<'_>,
    name: &str,
) -> Result<(SystemTime, SystemTime), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| format!("bad certificate: {e}"))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
        .ok_or("the certificate has no subjectAltName")?;
    let covers = names
        .value
        .general_names
        .iter()
        .any(|n| matches!(n, GeneralName::DNSName(dns) if dns.eq_ignore_ascii_case(name)));
    if !covers {
        return Err(format!("the certificate does not name {name}"));
    }
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = u64::try_from(t.timestamp()).unwrap_or(0);
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    let validity = cert.validity();
    Ok((time(validity.not_before), time(validity.not_after)))
}

/// AES-256-GCM with a random nonce per value: `nonce ‖ ciphertext ‖ tag`.
pub struct Sealer {
    key: LessSafeKey,
}

impl Sealer {
    /// Reads 32 bytes written as 64 hex digits (surrounding whitespace ignored).
    pub fn from_key_file(path: &Path) -> Result<Sealer, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("acme.encryption_key_file {}: {e}", path.display()))?;
        let bad = || {
            format!(
                "acme.encryption_key_file {} must hold 32 random bytes as 64 hex digits (e.g. from `openssl rand -hex 32`)",
                path.display()
            )
        };
        let bytes = hex::decode(text.trim()).map_err(|_| bad())?;
        Sealer::from_bytes(&bytes).ok_or_else(bad)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Sealer> {
        if bytes.len() != 32 {
            return None;
        }
        let key = UnboundKey::new(&AES_256_GCM, bytes).ok()?;
        Some(Sealer {
            key: LessSafeKey::new(key),
        })
    }

    pub fn seal(&self, aad: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no random nonce")?;
        let mut sealed = Vec::with_capacity(NONCE_LEN + plain.len() + 16);
        sealed.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut body,
            )
            .map_err(|_| "encryption failed")?;
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
        let undecryptable = || {
            format!("{aad} does not decrypt (another acme.encryption_key_file, or not written for this key)")
        };
        if sealed.len() < NONCE_LEN {
            return Err(undecryptable());
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| undecryptable())?;
        let mut body = body.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body)
            .map_err(|_| undecryptable())?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

/// Proof of holding an order lock, for releasing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockToken(u64);

pub enum Storage {
    File(FileStorage),
    Redis(RedisStorage),
}

impl Storage {
    pub fn new(config: &AcmeConfig, redis: Option<Arc<RedisHandle>>) -> Result<Storage, String> {
        match config.storage {
            CertStorageKind::File => Ok(Storage::File(FileStorage {
                dir: config.dir.clone(),
            })),
            CertStorageKind::Redis => {
                let redis = redis.ok_or(
                    "acme.storage = \"redis\" needs a [redis] section (the registry's or the activity sink's)",
                )?;
                let key_file = config
                    .encryption_key_file
                    .as_deref()
                    .ok_or("acme.storage = \"redis\" needs acme.encryption_key_file")?;
                Ok(Storage::Redis(RedisStorage::new(
                    redis,
                    Sealer::from_key_file(key_file)?,
                )))
            }
        }
    }

    /// The stored PEM (key, then chain) for `host`.
    pub async fn load_cert(&self, host: &str) -> Result<Option<Vec<u8>>, AcmeError> {
        match self {
            Storage::File(files) => files.read(files.cert_path(host)?).await,
            Storage::Redis(redis) => redis.get(&redis.cert_key(host)).await,
        }
    }

    pub async fn store_cert(&self, host: &str, pem: &[u8]) -> Result<(), AcmeError> {
        match self {
            Storage::File(files) => files.write(files.cert_path(host)?, pem.to_vec()).await,
            Storage::Redis(redis) => redis.set(&redis.cert_key(host), pem).await,
        }
    }

    /// The account credentials (JSON) for the directory whose URL hashes to `id`.
    pub async fn load_account(&self, id: &str) -> Result<Option<Vec<u8>>, AcmeError> {
        match self {
            Storage::File(files) => files.read(files.account_path(id)).await,
            Storage::Redis(redis) => redis.get(&redis.account_key(id)).await,
        }
    }

    /// Stores the account unless one is stored already (another replica created it first);
    /// `false` then.
    pub async fn store_account_once(&self, id: &str, json: &[u8]) -> Result<bool, AcmeError> {
        match self {
            Storage::File(files) => {
                files
                    .create_once(files.account_path(id), json.to_vec())
                    .await
            }
            Storage::Redis(redis) => redis.set_once(&redis.account_key(id), json).await,
        }
    }

    /// Takes the order lock for `host` for `ttl`; `None` when another process holds it.
    pub async fn lock(&self, host: &str, ttl: Duration) -> Result<Option<LockToken>, AcmeError> {
        let token = LockToken(rand::random::<u64>() | 1);
        match self {
            Storage::File(files) => files.lock(files.lock_path(host)?, token, ttl).await,
            Storage::Redis(redis) => redis.lock(&redis.lock_key(host), token, ttl).await,
        }
    }

    /// Releases our lock (a lock that expired and was taken by another stays theirs).
    pub async fn unlock(&self, host: &str, token: LockToken) {
        let released = match self {
            Storage::File(files) => match files.lock_path(host) {
                Ok(path) => files.unlock(path, token).await,
                Err(e) => Err(e),
            },
            Storage::Redis(redis) => redis.unlock(&redis.lock_key(host), token).await,
        };
        if let Err(e) = released {
            tracing::debug!(host, error = %e, "ACME order lock not released; it expires");
        }
    }
}

/// Files under `acme.dir` (created 0700; files 0600, written whole then renamed).
pub struct FileStorage {
    dir: PathBuf,
}

impl FileStorage {
    fn cert_path(&self, host: &str) -> Result<PathBuf, AcmeError> {
        Ok(self.dir.join(format!("{}.pem", file_stem(host)?)))
    }

    fn lock_path(&self, host: &str) -> Result<PathBuf, AcmeError> {
        Ok(self.dir.join(format!("{}.lock", file_stem(host)?)))
    }

    fn account_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("account-{id}.json"))
    }

    async fn read(&self, path: PathBuf) -> Result<Option<Vec<u8>>, AcmeError> {
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        })
        .await
    }

    async fn write(&self, path: PathBuf, bytes: Vec<u8>) -> Result<(), AcmeError> {
        let dir = self.dir.clone();
        blocking(move || {
            let temp = write_temp(&dir, &path, &bytes)?;
            std::fs::rename(&temp, &path).map_err(|e| format!("{}: {e}", path.display()))
        })
        .await
    }

    async fn create_once(&self, path: PathBuf, bytes: Vec<u8>) -> Result<bool, AcmeError> {
        let dir = self.dir.clone();
        blocking(move || {
            let temp = write_temp(&dir, &path, &bytes)?;
            // A hard link never replaces an existing file: the first writer wins.
            let linked = std::fs::hard_link(&temp, &path);
            let _ = std::fs::remove_file(&temp);
            match linked {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(format!("{}: {e}", path.display())),
            }
        })
        .await
    }

    async fn lock(
        &self,
        path: PathBuf,
        token: LockToken,
        ttl: Duration,
    ) -> Result<Option<LockToken>, AcmeError> {
        let dir = self.dir.clone();
        blocking(move || {
            make_dir(&dir)?;
            for _ in 0..2 {
                match create_new(&path, token.0.to_string().as_bytes()) {
                    Ok(()) => return Ok(Some(token)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if !is_stale(&path, ttl) {
                            return Ok(None);
                        }
                        // Left by a process that died mid-order.
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                }
            }
            Ok(None)
        })
        .await
    }

    async fn unlock(&self, path: PathBuf, token: LockToken) -> Result<(), AcmeError> {
        blocking(move || {
            let held = std::fs::read_to_string(&path).unwrap_or_default();
            if held.trim() == token.0.to_string() {
                std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Ok(())
        })
        .await
    }
}

/// A wildcard `*.<base>` is kept as `_wildcard.<base>` (no host name starts with `_`).
fn file_stem(host: &str) -> Result<std::borrow::Cow<'_, str>, AcmeError> {
    match host.strip_prefix("*.") {
        Some(base) => Ok(format!("_wildcard.{}", file_safe(base)?).into()),
        None => file_safe(host).map(Into::into),
    }
}

/// Host names come from the registry's validated records; still, nothing else may name a file.
fn file_safe(host: &str) -> Result<&str, AcmeError> {
    let safe = !host.is_empty()
        && !host.starts_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if safe {
        Ok(host)
    } else {
        Err(AcmeError::Storage(format!("{host:?} is not a host name")))
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, AcmeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AcmeError::Storage(e.to_string()))?
        .map_err(AcmeError::Storage)
}

fn make_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("acme.dir {}: {e}", dir.display()))
}

fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn write_temp(dir: &Path, path: &Path, bytes: &[u8]) -> Result<PathBuf, String> {
    make_dir(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    create_new(&temp, bytes).map_err(|e| format!("{}: {e}", temp.display()))?;
    Ok(temp)
}

fn is_stale(path: &Path, ttl: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|modified| modified.elapsed().ok())
        .is_some_and(|age| age > ttl)
}

/// Deletes the lock only while it still holds our token (it may have expired and been taken).
const RELEASE: &str =
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// `<redis.key_prefix>acme:cert:<host>`, `…acme:account:<hash>`, `…acme:lock:<host>`.
pub struct RedisStorage {
    redis: Arc<RedisHandle>,
    prefix: String,
    sealer: Sealer,
}

impl RedisStorage {
    pub fn new(redis: Arc<RedisHandle>, sealer: Sealer) -> RedisStorage {
        let prefix = format!("{}acme:", redis.config().key_prefix);
        RedisStorage {
            redis,
            prefix,
            sealer,
        }
    }

    fn cert_key(&self, host: &str) -> String {
        format!("{}cert:{host}", self.prefix)
    }

    fn account_key(&self, id: &str) -> String {
        format!("{}account:{id}", self.prefix)
    }

    fn lock_key(&self, host: &str) -> String {
        format!("{}lock:{host}", self.prefix)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, AcmeError> {
        let sealed: Option<Vec<u8>> = self
            .redis
            .query(redis::cmd("GET").arg(key))
            .await
            .map_err(|e| AcmeError::Storage(e.to_string()))?;
        sealed
            .map(|sealed| self.sealer.open(key, &sealed))
            .transpose()
            .map_err(AcmeError::Storage)
    }

    async fn set(&self, key: &str, plain: &[u8]) -> Result<(), AcmeError> {
        let sealed = self.sealer.seal(key, plain).map_err(AcmeError::Storage)?;
        self.redis
            .query::<()>(redis::cmd("SET").arg(key).arg(sealed))
            .await
            .map_err(|e| AcmeError::Storage(e.to_string()))
    }

    async fn set_once(&self, key: &str, plain: &[u8]) -> Result<bool, AcmeError> {
        let sealed = self.sealer.seal(key, plain).map_err(AcmeError::Storage)?;
        let set: Option<String> = self
            .redis
            .query(redis::cmd("SET").arg(key).arg(sealed).arg("NX"))
            .await
            .map_err(|e| AcmeError::Storage(e.to_string()))?;
        Ok(set.is_some())
    }

    async fn lock(
        &self,
        key: &str,
        token: LockToken,
        ttl: Duration,
    ) -> Result<Option<LockToken>, AcmeError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut set = redis::cmd("SET");
        set.arg(key).arg(token.0).arg("NX").arg("PX").arg(ttl_ms);
        let taken: Option<String> = self
            .redis
            .query(&set)
            .await
            .map_err(|e| AcmeError::Storage(e.to_string()))?;
        Ok(taken.map(|_| token))
    }

    async fn unlock(&self, key: &str, token: LockToken) -> Result<(), AcmeError> {
        let mut eval = redis::cmd("EVAL");
        eval.arg(RELEASE).arg(1).arg(key).arg(token.0);
        self.redis
            .query::<i64>(&eval)
            .await
            .map(|_| ())
            .map_err(|e| AcmeError::Storage(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::from_bytes(&[42; 32]).unwrap()
    }

    #[test]
    fn sealed_values_open_only_under_their_own_key_name() {
        let sealer = sealer();
        let plain = b"-----BEGIN PRIVATE KEY-----\nsecret";
        let sealed = sealer.seal("p:acme:cert:a.example.com", plain).unwrap();
        assert!(
            !sealed.windows(5).any(|w| w == b"BEGIN"),
            "no plaintext in the value"
        );
        assert_eq!(
            sealer.open("p:acme:cert:a.example.com", &sealed).unwrap(),
            plain
        );
        // (key name, value) → opens?
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let rows: [(&str, &[u8], bool); 5] = [
            ("p:acme:cert:a.example.com", &sealed, true),
            ("p:acme:cert:b.example.com", &sealed, false),
            ("p:acme:cert:a.example.com", &flipped, false),
            ("p:acme:cert:a.example.com", &sealed[..5], false),
            ("p:acme:cert:a.example.com", b"", false),
        ];
        for (key, value, opens) in rows {
            assert_eq!(sealer.open(key, value).is_ok(), opens, "{key} {value:?}");
        }
        let other = Sealer::from_bytes(&[7; 32]).unwrap();
        assert!(other.open("p:acme:cert:a.example.com", &sealed).is_err());
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let sealer = sealer();
        assert_ne!(
            sealer.seal("k", b"same").unwrap(),
            sealer.seal("k", b"same").unwrap()
        );
    }

    #[test]
    fn key_files_need_64_hex_digits() {
        let dir = tempfile::tempdir().unwrap();
        // (file content, accepted)
        let rows = [
            (format!("{}\n", "ab".repeat(32)), true),
            ("ab".repeat(32), true),
            ("ab".repeat(31), false),
            ("zz".repeat(32), false),
            (String::new(), false),
        ];
        for (i, (content, accepted)) in rows.iter().enumerate() {
            let path = dir.path().join(format!("key{i}"));
            std::fs::write(&path, content).unwrap();
            let result = Sealer::from_key_file(&path);
            assert_eq!(result.is_ok(), *accepted, "{content:?}");
            if let Err(e) = result {
                assert!(e.contains("64 hex digits"), "{e}");
            }
        }
        let missing = Sealer::from_key_file(&dir.path().join("missing"));
        assert!(missing.err().unwrap().contains("missing"));
    }

    #[test]
    fn only_host_names_become_file_names() {
        // (host, file stem; None: refused)
        let rows = [
            ("a.example.com", Some("a.example.com")),
            ("x-1.example.com", Some("x-1.example.com")),
            (
                "*.preview.example.com",
                Some("_wildcard.preview.example.com"),
            ),
            ("*./etc/passwd", None),
            ("*.*.example.com", None),
            ("a.*.example.com", None),
            ("../etc/passwd", None),
            ("a/b.example.com", None),
            (".hidden", None),
            ("UPPER.example.com", None),
            ("", None),
        ];
        for (host, stem) in rows {
            assert_eq!(file_stem(host).ok().as_deref(), stem, "{host}");
        }
    }

    #[tokio::test]
    async fn file_storage_round_trips_with_private_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Storage::File(FileStorage {
            dir: dir.path().join("acme"),
        });
        assert_eq!(store.load_cert("a.example.com").await.unwrap(), None);
        store.store_cert("a.example.com", b"pem").await.unwrap();
        store.store_cert("a.example.com", b"pem2").await.unwrap();
        assert_eq!(
            store.load_cert("a.example.com").await.unwrap().as_deref(),
            Some(&b"pem2"[..])
        );
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dir.path().join("acme")), 0o700);
        assert_eq!(mode(dir.path().join("acme/a.example.com.pem")), 0o600);
        assert!(store.store_account_once("id", b"first").await.unwrap());
        assert!(!store.store_account_once("id", b"second").await.unwrap());
        assert_eq!(
            store.load_account("id").await.unwrap().as_deref(),
            Some(&b"first"[..])
        );
        let files: Vec<_> = std::fs::read_dir(dir.path().join("acme"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!files.iter().any(|f| f.ends_with(".tmp")), "{files:?}");
    }

    #[tokio::test]
    async fn file_lock_is_exclusive_until_released_or_stale() {
        let dir = tempfile::tempdir().unwrap();
        let store = Storage::File(FileStorage {
            dir: dir.path().to_path_buf(),
        });
        let ttl = Duration::from_secs(60);
        let first = store.lock("a.example.com", ttl).await.unwrap();
        assert!(first.is_some());
        assert_eq!(store.lock("a.example.com", ttl).await.unwrap(), None);
        assert!(store.lock("b.example.com", ttl).await.unwrap().is_some());
        store.unlock("a.example.com", first.unwrap()).await;
        let again = store.lock("a.example.com", ttl).await.unwrap();
        assert!(again.is_some());
        // A lock older than its ttl was left by a dead process: taken over.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let taken_over = store.lock("a.example.com", Duration::ZERO).await.unwrap();
        assert!(taken_over.is_some());
        // The first holder's late release does not free the new holder's lock.
        store.unlock("a.example.com", again.unwrap()).await;
        assert_eq!(store.lock("a.example.com", ttl).await.unwrap(), None);
    }
}
