//! `sandgate demo` as a newcomer runs it: on free ports with a custom `--runner-key`, it starts
//! without warnings, prints a URL or command for every case, and each one works as printed
//! (public page, private token link and header, stopped sandbox woken, SSE, a 64 MiB download,
//! toolbox, health, the admin listener's metrics).
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{free_port, BIN};

struct Demo {
    child: Child,
    stdout: Vec<String>,
    stderr_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let stderr_path = dir.path().join("stderr.log");
        let mut child = Command::new(BIN)
            .args(["demo", "--runner-key", "not-the-default-key"])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn demo");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut stdout = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
            let done = line.starts_with("Ctrl-C");
            stdout.push(line);
            if done {
                break;
            }
        }
        Demo {
            child,
            stdout,
            stderr_path,
            _dir: dir,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The printed line for `label` (its first word), without the label.
    fn line(&self, label: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut current = "";
        for line in &self.stdout {
            let trimmed = line.trim();
            if !line.starts_with("  ") {
                continue;
            }
            // A continuation line (deeper indent) belongs to the label above it.
            if line.starts_with("   ") {
                if current == label {
                    found.push(trimmed.to_string());
                }
                continue;
            }
            let Some((first, rest)) = trimmed.split_once(char::is_whitespace) else {
                continue;
            };
            current = first;
            if first == label {
                found.push(rest.trim().to_string());
            }
        }
        found
    }
}

/// A printed URL or curl command as printed, without its trailing `(comment)`; a bare URL
/// becomes `curl URL`.
fn command_of(printed: &str) -> String {
    let command = printed.split("   (").next().unwrap_or(printed).trim();
    match command.strip_prefix("http://") {
        Some(_) => format!("curl '{command}'"),
        None => command.to_string(),
    }
}

/// Runs `command` (a curl line) with a time limit, printing the status last.
fn run_curl(command: &str, seconds: u32) -> (String, String) {
    let full = format!(
        "{command} -sS --max-time {seconds} -w '\\nHTTP %{{http_code}} SIZE %{{size_download}}'"
    );
    let out = Command::new("sh").arg("-c").arg(&full).output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_printed_case_works_with_a_custom_runner_key_and_no_warnings() {
    let demo = Demo::start();
    let printed = demo.stdout.join("\n");
    assert!(
        printed.contains("Ctrl-C stops it."),
        "{printed}\n{}",
        demo.stderr()
    );
    // (label, seconds allowed, what the output must contain)
    let rows: [(&str, u32, &[&str]); 8] = [
        (
            "public",
            10,
            &["hello from sandbox <code>demo</code>", "HTTP 200"],
        ),
        (
            "private",
            10,
            &["hello from sandbox", "private", "HTTP 200"],
        ),
        (
            "stopped",
            15,
            &["hello from sandbox <code>sleepy</code>", "HTTP 200"],
        ),
        ("events", 3, &["data: tick 1", "HTTP 200"]),
        ("download", 30, &["HTTP 200 SIZE 67108864"]),
        ("toolbox", 10, &["{\"version\":\"demo\"}", "HTTP 200"]),
        ("health", 10, &["\"status\":\"ok\"", "HTTP 200"]),
        ("metrics", 10, &["sandgate_requests_total", "HTTP 200"]),
    ];
    let mut failures = Vec::new();
    let mut commands = 0;
    for (label, seconds, wants) in rows {
        let lines = demo.line(label);
        if lines.is_empty() {
            failures.push(format!("{label}: not printed in\n{printed}"));
        }
        for printed_line in lines {
            commands += 1;
            let command = command_of(&printed_line);
            let (out, err) = run_curl(&command, seconds);
            // The page says "Hello from sandbox <code>x</code>", the app's line "hello from
            // sandbox x": compared in lower case.
            let seen = out.to_lowercase();
            let missing: Vec<_> = wants
                .iter()
                .filter(|want| !seen.contains(&want.to_lowercase()))
                .collect();
            if !missing.is_empty() {
                failures.push(format!(
                    "{label}: {command}: want {missing:?}, got {out:?} {err}"
                ));
            }
        }
    }
    assert!(commands >= 9, "{printed}");
    // Without the printed token, the private sandbox is closed.
    let url = demo.line("private")[0]
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let (out, _) = run_curl(&format!("curl '{url}'"), 10);
    if !out.contains("HTTP 401") {
        failures.push(format!("private without the token: {out}"));
    }
    let stderr = demo.stderr();
    if stderr.contains("WARN") {
        failures.push(format!("warnings at start:\n{stderr}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
