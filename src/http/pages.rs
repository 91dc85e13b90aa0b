//! The proxy's own pages: the headers every page and JSON error carries, and the operator's
//! templates (`[pages] dir`) that replace the built-in HTML.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderMap, HeaderValue};

use crate::base::html::escape_html;
use crate::config::PagesConfig;

/// No script, no fetch, no plugin, inline style only. Framing stays allowed (as for the
/// "Starting…" page): an embedded preview pane shows the page like a tab does, and the pages
/// have no action to trick a user into.
pub const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'";

/// On every response the proxy writes itself (HTML or JSON): a page cannot run script, and
/// no body is sniffed into something else.
pub fn secure(headers: &mut HeaderMap) {
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

/// Largest template file read.
const MAX_TEMPLATE_BYTES: u64 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PagesError {
    #[error("pages.dir {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("pages.dir {}: larger than {MAX_TEMPLATE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("pages.dir {}: not UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error(
        "pages.dir {}: unknown placeholder {{{{{name}}}}} (known: {})",
        path.display(), Field::NAMES.join(", ")
    )]
    UnknownPlaceholder { path: PathBuf, name: String },
    #[error(
        "pages.dir {}: holds no template (name files 401.html, AUTH_REQUIRED.html or default.html)",
        path.display()
    )]
    Empty { path: PathBuf },
}

/// What a page shows.
pub struct PageFacts<'a> {
    pub status: u16,
    pub title: &'a str,
    pub code: &'a str,
    pub message: &'a str,
    pub request_id: &'a str,
    pub retry_after: Option<u32>,
    pub path: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Status,
    Title,
    Code,
    Message,
    RequestId,
    RetryAfter,
    Path,
}

impl Field {
    const NAMES: [&'static str; 7] = [
        "status",
        "title",
        "code",
        "message",
        "request_id",
        "retry_after",
        "path",
    ];
    const ALL: [Field; 7] = [
        Field::Status,
        Field::Title,
        Field::Code,
        Field::Message,
        Field::RequestId,
        Field::RetryAfter,
        Field::Path,
    ];

    fn parse(name: &str) -> Option<Field> {
        let index = Field::NAMES.iter().position(|n| *n == name.trim())?;
        Some(Field::ALL[index])
    }

    fn write(self, facts: &PageFacts<'_>, out: &mut String) {
        let text = match self {
            Field::Status => {
                out.push_str(itoa::Buffer::new().format(facts.status));
                return;
            }
            Field::RetryAfter => {
                if let Some(seconds) = facts.retry_after {
                    out.push_str(itoa::Buffer::new().format(seconds));
                }
                return;
            }
            Field::Title => facts.title,
            Field::Code => facts.code,
            Field::Message => facts.message,
            Field::RequestId => facts.request_id,
            Field::Path => facts.path,
        };
        out.push_str(&escape_html(text));
    }
}

#[derive(Debug)]
enum Piece {
    Text(Box<str>),
    Field(Field),
}

/// One template, split once at load into text and placeholders.
#[derive(Debug)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(path: &Path, text: &str) -> Result<Template, PagesError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start + 2..].find("}}") else {
                break;
            };
            let name = &rest[start + 2..start + 2 + len];
            let field = Field::parse(name).ok_or_else(|| PagesError::UnknownPlaceholder {
                path: path.to_path_buf(),
                name: name.to_string(),
            })?;
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].into()));
            }
            pieces.push(Piece::Field(field));
            rest = &rest[start + 2 + len + 2..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.into()));
        }
        Ok(Template(pieces))
    }

    fn render(&self, facts: &PageFacts<'_>) -> String {
        let mut out = String::with_capacity(4096);
        for piece in &self.0 {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(field) => field.write(facts, &mut out),
            }
        }
        out
    }
}

/// The operator's templates by file stem (`401`, `AUTH_REQUIRED`, `default`).
#[derive(Debug, Default)]
struct Templates(HashMap<Box<str>, Template>);

impl Templates {
    fn load(dir: &Path) -> Result<Templates, PagesError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PagesError::Io { path, source }
        };
        let mut templates = HashMap::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let is_html = path.extension().is_some_and(|e| e == "html");
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if !is_html || !path.is_file() {
                continue;
            }
            let size = std::fs::metadata(&path).map_err(io(&path))?.len();
            if size > MAX_TEMPLATE_BYTES {
                return Err(PagesError::TooLarge { path });
            }
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let text =
                String::from_utf8(bytes).map_err(|_| PagesError::NotUtf8 { path: path.clone() })?;
            let template = Template::parse(&path, &text)?;
            templates.insert(stem.into(), template);
        }
        if templates.is_empty() {
            return Err(PagesError::Empty {
                path: dir.to_path_buf(),
            });
        }
        Ok(Templates(templates))
    }

    /// By machine code, then status, then `default`.
    fn find(&self, code: &str, status: u16) -> Option<&Template> {
        let map = &self.0;
        map.get(code)
            .or_else(|| map.get(itoa::Buffer::new().format(status)))
            .or_else(|| map.get("default"))
    }
}

/// The operator's pages, swapped whole on reload.
#[derive(Debug, Default)]
pub struct Pages(ArcSwap<Templates>);

impl Pages {
    pub fn load(config: &PagesConfig) -> Result<Pages, PagesError> {
        Ok(Pages(ArcSwap::from_pointee(read(config)?)))
    }

    /// Reads the folder again; on error the pages in force stay.
    pub fn reload(&self, config: &PagesConfig) -> Result<(), PagesError> {
        self.0.store(Arc::new(read(config)?));
        Ok(())
    }

    /// The operator's page for these facts, if a template applies.
    pub fn render(&self, facts: &PageFacts<'_>) -> Option<String> {
        let templates = self.0.load();
        let template = templates.find(facts.code, facts.status)?;
        Some(template.render(facts))
    }
}

fn read(config: &PagesConfig) -> Result<Templates, PagesError> {
    match &config.dir {
        Some(dir) => Templates::load(dir),
        None => Ok(Templates::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(message: &'a str, path: &'a str) -> PageFacts<'a> {
        PageFacts {
            status: 401,
            title: "Unauthorized",
            code: "AUTH_REQUIRED",
            message,
            request_id: "r-1",
            retry_after: Some(7),
            path,
        }
    }

    #[test]
    fn placeholders_are_filled_and_escaped() {
        let t = Template::parse(
            Path::new("t.html"),
            "<p>{{status}} {{ code }} {{message}} {{request_id}} {{retry_after}} {{path}}</p>",
        )
        .unwrap();
        let out = t.render(&facts("a <b>", "/{{message}}\"'"));
        assert_eq!(
            out,
            "<p>401 AUTH_REQUIRED a &lt;b&gt; r-1 7 /{{message}}&quot;&#39;</p>"
        );
    }

    #[test]
    fn an_unknown_placeholder_is_an_error_naming_it() {
        let e = Template::parse(Path::new("x/401.html"), "{{nope}}").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("x/401.html") && text.contains("{{nope}}"),
            "{text}"
        );
    }
}
