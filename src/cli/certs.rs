//! `sandgate certs dev`: a local CA and a wildcard certificate for HTTPS previews during
//! development.
//!
//! The CA is made once per folder and kept: a browser or system store that trusts it keeps
//! working when a later run issues a new leaf. Leaves follow what strict clients demand (Apple's
//! 825-day limit, Authority and Subject Key Identifiers for `openssl verify -x509_strict` and
//! Python 3.13's default context).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A leaf is valid this long: under the 398 days browsers accept from public CAs, far under
/// Apple's 825-day limit for locally trusted ones.
const LEAF_DAYS: u64 = 397;
/// A dev CA is valid this long (CA certificates have no such limit).
const CA_DAYS: u64 = 10 * 365;
const CA_CERT_FILE: &str = "dev-ca.pem";
const CA_KEY_FILE: &str = "dev-ca.key";

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    BadFile { path: PathBuf, source: rcgen::Error },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "{} exists but {} does not: the CA in this folder is incomplete and cannot sign a new \
         certificate. Move {} away to create a new CA (browsers that trusted the old one must \
         then trust the new one)",
        present.display(), missing.display(), present.display()
    )]
    CaIncomplete { present: PathBuf, missing: PathBuf },
}

/// What a run wrote, and whether it made a new CA or kept the one in the folder.
#[derive(Debug)]
pub struct DevCerts {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub ca_name: String,
    pub ca_created: bool,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes the files and prints how to use them.
pub fn dev(dir: &Path, domain: &str) -> Result<(), String> {
    let dir = std::path::absolute(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let certs = write_dev_certs(&dir, domain).map_err(|e| e.to_string())?;
    print!("{}", usage(&certs, domain));
    Ok(())
}

fn usage(certs: &DevCerts, domain: &str) -> String {
    let ca = certs.ca_cert.display();
    let ca_line = if certs.ca_created {
        format!(
            "wrote a new CA \"{}\": {ca} (its key {}, mode 0600: keep it private)",
            certs.ca_name,
            certs.ca_key.display()
        )
    } else {
        format!(
            "kept the CA \"{}\" in {ca}: the new certificate is signed by it",
            certs.ca_name
        )
    };
    // curl resolves `*.localhost` to loopback itself; other names need telling.
    let resolve = if domain == "localhost" || domain.ends_with(".localhost") {
        String::new()
    } else {
        format!("--resolve {domain}:8443:127.0.0.1 ")
    };
    let (cert, key) = (certs.cert.display(), certs.key.display());
    [
        ca_line,
        format!("wrote {cert} and {key} (for {domain} and *.{domain}, valid {LEAF_DAYS} days)"),
        "serve HTTPS with, in your config (merge into an existing [tls] table rather than adding a second):".into(),
        "  [tls]".into(),
        "  enabled = true".into(),
        "  listen = \"127.0.0.1:8443\"".into(),
        "  [[tls.certs]]".into(),
        format!("  cert = \"{cert}\""),
        format!("  key = \"{key}\""),
        "check it (the proxy's own health page):".into(),
        format!("  curl --cacert {ca} {resolve}https://{domain}:8443/health"),
        format!("trust the CA system-wide (Debian): cp {ca} /usr/local/share/ca-certificates/sandgate-dev.crt && update-ca-certificates\n"),
    ]
    .join("\n")
}

/// Writes a local CA (unless `dir` has one) and a certificate for `domain` and `*.domain` signed
/// by it into `dir`. Returns the paths written (CA cert, cert, key).
pub fn generate_dev_certs(dir: &Path, domain: &str) -> Result<[PathBuf; 3], CertsError> {
    let certs = write_dev_certs(dir, domain)?;
    Ok([certs.ca_cert, certs.cert, certs.key])
}

pub fn write_dev_certs(dir: &Path, domain: &str) -> Result<DevCerts, CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key = dir.join(CA_KEY_FILE);
    let (issuer, ca_name, ca_created) = match (ca_cert.exists(), ca_key.exists()) {
        (true, true) => {
            let (issuer, name) = load_ca(&ca_cert, &ca_key)?;
            (issuer, name, false)
        }
        (true, false) => {
            return Err(CertsError::CaIncomplete {
                present: ca_cert,
                missing: ca_key,
            })
        }
        // A key alone is never overwritten either: it may be the one thing left of a CA.
        (false, true) => {
            return Err(CertsError::CaIncomplete {
                present: ca_key,
                missing: ca_cert,
            })
        }
        (false, false) => {
            let (issuer, name) = create_ca(&ca_cert, &ca_key, domain)?;
            (issuer, name, true)
        }
    };
    let cert = dir.join(format!("{domain}.pem"));
    let key = dir.join(format!("{domain}.key"));
    let (leaf, leaf_key) = leaf(domain, &issuer)?;
    write_file(&key, leaf_key.serialize_pem().as_bytes(), PRIVATE)?;
    write_file(&cert, leaf.pem().as_bytes(), PUBLIC)?;
    Ok(DevCerts {
        ca_cert,
        ca_key,
        ca_name,
        ca_created,
        cert,
        key,
    })
}

fn create_ca(
    cert_path: &Path,
    key_path: &Path,
    domain: &str,
) -> Result<(Issuer<'static, KeyPair>, String), CertsError> {
    // Two dev CAs with one name make verification depend on which the client tries first.
    let name = format!("sandgate dev CA {domain} {:08x}", rand::random::<u32>());
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, &name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    // The key first: a CA certificate without its key could never sign again.
    write_file(key_path, key.serialize_pem().as_bytes(), PRIVATE)?;
    write_file(cert_path, cert.pem().as_bytes(), PUBLIC)?;
    Ok((Issuer::new(params, key), name))
}

fn load_ca(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Issuer<'static, KeyPair>, String), CertsError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| CertsError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let bad = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertsError::BadFile { path, source }
    };
    let key = KeyPair::from_pem(&read(key_path)?).map_err(bad(key_path))?;
    let cert_pem = read(cert_path)?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(bad(cert_path))?;
    let name = ca_common_name(&cert_pem).unwrap_or_else(|| "sandgate dev CA".into());
    Ok((issuer, name))
}

fn ca_common_name(pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

fn leaf(
    domain: &str,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(rcgen::Certificate, KeyPair), CertsError> {
    let mut params = CertificateParams::new(vec![domain.to_string(), format!("*.{domain}")])?;
    params.distinguished_name.push(DnType::CommonName, domain);
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(&mut params, LEAF_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

/// From an hour ago (clocks differ a little) for `days`.
fn set_validity(params: &mut CertificateParams, days: u64) {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + Duration::from_secs(days * 86_400);
}

const PRIVATE: u32 = 0o600;
const PUBLIC: u32 = 0o644;

/// Writes `path` through a temporary file created with `mode` (never widened then narrowed)
/// and renamed over it.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertsError::Io { path, source }
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(io(&tmp))?;
    file.write_all(contents).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
