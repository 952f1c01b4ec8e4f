//! XSLT 1.0 through the system's libxslt, for Provisio's `xsl:template` transforms.
//!
//! [`Stylesheet::compile`] builds a stylesheet from its text once; [`Stylesheet::apply`]
//! runs it on a small document (a serialized data node) and returns the result tree's
//! top-level nodes as XML text. Both report libxml2's and libxslt's own messages (with
//! their line numbers) instead of printing them.
//!
//! The sandbox: no file or network is read or written — `document()`, `xsl:import`,
//! `xsl:include`, external entities and `xsl:document` output are all refused (libxslt's
//! security preferences forbid every access, and the entity loader refuses everything) —
//! template recursion and variables are bounded, and so is the size of the result.
//!
//! Why a crate of its own: the workspace forbids `unsafe`, and the published `libxslt`
//! binding cannot be used as is (it panics on a NUL byte, returns a stylesheet wrapping a
//! null pointer when parsing fails, reports errors only on stderr and has no way to set
//! the security preferences). This crate is a minimal wrapper: a small C shim
//! (`csrc/shim.c`) over the libxslt API, and one Rust module (`ffi`) with the only unsafe
//! code, each block with its reason.

#[cfg(feature = "libxslt")]
#[allow(unsafe_code)] // the FFI module; see its documentation
mod ffi;
#[cfg(feature = "libxslt")]
pub use ffi::Stylesheet;

#[cfg(not(feature = "libxslt"))]
mod absent;
#[cfg(not(feature = "libxslt"))]
pub use absent::Stylesheet;

/// Bounds on one transformation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest result, in bytes of serialized XML.
    pub max_output: usize,
    /// Deepest template recursion (libxslt's default, 3000, can overflow a 2 MiB thread stack).
    pub max_depth: u16,
    /// Most variables alive at once.
    pub max_vars: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_output: 4 * 1024 * 1024,
            max_depth: 100,
            max_vars: 10_000,
        }
    }
}

/// A compile or transform error: libxml2's and libxslt's messages, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct XsltError {
    /// What went wrong (the libraries' messages, whitespace tidied).
    pub message: String,
    /// The first line number the messages name in the stylesheet or source, if any.
    pub line: Option<u32>,
}

impl XsltError {
    #[cfg_attr(not(feature = "libxslt"), allow(dead_code))]
    pub(crate) fn from_messages(raw: &str) -> XsltError {
        let mut lines: Vec<String> = Vec::new();
        for l in raw.lines() {
            let l = l.trim();
            // libxslt follows a recursion error with a dump of its template and variable
            // stacks, and advice for its command-line tool: neither helps here.
            if l == "Templates:" {
                break;
            }
            if l.is_empty() || l.starts_with("You can adjust xsltMaxDepth") {
                continue;
            }
            if lines.last().is_some_and(|p| p == l) {
                continue;
            }
            lines.push(l.to_string());
        }
        let message = if lines.is_empty() {
            "unknown XSLT error".to_string()
        } else {
            lines.join("; ")
        };
        XsltError {
            line: first_line_number(&message),
            message,
        }
    }
}

