//! Zero-downtime upgrade of the real binary (SIGUSR2 / `sandgate upgrade`): the old process
//! hands its listening sockets to a new one and drains. Under constant load (new connections
//! and keep-alive ones) with WebSockets open: no connection refused, no request failed, every
//! WebSocket still echoing or closed with 1001 at the end of the old process's drain.
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use support::runner::{sandboxes, Runner};
use support::{ws_connect, Proxy, BIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const PREVIEW: &str = "3000-sbx-1.preview.localhost";
const BODY: &str = "/bytes/64";

/// Kills the pids named on drop (processes the test's `Proxy` no longer owns after an upgrade).
#[derive(Default)]
struct Reaper(std::sync::Mutex<Vec<i32>>);

impl Reaper {
    fn adopt(&self, pid: i32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().iter() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

struct Setup {
    proxy: Proxy,
    _runner: Runner,
    pid_file: PathBuf,
    _dir: tempfile::TempDir,
}

fn config(runner: &Runner, pid_file: &Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 2\nshutdown_timeout = \"1s\"\n\
         pid_file = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n{extra}{}",
        pid_file.display(),
        runner.config(sandboxes())
    )
}

async fn setup() -> Setup {
    let runner = Runner::start("runner-key").await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sandgate.pid");
    let proxy = Proxy::start(&config(&runner, &pid_file, ""));
    wait_for_pid(&pid_file, |pid| pid == proxy.pid() as i32).await;
    Setup {
        proxy,
        _runner: runner,
        pid_file,
        _dir: dir,
    }
}

fn read_pid(pid_file: &Path) -> Option<i32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Waits until the pid file names a pid `wanted` accepts (hang detector: 40 s).
async fn wait_for_pid(pid_file: &Path, wanted: impl Fn(i32) -> bool) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(pid) = read_pid(pid_file).filter(|pid| wanted(*pid)) {
            return pid;
        }
        assert!(Instant::now() < deadline, "the pid file did not change");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Alive and not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

async fn wait_gone(pid: i32) -> Duration {
    let started = Instant::now();
    while running(pid) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "pid {pid} did not exit after the upgrade"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn kill(signal: &str, pid: i32) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

fn upgrade_command(pid_file: &Path) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(["upgrade", "--pid-file"])
        .arg(pid_file)
        .output()
        .unwrap()
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

/// One request per connection, `Connection: close`: every accept of the upgrade window.
async fn new_connections(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let request = format!("GET {BODY} HTTP/1.1\r\nHost: {PREVIEW}\r\nConnection: close\r\n\r\n");
    while !stop.load(Ordering::Relaxed) {
        let mut stream = match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) => {
                eprintln!("refused: {e}");
                tally.refused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let mut answer = Vec::new();
        let exchanged = async {
            stream.write_all(request.as_bytes()).await?;
            stream.read_to_end(&mut answer).await
        };
        let done = tokio::time::timeout(Duration::from_secs(10), exchanged).await;
        let text = String::from_utf8_lossy(&answer);
        if matches!(done, Ok(Ok(_))) && text.starts_with("HTTP/1.1 200") {
            tally.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            eprintln!("failed (new connection): {done:?} {text:?}");
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> std::io::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn get_on(sender: &mut Sender) -> Result<u16, hyper::Error> {
    sender.ready().await?;
    let request = support::request("GET", PREVIEW, BODY)
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// Requests on one keep-alive connection until the server closes it, then on a new one; no
/// retries: a request the draining process closed the connection under counts as failed.
async fn keep_alive(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut sender: Option<Sender> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut current = match sender.take() {
            Some(current) if !current.is_closed() => current,
            _ => match connect(addr).await {
                Ok(new) => new,
                Err(e) => {
                    eprintln!("refused: {e}");
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        match get_on(&mut current).await {
            Ok(200) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                sender = Some(current);
            }
            other => {
                eprintln!("failed (keep-alive): {other:?}");
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How a WebSocket ended.
#[derive(Debug, PartialEq)]
enum WsEnd {
    /// Still echoing when the test stopped it.
    Open,
    /// A close frame with this code.
    Closed(u16),
    Broken(String),
}

/// Sends a message every 50 ms and expects its echo, until the proxy closes or `stop`.
async fn websocket(addr: SocketAddr, stop: Arc<AtomicBool>) -> (WsEnd, u64) {
    let (mut ws, _) = ws_connect(addr, PREVIEW, "/ws", &[]).await.expect("ws");
    let mut echoed = 0;
    loop {
        if stop.load(Ordering::Relaxed) {
            let _ = ws.close(None).await;
            return (WsEnd::Open, echoed);
        }
        let text = format!("m{echoed}");
        if let Err(e) = ws.send(Message::text(text.clone())).await {
            return (WsEnd::Broken(format!("send: {e}")), echoed);
        }
        let reply = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        match reply {
            Ok(Some(Ok(Message::Text(echo)))) if echo.as_str() == text => echoed += 1,
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return (WsEnd::Closed(u16::from(frame.code)), echoed)
            }
            other => return (WsEnd::Broken(format!("{other:?}")), echoed),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_upgrades_under_load_refuse_nothing_and_fail_nothing() {
    let reaper = Reaper::default();
    let mut setup = setup().await;
    let addr = setup.proxy.addr;
    let admin = setup.proxy.admin_addr();
    let first = setup.proxy.pid() as i32;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..3 {
        load.push(tokio::spawn(new_connections(
            addr,
            tally.clone(),
            stop.clone(),
        )));
        load.push(tokio::spawn(keep_alive(addr, tally.clone(), stop.clone())));
    }
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(tokio::spawn(websocket(addr, stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 1: SIGUSR2.
    let signalled = Instant::now();
    kill("USR2", first);
    let second = wait_for_pid(&setup.pid_file, |pid| pid != first).await;
    reaper.adopt(second);
    let took_over = signalled.elapsed();
    let status = setup
        .proxy
        .wait_exit(Duration::from_secs(30))
        .expect("the old process did not exit after its drain");
    assert!(status.success(), "{status:?}\n{}", setup.proxy.stderr());
    let first_exit = signalled.elapsed();
    for _ in 0..3 {
        sockets.push(tokio::spawn(websocket(addr, stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 2: `sandgate upgrade`, which waits for the new pid.
    let signalled = Instant::now();
    let out = tokio::task::spawn_blocking({
        let pid_file = setup.pid_file.clone();
        move || upgrade_command(&pid_file)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        setup.proxy.stderr()
    );
    let third = read_pid(&setup.pid_file).unwrap();
    reaper.adopt(third);
    assert!(third != second && third != first, "{stdout}");
    assert!(
        stdout.contains(&format!("upgraded: pid {third} serves")),
        "{stdout}"
    );
    let took_over_2 = signalled.elapsed();
    let second_exit = wait_gone(second).await + took_over_2;
    for _ in 0..3 {
        sockets.push(tokio::spawn(websocket(addr, stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let mut ends = Vec::new();
    for socket in sockets {
        ends.push(socket.await.unwrap());
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let refused = tally.refused.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    println!(
        "upgrade 1 (SIGUSR2): new pid in the pid file after {took_over:?}, old exited after \
         {first_exit:?}; upgrade 2 (sandgate upgrade): {took_over_2:?}, old exited after \
         {second_exit:?}; requests ok {ok}, refused {refused}, failed {failed}; websockets {ends:?}"
    );
    assert_eq!((refused, failed), (0, 0), "{}", setup.proxy.stderr());
    assert!(ok > 0);
    // Opened before upgrade 1 and before upgrade 2: closed with 1001 by the drain; opened
    // last: still echoing.
    let codes: Vec<&WsEnd> = ends.iter().map(|(end, _)| end).collect();
    assert_eq!(
        codes,
        [
            &WsEnd::Closed(1001),
            &WsEnd::Closed(1001),
            &WsEnd::Closed(1001),
            &WsEnd::Closed(1001),
            &WsEnd::Closed(1001),
            &WsEnd::Closed(1001),
            &WsEnd::Open,
            &WsEnd::Open,
            &WsEnd::Open,
        ]
    );
    assert!(ends.iter().all(|(_, echoed)| *echoed > 0), "{ends:?}");
    // The last process serves the admin listener it inherited.
    let metrics = support::get(admin, "admin", "/health").await;
    assert_eq!(metrics.status, 200);
    kill("TERM", third);
    wait_gone(third).await;
    assert!(
        !setup.pid_file.exists(),
        "the last process removes its pid file"
    );
}

/// What a failed upgrade must leave: the old process serving, its pid in the file.
#[tokio::test]
async fn a_failing_new_process_leaves_the_old_one_serving() {
    let reaper = Reaper::default();
    let mut setup = setup().await;
    let old = setup.proxy.pid() as i32;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let good = std::fs::read_to_string(&setup.proxy.config_path).unwrap();
    let cases: [(&str, String, &str); 2] = [
        (
            "the config no longer parses",
            format!("{good}\n[server\n"),
            "exited before it was ready",
        ),
        (
            "the new config listens on a port another process holds",
            good.replace(
                "[admin]\nlisten = \"127.0.0.1:0\"",
                &format!("[admin]\nlisten = \"127.0.0.1:{taken_port}\""),
            ),
            "exited before it was ready",
        ),
    ];
    for (case, config, logged) in cases {
        std::fs::write(&setup.proxy.config_path, config).unwrap();
        let out = tokio::task::spawn_blocking({
            let pid_file = setup.pid_file.clone();
            move || upgrade_command(&pid_file)
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: {stderr}");
        assert!(stderr.contains("upgrade failed"), "{case}: {stderr}");
        assert_eq!(read_pid(&setup.pid_file), Some(old), "{case}");
        let reply = support::get(setup.proxy.addr, PREVIEW, BODY).await;
        assert_eq!(reply.status, 200, "{case}");
        assert!(setup.proxy.child.try_wait().unwrap().is_none(), "{case}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !setup.proxy.stderr().contains(logged) {
            assert!(
                Instant::now() < deadline,
                "{case}: {}",
                setup.proxy.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(taken);

    // A stranger connecting to the hand-over socket while an upgrade runs gets nothing, and
    // the upgrade still succeeds once the config is good again.
    std::fs::write(&setup.proxy.config_path, &good).unwrap();
    let socket = setup
        .pid_file
        .with_file_name(format!("sandgate-upgrade-{old}.sock"));
    let done = Arc::new(AtomicBool::new(false));
    let stranger = std::thread::spawn({
        let done = done.clone();
        move || {
            let (mut connected, mut received) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                if let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&socket) {
                    connected += 1;
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    let mut buf = [0u8; 64];
                    received += std::io::Read::read(&mut stream, &mut buf).unwrap_or(0);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            (connected, received)
        }
    });
    let out = tokio::task::spawn_blocking({
        let pid_file = setup.pid_file.clone();
        move || upgrade_command(&pid_file)
    })
    .await
    .unwrap();
    done.store(true, Ordering::Relaxed);
    let (connected, received) = stranger.join().unwrap();
    let new = read_pid(&setup.pid_file).unwrap();
    reaper.adopt(new);
    println!("the stranger connected {connected} times and received {received} bytes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(received, 0);
    assert_ne!(new, old);
    let reply = support::get(setup.proxy.addr, PREVIEW, BODY).await;
    assert_eq!(reply.status, 200);
    setup
        .proxy
        .wait_exit(Duration::from_secs(30))
        .expect("the old process did not exit");
}

/// The drain's edge (SIGTERM and the end of a hand-over alike): a request a client sends just
/// as the drain starts, on a connection the process already accepted, is answered (with
/// `Connection: close`), not reset. Without the next-request grace, an idle keep-alive
/// connection was closed at once and a fresh one still detecting its protocol was dropped.
#[tokio::test]
async fn a_request_sent_as_the_drain_starts_is_answered_not_reset() {
    for (case, requests_before) in [("fresh connection", 0), ("idle keep-alive connection", 1)] {
        let runner = Runner::start("runner-key").await;
        let proxy = Proxy::start(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"5s\"\n{}",
            runner.config(sandboxes())
        ));
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let request = format!("GET {BODY} HTTP/1.1\r\nHost: {PREVIEW}\r\n\r\n");
        for _ in 0..requests_before {
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut head = vec![0u8; 4096];
            let n = stream.read(&mut head).await.unwrap();
            assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{case}");
        }
        // Accepted (and idle) before the signal.
        tokio::time::sleep(Duration::from_millis(200)).await;
        proxy.signal("TERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("hang");
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(
            read.is_ok() && text.starts_with("http/1.1 200"),
            "{case}: {read:?} {text:?}"
        );
        assert!(text.contains("connection: close"), "{case}: {text}");
    }
}

/// The HTTPS listeners (one per serving thread) are handed over too: after the upgrade the
/// same port answers over TLS from the new process, and the old one has exited.
#[tokio::test]
async fn https_listeners_are_handed_over() {
    let reaper = Reaper::default();
    let runner = Runner::start("runner-key").await;
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(BIN)
        .args(["certs", "dev", "--domain", "preview.localhost", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid_file = dir.path().join("sandgate.pid");
    let tls = format!(
        "[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\n[[tls.certs]]\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.path().join("preview.localhost.pem").display(),
        dir.path().join("preview.localhost.key").display()
    );
    let mut proxy = Proxy::start(&config(&runner, &pid_file, &tls));
    let old = proxy.pid() as i32;
    let tls_addr = proxy.tls_addr();
    let ca = dir.path().join("dev-ca.pem");
    let https_get = || async {
        let stream = support::tls_client::connect(tls_addr, PREVIEW, &[&ca], b"http/1.1")
            .await
            .expect("TLS handshake");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = support::request("GET", PREVIEW, BODY)
            .body(Empty::<Bytes>::new())
            .unwrap();
        sender
            .send_request(request)
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(https_get().await, 200);
    kill("USR2", old);
    let new = wait_for_pid(&pid_file, |pid| pid != old).await;
    reaper.adopt(new);
    proxy
        .wait_exit(Duration::from_secs(30))
        .expect("the old process did not exit");
    assert_eq!(https_get().await, 200, "{}", proxy.stderr());
    let log = proxy.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("serving on inherited sockets") && l.contains("tls.listen")),
        "{log}"
    );
}

/// Under systemd (`Type=notify`, `NotifyAccess=all`) each process says READY=1 with its own pid
/// as MAINPID once it serves: after an upgrade systemd follows the new process.
#[tokio::test]
async fn systemd_is_told_ready_and_the_new_main_pid() {
    let reaper = Reaper::default();
    let runner = Runner::start("runner-key").await;
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let pid_file = dir.path().join("sandgate.pid");
    let mut proxy = Proxy::start_with_env(
        &config(&runner, &pid_file, ""),
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let notify = Arc::new(notify);
    let receive = move || {
        let mut buf = [0u8; 256];
        let n = notify.recv(&mut buf).expect("no sd_notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let old = proxy.pid() as i32;
    assert_eq!(receive(), format!("READY=1\nMAINPID={old}\n"));
    kill("USR2", old);
    let message = tokio::task::spawn_blocking(receive).await.unwrap();
    let new = wait_for_pid(&pid_file, |pid| pid != old).await;
    reaper.adopt(new);
    assert_eq!(message, format!("READY=1\nMAINPID={new}\n"));
    proxy
        .wait_exit(Duration::from_secs(30))
        .expect("the old process did not exit");
}

/// With `reuse_port = true` the sockets are handed over all the same (the new process could
/// bind its own, but the connections queued on the old ones would be lost when they close).
#[tokio::test]
async fn reuse_port_listeners_are_handed_over_too() {
    let reaper = Reaper::default();
    let runner = Runner::start("runner-key").await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sandgate.pid");
    let config =
        config(&runner, &pid_file, "").replace("threads = 2\n", "threads = 2\nreuse_port = true\n");
    let mut proxy = Proxy::start(&config);
    let old = proxy.pid() as i32;
    wait_for_pid(&pid_file, |pid| pid == old).await;
    let out = tokio::task::spawn_blocking({
        let pid_file = pid_file.clone();
        move || upgrade_command(&pid_file)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    reaper.adopt(read_pid(&pid_file).unwrap());
    proxy
        .wait_exit(Duration::from_secs(30))
        .expect("the old process did not exit");
    assert_eq!(support::get(proxy.addr, PREVIEW, BODY).await.status, 200);
    let log = proxy.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("serving on inherited sockets") && l.contains("sockets=2")),
        "{log}"
    );
}

/// The hand-over socket named in the environment must be held by the process that started this
/// one: a process that only knows the path (here a Python listener offering its own listening
/// socket) gets no say over what the new process serves. It refuses, naming why, and serves
/// nothing of the stranger's.
#[tokio::test]
async fn a_stranger_on_the_hand_over_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stranger.sock");
    let stranger = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import socket, struct, sys, time\n\
             bait = socket.socket(); bait.bind(('127.0.0.1', 0)); bait.listen()\n\
             s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); print('ready', flush=True)\n\
             c, _ = s.accept()\n\
             text = b'listener server.listen 127.0.0.1:1'\n\
             c.sendmsg([struct.pack('>I', len(text)) + text], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack('i', bait.fileno()))])\n\
             time.sleep(10)\n",
        )
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _stranger = Stranger(stranger);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "the stranger's socket");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let config = dir.path().join("sandgate.toml");
    std::fs::write(&config, "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env("SANDGATE_UPGRADE_SOCKET", &path)
            .output(),
    )
    .await
    .expect("refused at once, not served")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("not the process that started this one"),
        "{stderr}"
    );
}

struct Stranger(std::process::Child);

impl Drop for Stranger {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
