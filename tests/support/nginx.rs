//! Debian's nginx as a path-normalising hop: `proxy_pass` with a URI part makes nginx decode the
//! request path, merge slashes and resolve dot-segments before forwarding, like many things a
//! runner may sit behind. Started on a free loopback port in the foreground with one process
//! and everything (pid, logs, temp files) in a temp dir; killed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> Option<PathBuf> {
    let sbin = Path::new("/usr/sbin/nginx");
    if sbin.exists() {
        return Some(sbin.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.exists())
}

impl Nginx {
    /// nginx proxying everything to `upstream` with `proxy_pass http://{upstream}/;`. `None`
    /// (after saying so on stderr) when nginx is not installed outside CI; under `CI` a missing
    /// nginx fails the test.
    pub fn normalising_proxy_to(upstream: SocketAddr) -> Option<Nginx> {
        let Some(binary) = binary() else {
            if std::env::var_os("CI").is_some() {
                panic!("nginx is not installed, and CI must run the normalising-hop tests");
            }
            eprintln!("SKIPPED: nginx is not installed (apt-get install nginx); CI runs this");
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let d = dir.path().display();
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n\
               client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               server {{\n    listen 127.0.0.1:{port};\n\
                 location / {{ proxy_pass http://{upstream}/; }}\n  }}\n}}\n"
        );
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(&config_path, config).expect("write nginx.conf");
        let error_log = dir.path().join("error.log");
        let mut child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg(&error_log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&error_log).unwrap_or_default();
                panic!("nginx exited ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Nginx { addr, child, dir })
    }

    /// nginx's access log (request lines as nginx received them), for failure messages.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}
