//! The SSH gateway end to end: the real `sandgate ssh-gateway` binary between the real OpenSSH
//! client (`ssh`, `scp`) and a real `sshd`.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::redis::RedisServer;
use support::sshd::Sshd;
use support::BIN;

const TOKEN: &str = "tok0123456789abcdefghijklmnopqrs";
const STOPPED_TOKEN: &str = "stoppedtoken0123456789abcdefghij";

/// A `sandgate ssh-gateway` child with fresh keys, fronting `sshd`; killed on drop.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Gateway {
    /// Keys first (the upstream public key goes into the sshd's authorized keys), then sshd,
    /// then the gateway, whose static registry points sandbox `sbx` at the sshd.
    fn start(extra: &str) -> (Gateway, Sshd) {
        Self::start_with("", extra)
    }

    /// `ssh_keys` go into `[ssh]`, `extra` at the end of the config.
    fn start_with(ssh_keys: &str, extra: &str) -> (Gateway, Sshd) {
        let dir = tempfile::tempdir().expect("tempdir");
        for key in ["host_key", "upstream_key"] {
            let out = Command::new(BIN)
                .args(["ssh-gateway", "keygen", "--out"])
                .arg(dir.path().join(key))
                .output()
                .expect("keygen");
            assert!(out.status.success(), "{out:?}");
        }
        let public = std::fs::read_to_string(dir.path().join("upstream_key.pub")).unwrap();
        let sshd = Sshd::start(&public);
        let config = format!(
            r#"
[ssh]
listen = "127.0.0.1:0"
host_key = "{host}"
upstream_key = "{upstream}"
upstream_user = "{user}"
{ssh_keys}

[[registry.sandboxes]]
id = "sbx"
address = "127.0.0.1"
ssh_port = {port}

[[registry.sandboxes]]
id = "off"
address = "127.0.0.1"
ssh_port = {port}
state = "stopped"

[[registry.ssh_tokens]]
token = "{TOKEN}"
sandbox = "sbx"

[[registry.ssh_tokens]]
token_sha256 = "{stopped_hash}"
sandbox = "off"
{extra}
"#,
            host = dir.path().join("host_key").display(),
            upstream = dir.path().join("upstream_key").display(),
            user = sshd.user,
            port = sshd.port,
            stopped_hash = hex(&Sha256::digest(STOPPED_TOKEN)),
        );
        let config_path = dir.path().join("sandgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new(BIN)
            .args(["ssh-gateway", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "sandgate=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("gateway.log")).unwrap())
            .spawn()
            .expect("spawn gateway");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(addr) = line
            .trim()
            .strip_prefix("sandgate ssh gateway listening on ")
        else {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default();
            panic!("gateway did not start: {line:?}\n{log}");
        };
        let addr = addr.parse().unwrap();
        (Gateway { child, addr, dir }, sshd)
    }

    fn ssh(&self, user: &str) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(ssh_options())
            .args(["-p", &self.addr.port().to_string()])
            .arg(format!("{user}@127.0.0.1"));
        command
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ssh_options() -> [&'static str; 8] {
    [
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(mut command: Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    out
}

#[test]
fn exec_returns_output_and_exit_code() {
    let (gw, _sshd) = Gateway::start("");
    let mut ssh = gw.ssh(TOKEN);
    ssh.arg("echo hello from $(whoami); echo oops >&2; exit 7");
    let out = run(ssh, b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(7), "{out:?}\n{}", gw.log());
    assert!(stdout.contains("hello from"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
}

#[test]
fn stdin_eof_half_closes_and_the_exit_status_comes_back() {
    let (gw, _sshd) = Gateway::start("");
    let mut ssh = gw.ssh(TOKEN);
    ssh.arg("cat; exit 3");
    let out = run(ssh, b"data through the gateway\n");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(out.stdout, b"data through the gateway\n");
}

#[test]
fn an_interactive_pty_session_runs_a_shell() {
    let (gw, _sshd) = Gateway::start("");
    let mut ssh = gw.ssh(TOKEN);
    ssh.arg("-tt");
    let out = run(ssh, b"echo $((6*7))\nexit\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("42"), "{stdout}");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn scp_copies_50_mib_byte_exact() {
    let (gw, _sshd) = Gateway::start("");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.bin");
    let mut data = vec![0u8; 50 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&src, &data).unwrap();
    let remote = dir.path().join("copied.bin");
    let back = dir.path().join("back.bin");
    let scp = |from: String, to: String| {
        let out = Command::new("scp")
            .args(ssh_options())
            .args(["-q", "-P", &gw.addr.port().to_string(), &from, &to])
            .output()
            .unwrap();
        assert!(out.status.success(), "scp {from} {to}: {out:?}");
    };
    // Upload (sftp subsystem), then download, both through the gateway.
    scp(
        src.display().to_string(),
        format!("{TOKEN}@127.0.0.1:{}", remote.display()),
    );
    scp(
        format!("{TOKEN}@127.0.0.1:{}", remote.display()),
        back.display().to_string(),
    );
    let expected = Sha256::digest(&data);
    assert_eq!(Sha256::digest(std::fs::read(&remote).unwrap()), expected);
    assert_eq!(Sha256::digest(std::fs::read(&back).unwrap()), expected);
}

#[test]
fn local_port_forwarding_reaches_a_server_behind_the_sandbox() {
    let (gw, _sshd) = Gateway::start("");
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_port = http.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in http.incoming() {
            let Ok(mut stream) = stream else { break };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\nforwarded hello",
            );
        }
    });
    let local_port = support::free_port();
    let mut ssh = gw.ssh(TOKEN);
    ssh.args([
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        "-L",
        &format!("127.0.0.1:{local_port}:127.0.0.1:{http_port}"),
    ]);
    let mut child = ssh.stdin(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let response = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", local_port)) {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if !text.is_empty() {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "forward never came up");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(response.ends_with("forwarded hello"), "{response}");
}

const NOKEY_TOKEN: &str = "nokeytoken0123456789abcdefghijkl";
const CLOSED_TOKEN: &str = "closedtoken0123456789abcdefghijk";

/// An OpenSSH public key line the gateway has no private half of.
fn stranger_public_key(dir: &Path) -> String {
    let path = dir.join("stranger");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen");
    assert!(status.success());
    std::fs::read_to_string(path.with_extension("pub")).unwrap()
}

/// Every refused login, one row each: what the SSH client prints is the real reason, never
/// the generic "try again later".
#[test]
fn refused_logins_tell_the_client_the_real_reason() {
    let keys = tempfile::tempdir().unwrap();
    // A sandbox whose sshd trusts some other key, and one where nothing listens.
    let other_sshd = Sshd::start(&stranger_public_key(keys.path()));
    let closed_port = support::free_port();
    let extra = format!(
        r#"
[[registry.sandboxes]]
id = "nokey"
address = "127.0.0.1"
ssh_port = {other}

[[registry.ssh_tokens]]
token = "{NOKEY_TOKEN}"
sandbox = "nokey"

[[registry.sandboxes]]
id = "closed"
address = "127.0.0.1"
ssh_port = {closed_port}

[[registry.ssh_tokens]]
token = "{CLOSED_TOKEN}"
sandbox = "closed"
"#,
        other = other_sshd.port,
    );
    let (gw, _sshd) = Gateway::start(&extra);
    let rows: [(&str, &str, &str); 4] = [
        (
            "unknown token",
            "not-a-valid-token",
            "invalid or expired SSH access token",
        ),
        (
            "stopped sandbox",
            STOPPED_TOKEN,
            "sandbox off is not started",
        ),
        (
            "key refused by the sandbox's sshd",
            NOKEY_TOKEN,
            "sandbox nokey's sshd refused the gateway's key",
        ),
        (
            "no sshd in the sandbox",
            CLOSED_TOKEN,
            "nothing accepts SSH connections in sandbox closed",
        ),
    ];
    let mut failures = Vec::new();
    for (name, user, reason) in rows {
        let mut ssh = gw.ssh(user);
        ssh.arg("true");
        let out = run(ssh, b"");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(0) || !stderr.contains(reason) || stderr.contains("try again")
        {
            failures.push(format!("{name}: want {reason:?}, got {stderr:?}"));
        }
    }
    assert!(
        !gw.log().contains("not-a-valid-token"),
        "tokens are never logged"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_session_limit_per_token_refuses_more() {
    let (gw, _sshd) = Gateway::start_with("max_sessions_per_token = 1", "");
    let mut first = gw.ssh(TOKEN);
    first.arg("sleep 5");
    let mut first = first.stdin(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let mut second = gw.ssh(TOKEN);
    second.arg("true");
    let out = run(second, b"");
    let _ = first.kill();
    let _ = first.wait();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already has 1 open sessions"),
        "{out:?}"
    );
}

fn zscore(redis: &RedisServer, id: &str) -> Option<u64> {
    redis
        .cli(&["ZSCORE", "sandbox:activity", id])
        .trim()
        .parse()
        .ok()
}

/// The activity scores of `sbx` around one session running `command` (about 2 s) with 300 ms
/// heartbeats: 0.8 s in, 1.6 s in, 0.5 s after it ended, and 1 s after that.
fn session_scores(streams: &str, command: &str) -> [u64; 4] {
    let redis = RedisServer::start();
    let extra = format!(
        "\n[activity]\nsink = \"redis\"\nheartbeat = \"300ms\"\nthrottle = \"0s\"\n\
         flush_interval = \"100ms\"\nstreams = \"{streams}\"\n\n[redis]\nurl = \"{}\"\n",
        redis.url()
    );
    let (gw, _sshd) = Gateway::start(&extra);
    let mut ssh = gw.ssh(TOKEN);
    ssh.arg(command);
    let mut child = ssh
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let early = zscore(&redis, "sbx").expect("marked at session start");
    std::thread::sleep(Duration::from_millis(800));
    let later = zscore(&redis, "sbx").unwrap();
    assert!(child.wait().unwrap().success());
    std::thread::sleep(Duration::from_millis(500));
    let closed = zscore(&redis, "sbx").unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    [early, later, closed, zscore(&redis, "sbx").unwrap()]
}

#[test]
fn sessions_mark_while_open_or_while_bytes_move_and_stop_after() {
    const QUIET: &str = "sleep 2";
    const TALKING: &str = "for i in 1 2 3 4 5 6 7 8; do echo $i; sleep 0.25; done";
    let cases = [
        ("open mode, quiet", "open", QUIET, true),
        ("traffic mode, quiet", "traffic", QUIET, false),
        ("traffic mode, talking", "traffic", TALKING, true),
    ];
    let runs: Vec<_> = cases
        .iter()
        .map(|&(_, streams, command, _)| {
            std::thread::spawn(move || session_scores(streams, command))
        })
        .collect();
    for ((name, _, _, heartbeats), run) in cases.iter().zip(runs) {
        let [early, later, closed, after] = run.join().unwrap();
        assert_eq!(
            later > early,
            *heartbeats,
            "{name}: heartbeats {early} → {later}"
        );
        assert_eq!(after, closed, "{name}: no marks after close");
    }
}

#[test]
fn killing_the_client_closes_the_upstream_session() {
    let (gw, sshd) = Gateway::start("");
    let mut ssh = gw.ssh(TOKEN);
    ssh.arg("sleep 60");
    let mut child = ssh.stdin(Stdio::null()).spawn().unwrap();
    wait_for(
        sshd.log_path(),
        "Accepted publickey",
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(300));
    unsafe_kill9(child.id());
    let _ = child.wait();
    wait_for(
        sshd.log_path(),
        "client disconnected",
        Duration::from_secs(10),
    );
}

fn unsafe_kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_for(log: &Path, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "{needle:?} not in log:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn keygen_refuses_to_overwrite_and_a_missing_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key: PathBuf = dir.path().join("k");
    let keygen = || {
        Command::new(BIN)
            .args(["ssh-gateway", "keygen", "--out"])
            .arg(&key)
            .output()
            .unwrap()
    };
    assert!(keygen().status.success());
    let again = keygen();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[ssh]\nlisten = \"127.0.0.1:0\"\nhost_key = \"{}\"\nupstream_key = \"{}\"\n",
            key.display(),
            dir.path().join("missing").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["ssh-gateway", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sandgate ssh-gateway keygen --out"),
        "{out:?}"
    );
}
