//! `sandgate certs dev`: a local CA and a wildcard certificate for HTTPS previews during
//! development.

use std::path::{Path, PathBuf};

/// Writes the files and prints how to use them.
pub fn dev(dir: &Path, domain: &str) -> Result<(), String> {
    let [ca, cert, key] = generate_dev_certs(dir, domain)?;
    println!(
        "wrote {}, {} and {}",
        ca.display(),
        cert.display(),
        key.display()
    );
    println!("serve HTTPS with, in your config:");
    println!("  [tls]\n  enabled = true\n  listen = \"127.0.0.1:8443\"");
    println!(
        "  [[tls.certs]]\n  cert = \"{}\"\n  key = \"{}\"",
        cert.display(),
        key.display()
    );
    println!(
        "trust the CA: curl --cacert {} https://3000-demo.{domain}:8443/",
        ca.display()
    );
    println!("  or system-wide (Debian): cp {} /usr/local/share/ca-certificates/sandgate-dev.crt && update-ca-certificates", ca.display());
    Ok(())
}

/// Writes a local CA and a certificate for `domain` and `*.domain` signed by it into `dir`.
/// Returns the paths written (CA cert, cert, key).
pub fn generate_dev_certs(dir: &Path, domain: &str) -> Result<[PathBuf; 3], String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| e.to_string();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("sandgate dev CA for {domain}"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params =
        CertificateParams::new(vec![domain.to_string(), format!("*.{domain}")]).map_err(err)?;
    params.distinguished_name.push(DnType::CommonName, domain);
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;

    let paths = [
        dir.join("dev-ca.pem"),
        dir.join(format!("{domain}.pem")),
        dir.join(format!("{domain}.key")),
    ];
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&paths[0], ca_cert.pem())?;
    write(&paths[1], cert.pem())?;
    write(&paths[2], key.serialize_pem())?;
    Ok(paths)
}
