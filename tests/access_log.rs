//! The access log as operators run it: to a file that logrotate moves (SIGUSR1 reopens it),
//! flushed on shutdown, and a writer that falls behind (a reader that stops reading a FIFO):
//! `wait` holds requests and loses no line, `drop` never holds one and counts what it drops.
mod support;

use std::path::Path;
use std::time::Duration;

use support::runner::{sandboxes, Runner};
use support::{get, sample, Proxy};
use tokio::io::AsyncReadExt;

const HOST: &str = "3000-sbx-1.preview.localhost";

fn log_config(runner: &Runner, log: &str) -> String {
    runner.config(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[log]\n{log}",
        sandboxes()
    ))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

async fn wait_for_lines(path: &Path, count: usize) -> Vec<String> {
    for _ in 0..250 {
        let found = lines(path);
        if found.len() >= count {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lines(path)
}

/// The request paths `/n0`, `/n1`, … of the access lines (up to the next `/`), sorted by their
/// number: each worker thread has its own buffer, so lines are in order per thread only.
fn paths(lines: &[String]) -> Vec<String> {
    let mut paths: Vec<(usize, String)> = lines
        .iter()
        .map(|l| {
            let start = l.find("path=\"").expect("a path field") + 6;
            let path = &l[start..start + 1 + l[start + 1..].find(['"', '/']).unwrap()];
            (
                path[2..].parse().expect("a numbered path"),
                path.to_string(),
            )
        })
        .collect();
    paths.sort();
    paths.into_iter().map(|(_, path)| path).collect()
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("/n{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_file_is_reopened_on_sigusr1_and_shutdown_writes_what_is_buffered() {
    let runner = Runner::start("k").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    // A flush interval longer than the test: only a full buffer, a reopen or the shutdown
    // writes, so the last lines can only reach the file through the shutdown.
    let mut proxy = Proxy::start(&log_config(
        &runner,
        &format!("access_output = {:?}\naccess_flush = \"60s\"\n", path),
    ));
    for i in 0..20 {
        assert_eq!(get(proxy.addr, HOST, &format!("/n{i}")).await.status, 200);
    }
    // Logrotate's `create` mode: move the file, then tell the proxy. The lines still buffered
    // go to the file it has open (the moved one), then it opens a new one.
    std::fs::rename(&path, &rotated).unwrap();
    proxy.signal("USR1");
    for _ in 0..250 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(path.exists(), "SIGUSR1 did not reopen the access log");
    for i in 20..30 {
        assert_eq!(get(proxy.addr, HOST, &format!("/n{i}")).await.status, 200);
    }
    proxy.signal("TERM");
    assert!(proxy.wait_exit(Duration::from_secs(10)).is_some());
    let (before, after) = (lines(&rotated), lines(&path));
    assert_eq!(paths(&before), numbered(0..20), "{before:?}");
    assert_eq!(paths(&after), numbered(20..30), "{after:?}");
    for line in before.iter().chain(&after) {
        assert!(
            line.contains("sandgate::access: method=GET kind=preview")
                && line.contains(" status=200 ")
                && line.contains(" sandbox=\"sbx-1\" "),
            "{line}"
        );
    }
    // The access lines went to the file, not to stderr with the other logs.
    assert!(!proxy.stderr().contains("sandgate::access"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_parse() {
    let runner = Runner::start("k").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.json");
    let proxy = Proxy::start(&log_config(
        &runner,
        &format!(
            "format = \"json\"\naccess_output = {:?}\naccess_flush = \"20ms\"\n",
            path
        ),
    ));
    assert_eq!(get(proxy.addr, HOST, "/j?secret=1").await.status, 200);
    let found = wait_for_lines(&path, 1).await;
    assert_eq!(found.len(), 1, "{found:?}");
    let line: serde_json::Value = serde_json::from_str(&found[0]).unwrap();
    assert_eq!(line["target"], "sandgate::access");
    assert_eq!(line["fields"]["path"], "/j");
    assert_eq!(line["fields"]["status"], 200);
    assert_eq!(line["fields"]["sandbox"], "sbx-1");
    assert_eq!(line["fields"]["peer"], "127.0.0.1");
}

/// A client sends a User-Agent with a byte that is not UTF-8 (hyper accepts 0x80-0xFF in
/// header values): every access line stays valid UTF-8, and a JSON line still parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_agent_that_is_not_utf8_keeps_every_format_valid() {
    let runner = Runner::start("k").await;
    for format in ["json", "text", "combined"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let proxy = Proxy::start(&log_config(
            &runner,
            &format!(
                "access_format = {format:?}\naccess_output = {path:?}\naccess_flush = \"20ms\"\n"
            ),
        ));
        let mut request =
            format!("GET /ua HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: bot").into_bytes();
        request.extend_from_slice(b"\xff\xfe/1\r\nConnection: close\r\n\r\n");
        let reply = support::raw(proxy.addr, request).await;
        assert_eq!(support::status_of(&reply), 200, "{format}: {reply}");
        let mut bytes = Vec::new();
        for _ in 0..250 {
            bytes = std::fs::read(&path).unwrap_or_default();
            if !bytes.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = String::from_utf8(bytes)
            .unwrap_or_else(|e| panic!("{format}: a line that is not UTF-8: {e}"));
        let line = text
            .lines()
            .next()
            .unwrap_or_else(|| panic!("{format}: no line"));
        assert!(line.contains(r"bot\u00ff\u00fe/1"), "{format}: {line}");
        if format == "json" {
            let parsed: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {e}: {line}"));
            assert_eq!(parsed["fields"]["path"], "/ua", "{line}");
        }
    }
}

struct Overflow {
    mode: &'static str,
    /// A request is held while the reader is stuck.
    holds_requests: bool,
}

const OVERFLOW: &[Overflow] = &[
    Overflow {
        mode: "wait",
        holds_requests: true,
    },
    Overflow {
        mode: "drop",
        holds_requests: false,
    },
];

/// The access log is a FIFO whose reader stops reading: the pipe (64 KiB), the writer's
/// buffers in flight and the per-thread buffers (4 KiB each) fill up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_falls_behind_holds_requests_or_drops_lines_as_configured() {
    for row in OVERFLOW {
        falls_behind(row).await;
    }
}

async fn falls_behind(row: &Overflow) {
    let runner = Runner::start("k").await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // The reader opens first (the proxy's open for writing would block without one).
    let mut reader = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&fifo)
        .unwrap();
    let proxy = Proxy::start(&log_config(
        &runner,
        &format!(
            "access_output = {fifo:?}\naccess_buffer = 4096\naccess_flush = \"20ms\"\n\
             access_overflow = {:?}\n",
            row.mode
        ),
    ));
    // ~2 KiB per line: the pipe and the buffers hold well under 200 of them.
    let padding = "a".repeat(2000);
    let (mut answered, mut held) = (0, None);
    for i in 0..400 {
        let (addr, path) = (proxy.addr, format!("/n{i}/{padding}"));
        let mut request = tokio::spawn(async move { get(addr, HOST, &path).await.status });
        match tokio::time::timeout(Duration::from_secs(1), &mut request).await {
            Ok(status) => {
                assert_eq!(status.unwrap(), 200);
                answered += 1;
            }
            Err(_) => {
                held = Some(request);
                break;
            }
        }
    }
    assert_eq!(
        held.is_some(),
        row.holds_requests,
        "{}: {answered} requests answered while nobody read the log",
        row.mode
    );
    // The reader reads again: a held request completes.
    let read = tokio::spawn(async move {
        let mut text = Vec::new();
        let mut chunk = vec![0; 65536];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(2), reader.read(&mut chunk)).await
        {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(text).unwrap()
    });
    if let Some(held) = held {
        assert_eq!(held.await.unwrap(), 200);
        answered += 1;
    }
    let text = read.await.unwrap();
    let logged = text.lines().count();
    let metrics = get(proxy.admin_addr(), "admin", "/metrics").await.text();
    let dropped = sample(&metrics, "sandgate_access_log_dropped_total") as usize;
    assert!(text.ends_with('\n'), "{}: a torn line", row.mode);
    assert_eq!(logged + dropped, answered, "{}", row.mode);
    match row.mode {
        "wait" => assert_eq!(dropped, 0),
        _ => assert!(dropped > 0, "drop mode dropped nothing"),
    }
    // Whole lines, and in `wait` mode every request's.
    let logged_paths = paths(&text.lines().map(String::from).collect::<Vec<_>>());
    if row.mode == "wait" {
        assert_eq!(logged_paths, numbered(0..answered));
    }
}

/// In `drop` mode a stuck output never holds a request, and it does not hold the shutdown
/// either: the writer blocked in write(2) is given up on after a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_process_even_with_a_stuck_output() {
    let runner = Runner::start("k").await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let _reader = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(&fifo)
        .unwrap();
    let mut proxy = Proxy::start(&log_config(
        &runner,
        &format!(
            "access_output = {fifo:?}\naccess_buffer = 4096\naccess_flush = \"20ms\"\n\
             access_overflow = \"drop\"\n"
        ),
    ));
    let padding = "a".repeat(2000);
    for i in 0..200 {
        let path = format!("/n{i}/{padding}");
        assert_eq!(get(proxy.addr, HOST, &path).await.status, 200);
    }
    let metrics = get(proxy.admin_addr(), "admin", "/metrics").await.text();
    assert!(sample(&metrics, "sandgate_access_log_dropped_total") > 0.0);
    proxy.signal("TERM");
    assert!(
        proxy.wait_exit(Duration::from_secs(15)).is_some(),
        "still running 15 s after SIGTERM: {}",
        proxy.stderr()
    );
    assert!(proxy.stderr().contains("access log's output is stuck"));
}
