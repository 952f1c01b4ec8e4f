//! Paths into the data tree: the XPath subset MPS requests use.
//! (Owner: data helper — to be implemented.)

use super::Element;

/// A parse error in a path, with the column (1-based, in characters) where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad path `{path}` at column {column}: {message}")]
pub struct PathError {
    /// The path as written.
    pub path: String,
    /// 1-based column.
    pub column: usize,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// A parsed path such as `organization/users/user[@status='new']/@name`.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    text: String,
}

/// One node a path selected.
#[derive(Debug, Clone, PartialEq)]
pub enum Selected<'a> {
    /// An element.
    Element(&'a Element),
    /// An attribute of an element.
    Attr {
        /// Attribute name.
        name: &'a str,
        /// Attribute value.
        value: &'a str,
    },
    /// The text of an element (`text()`).
    Text(String),
}

impl Path {
    /// Parses a path.
    pub fn parse(text: &str) -> Result<Path, PathError> {
        Ok(Path {
            text: text.to_string(),
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The nodes the path selects below `root`, in document order.
    pub fn select<'a>(&self, _root: &'a Element) -> Vec<Selected<'a>> {
        Vec::new()
    }
}
