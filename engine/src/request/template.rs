//! `{{ scope.path }}` placeholders in YAML `with:`/`output:` values and XML `template="…"`.
//! (Owner: YAML helper — to be implemented.)

use crate::model::Scope;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplatePart {
    /// Literal text.
    Lit(String),
    /// A reference to a node: its string value is substituted.
    Ref {
        /// The scope.
        scope: Scope,
        /// Path under the scope (`/`-separated); `None` = the scope root.
        path: Option<String>,
    },
}

/// Parses a template string into parts. Errors say what is wrong with the placeholder.
pub fn parse_template(_s: &str) -> Result<Vec<TemplatePart>, String> {
    Err("not implemented yet".into())
}
