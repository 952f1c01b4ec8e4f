//! MPS-style XML namespaces and requests.
//! (Owner: XML helper — to be implemented.)

use super::ParseError;
use crate::model::{Namespace, Request, SourceRef};

/// Parses an XML namespace file (`<namespace>` root, or `<namespaces>` holding several).
pub fn parse_namespaces(_src: &str, file: &str) -> Result<Vec<Namespace>, Vec<ParseError>> {
    Err(vec![ParseError::new(
        SourceRef::new(file, 0, 0),
        "XML namespaces not implemented yet",
    )])
}

/// Parses an XML request (`<request>`).
pub fn parse_request(_src: &str, file: &str) -> Result<Request, ParseError> {
    Err(ParseError::new(
        SourceRef::new(file, 0, 0),
        "XML requests not implemented yet",
    ))
}
