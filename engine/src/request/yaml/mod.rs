//! YAML (and JSON) namespaces and requests, into the one model. The only module that uses serde_yaml.
//!
//! The syntax is documented in `docs/yaml-syntax.md`. Parsing runs in two passes:
//!
//! 1. serde deserializes the text into private `*Def` structs (`defs.rs`) through one
//!    generic visitor and field walker (`de.rs`), so structural errors (unknown keys,
//!    wrong types) carry serde's `line:column` and field path, with their hints typed.
//!    Every collection charges a per-parse budget, so YAML alias bombs ("billion laughs")
//!    stop with an error instead of exhausting memory.
//! 2. The defs are checked and converted to model types (`lower.rs`). Errors found there
//!    are located by an index of the source's keys (`locate.rs`), and named by their
//!    field path (`procedures.CreateTenantZone.steps.mx.call`).

mod de;
mod defs;
mod limits;
mod locate;
mod lower;
pub(crate) mod schema;

use super::{ParseError, MAX_DEPTH};
use crate::model::{Format, Namespace, RequestDocument, SourceRef};
use de::{json_err, yaml_err, Budget};
use defs::{NamespaceDef, NamespaceFile, RequestDef};
use lower::Cx;
use serde::Deserialize;
use serde_json::Value as Json;

/// Parses a YAML/JSON namespace file: one namespace (a mapping), a list of them, or
/// (YAML) several `---` documents each holding either.
pub(crate) fn parse_namespaces(src: &str, file: &str) -> Result<Vec<Namespace>, Vec<ParseError>> {
    let src = without_bom(src);
    let _budget = Budget::start(src.len());
    let defs: Vec<NamespaceDef> = if looks_like_json(src) {
        match serde_json::from_str::<NamespaceFile>(src) {
            Ok(f) => f.0,
            Err(e) => return Err(vec![json_err(file, src, &e)]),
        }
    } else {
        check_depth(src, file).map_err(|e| vec![e])?;
        let mut all = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(src) {
            match NamespaceFile::deserialize(doc) {
                Ok(f) => all.extend(f.0),
                Err(e) => return Err(vec![yaml_err(file, &e)]),
            }
        }
        all
    };
    if defs.is_empty() {
        return Err(vec![ParseError::new(
            SourceRef::new(file, 0, 0),
            "the file holds no namespace",
        )
        .with_hint(
            "start the file with `namespace: <name>` and a `procedures:` mapping",
        )]);
    }
    let mut cx = Cx::new(src, file);
    let mut out = Vec::new();
    for (i, d) in defs.into_iter().enumerate() {
        let root = cx.loc.namespace_root(i);
        if let Some(ns) = cx.namespace(d, root) {
            out.push(ns);
        }
    }
    if cx.errors.is_empty() {
        Ok(out)
    } else {
        Err(cx.errors)
    }
}

/// Renders a map/array value as YAML (responses, `config show`). The one place YAML is written.
pub(crate) fn to_yaml(value: &Json) -> String {
    serde_yaml::to_string(value).unwrap_or_else(|e| format!("# cannot render YAML: {e}\n"))
}

/// Parses a YAML/JSON request (one, or a batch). `format` says which syntax the text is in.
pub(crate) fn parse_request(
    src: &str,
    file: &str,
    format: Format,
) -> Result<RequestDocument, ParseError> {
    let src = without_bom(src);
    let _budget = Budget::start(src.len());
    let def: RequestDef = match format {
        Format::Json => serde_json::from_str(src).map_err(|e| json_err(file, src, &e))?,
        _ => {
            if src.trim().is_empty() {
                return Err(empty_request(file));
            }
            check_depth(src, file)?;
            let mut docs = serde_yaml::Deserializer::from_str(src);
            let first = docs.next().ok_or_else(|| empty_request(file))?;
            let def = RequestDef::deserialize(first).map_err(|e| yaml_err(file, &e))?;
            if docs.next().is_some() {
                return Err(ParseError::new(
                    SourceRef::new(file, 0, 0),
                    "the request holds more than one document",
                )
                .with_hint("a request is one YAML document; remove the extra `---`"));
            }
            def
        }
    };
    let mut cx = Cx::new(src, file);
    let root = cx.loc.root();
    let req = cx.request(def, format, root);
    match (req, cx.errors.into_iter().next()) {
        (Some(r), None) => Ok(r),
        (_, Some(e)) => Err(e),
        (None, None) => Err(ParseError::new(
            SourceRef::new(file, 0, 0),
            "the request is not valid",
        )),
    }
}

/// The text after a UTF-8 byte order mark (editors on Windows write one; YAML allows it
/// only at the start of the stream, and serde_yaml would take it for a second document).
fn without_bom(src: &str) -> &str {
    src.strip_prefix('\u{feff}').unwrap_or(src)
}

/// Refuses YAML nested deeper than `MAX_DEPTH` before serde_yaml parses it.
fn check_depth(src: &str, file: &str) -> Result<(), ParseError> {
    match limits::too_deep(src) {
        None => Ok(()),
        Some((line, col)) => Err(ParseError::new(
            SourceRef::new(file, line, col),
            format!("the document nests deeper than {MAX_DEPTH} levels"),
        )
        .with_hint(format!(
            "nesting is limited to {MAX_DEPTH} levels; flatten the structure"
        ))),
    }
}

fn empty_request(file: &str) -> ParseError {
    ParseError::new(SourceRef::new(file, 0, 0), "the request is empty")
        .with_hint("write `call: Namespace/Procedure` and `data: { … }`")
}

/// JSON text (namespace files do not say their format): starts with `{`/`[` and is valid JSON.
fn looks_like_json(src: &str) -> bool {
    let t = src.trim_start();
    (t.starts_with('{') || t.starts_with('['))
        && serde_json::from_str::<serde::de::IgnoredAny>(src).is_ok()
}
