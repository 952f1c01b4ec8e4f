//! The rules every front end (XML, YAML, JSON) and the compiler share, so that a mistake
//! gets the same answer in every syntax: what a name may be, the scope names, the "did you
//! mean" suggestion (one metric, one threshold), and how a script file is read.

use super::{read_limited, ParseError};
use crate::model::{Script, SourceRef};
use std::path::{Component, Path as FsPath};

/// The scope names a definition may use besides forEach variables (listed once here).
pub const SCOPE_NAMES: &[&str] = &["data", "executeData", "procedureData", "context"];

/// Whether `s` is one of `SCOPE_NAMES` (and so cannot name a forEach variable).
pub(crate) fn is_reserved_scope(s: &str) -> bool {
    SCOPE_NAMES.contains(&s)
}

/// Namespace and procedure names: letters, digits, `_`, space, `-`, `.`; no space at
/// either end (`"Hosted DNS "` would be a different procedure from `"Hosted DNS"` that
/// looks the same in every listing).
pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.trim() == s
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | ' ' | '-' | '.'))
}

/// The error of a bad namespace or procedure name (`what`: "namespace", "procedure"):
/// its message and hint, worded the same in every syntax.
pub fn name_error(what: &str, name: &str) -> (String, String) {
    (
        format!("`{name}` is not a valid {what} name"),
        "use letters, digits, `_`, space, `-` and `.`, with no space at either end".into(),
    )
}

/// Step ids: letters, digits, `_`, `-`, `.` (no space).
pub(crate) fn is_step_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Lowest similarity (normalized Damerau-Levenshtein, case-insensitive) at which a
/// candidate is offered as the likely intended name: one edit in three characters.
const SUGGEST_AT: f64 = 0.6;

/// The candidate `word` most likely misspells: one that differs only in case, else the
/// most similar one scoring at least `SUGGEST_AT`. The one metric of every "did you mean".
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_lowercase();
    let mut best: Option<(f64, &'a str)> = None;
    for c in candidates {
        let cl = c.to_lowercase();
        let score = if cl == lower {
            // differs only in case: preferred over any other
            2.0
        } else {
            strsim::normalized_damerau_levenshtein(&lower, &cl)
        };
        if score >= SUGGEST_AT && best.is_none_or(|(b, _)| score > b) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}

/// "did you mean `x`?" for the closest candidate, if one is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    suggest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// "did you mean `x`? valid keys: a, b" (`kind`: keys, values, types, scopes).
pub(crate) fn valid_list_hint(bad: &str, valid: &[&str], kind: &str) -> String {
    let list = valid.join(", ");
    match did_you_mean(bad, valid.iter().copied()) {
        Some(d) => format!("{d} valid {kind}: {list}"),
        None => format!("valid {kind}: {list}"),
    }
}

/// Reads a script file named in a definition (`file="x.rhai"`, YAML `{ file: x.rhai }`):
/// relative to the definition file's folder, never absolute and never with `..`. Its origin
/// is line 1, column 1 of that file. Errors are reported at `at`.
pub(crate) fn read_script_file(
    definition: &str,
    name: &str,
    at: SourceRef,
) -> Result<Script, ParseError> {
    let rel = FsPath::new(name);
    let safe = !name.trim().is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !safe {
        return Err(ParseError::new(
            at,
            format!("script file `{name}` must be a relative path inside the definition's folder"),
        )
        .with_hint("absolute paths and `..` are refused; put the .rhai file next to the namespace file (or below it)"));
    }
    let path = match FsPath::new(definition).parent() {
        Some(dir) => dir.join(rel),
        None => rel.to_path_buf(),
    };
    let shown = path.display().to_string();
    match read_limited(&path) {
        Ok(source) => Ok(Script::new(source, SourceRef::new(shown, 1, 1))),
        Err(e) => Err(
            ParseError::new(at, format!("script file `{shown}`: {}", e.message)).with_hint(
                e.hint.unwrap_or_else(|| {
                    "the file is read relative to the definition file's folder".to_string()
                }),
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_suggestion_rule() {
        assert_eq!(suggest("cal", ["call", "with"]), Some("call"));
        assert_eq!(suggest("dta", SCOPE_NAMES.iter().copied()), Some("data"));
        assert_eq!(
            suggest("sourcepath", ["source", "sourcePath"]),
            Some("sourcePath")
        );
        assert_eq!(
            suggest("Hosted DSN", ["Hosted DNS", "DNS Provider"]),
            Some("Hosted DNS")
        );
        assert_eq!(suggest("zzz", ["call", "with"]), None);
    }

    #[test]
    fn names_refuse_outer_space() {
        assert!(is_name("Hosted DNS"));
        assert!(!is_name("Hosted DNS "));
        assert!(!is_name(" Hosted DNS"));
        assert!(!is_name("A/B"));
        assert!(!is_name(""));
    }
}
