//! `[pages]`: the operator's own error pages (branding, wording), replacing the built-in ones.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagesConfig {
    /// A folder of HTML templates named by machine code or status (`AUTH_REQUIRED.html`,
    /// `401.html`, `default.html`; the first that exists wins), with the placeholders
    /// `{{status}} {{title}} {{code}} {{message}} {{request_id}} {{retry_after}} {{path}}`,
    /// every value HTML-escaped. Loaded at start and on reload. Unset: the built-in pages.
    pub dir: Option<PathBuf>,
}
