//! The stand-in for a build without libxslt (the `libxslt` feature off): every stylesheet
//! is refused, at compile time of the request, with what to do instead.

use crate::{Limits, XsltError};
use std::convert::Infallible;

/// A compiled stylesheet. In a build without libxslt there is none: [`Stylesheet::compile`]
/// always refuses.
#[derive(Debug)]
pub struct Stylesheet {
    never: Infallible,
}

impl Stylesheet {
    /// Refuses: this build has no XSLT.
    pub fn compile(_text: &str, _url: &str) -> Result<Stylesheet, XsltError> {
        Err(XsltError {
            message: "this provisio was built without XSL support: install libxslt1-dev, \
                      libxml2-dev and pkg-config (scripts/ensure-tools does) and build with \
                      `cargo build --release --features xslt`"
                .to_string(),
            line: None,
        })
    }

    /// Never called: no stylesheet exists in this build.
    pub fn apply(&self, _source: &str, _limits: &Limits) -> Result<String, XsltError> {
        match self.never {}
    }

    /// Never called: no stylesheet exists in this build.
    pub fn try_apply(&self, _source: &str, _limits: &Limits) -> Option<Result<String, XsltError>> {
        match self.never {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_without_libxslt_says_how_to_get_it() {
        let e = Stylesheet::compile("<xsl:stylesheet/>", "t.xml").unwrap_err();
        assert!(e.message.contains("--features xslt"), "{}", e.message);
    }
}
