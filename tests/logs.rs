//! Logs an operator can act on, from the real binary: an upstream failure names the runner, the
//! address, the OS error and the request id; every value is logfmt-safe (numeric status, quoted
//! strings, no `Some(…)`/`None`); no colour escapes in a file; one startup summary line; the
//! access log in its three formats carries user agent, upstream address and upstream time.
mod support;

use std::path::Path;
use std::time::Duration;

use support::runner::{sandboxes, Runner};
use support::{free_port, runner_config, send, Proxy};

const HOST: &str = "3000-sbx-1.preview.localhost";
const AGENT: &str = "probe/1.0 (\"quoted\" agent)";

async fn stderr_line(proxy: &Proxy, needle: &str) -> String {
    for _ in 0..250 {
        if let Some(line) = proxy.stderr().lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no log line with {needle:?}:\n{}", proxy.stderr());
}

/// Nothing a logfmt reader would choke on or an operator would have to decode.
fn assert_clean(log: &str) {
    for bad in ["Some(", "None", "502 Bad Gateway", "\u{1b}["] {
        assert!(!log.contains(bad), "{bad:?} in the log:\n{log}");
    }
}

struct Failure {
    name: &'static str,
    /// The runner is a closed port (else a runner that holds `/hold` unanswered).
    runner_down: bool,
    path: &'static str,
    /// Fields the `upstream failed` line has (`{runner}`: the runner's address).
    fields: &'static [&'static str],
}

const FAILURES: &[Failure] = &[
    Failure {
        name: "connection refused",
        runner_down: true,
        path: "/x",
        fields: &[
            " status=502 ",
            " code=\"RUNNER_UNREACHABLE\" ",
            " os_error=\"Connection refused (os error 111)\" ",
            " error=\"connecting to {runner} failed: Connection refused (os error 111)\" ",
            " path=\"/x\"",
        ],
    },
    Failure {
        name: "no response head in time",
        runner_down: false,
        path: "/hold",
        fields: &[
            " status=504 ",
            " code=\"UPSTREAM_TIMEOUT\" ",
            " os_error=\"-\" ",
            " error=\"no response headers within 300ms\" ",
            " path=\"/hold\"",
        ],
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_failure_names_runner_address_os_error_and_request_id() {
    let holding = Runner::start("k").await;
    for failure in FAILURES {
        let runner = match failure.runner_down {
            true => format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            false => holding.addr,
        };
        let timeout = "[proxy]\nresponse_header_timeout = \"300ms\"\n";
        let config = runner_config(runner, "k", sandboxes()).replacen("[proxy]\n", timeout, 1);
        let proxy = Proxy::start(&config);
        let request_id = format!("req-{}", failure.path.trim_start_matches('/'));
        let reply = send(
            proxy.addr,
            "GET",
            HOST,
            failure.path,
            &[("x-request-id", &request_id)],
            b"",
        )
        .await;
        assert!(reply.status >= 502, "{}: {}", failure.name, reply.status);
        let line = stderr_line(&proxy, "upstream failed").await;
        let common = [
            " WARN ".to_string(),
            " sandbox=\"sbx-1\" ".to_string(),
            " runner=\"runner-1\" ".to_string(),
            format!(" upstream=\"{runner}\" "),
            format!(" request_id=\"{request_id}\" "),
        ];
        let specific = failure
            .fields
            .iter()
            .map(|f| f.replace("{runner}", &runner.to_string()));
        for field in common.into_iter().chain(specific) {
            assert!(
                line.contains(&field),
                "{}: {field:?} missing from:\n{line}",
                failure.name
            );
        }
        assert_clean(&proxy.stderr());
    }
    holding.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_is_one_summary_line_without_option_noise() {
    let runner = Runner::start("k").await;
    let proxy = Proxy::start_with_env(&runner.config(sandboxes()), &[("NO_COLOR", "")]);
    let line = stderr_line(&proxy, "sandgate started").await;
    let config = format!(" config=\"{}\" ", proxy.config_path.display());
    for field in [
        " version=\"",
        " commit=\"",
        &config,
        " registry=\"static\" ",
        " runners=1 ",
        " sandboxes=2 ",
        &format!(" listen={} ", proxy.addr),
        " tls=off ",
        " admin=off",
    ] {
        assert!(line.contains(field), "{field:?} missing from:\n{line}");
    }
    assert_clean(&proxy.stderr());
}

struct Format {
    name: &'static str,
    check: fn(line: &str, runner: &str),
}

const FORMATS: &[Format] = &[
    Format {
        name: "text",
        check: |line, runner| {
            for field in [
                " status=200 ".to_string(),
                format!(" upstream=\"{runner}\" "),
                " upstream_micros=".to_string(),
                r#" user_agent="probe/1.0 (\"quoted\" agent)""#.to_string(),
            ] {
                assert!(line.contains(&field), "{field:?} missing from:\n{line}");
            }
        },
    },
    Format {
        name: "json",
        check: |line, runner| {
            let value: serde_json::Value = serde_json::from_str(line).expect(line);
            let fields = &value["fields"];
            assert_eq!(fields["status"], 200, "{line}");
            assert_eq!(fields["user_agent"], AGENT, "{line}");
            assert_eq!(fields["upstream"], runner, "{line}");
            assert!(fields["upstream_micros"].as_u64().is_some(), "{line}");
            assert!(
                fields["upstream_micros"].as_u64() <= fields["micros"].as_u64(),
                "{line}"
            );
        },
    },
    Format {
        name: "combined",
        check: |line, runner| {
            let parsed = combined(line).unwrap_or_else(|| panic!("not combined: {line}"));
            assert_eq!(parsed.client, "127.0.0.1");
            assert_eq!(parsed.request, "GET /c HTTP/1.1", "the query stays out");
            assert_eq!(parsed.status, "200");
            assert_eq!(parsed.referer, "-");
            assert_eq!(parsed.agent, r#"probe/1.0 (\"quoted\" agent)"#);
            assert!(parsed.rest.starts_with("rt="), "{line}");
            assert!(
                parsed.rest.contains(&format!(" upstream=\"{runner}\" ")),
                "{line}"
            );
            assert!(parsed.rest.contains(" sandbox=\"sbx-1\""), "{line}");
            let urt = parsed.rest.split(" urt=").nth(1).unwrap_or("");
            let seconds = urt.split(' ').next().unwrap_or("");
            assert!(seconds.parse::<f64>().is_ok(), "urt {seconds:?} in {line}");
        },
    },
];

/// Apache combined, field by field: `%h %l %u [%t] "%r" %>s %b "%{Referer}i" "%{User-agent}i"`,
/// then the rest. (A hand-written matcher: quoted fields may hold escaped quotes.)
struct Combined<'a> {
    client: &'a str,
    request: &'a str,
    status: &'a str,
    referer: &'a str,
    agent: &'a str,
    rest: &'a str,
}

fn combined(line: &str) -> Option<Combined<'_>> {
    let (client, rest) = line.split_once(" - - [")?;
    let (time, rest) = rest.split_once("] ")?;
    let time_ok = time.len() == 26
        && time.ends_with(" +0000")
        && time.as_bytes()[2] == b'/'
        && time.as_bytes()[6] == b'/';
    if !time_ok {
        return None;
    }
    let (request, rest) = quoted(rest)?;
    let (status, rest) = rest.split_once(' ')?;
    let (bytes, rest) = rest.split_once(' ')?;
    if status.len() != 3 || !(bytes == "-" || bytes.parse::<u64>().is_ok()) {
        return None;
    }
    let (referer, rest) = quoted(rest)?;
    let (agent, rest) = quoted(rest)?;
    Some(Combined {
        client,
        request,
        status,
        referer,
        agent,
        rest,
    })
}

/// `"…"` (with `\"` inside) at the start of `text`, and what follows the space after it.
fn quoted(text: &str) -> Option<(&str, &str)> {
    let body = text.strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => {
                let rest = &body[i + 1..];
                return Some((&body[..i], rest.strip_prefix(' ').unwrap_or(rest)));
            }
            _ => {}
        }
    }
    None
}

