//! Where a config came from, and errors that point into it: every problem names the file, the
//! key path (`registry.sandboxes[2].runner`) and, when the file sets that key, its line.

use std::fmt;
use std::path::{Path, PathBuf};

/// The config file (path and text), or the built-in defaults when there is none.
#[derive(Debug, Clone, Default)]
pub struct Source {
    path: Option<PathBuf>,
    text: String,
}

impl Source {
    /// Reads `path`; `None` is the built-in defaults.
    pub fn read(path: Option<&Path>) -> Result<Source, ConfigError> {
        let Some(path) = path else {
            return Ok(Source::default());
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Source {
                path: Some(path.to_path_buf()),
                text,
            }),
            Err(e) => Err(ConfigError::one(
                &path.display().to_string(),
                format!("cannot read the config file: {e}"),
            )),
        }
    }

    /// A config given as text (tests, the demo): errors name it `<string>`.
    pub fn text(text: &str) -> Source {
        Source {
            path: None,
            text: text.to_string(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn contents(&self) -> &str {
        &self.text
    }

    /// What errors call the source: the file's path, or what stands for it.
    pub fn name(&self) -> String {
        match (&self.path, self.text.is_empty()) {
            (Some(path), _) => path.display().to_string(),
            (None, true) => "built-in defaults".into(),
            (None, false) => "<string>".into(),
        }
    }

    /// The folder relative paths in the file are read from: the file's own (absolute, so
    /// errors show where sandgate looked).
    pub fn dir(&self) -> Option<PathBuf> {
        let dir = self.path.as_deref()?.parent()?;
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        Some(std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()))
    }

    /// A problem whose message starts with the key path at fault (`tls.certs[0].cert: …`).
    pub fn problem(&self, message: impl Into<String>) -> Problem {
        let message = message.into();
        let key = leading_key(&message);
        self.problem_at(key, message)
    }

    /// A problem at `key` (its line looked up in the file).
    pub fn problem_at(&self, key: Option<String>, message: String) -> Problem {
        let line = key.as_deref().and_then(|k| self.line_of(k));
        Problem { key, line, message }
    }

    /// The errors of `problems`, against this source.
    pub fn errors(&self, problems: Vec<Problem>) -> ConfigError {
        ConfigError {
            file: self.name(),
            problems,
        }
    }

    /// The 1-based line where the file sets `key` (or the deepest part of it the file has).
    pub fn line_of(&self, key: &str) -> Option<usize> {
        let document = toml_edit::ImDocument::parse(self.text.as_str()).ok()?;
        let offset = span_of(Node::Item(document.as_item()), &segments(key))?;
        Some(
            self.text[..offset.min(self.text.len())]
                .matches('\n')
                .count()
                + 1,
        )
    }
}

/// One thing wrong with a config: the key at fault, its line, and the message (which starts
/// with the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in one config, each on its own line as `FILE:LINE: key: what; fix`.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl ConfigError {
    pub fn one(file: &str, message: String) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            problems: vec![Problem {
                key: None,
                line: None,
                message,
            }],
        }
    }

    /// The key paths at fault, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.problems.iter().filter_map(|p| p.key.as_deref())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match problem.line {
                Some(line) => write!(f, "{}:{line}: {}", self.file, problem.message)?,
                None => write!(f, "{}: {}", self.file, problem.message)?,
            }
        }
        Ok(())
    }
}

/// The key path a message starts with (`registry.sandboxes[2].runner` of
/// `registry.sandboxes[2].runner: unknown runner`), if it starts with one.
fn leading_key(message: &str) -> Option<String> {
    let end = message
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']')))
        .unwrap_or(message.len());
    let key = message[..end].trim_end_matches('.');
    let section = key.split(['.', '[']).next().unwrap_or_default();
    let known = super::SECTIONS.contains(&section);
    (known && key.contains('.')).then(|| key.to_string())
}

#[derive(Debug, PartialEq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[2].c` → `a`, `b`, 2, `c`.
fn segments(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, indexes) = part.split_once('[').unwrap_or((part, ""));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        for index in indexes.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                out.push(Segment::Index(i));
            }
        }
    }
    out
}

/// A part of the parsed document that has parts: a table, an array of tables, an inline
/// table or array.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Value(&'a toml_edit::Value),
    Table(&'a toml_edit::Table),
}

type Span = Option<std::ops::Range<usize>>;

/// The byte offset of the deepest part of `path` present under `node`.
fn span_of(node: Node<'_>, path: &[Segment<'_>]) -> Option<usize> {
    use toml_edit::{Item, Value};
    let (first, rest) = path.split_first()?;
    let (found, span): (Node<'_>, Span) = match (node, first) {
        (Node::Item(Item::Value(value)), _) => return span_of(Node::Value(value), path),
        (Node::Item(Item::Table(table)) | Node::Table(table), Segment::Key(key)) => {
            let (key, item) = table.get_key_value(key)?;
            (Node::Item(item), key.span().or_else(|| item.span()))
        }
        (Node::Item(Item::ArrayOfTables(array)), Segment::Index(i)) => {
            let table = array.get(*i)?;
            (Node::Table(table), table.span())
        }
        (Node::Value(Value::InlineTable(table)), Segment::Key(key)) => {
            let (key, value) = table.get_key_value(key)?;
            (Node::Item(value), key.span().or_else(|| value.span()))
        }
        (Node::Value(Value::Array(array)), Segment::Index(i)) => {
            let value = array.get(*i)?;
            (Node::Value(value), value.span())
        }
        _ => return None,
    };
    span_of(found, rest).or_else(|| span.map(|s| s.start))
}

#[cfg(test)]
mod tests {
    use super::Source;

    #[test]
    fn keys_are_found_on_their_lines() {
        let text = "[server]\nlisten = \":8080\"\n\n[registry.wake]\nurl = \"http://h\"\n\n\
                    [[registry.sandboxes]]\nid = \"a\"\n\n[[registry.sandboxes]]\nid = \"b\"\n\
                    port_access = { \"3000\" = \"public\" }\n\
                    [proxy]\ndomains = [\n  \"a.example\",\n  \"*.b.example\",\n]\n";
        let source = Source::text(text);
        for (key, line) in [
            ("server.listen", Some(2)),
            ("registry.wake.url", Some(5)),
            ("registry.sandboxes[1].id", Some(11)),
            ("registry.sandboxes[1].port_access.3000", Some(12)),
            ("registry.sandboxes[1].runner", Some(10)),
            ("proxy.domains[1]", Some(16)),
            ("tls.enabled", None),
        ] {
            assert_eq!(source.line_of(key), line, "{key}");
        }
    }

    #[test]
    fn messages_lead_with_their_key() {
        let source = Source::text("[tls]\nenabled = true\n");
        for (message, key) in [
            ("tls.enabled needs at least one pair", Some("tls.enabled")),
            ("tls.certs[0].cert: missing", Some("tls.certs[0].cert")),
            ("sandbox a: unknown", None),
            ("nothing.here is wrong", None),
        ] {
            assert_eq!(source.problem(message).key.as_deref(), key, "{message}");
        }
    }
}
