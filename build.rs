//! Bakes the git commit into the binary (`sandgate --version`, `sandgate_build_info`): the short
//! hash of HEAD (or `SANDGATE_COMMIT` when set, as in the Dockerfile, whose build context has
//! no `.git`), or `unknown` outside a git checkout or without git. Never fails the build.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SANDGATE_COMMIT");
    let commit = std::env::var("SANDGATE_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .filter(|hash| !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SANDGATE_COMMIT={commit}");
    // A new commit (or a switched branch) changes HEAD or the ref it names; in a worktree HEAD
    // is in the worktree's git dir and the refs in the common one.
    let git_dir = git(&["rev-parse", "--git-dir"]);
    let common_dir = git(&["rev-parse", "--git-common-dir"]);
    let watched = [
        git_dir.as_ref().map(|d| format!("{d}/HEAD")),
        common_dir.as_ref().map(|d| format!("{d}/refs/heads")),
        common_dir.as_ref().map(|d| format!("{d}/packed-refs")),
    ];
    for path in watched.into_iter().flatten() {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// `git <args>`'s trimmed output, or `None` when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| text.trim().to_string())
}
