//! The map/array view of the data tree used by YAML, JSON and rhai.
//! (Owner: data helper — to be implemented.)

use super::Element;

/// A JSON value that cannot become a data tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at `{path}`: {message}")]
pub struct JsonError {
    /// Where in the value.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// The content of `element` as a JSON value (the element's own name is not included).
pub fn to_json(_element: &Element) -> serde_json::Value {
    serde_json::Value::Null
}

/// Builds an element named `name` whose content is `value`.
pub fn from_json(name: &str, _value: &serde_json::Value) -> Result<Element, JsonError> {
    Ok(Element::new(name))
}
