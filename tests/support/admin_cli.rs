//! The admin CLI (`sandgate registry …`) against a test Redis, and proxies that have subscribed
//! to its invalidations.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::redis::RedisServer;
use super::{Proxy, BIN};

/// A Redis-backed config for `preview.localhost`, with `extra` in `[registry]`.
pub fn redis_toml(redis: &RedisServer, extra: &str) -> String {
    format!(
        "[proxy]\ndomains = [\"preview.localhost\"]\n\
         [registry]\nbackend = \"redis\"\n{extra}\n\
         [redis]\nurl = \"{}\"\ntimeout = \"500ms\"\n",
        redis.url()
    )
}

/// A config file for the admin CLI.
pub struct CliConfig {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn cli_config(redis: &RedisServer) -> CliConfig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.toml");
    std::fs::write(&path, redis_toml(redis, "")).unwrap();
    CliConfig { _dir: dir, path }
}

/// Runs `sandgate <args> --config <path>`; returns (success, stdout, stderr).
pub fn sandgate(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run sandgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// `sandgate <args>`, which must succeed; its stdout.
pub fn ok(config: &Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = sandgate(config, args);
    assert!(success, "sandgate {args:?} failed: {stderr}");
    stdout
}

pub fn put_runner(config: &Path, id: &str, addr: SocketAddr, key: &str) {
    let url = format!("http://{addr}");
    let args = ["registry", "put-runner", "--id", id, "--url", &url];
    ok(config, &[&args[..], &["--api-key", key]].concat());
}

/// A public sandbox on `runner` (`registry put-sandbox --public`).
pub fn put_public_sandbox(config: &Path, id: &str, runner: &str) {
    let args = [
        "registry",
        "put-sandbox",
        "--id",
        id,
        "--runner",
        runner,
        "--public",
    ];
    ok(config, &args);
}

/// Starts a proxy and waits until it has subscribed to invalidations (its first subscription
/// clears the cache, so tests fill the cache only after it).
pub fn start_proxy(config: &str) -> Proxy {
    let proxy = Proxy::start(config);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.stderr().contains("subscribed to cache invalidations") {
        assert!(
            Instant::now() < deadline,
            "no subscription: {}",
            proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    proxy
}
