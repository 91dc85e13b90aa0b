//! Packaging (issue #17): the Dockerfile passes hadolint, the systemd unit passes
//! `systemd-analyze verify` with its hardening in place, the configs the container images ship
//! pass `check-config`, and the completion scripts and man page are generated from the CLI.
//! `docker build` is not available here; hadolint is the Dockerfile's check.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sandgate");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (.ci/run installs it): {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_dockerfile_passes_hadolint_and_runs_as_non_root_from_a_small_image() {
    let dockerfile = repo("Dockerfile");
    let out = run("hadolint", &[dockerfile.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let file = std::fs::read_to_string(&dockerfile).unwrap();
    let stages: Vec<&str> = file.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    assert!(stages[1].contains("distroless"), "{}", stages[1]);
    let user = file.lines().rev().find(|l| l.starts_with("USER ")).unwrap();
    assert!(!user.contains("root") && !user.contains(" 0"), "{user}");
    // Every file the images copy in exists.
    for line in file.lines().filter(|l| l.starts_with("COPY deploy/")) {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(repo(source).exists(), "{line}");
    }
}

#[test]
fn the_systemd_unit_verifies_and_keeps_its_hardening() {
    let unit = std::fs::read_to_string(repo("deploy/sandgate.service")).unwrap();
    for directive in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        // Upgrades (SIGUSR2): the new process sends READY=1 and MAINPID= from another pid.
        "Type=notify",
        "NotifyAccess=all",
    ] {
        assert!(unit.contains(directive), "missing {directive}");
    }
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandgate.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/sandgate", BIN)).unwrap();
    let out = run(
        "systemd-analyze",
        &["verify", "--man=no", path.to_str().unwrap()],
    );
    let complaints = text(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
}

#[test]
fn the_configs_the_images_ship_pass_check_config() {
    for config in [
        "deploy/docker/sandgate.toml",
        "deploy/docker/sandgate-redis.toml",
        "config/example.toml",
    ] {
        let out = run(
            BIN,
            &["check-config", "--config", repo(config).to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{config}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn completions_are_generated_for_each_shell_and_bash_parses_them() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef sandgate"),
        ("fish", "complete -c sandgate"),
        ("elvish", "sandgate"),
        ("powershell", "sandgate"),
    ] {
        let out = run(BIN, &["completions", shell]);
        let script = text(&out.stdout);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        assert!(script.contains("check-config"), "{shell}: no subcommands");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandgate.bash");
    std::fs::write(&path, run(BIN, &["completions", "bash"]).stdout).unwrap();
    let out = run("bash", &["-n", path.to_str().unwrap()]);
    assert!(out.status.success(), "bash -n: {}", text(&out.stderr));
    let out = run(BIN, &["completions", "tcsh"]);
    assert!(!out.status.success(), "an unknown shell is refused");
}

#[test]
fn the_man_page_is_roff_naming_every_command() {
    let out = run(BIN, &["man"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.starts_with(".TH"),
        "{page:.80}"
    );
    assert!(page.contains(".TH sandgate 1"), "{page:.200}");
    let dir = tempfile::tempdir().unwrap();
    let out = run(BIN, &["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The main page lists each command as `sandgate-<command>(1)`: each of those pages exists.
    for command in [
        "serve",
        "demo",
        "check-config",
        "certs",
        "registry",
        "completions",
    ] {
        let listed = format!("sandgate\\-{}(1)", command.replace('-', "\\-"));
        assert!(
            page.contains(&listed),
            "the man page does not list {listed}"
        );
        let file = dir.path().join(format!("sandgate-{command}.1"));
        let sub = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        assert!(sub.contains(".SH SYNOPSIS"), "{file:?}");
    }
}

#[test]
fn the_license_file_is_the_one_cargo_declares() {
    let license = std::fs::read_to_string(repo("LICENSE")).unwrap();
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"Apache-2.0\""));
    assert!(license.contains("Apache License") && license.contains("Version 2.0"));
}

/// `docs/deploy.md`'s HAProxy example is a whole config that `haproxy -c` accepts without a
/// warning, and it sends the PROXY header the sandgate config beside it expects.
#[test]
fn the_deployment_guides_haproxy_config_is_valid() {
    let guide = std::fs::read_to_string(repo("docs/deploy.md")).unwrap();
    let config = guide
        .split_once("```haproxy\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .map(|(config, _)| config)
        .expect("an haproxy block in docs/deploy.md");
    assert!(config.contains("send-proxy-v2"), "{config}");
    assert!(guide.contains("proxy_protocol = true"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let out = run("haproxy", &["-c", "-f", path.to_str().unwrap()]);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "haproxy -c: {said}");
    assert!(!said.contains("WARNING"), "haproxy -c: {said}");
}