/// The number after the first `line ` in a message.
#[cfg_attr(not(feature = "libxslt"), allow(dead_code))]
fn first_line_number(s: &str) -> Option<u32> {
    let at = s.find("line ")?;
    let digits: String = s[at + 5..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(all(test, feature = "libxslt"))]
mod tests {
    use super::*;

    const XSL: &str = "http://www.w3.org/1999/XSL/Transform";

    fn sheet(body: &str) -> String {
        format!("<xsl:stylesheet version=\"1.0\" xmlns:xsl=\"{XSL}\">{body}</xsl:stylesheet>")
    }

    #[test]
    fn renames_a_node() {
        let s = Stylesheet::compile(
            &sheet(r#"<xsl:template match="/user"><person id="{@id}"><xsl:value-of select="name"/></person></xsl:template>"#),
            "t.xsl",
        )
        .unwrap();
        let out = s
            .apply(
                r#"<user id="7"><name>ann</name></user>"#,
                &Limits::default(),
            )
            .unwrap();
        assert_eq!(out, r#"<person id="7">ann</person>"#);
        // Applied again: a compiled stylesheet is reusable.
        let out = s
            .apply(
                r#"<user id="8"><name>bob</name></user>"#,
                &Limits::default(),
            )
            .unwrap();
        assert_eq!(out, r#"<person id="8">bob</person>"#);
        // Once the process-wide lock is free, try_apply runs it too (other tests of this
        // binary transform at the same time and may hold it for a moment).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let out = loop {
            if let Some(r) =
                s.try_apply(r#"<user id="9"><name>cy</name></user>"#, &Limits::default())
            {
                break r.unwrap();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the lock never came free"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_eq!(out, r#"<person id="9">cy</person>"#);
    }

    #[test]
    fn concurrent_transformations_are_serialized_not_corrupted() {
        let s = std::sync::Arc::new(
            Stylesheet::compile(
                &sheet(r#"<xsl:template match="/n"><m><xsl:value-of select=". * 2"/></m></xsl:template>"#),
                "t.xsl",
            )
            .unwrap(),
        );
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = std::sync::Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let n = t * 1000 + i;
                        let out = s.apply(&format!("<n>{n}</n>"), &Limits::default()).unwrap();
                        assert_eq!(out, format!("<m>{}</m>", n * 2));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn msxsl_and_exslt_node_set_work() {
        for (prefix, uri) in [
            ("msxsl", "urn:schemas-microsoft-com:xslt"),
            ("exsl", "http://exslt.org/common"),
        ] {
            let s = Stylesheet::compile(
                &format!(
                    "<xsl:stylesheet version=\"1.0\" xmlns:xsl=\"{XSL}\" xmlns:{prefix}=\"{uri}\" exclude-result-prefixes=\"{prefix}\">\
                     <xsl:template match=\"/\"><xsl:variable name=\"v\"><a>1</a><a>2</a></xsl:variable>\
                     <n><xsl:value-of select=\"count({prefix}:node-set($v)/a)\"/></n></xsl:template></xsl:stylesheet>"
                ),
                "t.xsl",
            )
            .unwrap();
            assert_eq!(
                s.apply("<x/>", &Limits::default()).unwrap(),
                "<n>2</n>",
                "{prefix}"
            );
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = Stylesheet::compile(
            &sheet("\n\n<xsl:template match=\"/\"><a></b></xsl:template>"),
            "t.xsl",
        )
        .err()
        .unwrap();
        assert_eq!(e.line, Some(3), "{e:?}");
        let e = Stylesheet::compile(
            &sheet("\n<xsl:template match=\"/\"><xsl:value-of/></xsl:template>"),
            "t.xsl",
        )
        .err()
        .unwrap();
        assert!(e.message.contains("select is missing"), "{e:?}");
        assert_eq!(e.line, Some(2), "{e:?}");
    }

    #[test]
    fn document_and_import_are_refused() {
        let s = Stylesheet::compile(
            &sheet(r#"<xsl:template match="/"><x><xsl:copy-of select="document('/etc/hostname')"/></x></xsl:template>"#),
            "t.xsl",
        )
        .unwrap();
        let e = s.apply("<a/>", &Limits::default()).unwrap_err();
        assert!(
            e.message.contains("denied") || e.message.contains("refused"),
            "{e:?}"
        );
        let e = Stylesheet::compile(
            &sheet(r#"<xsl:import href="/etc/other.xsl"/><xsl:template match="/"/>"#),
            "t.xsl",
        )
        .err()
        .unwrap();
        assert!(!e.message.is_empty());
    }

    #[test]
    fn recursion_and_output_are_bounded() {
        let s = Stylesheet::compile(
            &sheet(
                r#"<xsl:template match="/" name="r"><xsl:call-template name="r"/></xsl:template>"#,
            ),
            "t.xsl",
        )
        .unwrap();
        let e = s.apply("<a/>", &Limits::default()).unwrap_err();
        assert!(
            e.message.contains("recursion") || e.message.contains("depth"),
            "{e:?}"
        );
        let s = Stylesheet::compile(
            &sheet(r#"<xsl:template match="/"><big><xsl:call-template name="d"><xsl:with-param name="n" select="15"/></xsl:call-template></big></xsl:template>
              <xsl:template name="d"><xsl:param name="n"/><xsl:choose><xsl:when test="$n = 0"><leaf>xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx</leaf></xsl:when><xsl:otherwise>
              <xsl:call-template name="d"><xsl:with-param name="n" select="$n - 1"/></xsl:call-template>
              <xsl:call-template name="d"><xsl:with-param name="n" select="$n - 1"/></xsl:call-template></xsl:otherwise></xsl:choose></xsl:template>"#),
            "t.xsl",
        )
        .unwrap();
        let limits = Limits {
            max_output: 16 * 1024,
            ..Limits::default()
        };
        let e = s.apply("<a/>", &limits).unwrap_err();
        assert!(e.message.contains("larger than"), "{e:?}");
    }
}
