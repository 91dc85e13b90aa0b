//! `server.threads`: serving threads, each with its own runtime and `SO_REUSEPORT` listener.
//! They all serve, they share the limits (a client cannot multiply its allowance by the thread
//! count), and they drain and stop together.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::runner::{sandboxes, Runner};
use support::Proxy;

fn threaded(runner: &Runner, threads: usize, server_extra: &str) -> String {
    runner.config(&format!(
        "{}[server]\nlisten = \"127.0.0.1:0\"\nthreads = {threads}\n{server_extra}",
        sandboxes()
    ))
}

fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("sandgate-") && name != "sandgate-log")
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_serving_thread_runs_serves_and_stops() {
    let runner = Runner::start("k").await;
    let mut proxy = Proxy::start(&threaded(&runner, 4, ""));
    // A thread names itself once it runs: give the last one a moment.
    let expected = ["sandgate-0", "sandgate-1", "sandgate-2", "sandgate-3"];
    for _ in 0..250 {
        if thread_names(proxy.pid()) == expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(thread_names(proxy.pid()), expected);
    let request =
        b"GET / HTTP/1.1\r\nHost: 3000-sbx-1.preview.localhost\r\nConnection: close\r\n\r\n";
    for _ in 0..64 {
        let raw = support::raw_exchange(proxy.addr, request, Duration::from_secs(10));
        assert_eq!(support::status_of(&raw), 200, "{raw}");
    }
    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Eight threads, two connections allowed per client IP: twelve connections get two answers,
/// whichever threads the kernel hands them to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_hold_across_serving_threads() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start(&threaded(&runner, 8, "max_connections_per_ip = 2\n"));
    let connections: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(proxy.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    // Every connection stays open until all are read: a closed one would free its slot.
    let answered = connections
        .iter()
        .filter(|s| {
            let mut stream: &TcpStream = s;
            let mut buf = [0u8; 512];
            let n = stream.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
        })
        .count();
    assert_eq!(answered, 2);
    drop(connections);
}
