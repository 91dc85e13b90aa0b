//! Table-driven requests: a [`Row`] is one request (method, host, path, headers, body) and what
//! must come of it (status, JSON code, response headers, what the upstream saw). [`run`] sends
//! the rows in order and fails once at the end, naming every row that failed, not only the
//! first.

use std::fmt;
use std::net::SocketAddr;

use serde_json::Value;

use super::runner::Runner;
use super::{recorder, send, Reply};

/// One request and its expectations.
pub struct Row {
    pub name: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub expect: Vec<Expect>,
}

impl Row {
    pub fn new(
        name: impl Into<String>,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        expect: impl IntoIterator<Item = Expect>,
    ) -> Row {
        Row {
            name: name.into(),
            method: method.to_string(),
            host: host.to_string(),
            path: path.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
            expect: expect.into_iter().collect(),
        }
    }

    pub fn get(
        name: impl Into<String>,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        expect: impl IntoIterator<Item = Expect>,
    ) -> Row {
        Row::new(name, "GET", host, path, headers, expect)
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Row {
        self.body = body.into();
        self
    }
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} ({} {}{})",
            self.name, self.method, self.host, self.path
        )
    }
}

/// Where a row learns what the upstream received.
pub enum Upstream<'r> {
    /// The reply is the upstream's own record of the request (`support::recorder`).
    Recorder,
    /// The request the runner received while the row was sent (none: the row fails).
    Runner(&'r Runner),
}

type Verdict = Result<(), String>;

/// One expectation of a row: on the reply, or on the upstream's record of the request (in the
/// shape `support::recorder` answers: method, path, query, headers as name → [values]).
pub enum Expect {
    Reply(Box<dyn Fn(&Reply) -> Verdict>),
    Upstream(Box<dyn Fn(&Value) -> Verdict>),
}

fn on_reply(check: impl Fn(&Reply) -> Verdict + 'static) -> Expect {
    Expect::Reply(Box::new(check))
}

fn on_upstream(check: impl Fn(&Value) -> Verdict + 'static) -> Expect {
    Expect::Upstream(Box::new(check))
}

fn verdict(ok: bool, problem: impl FnOnce() -> String) -> Verdict {
    if ok {
        Ok(())
    } else {
        Err(problem())
    }
}

