//! before/after transforms: insert, merge, replace and move of nodes between scopes.
//! (Owner: data helper — to be implemented.)

use super::{Element, Path};
use serde::{Deserialize, Serialize};

/// How the transformed node goes into the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Append as a new last child of the target.
    #[default]
    Insert,
    /// The node's attributes and children go into the target, in position.
    Merge,
    /// The target is replaced by the node.
    Replace,
    /// Like insert, and the source node is removed from where it was.
    Move,
}

/// What to do when a source or forEach path selects nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IfNull {
    /// Raise an error (default).
    #[default]
    Fail,
    /// Do nothing (a transform) / run anyway (forEach, repeat = once).
    Ignore,
    /// Skip this iteration of the step.
    Skip,
}

/// A transform that could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransformError {
    /// The destination path cannot be created (it has predicates or selects an attribute's parent that is missing).
    #[error("cannot create destination `{path}`: {reason}")]
    Destination {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Clones of the nodes `path` selects under `root` (`None` = root itself). An attribute
/// or text selection becomes an element named after the attribute (or `text`) holding its value.
pub fn extract(root: &Element, path: Option<&Path>) -> Vec<Element> {
    match path {
        None => vec![root.clone()],
        Some(_) => Vec::new(),
    }
}

/// Removes the nodes `path` selects under `root`; returns how many were removed.
pub fn remove(_root: &mut Element, _path: &Path) -> usize {
    0
}

/// Puts `node` into the target `dest` selects under `root` (`None` = root) with `mode`,
/// creating a missing destination chain of plain names.
pub fn place(
    root: &mut Element,
    _dest: Option<&Path>,
    node: Element,
    _mode: Mode,
) -> Result<(), TransformError> {
    root.push(node);
    Ok(())
}
