//! BIND (`named`) on a free loopback port: the primary server of one zone, taking RFC 2136
//! updates signed with a TSIG key (what a DNS-01 hook talks to at a DNS provider). Killed on
//! drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Bind {
    pub addr: SocketAddr,
    /// The TSIG key file allowed to update the zone (`nsupdate -k`).
    pub key_file: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
}

impl Bind {
    pub fn start(zone: &str) -> Bind {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let key = Command::new("tsig-keygen")
            .args(["-a", "hmac-sha256", "sandgate"])
            .output()
            .expect("tsig-keygen (apt install bind9)");
        assert!(key.status.success(), "tsig-keygen");
        std::fs::write(path("tsig.key"), &key.stdout).unwrap();
        std::fs::write(
            path("zone"),
            format!(
                "$TTL 60\n@ IN SOA ns.{zone}. admin.{zone}. 1 60 60 600 60\n\
                 @ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
            ),
        )
        .unwrap();
        let port = super::free_port();
        let conf = format!(
            "options {{\n directory \"{dir}\";\n listen-on port {port} {{ 127.0.0.1; }};\n \
             listen-on-v6 {{ none; }};\n pid-file \"{dir}/named.pid\";\n \
             session-keyfile \"{dir}/session.key\";\n managed-keys-directory \"{dir}\";\n \
             recursion no;\n dnssec-validation no;\n}};\n\
             controls {{ }};\ninclude \"{dir}/tsig.key\";\n\
             zone \"{zone}\" {{ type primary; file \"{dir}/zone\"; allow-update {{ key \"sandgate\"; }}; }};\n",
            dir = dir.path().display()
        );
        std::fs::write(path("named.conf"), conf).unwrap();
        let log = std::fs::File::create(path("named.log")).unwrap();
        let child = Command::new("named")
            .args(["-g", "-c", &path("named.conf")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("named (apt install bind9)");
        let bind = Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            key_file: dir.path().join("tsig.key"),
            child,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !bind.dig("SOA", zone).contains(&format!("ns.{zone}.")) {
            assert!(
                Instant::now() < deadline,
                "named did not answer: {}",
                bind.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bind
    }

    /// `dig +short <kind> <name>` against this server.
    pub fn dig(&self, kind: &str, name: &str) -> String {
        let out = Command::new("dig")
            .args(["+short", "+time=1", "+tries=1", "-p"])
            .arg(self.addr.port().to_string())
            .args([kind, name, "@127.0.0.1"])
            .output()
            .expect("dig (apt install bind9-dnsutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("named.log")).unwrap_or_default()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