fn short(text: &str) -> String {
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn json_of(reply: &Reply) -> Option<Value> {
    serde_json::from_slice(&reply.body).ok()
}

fn values(reply: &Reply, name: &str) -> Vec<String> {
    reply
        .headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

pub fn status(want: u16) -> Expect {
    on_reply(move |r| {
        verdict(r.status == want, || {
            format!(
                "status {} (expected {want}): {}",
                r.status,
                short(&r.text())
            )
        })
    })
}

pub fn status_not(unwanted: u16) -> Expect {
    on_reply(move |r| {
        verdict(r.status != unwanted, || {
            format!(
                "status {unwanted} (expected any other): {}",
                short(&r.text())
            )
        })
    })
}

/// The machine code of a JSON error body.
pub fn code(want: &str) -> Expect {
    let want = want.to_string();
    on_reply(move |r| {
        let got = json_of(r).and_then(|v| v["code"].as_str().map(str::to_string));
        verdict(got.as_deref() == Some(want.as_str()), || {
            format!("code {got:?} (expected {want:?}): {}", short(&r.text()))
        })
    })
}

/// The reply's JSON body has `want` at the JSON `pointer` (e.g. `/body_len`).
pub fn json(pointer: &str, want: impl Into<Value>) -> Expect {
    let (pointer, want) = (pointer.to_string(), want.into());
    on_reply(move |r| {
        let got = json_of(r).and_then(|v| v.pointer(&pointer).cloned());
        verdict(got.as_ref() == Some(&want), || {
            format!("JSON {pointer} is {got:?} (expected {want})")
        })
    })
}

pub fn body_has(part: &str) -> Expect {
    let part = part.to_string();
    on_reply(move |r| {
        verdict(r.text().contains(&part), || {
            format!("body lacks {part:?}: {}", short(&r.text()))
        })
    })
}

pub fn empty_body() -> Expect {
    on_reply(|r| verdict(r.body.is_empty(), || format!("body {:?}", short(&r.text()))))
}

/// The first value of response header `name` is `want`.
pub fn header(name: &str, want: &str) -> Expect {
    let (name, want) = (name.to_string(), want.to_string());
    on_reply(move |r| {
        let got = values(r, &name);
        verdict(got.first() == Some(&want), || {
            format!("header {name}: {got:?} (expected {want:?} first)")
        })
    })
}

/// Response header `name` has exactly the values `want`, in order.
pub fn header_values<const N: usize>(name: &str, want: [&str; N]) -> Expect {
    let name = name.to_string();
    let want: Vec<String> = want.iter().map(|v| v.to_string()).collect();
    on_reply(move |r| {
        let got = values(r, &name);
        verdict(got == want, || {
            format!("header {name}: {got:?} (expected {want:?})")
        })
    })
}

/// The first value of response header `name` starts with `prefix`.
pub fn header_starts(name: &str, prefix: &str) -> Expect {
    let (name, prefix) = (name.to_string(), prefix.to_string());
    on_reply(move |r| {
        let got = values(r, &name);
        verdict(got.first().is_some_and(|v| v.starts_with(&prefix)), || {
            format!("header {name}: {got:?} (expected the first to start with {prefix:?})")
        })
    })
}

/// Some value of response header `name` is `want` (`*` at the end: starts with the rest).
pub fn some_header(name: &str, want: &str) -> Expect {
    let (name, want) = (name.to_string(), want.to_string());
    on_reply(move |r| {
        let got = values(r, &name);
        let matches = |v: &String| match want.strip_suffix('*') {
            Some(prefix) => v.starts_with(prefix),
            None => *v == want,
        };
        verdict(got.iter().any(matches), || {
            format!("header {name}: {got:?} (expected one to be {want:?})")
        })
    })
}

/// The first value of response header `name` is a number in `lo..=hi`.
pub fn header_number_in(name: &str, lo: u64, hi: u64) -> Expect {
    let name = name.to_string();
    on_reply(move |r| {
        let got = values(r, &name);
        let number = got.first().and_then(|v| v.parse::<u64>().ok());
        verdict(number.is_some_and(|n| (lo..=hi).contains(&n)), || {
            format!("header {name}: {got:?} (expected a number in {lo}..={hi})")
        })
    })
}

pub fn has_header(name: &str) -> Expect {
    let name = name.to_string();
    on_reply(move |r| {
        verdict(r.headers.contains_key(&name), || {
            format!("no header {name}")
        })
    })
}

pub fn no_header(name: &str) -> Expect {
    let name = name.to_string();
    on_reply(move |r| {
        let got = values(r, &name);
        verdict(got.is_empty(), || {
            format!("header {name}: {got:?} (expected none)")
        })
    })
}

fn upstream_field(field: &'static str, want: &str) -> Expect {
    let want = want.to_string();
    on_upstream(move |seen| {
        verdict(seen[field] == want.as_str(), || {
            format!("upstream {field} {} (expected {want:?})", seen[field])
        })
    })
}

/// The method the upstream received.
pub fn method(want: &str) -> Expect {
    upstream_field("method", want)
}

/// The path the upstream received (without the query).
pub fn path(want: &str) -> Expect {
    upstream_field("path", want)
}

/// The raw query the upstream received.
pub fn query(want: &str) -> Expect {
    upstream_field("query", want)
}

/// The request target (path and query, byte for byte) the upstream received.
pub fn target(want: &str) -> Expect {
    let want = want.to_string();
    on_upstream(move |seen| {
        let mut got = seen["path"].as_str().unwrap_or("").to_string();
        if let Some(query) = seen["query"].as_str() {
            got = format!("{got}?{query}");
        }
        verdict(got == want, || {
            format!("upstream target {got:?} (expected {want:?})")
        })
    })
}

/// Every value of header `name` the upstream received is in `want`, in order.
pub fn sent<const N: usize>(name: &str, want: [&str; N]) -> Expect {
    let name = name.to_string();
    let want: Vec<Value> = want.iter().map(|v| Value::from(*v)).collect();
    on_upstream(move |seen| {
        let got = &seen["headers"][&name];
        verdict(*got == Value::Array(want.clone()), || {
            format!("upstream header {name}: {got} (expected {want:?})")
        })
    })
}

/// The upstream received no header `name`.
pub fn not_sent(name: &str) -> Expect {
    let name = name.to_string();
    on_upstream(move |seen| {
        let got = seen["headers"].get(&name);
        verdict(got.is_none(), || {
            format!("upstream header {name}: {} (expected none)", got.unwrap())
        })
    })
}

/// No credential of the proxy (nor any of `secrets`) reached the upstream.
pub fn no_credentials(secrets: &[&str]) -> Expect {
    let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    on_upstream(move |seen| {
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        recorder::credentials_in(seen, &secrets)
    })
}

async fn check(addr: SocketAddr, upstream: &Upstream<'_>, row: &Row) -> Vec<String> {
    let before = match upstream {
        Upstream::Runner(runner) => runner.seen().len(),
        Upstream::Recorder => 0,
    };
    let headers: Vec<(&str, &str)> = row
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let reply = send(addr, &row.method, &row.host, &row.path, &headers, &row.body).await;
    let seen = match upstream {
        Upstream::Recorder => json_of(&reply).ok_or("the reply is no upstream record"),
        Upstream::Runner(runner) => runner
            .seen()
            .get(before..)
            .and_then(|new| new.last())
            .map(|s| s.record())
            .ok_or("the runner received nothing"),
    };
    let mut problems = Vec::new();
    for expect in &row.expect {
        let verdict = match expect {
            Expect::Reply(check) => check(&reply),
            Expect::Upstream(check) => match &seen {
                Ok(seen) => check(seen),
                Err(nothing) => Err(nothing.to_string()),
            },
        };
        problems.extend(verdict.err());
    }
    problems
}

/// Sends every row in order (`addr` is the proxy) and checks it; panics once at the end with
/// every failing row and all of its problems.
pub async fn run(addr: SocketAddr, upstream: Upstream<'_>, rows: impl IntoIterator<Item = Row>) {
    let mut failures = Vec::new();
    let mut count = 0;
    for row in rows {
        count += 1;
        let problems = check(addr, &upstream, &row).await;
        if !problems.is_empty() {
            failures.push(format!(
                "row {count} {row}:\n    {}",
                problems.join("\n    ")
            ));
        }
    }
    report(count, &failures);
}

/// Panics, listing `failures`, if there are any (out of `count` rows).
pub fn report(count: usize, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {count} rows failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