async fn first_line(path: &Path) -> String {
    for _ in 0..250 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no access line in {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_format_carries_user_agent_upstream_and_upstream_time() {
    let runner = Runner::start("k").await;
    for format in FORMATS {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let proxy = Proxy::start(&runner.config(&format!(
            "{}[log]\naccess_format = \"{}\"\naccess_output = {:?}\naccess_flush = \"20ms\"\n",
            sandboxes(),
            format.name,
            path
        )));
        let reply = send(
            proxy.addr,
            "GET",
            HOST,
            "/c?token=secret",
            &[("user-agent", AGENT)],
            b"",
        )
        .await;
        assert_eq!(reply.status, 200, "{}", format.name);
        let line = first_line(&path).await;
        assert!(!line.contains("secret"), "{line}");
        (format.check)(&line, &runner.addr.to_string());
    }
}

/// Colours on a terminal only while `NO_COLOR` is unset or empty: `script` gives the process a
/// pseudo-terminal; it logs the `cookie_keys` warning, then fails to bind a taken port and exits.
#[test]
fn colours_on_a_terminal_unless_no_color() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: script (util-linux) is not installed");
        return;
    }
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sandgate.toml");
    let listen = taken.local_addr().unwrap();
    std::fs::write(&config, format!("[server]\nlisten = \"{listen}\"\n")).unwrap();
    for (no_color, coloured) in [(None, true), (Some(""), true), (Some("1"), false)] {
        let mut command = std::process::Command::new("script");
        command
            .args(["-qec"])
            .arg(format!("{} serve -c {}", support::BIN, config.display()))
            .arg("/dev/null")
            .env_remove("NO_COLOR")
            .env("RUST_LOG", "info");
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("cookie_keys"), "{no_color:?}: {text}");
        assert_eq!(
            text.contains("\u{1b}["),
            coloured,
            "NO_COLOR={no_color:?}: {text:?}"
        );
    }
}
