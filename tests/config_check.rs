//! `sandgate check-config` and `sandgate serve` judge a config alike: every broken config is
//! refused by both, naming the file, the key path and the line; `--print` never shows a secret;
//! listen addresses as operators write them; relative paths from the config file's folder.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::BIN;

const RUNNERS: &str = r#"[[registry.runners]]
id = "r1"
url = "http://127.0.0.1:9"
api_key = "k1"

[[registry.runners]]
id = "r2"
url = "http://127.0.0.1:10"
api_key = "k2"
"#;

/// One broken config: what `check-config` and `serve` must both say about it.
struct Broken {
    name: &'static str,
    toml: String,
    /// Key paths every one of which the errors name.
    keys: &'static [&'static str],
    /// `FILE:LINE:` of the first key's error (None: the file does not set that key).
    line: Option<usize>,
    /// More text the errors must hold (the fix).
    says: &'static [&'static str],
}

fn broken_configs() -> Vec<Broken> {
    let sandbox = |id: &str, runner: &str| {
        format!("\n[[registry.sandboxes]]\nid = \"{id}\"\nrunner = \"{runner}\"\n")
    };
    vec![
        Broken {
            name: "unknown runner",
            toml: format!(
                "{RUNNERS}{}{}{}",
                sandbox("a", "r1"),
                sandbox("b", "r2"),
                sandbox("c", "r9")
            ),
            keys: &["registry.sandboxes[2].runner"],
            line: Some(21),
            says: &["unknown runner \"r9\"", "known runners: r1, r2"],
        },
        Broken {
            name: "duplicate sandbox id",
            toml: format!("{RUNNERS}{}{}", sandbox("a", "r1"), sandbox("A", "r2")),
            keys: &["registry.sandboxes[1].id"],
            line: Some(16),
            says: &["duplicate sandbox id \"A\"", "registry.sandboxes[0]"],
        },
        Broken {
            name: "duplicate runner id",
            toml: format!("{RUNNERS}\n[[registry.runners]]\nid = \"r1\"\nurl = \"http://h:1\"\napi_key = \"k\"\n"),
            keys: &["registry.runners[2].id"],
            line: Some(12),
            says: &["duplicate runner id \"r1\""],
        },
        Broken {
            name: "runner url without scheme",
            toml: "[[registry.runners]]\nid = \"r1\"\nurl = \"10.0.0.5:3003\"\napi_key = \"k\"\n".into(),
            keys: &["registry.runners[0].url"],
            line: Some(3),
            says: &["write \"http://10.0.0.5:3003\""],
        },
        Broken {
            name: "missing certificate file",
            toml: "[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\n[[tls.certs]]\ncert = \"certs/missing.pem\"\nkey = \"certs/missing.key\"\n".into(),
            keys: &["tls.certs[0].cert"],
            line: Some(6),
            // The resolved path: the config file's folder, not the working directory.
            says: &["{dir}/certs/missing.pem", "No such file"],
        },
        Broken {
            name: "access log in a missing folder",
            toml: "[server]\nlisten = \"127.0.0.1:0\"\n\n[log]\naccess_output = \"logs/access.log\"\n".into(),
            keys: &["log.access_output"],
            line: Some(5),
            says: &["{dir}/logs/access.log", "folder does not exist"],
        },
        Broken {
            name: "pid file in a missing folder",
            toml: "[server]\nlisten = \"127.0.0.1:0\"\npid_file = \"no-such-folder/sandgate.pid\"\n".into(),
            keys: &["server.pid_file"],
            line: Some(3),
            says: &["{dir}/no-such-folder/sandgate.pid", "folder does not exist"],
        },
        Broken {
            name: "redis url without a scheme",
            toml: "[registry]\nbackend = \"redis\"\n\n[redis]\nurl = \"localhost:6379\"\n".into(),
            keys: &["redis.url"],
            line: Some(5),
            says: &["\"localhost:6379\""],
        },
        Broken {
            name: "sentinel master without sentinels",
            toml: "[activity]\nsink = \"redis\"\n\n[redis]\nsentinel_master = \"mymaster\"\n".into(),
            keys: &["redis.sentinel_master"],
            line: Some(5),
            says: &["redis.sentinel_nodes is empty"],
        },
        Broken {
            name: "tls on without certificates",
            toml: "[tls]\nlisten = \"127.0.0.1:0\"\nenabled = true\n".into(),
            keys: &["tls.enabled"],
            line: Some(3),
            says: &["[[tls.certs]]"],
        },
        Broken {
            name: "wildcard preview domain",
            toml: "[proxy]\ndomains = [\"preview.example.com\", \"*.preview.localhost\"]\n".into(),
            keys: &["proxy.domains[1]"],
            line: Some(2),
            says: &["write the base domain: preview.localhost"],
        },
        Broken {
            name: "typo in a key",
            toml: "[server]\nmax_headers = 10\nlisen = \"127.0.0.1:0\"\n".into(),
            keys: &["server.lisen"],
            line: Some(3),
            says: &["unknown key", "did you mean `listen`?"],
        },
        Broken {
            name: "typo in a section",
            toml: "[server]\nlisten = \"127.0.0.1:0\"\n\n[registy]\nbackend = \"static\"\n".into(),
            keys: &["registy"],
            line: Some(4),
            says: &["did you mean `registry`?"],
        },
        Broken {
            name: "typo in a value",
            toml: "[server]\nlisten = \"127.0.0.1:0\"\n\n[registry]\nbackend = \"redsi\"\n".into(),
            keys: &["registry.backend"],
            line: Some(5),
            says: &["unknown value \"redsi\"; did you mean `redis`?"],
        },
        Broken {
            name: "wrong type",
            toml: "[server]\nlisten = \"127.0.0.1:0\"\nmax_headers = \"many\"\n".into(),
            keys: &["server.max_headers"],
            line: Some(3),
            says: &["invalid type"],
        },
        Broken {
            name: "listen without a port",
            toml: "[admin]\nlisten = \"localhost\"\n".into(),
            keys: &["admin.listen"],
            line: Some(2),
            says: &["\":8080\""],
        },
        Broken {
            name: "acme without the HTTPS listener",
            toml: "[domains]\nenabled = true\n\n[acme]\nenabled = true\n".into(),
            keys: &["acme.enabled"],
            line: Some(5),
            says: &["needs tls.enabled"],
        },
        Broken {
            name: "acme's CA root missing",
            toml: "[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\n[[tls.certs]]\ncert = \"certs/missing.pem\"\nkey = \"certs/missing.key\"\n\n[domains]\nenabled = true\n\n[acme]\nenabled = true\nca_root = \"pebble-root.pem\"\n".into(),
            keys: &["tls.certs[0].cert", "acme.ca_root"],
            line: Some(6),
            says: &["pebble-root.pem"],
        },
        Broken {
            name: "a DNS-01 wildcard with ACME off",
            toml: "[acme.dns01]\nnames = [\"*.preview.example.com\"]\nhook = \"/bin/true\"\n".into(),
            keys: &["acme.dns01.names"],
            line: Some(2),
            says: &["needs acme.enabled = true"],
        },
        Broken {
            name: "a DNS-01 name that is no wildcard",
            toml: "[acme]\nenabled = true\n\n[acme.dns01]\nhook = \"/bin/true\"\nnames = [\"preview.example.com\"]\n".into(),
            keys: &["acme.dns01.names"],
            line: Some(6),
            says: &["\"*.preview.example.com\""],
        },
        Broken {
            name: "a DNS-01 wildcard without its hook",
            toml: "[acme]\nenabled = true\n\n[acme.dns01]\nnames = [\"*.preview.example.com\"]\n".into(),
            keys: &["acme.dns01.names"],
            line: Some(5),
            says: &["needs acme.dns01.hook"],
        },
        Broken {
            name: "a DNS-01 hook slower than the order",
            toml: "[acme]\nenabled = true\norder_timeout = \"30s\"\n\n[acme.dns01]\nnames = [\"*.preview.example.com\"]\nhook = \"/bin/true\"\n".into(),
            keys: &["acme.dns01.hook_timeout", "acme.order_timeout"],
            line: None,
            says: &["must be below acme.order_timeout (30s)"],
        },
        Broken {
            name: "several errors at once",
            toml: format!(
                "[proxy]\ndomains = [\"*.preview.localhost\"]\n\n{RUNNERS}{}{}",
                sandbox("a", "r7"),
                sandbox("a", "r1")
            ),
            keys: &[
                "proxy.domains[0]",
                "registry.sandboxes[0].runner",
                "registry.sandboxes[1].id",
            ],
            line: Some(2),
            says: &["known runners: r1, r2"],
        },
    ]
}

