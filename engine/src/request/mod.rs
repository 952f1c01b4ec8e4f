//! Parsers: namespaces and requests in MPS-style XML, YAML and JSON, into one model.
//!
//! Every error names the file, line and column where it can, and says what to write instead.

pub mod rules;
pub mod template;
pub(crate) mod xml;
pub(crate) mod yaml;

/// JSON Schemas (draft 7) of the YAML/JSON formats, generated from the definitions the
/// parser reads: for editors (`provisio schema`, the daemon's `GET /v1/schema/{kind}`).
pub mod schema {
    /// The schema of a namespace file (one namespace, or a list of them).
    pub fn namespace() -> serde_json::Value {
        super::yaml::schema::namespace()
    }

    /// The schema of a request (one request, or a batch).
    pub fn request() -> serde_json::Value {
        super::yaml::schema::request()
    }
}

use crate::model::{Format, Namespace, Request, RequestDocument, SourceRef};
use std::fmt;
use std::path::Path as FsPath;

/// Largest definition or request file accepted (bytes).
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;
/// Deepest element/mapping nesting accepted.
pub(crate) const MAX_DEPTH: usize = 128;

/// An error in a definition or request, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// Where.
    pub source_ref: SourceRef,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl ParseError {
    /// An error at a location.
    pub fn new(source_ref: SourceRef, message: impl Into<String>) -> Self {
        ParseError {
            source_ref,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source_ref, self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Parses a namespace definition file's text (one or more namespaces).
pub fn parse_namespaces(
    src: &str,
    file: &str,
    format: Format,
) -> Result<Vec<Namespace>, Vec<ParseError>> {
    if src.len() > MAX_FILE_BYTES {
        return Err(vec![ParseError::new(
            SourceRef::new(file, 0, 0),
            format!("file is {} bytes; the limit is {MAX_FILE_BYTES}", src.len()),
        )
        .with_hint("split the definitions into several files")]);
    }
    match format {
        Format::Xml => xml::parse_namespaces(src, file),
        Format::Yaml | Format::Json => yaml::parse_namespaces(src, file),
    }
}

/// Parses a request's text that must be one request: a batch (several `data`, or
/// `globalData`) is refused with a hint to [`parse_request_document`].
pub fn parse_request(src: &str, file: &str, format: Format) -> Result<Request, ParseError> {
    single(parse_request_document(src, file, format)?)
}

/// One request, or the error saying a batch cannot be run as one.
fn single(doc: RequestDocument) -> Result<Request, ParseError> {
    match doc {
        RequestDocument::Single(r) => Ok(r),
        RequestDocument::Batch(b) => Err(ParseError::new(
            b.source_ref.clone(),
            format!(
                "this is a batch request ({} data item(s){}), which runs as one transaction per item, not as one request",
                b.items.len(),
                if b.global_data.children.is_empty() && b.global_data.attrs.is_empty() {
                    ""
                } else {
                    " and globalData"
                }
            ),
        )
        .with_hint("run it with `provisio run`, which splits it, or send one request per data item")),
    }
}

/// Parses a request's text: one request, or a batch request (MPS: several `data`, or
/// `globalData`; YAML/JSON: `batch:`), which [`RequestDocument::into_requests`] splits into
/// one request per item.
pub fn parse_request_document(
    src: &str,
    file: &str,
    format: Format,
) -> Result<RequestDocument, ParseError> {
    if src.len() > MAX_FILE_BYTES {
        return Err(ParseError::new(
            SourceRef::new(file, 0, 0),
            format!(
                "request is {} bytes; the limit is {MAX_FILE_BYTES}",
                src.len()
            ),
        ));
    }
    match format {
        Format::Xml => xml::parse_request(src, file),
        Format::Yaml | Format::Json => yaml::parse_request(src, file, format),
    }
}

/// Reads and parses a namespace file, choosing the syntax from its extension.
pub fn load_namespace_file(path: &FsPath) -> Result<Vec<Namespace>, Vec<ParseError>> {
    let file = path.display().to_string();
    let format = Format::from_extension(path).ok_or_else(|| {
        vec![
            ParseError::new(SourceRef::new(&file, 0, 0), "unknown file type")
                .with_hint("namespace files end in .xml, .yaml, .yml or .json"),
        ]
    })?;
    let src = read_limited(path).map_err(|e| vec![e])?;
    parse_namespaces(&src, &file, format)
}

/// Reads and parses a request file that must be one request (see [`parse_request`]),
/// choosing the syntax from its extension.
pub fn load_request_file(path: &FsPath) -> Result<Request, ParseError> {
    single(load_request_document(path)?)
}

/// Reads and parses a request file, one request or a batch (see
/// [`parse_request_document`]), choosing the syntax from its extension.
pub fn load_request_document(path: &FsPath) -> Result<RequestDocument, ParseError> {
    let file = path.display().to_string();
    let format = Format::from_extension(path).ok_or_else(|| {
        ParseError::new(SourceRef::new(&file, 0, 0), "unknown file type")
            .with_hint("request files end in .xml, .yaml, .yml or .json")
    })?;
    let src = read_limited(path)?;
    parse_request_document(&src, &file, format)
}

/// Loads every namespace file in a folder (sorted by name, not recursive). Returns what
/// loaded and every error found, so `validate` can report all of them at once.
pub fn load_namespace_dir(dir: &FsPath) -> (Vec<Namespace>, Vec<ParseError>) {
    let mut namespaces = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(ParseError::new(
                SourceRef::new(dir.display().to_string(), 0, 0),
                format!("cannot read folder: {e}"),
            ));
            return (namespaces, errors);
        }
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && Format::from_extension(p).is_some())
        .collect();
    paths.sort();
    for p in paths {
        match load_namespace_file(&p) {
            Ok(mut ns) => namespaces.append(&mut ns),
            Err(mut e) => errors.append(&mut e),
        }
    }
    (namespaces, errors)
}

pub(crate) fn read_limited(path: &FsPath) -> Result<String, ParseError> {
    use std::io::Read;
    let file = path.display().to_string();
    let at = || SourceRef::new(&file, 0, 0);
    let meta =
        std::fs::metadata(path).map_err(|e| ParseError::new(at(), format!("cannot read: {e}")))?;
    // Checked before opening: a device (a link to /dev/zero) never ends, and opening a
    // named pipe waits for a writer.
    if !meta.is_file() {
        return Err(ParseError::new(at(), "not a regular file")
            .with_hint("give a file; to pass generated text, pipe it to `-` (standard input)"));
    }
    if meta.len() as usize > MAX_FILE_BYTES {
        return Err(ParseError::new(
            at(),
            format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES}",
                meta.len()
            ),
        ));
    }
    // At most one byte over the limit, should the file grow after the check.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| ParseError::new(at(), format!("cannot read: {e}")))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(ParseError::new(
            at(),
            format!("file is over the limit of {MAX_FILE_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let bad = e.utf8_error().valid_up_to();
        let before = &e.as_bytes()[..bad];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        // Everything before `bad` is valid UTF-8: count characters, not bytes.
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        ParseError::new(
            SourceRef::new(&file, line as u32, column as u32),
            format!("not UTF-8 (byte {bad} is not part of a UTF-8 character)"),
        )
        .with_hint("save the file as UTF-8")
    })
}
