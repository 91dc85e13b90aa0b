//! The layers stay one-way: reads the `crate::…` paths of `src/` (outside `#[cfg(test)]`
//! modules) and fails when a module names a layer above its own, or when the top-level modules
//! import each other in a cycle.
//!
//! Layers, top to bottom (a module may name its own layer and the ones below):
//! binary (`main.rs`, admin verbs, demo) → `app` → `http` → domain (`auth`, `registry`,
//! `activity`, `ssh`, `tls`, `wake`) → `config`, `metrics` → `base`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of a top-level module (higher is further up), or `None` for one this check does
/// not know (a new module must be placed here).
fn layer(module: &str) -> Option<u8> {
    Some(match module {
        "main" | "cli" => 6,
        "app" => 5,
        "http" => 4,
        "auth" | "registry" | "activity" | "ssh" | "tls" | "wake" => 3,
        "config" | "metrics" => 2,
        "base" => 1,
        _ => return None,
    })
}

/// The top-level module a `crate::<name>` path lands in: `lib.rs` re-exports some names at
/// the crate root for old paths.
fn resolve(name: &str) -> &str {
    match name {
        "body" | "client_addr" | "client_io" | "forward" | "relay" | "respond" | "route"
        | "server" | "upstream" | "proxy" => "http",
        "FastMap" => "base",
        "start" | "Running" | "StartError" => "app",
        other => other,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/http/gate.rs` → `http`, `src/app.rs` → `app`.
fn module_of(relative: &str) -> String {
    let rest = relative.trim_start_matches("src/");
    let first = rest.split('/').next().unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file before its test module, without comments.
fn code(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let line = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            Some(_) | None => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The top-level names after every `crate::` in `code`, including grouped ones
/// (`use crate::{a::X, b};`).
fn crate_names(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let Some(group) = rest.strip_prefix('{') else {
            names.insert(ident(rest));
            continue;
        };
        let (mut depth, mut start) = (0usize, true);
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => start = true,
                c if start && !c.is_whitespace() => {
                    names.insert(ident(&group[j..]));
                    start = false;
                }
                _ => {}
            }
        }
    }
    names.retain(|n| !n.is_empty() && n != "self");
    names
}

#[test]
fn imports_point_down_and_top_level_modules_form_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &files {
        let relative = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let from = module_of(&relative);
        if from == "lib" || relative.ends_with("/tests.rs") {
            continue; // declarations and re-exports only; test modules may reach anywhere
        }
        let Some(from_layer) = layer(&from) else {
            violations.push(format!(
                "{relative}: module `{from}` has no layer in tests/layers.rs"
            ));
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap();
        for name in crate_names(&code(&text)) {
            let to = resolve(&name).to_string();
            if to == from {
                continue;
            }
            let Some(to_layer) = layer(&to) else {
                violations.push(format!("{relative}: `crate::{name}` is in no known layer"));
                continue;
            };
            if to_layer > from_layer {
                violations.push(format!(
                    "{relative}: `{from}` (layer {from_layer}) imports `crate::{name}` (`{to}`, layer {to_layer}), a layer above it"
                ));
            }
            graph.entry(from.clone()).or_default().insert(to);
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        violations.push(format!(
            "cycle between top-level modules: {}",
            cycle.join(" → ")
        ));
    }
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
}

/// One cycle of `graph`, if there is any (depth-first search with a path stack).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(node.to_string(), Mark::Open);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let start = path.iter().position(|n| n == next).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(next, graph, marks, path) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks.insert(node.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if marks.get(node).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
                return Some(cycle);
            }
        }
    }
    None
}

#[test]
fn the_path_reader_sees_grouped_and_inline_paths() {
    let names = crate_names(
        "use crate::http::{a, b};\nuse crate::{auth::{x, y}, registry,\n base::clock};\nlet t = crate::wake::Waker::new();\nmy_crate::nope();",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["auth", "base", "http", "registry", "wake"]);
}
