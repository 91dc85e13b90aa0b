//! `sandgate certs dev`: private keys 0600, the CA kept across runs, leaves strict clients accept
//! (`openssl verify -x509_strict`, Python's default context with strict verification, against a
//! real `sandgate serve`), and the printed check command working as printed.
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{Proxy, BIN};

const DOMAIN: &str = "preview.localhost";

fn certs_dev(dir: &Path) -> Output {
    Command::new(BIN)
        .args(["certs", "dev", "--domain", DOMAIN, "--dir"])
        .arg(dir)
        .output()
        .expect("run certs dev")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Files {
    ca: PathBuf,
    ca_key: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn files(dir: &Path) -> Files {
    Files {
        ca: dir.join("dev-ca.pem"),
        ca_key: dir.join("dev-ca.key"),
        cert: dir.join(format!("{DOMAIN}.pem")),
        key: dir.join(format!("{DOMAIN}.key")),
    }
}

fn openssl_verify(ca: &Path, cert: &Path) -> Output {
    Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(ca)
        .arg(cert)
        .output()
        .expect("openssl")
}

fn der(pem_path: &Path) -> Vec<u8> {
    let text = std::fs::read(pem_path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
    pem.contents
}

fn common_name(pem_path: &Path) -> String {
    let der = der(pem_path);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let cn = cert.subject().iter_common_name().next().unwrap();
    cn.as_str().unwrap().to_string()
}

#[test]
fn keys_are_private_and_the_leaf_passes_strict_checks() {
    let dir = tempfile::tempdir().unwrap();
    let out = certs_dev(dir.path());
    assert!(out.status.success(), "{out:?}");
    let f = files(dir.path());
    let rows = [
        (&f.ca_key, 0o600),
        (&f.key, 0o600),
        (&f.ca, 0o644),
        (&f.cert, 0o644),
    ];
    for (path, want) in rows {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, want, "{}", path.display());
    }

    let verify = openssl_verify(&f.ca, &f.cert);
    assert!(verify.status.success(), "{verify:?}");

    let der = der(&f.cert);
    let (_, leaf) = x509_parser::parse_x509_certificate(&der).unwrap();
    let validity = leaf.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert!(days <= 825, "leaf valid {days} days");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(validity.not_before.timestamp() <= now && now < validity.not_after.timestamp());
    use x509_parser::extensions::ParsedExtension;
    let has = |want: fn(&ParsedExtension) -> bool| {
        leaf.extensions().iter().any(|e| want(e.parsed_extension()))
    };
    assert!(has(|e| matches!(
        e,
        ParsedExtension::AuthorityKeyIdentifier(_)
    )));
    assert!(has(|e| matches!(
        e,
        ParsedExtension::SubjectKeyIdentifier(_)
    )));
}

#[test]
fn a_second_run_keeps_the_ca_and_signs_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = files(dir.path());
    let first = certs_dev(dir.path());
    assert!(first.status.success(), "{first:?}");
    assert!(
        stdout(&first).contains("wrote a new CA"),
        "{}",
        stdout(&first)
    );
    let (ca, ca_key, leaf) = (
        std::fs::read(&f.ca).unwrap(),
        std::fs::read(&f.ca_key).unwrap(),
        std::fs::read(&f.cert).unwrap(),
    );

    let second = certs_dev(dir.path());
    assert!(second.status.success(), "{second:?}");
    assert!(
        stdout(&second).contains("kept the CA"),
        "{}",
        stdout(&second)
    );
    assert_eq!(
        std::fs::read(&f.ca).unwrap(),
        ca,
        "the CA is never replaced"
    );
    assert_eq!(std::fs::read(&f.ca_key).unwrap(), ca_key);
    assert_ne!(std::fs::read(&f.cert).unwrap(), leaf, "a new leaf");
    let verify = openssl_verify(&f.ca, &f.cert);
    assert!(
        verify.status.success(),
        "the new leaf chains to the kept CA: {verify:?}"
    );
}

#[test]
fn every_ca_has_its_own_name() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert!(certs_dev(a.path()).status.success());
    assert!(certs_dev(b.path()).status.success());
    let (name_a, name_b) = (
        common_name(&files(a.path()).ca),
        common_name(&files(b.path()).ca),
    );
    assert!(name_a.starts_with("sandgate dev CA"), "{name_a}");
    assert_ne!(name_a, name_b);
}

#[test]
fn half_a_ca_is_refused_not_replaced() {
    for (name, keep_cert) in [("a CA without its key", true), ("a CA key alone", false)] {
        let dir = tempfile::tempdir().unwrap();
        let f = files(dir.path());
        let (present, missing) = match keep_cert {
            true => (&f.ca, &f.ca_key),
            false => (&f.ca_key, &f.ca),
        };
        std::fs::write(present, "trusted somewhere").unwrap();
        let out = certs_dev(dir.path());
        assert!(!out.status.success(), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let missing_name = missing.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            stderr.contains(&missing_name) && stderr.contains("does not"),
            "{name}: {stderr}"
        );
        assert_eq!(
            std::fs::read_to_string(present).unwrap(),
            "trusted somewhere",
            "{name}"
        );
        assert!(!missing.exists() && !f.key.exists(), "{name}");
    }
}

/// `serve` with the certificates: Python's default context (with strict X.509 checks, the
/// default from Python 3.13) completes a handshake, and the printed `curl` line works.
#[test]
fn strict_clients_accept_the_served_certificate_and_the_printed_command_works() {
    let dir = tempfile::tempdir().unwrap();
    let out = certs_dev(dir.path());
    assert!(out.status.success(), "{out:?}");
    let f = files(dir.path());
    let proxy = Proxy::start(&format!(
        "[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\n[[tls.certs]]\ncert = \"{}\"\nkey = \"{}\"\n",
        f.cert.display(),
        f.key.display()
    ));
    let port = proxy.tls_addr().port();

    let script = r#"
import socket, ssl, sys
ca, port, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
ctx.verify_flags |= ssl.VERIFY_X509_STRICT
with socket.create_connection(("127.0.0.1", port)) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
        print(tls.recv(4096).decode().splitlines()[0])
"#;
    for host in [DOMAIN, "3000-demo.preview.localhost"] {
        let python = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&f.ca)
            .arg(port.to_string())
            .arg(host)
            .output()
            .expect("python3");
        let said = String::from_utf8_lossy(&python.stdout);
        assert!(python.status.success(), "{host}: {python:?}");
        assert!(said.starts_with("HTTP/1.1"), "{host}: {said}");
    }

    let printed = stdout(&out);
    let curl = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("curl --cacert"))
        .unwrap_or_else(|| panic!("no curl line in {printed}"));
    // The one liberty taken: the test's free port instead of 8443.
    let curl = curl.replace(":8443", &format!(":{port}"));
    let ran = Command::new("sh").arg("-c").arg(&curl).output().unwrap();
    assert!(ran.status.success(), "{curl}: {ran:?}");
    assert!(
        String::from_utf8_lossy(&ran.stdout).contains("\"status\":\"ok\""),
        "{ran:?}"
    );
}
