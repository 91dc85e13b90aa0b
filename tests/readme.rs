//! The README's newcomer path, followed literally (issue #17): the example config serves a
//! preview with the `demo --runner-only` companion the README starts next to it, on the port and
//! key the example names (here moved to free ports, nothing else changed), and its HTTPS lines,
//! uncommented as the README says, load the certificates `certs dev --dir certs` writes.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use support::{get, Proxy, BIN};

/// `sandgate demo --runner-only` with the example's runner key; killed on drop.
struct DemoRunner {
    child: Child,
    addr: SocketAddr,
}

impl DemoRunner {
    fn start(key: &str) -> DemoRunner {
        let mut child = Command::new(BIN)
            .args(["demo", "--runner-only", "--runner-listen", "127.0.0.1:0"])
            .args(["--runner-key", key])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the demo runner");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("line");
        let addr = line
            .trim()
            .strip_prefix("demo runner listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("runner address");
        DemoRunner { child, addr }
    }
}

impl Drop for DemoRunner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key's value in the example config, e.g. the first runner's `api_key`.
fn example_value<'a>(example: &'a str, after: &str, key: &str) -> &'a str {
    let section = &example[example.find(after).expect(after)..];
    let line = section
        .lines()
        .find(|l| l.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} after {after}"));
    line.split('"').nth(1).expect("a quoted value")
}

#[tokio::test]
async fn the_example_config_serves_a_preview_with_the_demo_runner_companion() {
    let example = include_str!("../config/example.toml");
    let runner_url = example_value(example, "[[registry.runners]]", "url");
    let runner_key = example_value(example, "[[registry.runners]]", "api_key");
    assert_eq!(
        (runner_url, runner_key),
        ("http://127.0.0.1:9000", "runner-secret"),
        "the README starts the companion with these; keep them in step"
    );
    let runner = DemoRunner::start(runner_key);
    let config = example
        .replace("127.0.0.1:9000", &runner.addr.to_string())
        .replace("\"127.0.0.1:8080\"", "\"127.0.0.1:0\"")
        .replace("\"127.0.0.1:9090\"", "\"127.0.0.1:0\"");
    let proxy = Proxy::start(&config);
    let reply = get(proxy.addr, "3000-sbx-1.preview.localhost", "/hello").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "hello from sandbox sbx-1, port 3000, path /hello\n"
    );
}

#[test]
fn the_example_configs_https_lines_uncommented_load_the_dev_certificates() {
    // The repository's layout: config/example.toml and certs/ beside it.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("config")).unwrap();
    let out = Command::new(BIN)
        .args([
            "certs",
            "dev",
            "--domain",
            "preview.localhost",
            "--dir",
            "certs",
        ])
        .current_dir(root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let example = include_str!("../config/example.toml");
    let uncommented: String = example
        .lines()
        .map(|line| match line {
            l if l.starts_with("# [[tls.certs]]")
                || l.starts_with("# cert = ")
                || l.starts_with("# key = ") =>
            {
                l.trim_start_matches("# ").to_string()
            }
            l if l.starts_with("enabled = false") && l.contains("serve HTTPS") => {
                l.replacen("false", "true", 1)
            }
            l => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        uncommented.contains("\n[[tls.certs]]"),
        "the example has the lines"
    );
    let path = root.path().join("config/example.toml");
    std::fs::write(&path, uncommented).unwrap();
    // From another working directory: the paths follow the config file.
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .current_dir("/")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("https 127.0.0.1:8443"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