/// A config file in a fresh folder (kept while the value lives).
struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

fn config_file(toml: &str) -> ConfigFile {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sandgate.toml");
    std::fs::write(&path, toml).expect("write config");
    ConfigFile { dir, path }
}

/// `sandgate ARGS`, from `/` (so nothing resolves against the test's folder), without the
/// environment's config overrides; killed after 20 s.
fn sandgate(args: &[&str], path: Option<&Path>) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir("/")
        .env_remove("SANDGATE_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = path {
        command.arg("-c").arg(path);
    }
    let mut child = command.spawn().expect("spawn sandgate");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "sandgate {args:?} still running after 20 s: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_config_and_serve_refuse_every_broken_config_naming_file_key_and_line() {
    let mut failures = Vec::new();
    for case in broken_configs() {
        let file = config_file(&case.toml);
        let dir = file.dir.path().display().to_string();
        let file_name = file.path.display().to_string();
        for command in ["check-config", "serve"] {
            let output = sandgate(&[command], Some(&file.path));
            let stderr = text(&output.stderr);
            let mut wants: Vec<String> = case.keys.iter().map(|k| k.to_string()).collect();
            wants.extend(case.says.iter().map(|s| s.replace("{dir}", &dir)));
            if let Some(line) = case.line {
                wants.push(format!("{file_name}:{line}: {}", case.keys[0]));
            }
            let mut wrong = Vec::new();
            if output.status.code() != Some(1) {
                wrong.push(format!("exit {:?}, wanted 1", output.status.code()));
            }
            wrong.extend(
                wants
                    .iter()
                    .filter(|w| !stderr.contains(w.as_str()))
                    .map(|w| format!("no {w:?}")),
            );
            if stderr.contains("default.") {
                wrong.push("figment's `default.` profile leaks".into());
            }
            if command == "check-config" && !text(&output.stdout).is_empty() {
                wrong.push("stdout not empty".into());
            }
            if !wrong.is_empty() {
                failures.push(format!(
                    "{} ({command}): {}\n{stderr}",
                    case.name,
                    wrong.join("; ")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// One config whose error is about a secret's value: the error names the key, never the value.
struct SecretInError {
    name: &'static str,
    toml: &'static str,
    key: &'static str,
    secret: &'static str,
}

const SECRET_IN_ERRORS: &[SecretInError] = &[
    SecretInError {
        name: "a cookie key of the wrong type",
        toml: "[auth]\ncookie_keys = \"PLANTED-s3cret\"\n",
        key: "auth.cookie_keys",
        secret: "PLANTED-s3cret",
    },
    SecretInError {
        name: "a number where a secret string goes",
        toml: "[auth.jwt]\nhs256_secret = 7355608\n",
        key: "auth.jwt.hs256_secret",
        secret: "7355608",
    },
    SecretInError {
        name: "a syntax error in a secret's line",
        toml: "[daytona]\napi_key = \"PLANTED-s3cret\n",
        key: "api_key",
        secret: "PLANTED-s3cret",
    },
    SecretInError {
        name: "a syntax error in a URL with a password",
        toml: "[redis]\nurl = \"redis://:PLANTED-s3cret@127.0.0.1:6379\n",
        key: "url",
        secret: "PLANTED-s3cret",
    },
    SecretInError {
        name: "a runner URL with credentials",
        toml: "[[registry.runners]]\nid = \"r1\"\nurl = \"http://u:PLANTED-s3cret@127.0.0.1:9\"\napi_key = \"k\"\n",
        key: "registry.runners[0].url",
        secret: "PLANTED-s3cret",
    },
];

#[test]
fn errors_about_a_secret_never_show_it() {
    let mut failures = Vec::new();
    for case in SECRET_IN_ERRORS {
        let file = config_file(case.toml);
        let output = sandgate(&["check-config"], Some(&file.path));
        let said = format!("{}{}", text(&output.stdout), text(&output.stderr));
        let mut wrong = Vec::new();
        if output.status.code() != Some(1) {
            wrong.push(format!("exit {:?}, wanted 1", output.status.code()));
        }
        if !said.contains(case.key) {
            wrong.push(format!("no {:?}", case.key));
        }
        if said.contains(case.secret) {
            wrong.push("shows the secret".into());
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n{said}", case.name, wrong.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn check_config_prints_a_verdict_with_counts_and_listeners() {
    let toml = format!(
        "[server]\nlisten = \":18080\"\n\n[admin]\nlisten = \"localhost:19090\"\n\n\
         [proxy]\ndomains = [\"preview.localhost\"]\n\n{RUNNERS}\n\
         [[registry.sandboxes]]\nid = \"a\"\nrunner = \"r1\"\n\n\
         [[registry.sandboxes]]\nid = \"b\"\naddress = \"127.0.0.1\"\n"
    );
    let file = config_file(&toml);
    let output = sandgate(&["check-config"], Some(&file.path));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let want = format!(
        "OK: {}: 2 runners, 2 sandboxes, listeners http 0.0.0.0:18080, admin 127.0.0.1:19090\n",
        file.path.display()
    );
    assert_eq!(text(&output.stdout), want);
}

#[test]
fn check_config_without_a_file_refuses_and_serve_says_it_runs_defaults() {
    let output = sandgate(&["check-config"], None);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("check-config -c FILE"), "{stderr}");
    assert!(output.stdout.is_empty());

    let mut serve = Command::new(BIN)
        .arg("serve")
        .current_dir("/")
        .env_remove("SANDGATE_CONFIG")
        .env("SANDGATE_SERVER__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = serve.stderr.take().expect("stderr");
    let first = BufReader::new(stderr).lines().next();
    let _ = serve.kill();
    let _ = serve.wait();
    let first = first.and_then(Result::ok).unwrap_or_default();
    assert!(
        first.contains("no config file") && first.contains("built-in defaults"),
        "{first}"
    );
}

#[test]
fn print_shows_the_effective_config_as_toml_without_any_secret() {
    let secrets = [
        "runner-api-key-s3cret",
        "sandbox-auth-token-s3cret",
        "api-key-entry-s3cret",
        "ssh-token-s3cret",
        "scoped-preview-token-s3cret",
        "cookie-key-s3cret-0123456789abcdef0123456789",
        "hs256-s3cret-0123456789abcdef0123456789abcdef",
        "redis-passw0rd-s3cret",
        "daytona-api-key-s3cret",
        "oidc-client-s3cret",
    ];
    let toml = format!(
        r#"
[auth]
cookie_keys = ["{}"]
[auth.jwt]
hs256_secret = "{}"

[redis]
url = "redis://:{}@127.0.0.1:6379/0"

[daytona]
api_key = "{}"

[[registry.runners]]
id = "r1"
url = "http://127.0.0.1:9"
api_key = "{}"

[[registry.sandboxes]]
id = "a"
runner = "r1"
auth_token = "{}"
preview_tokens = [{{ token = "{}", ports = [3000] }}]

[[registry.api_keys]]
key = "{}"
organization = "org"

[[registry.ssh_tokens]]
token = "{}"
sandbox = "a"
"#,
        secrets[5],
        secrets[6],
        secrets[7],
        secrets[8],
        secrets[0],
        secrets[1],
        secrets[4],
        secrets[2],
        secrets[3],
    );
    let file = config_file(&toml);
    let output = sandgate(&["check-config", "--print"], Some(&file.path));
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let leaked: Vec<&str> = secrets
        .iter()
        .copied()
        .filter(|s| stdout.contains(&s[..12]))
        .collect();
    assert!(leaked.is_empty(), "leaked {leaked:?}:\n{stdout}");
    let printed = stdout.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
    let parsed: toml::Table = toml::from_str(printed).expect("--print is TOML");
    let runner = &parsed["registry"]["runners"][0];
    assert_eq!(runner["api_key"].as_str(), Some("<redacted>"));
    assert_eq!(runner["url"].as_str(), Some("http://127.0.0.1:9"));
    assert_eq!(
        parsed["redis"]["url"].as_str(),
        Some("redis://:<redacted>@127.0.0.1:6379/0")
    );
    assert_eq!(
        parsed["server"]["listen"].as_str(),
        Some("127.0.0.1:8080"),
        "defaults are printed too"
    );
}

/// Runs `serve -c path` until it prints a line starting with `prefix`; returns that line.
fn serve_until(path: &Path, prefix: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["serve", "-c"])
        .arg(path)
        .current_dir("/")
        .env_remove("SANDGATE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = prefix.to_string();
    std::thread::spawn(move || {
        let found = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with(&wanted));
        let _ = tx.send(found);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).ok().flatten();
    let _ = child.kill();
    let _ = child.wait();
    line.unwrap_or_else(|| panic!("serve never printed {prefix:?}"))
}

#[test]
fn listen_takes_a_bare_port_and_host_names() {
    for (listen, want_prefix) in [
        (":0", "sandgate listening on http://0.0.0.0:"),
        ("localhost:0", "sandgate listening on http://127.0.0.1:"),
    ] {
        let file = config_file(&format!("[server]\nlisten = \"{listen}\"\n"));
        let line = serve_until(&file.path, "sandgate listening on http://");
        assert!(line.starts_with(want_prefix), "{listen}: {line}");
        let port: u16 = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .expect("port");
        assert_ne!(port, 0, "{listen}: {line}");
    }
}

#[test]
fn relative_certificate_paths_are_read_from_the_config_files_folder() {
    let file = config_file(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[tls]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\n\
         [[tls.certs]]\ncert = \"certs/preview.localhost.pem\"\nkey = \"certs/preview.localhost.key\"\n",
    );
    let certs = file.dir.path().join("certs");
    let made = Command::new(BIN)
        .args(["certs", "dev", "--dir"])
        .arg(&certs)
        .output()
        .expect("certs dev");
    assert!(made.status.success(), "{}", text(&made.stderr));
    // Both run from `/`, where `certs/…` does not exist.
    let output = sandgate(&["check-config"], Some(&file.path));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains(", https 127.0.0.1:0"));
    let line = serve_until(&file.path, "sandgate listening on https://");
    assert!(line.contains("127.0.0.1:"), "{line}");
}

#[test]
fn redis_commands_on_a_static_config_say_they_need_redis() {
    let file = config_file(RUNNERS);
    for args in [
        &["registry", "list"][..],
        &["preview-url", "list", "--sandbox", "a"][..],
    ] {
        let output = sandgate(args, Some(&file.path));
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        let want = format!(
            "this command needs registry.backend = \"redis\" (or a [redis] url); {} uses static",
            file.path.display()
        );
        assert!(stderr.contains(&want), "{args:?}: {stderr}");
        assert!(!stderr.contains("refused"), "{args:?}: {stderr}");
    }
}

/// `check-config --print` run from `cwd` with `env`: the effective config, parsed.
fn effective_config(path: &Path, cwd: &Path, env: &[(&str, &str)]) -> toml::Table {
    let mut command = Command::new(BIN);
    command
        .args(["check-config", "--print", "-c"])
        .arg(path)
        .current_dir(cwd)
        .env_remove("SANDGATE_CONFIG")
        .envs(env.iter().copied());
    let output = command.output().expect("check-config");
    let stdout = text(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let printed = stdout.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
    toml::from_str(printed).expect("--print is TOML")
}

#[test]
fn only_paths_the_file_writes_are_read_from_its_folder() {
    struct Row {
        name: &'static str,
        toml: &'static str,
        env: &'static [(&'static str, &'static str)],
        /// (section, key) in the printed config.
        key: (&'static str, &'static str),
        /// `{dir}`: the config file's folder.
        want: &'static str,
    }
    let rows = [
        Row {
            name: "pid file the file writes",
            toml: "[server]\npid_file = \"sandgate.pid\"\n",
            env: &[],
            key: ("server", "pid_file"),
            want: "{dir}/sandgate.pid",
        },
        Row {
            name: "access log the file writes",
            toml: "[log]\naccess_output = \"access.log\"\n",
            env: &[],
            key: ("log", "access_output"),
            want: "{dir}/access.log",
        },
        Row {
            name: "default ssh host key (the file has [ssh] without it)",
            toml: "[ssh]\nupstream_user = \"daytona\"\n",
            env: &[],
            key: ("ssh", "host_key"),
            want: "ssh_host_ed25519_key",
        },
        Row {
            name: "default ssh upstream key",
            toml: "",
            env: &[],
            key: ("ssh", "upstream_key"),
            want: "ssh_upstream_ed25519_key",
        },
        Row {
            name: "access log from the environment over the file's",
            toml: "[log]\naccess_output = \"access.log\"\n",
            env: &[("SANDGATE_LOG__ACCESS_OUTPUT", "./x.log")],
            key: ("log", "access_output"),
            want: "./x.log",
        },
        Row {
            name: "pid file from the environment",
            toml: "",
            env: &[("SANDGATE_SERVER__PID_FILE", "run.pid")],
            key: ("server", "pid_file"),
            want: "run.pid",
        },
    ];
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut failures = Vec::new();
    for row in rows {
        let file = config_file(row.toml);
        let dir = file.dir.path().display().to_string();
        let printed = effective_config(&file.path, cwd.path(), row.env);
        let (section, key) = row.key;
        let got = printed[section][key]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let want = row.want.replace("{dir}", &dir);
        if got != want {
            failures.push(format!(
                "{}: {section}.{key} = {got:?}, wanted {want:?}",
                row.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The README's flow: keys made in the working directory, the gateway started there with a
/// config kept elsewhere that names no key path.
#[test]
fn the_ssh_gateway_finds_its_default_keys_in_the_working_directory() {
    let cwd = tempfile::tempdir().expect("tempdir");
    for key in ["ssh_host_ed25519_key", "ssh_upstream_ed25519_key"] {
        let made = Command::new(BIN)
            .args(["ssh-gateway", "keygen", "--out", key])
            .current_dir(cwd.path())
            .output()
            .expect("keygen");
        assert!(made.status.success(), "{}", text(&made.stderr));
    }
    let file = config_file("[ssh]\nlisten = \"127.0.0.1:0\"\n");
    let mut child = Command::new(BIN)
        .args(["ssh-gateway", "-c"])
        .arg(&file.path)
        .current_dir(cwd.path())
        .env_remove("SANDGATE_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh-gateway");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let first = BufReader::new(stdout).lines().next().and_then(Result::ok);
        let _ = tx.send(first);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).ok().flatten();
    let _ = child.kill();
    let output = child.wait_with_output().expect("output");
    let line = line.unwrap_or_default();
    assert!(
        line.starts_with("sandgate ssh gateway listening on 127.0.0.1:"),
        "{line:?}\n{}",
        text(&output.stderr)
    );
}
