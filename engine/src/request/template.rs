//! `{{ scope.path }}` placeholders in YAML `with:`/`output:` values and XML `template="…"`.
//!
//! A template is literal text with placeholders. A placeholder holds one *ref*: a scope
//! (`data`, `executeData`, `procedureData`, `context` or a forEach variable name),
//! optionally followed by `.` or `/` and a path:
//!
//! - `data` — the scope root;
//! - `data.tenant.name` — dots between plain names become `/` (`tenant/name`);
//! - `data/users/user[@status='new']/@name` — once the ref contains
//!   `/`, `[` or `@`, it is taken as written (`data/a.b` is the element `a.b`).
//!
//! Whitespace inside the braces is optional. There is no escape: `{{` always opens a
//! placeholder.

use crate::data::Path;
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
///
/// Adjacent literal text is one [`TemplatePart::Lit`]; an empty string gives no parts.
pub fn parse_template(s: &str) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    let mut offset = 0usize; // byte offset of `rest` in `s`
    while let Some(open) = rest.find("{{") {
        lit.push_str(&rest[..open]);
        let start = offset + open;
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or_else(|| {
            format!(
                "unclosed `{{{{` at column {}: close the placeholder with `}}}}`",
                column_of(s, start)
            )
        })?;
        let inner = &after[..close];
        if inner.contains("{{") {
            return Err(format!(
                "unclosed `{{{{` at column {}: placeholders cannot nest; close it with `}}}}` before opening another",
                column_of(s, start)
            ));
        }
        let (scope, path) = parse_ref(inner)
            .map_err(|e| format!("in the placeholder at column {}: {e}", column_of(s, start)))?;
        if !lit.is_empty() {
            parts.push(TemplatePart::Lit(std::mem::take(&mut lit)));
        }
        parts.push(TemplatePart::Ref { scope, path });
        let consumed = open + 2 + close + 2;
        rest = &rest[consumed..];
        offset += consumed;
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        parts.push(TemplatePart::Lit(lit));
    }
    Ok(parts)
}

/// `Some((scope, path))` when the whole string (trimmed) is exactly one placeholder.
pub fn is_single_ref(s: &str) -> Option<(Scope, Option<String>)> {
    let t = s.trim();
    if !t.starts_with("{{") || !t.ends_with("}}") {
        return None;
    }
    match parse_template(t) {
        Ok(mut parts) if parts.len() == 1 => match parts.pop() {
            Some(TemplatePart::Ref { scope, path }) => Some((scope, path)),
            _ => None,
        },
        _ => None,
    }
}

/// Whether a string contains a placeholder opener (`{{`).
pub(crate) fn has_placeholder(s: &str) -> bool {
    s.contains("{{")
}

/// Parses one ref (`data.zone`, `data/users/user[@status='new']/@name`, `user.name`,
/// `context`) into its scope and path. Surrounding whitespace is ignored; the braces
/// are not part of a ref (use [`is_single_ref`] for `{{ … }}` strings).
pub(crate) fn parse_ref(s: &str) -> Result<(Scope, Option<String>), String> {
    let r = s.trim();
    if r.is_empty() {
        return Err("empty reference: write a scope and a path, e.g. `{{ data.zone }}`".into());
    }
    let scope_end = r.find(['.', '/']).unwrap_or(r.len());
    let scope_name = &r[..scope_end];
    if scope_name.is_empty() {
        return Err(format!(
            "`{r}` has no scope: start with `data`, `executeData`, `procedureData`, `context` or a forEach name"
        ));
    }
    if !is_plain_name(scope_name) {
        return Err(format!(
            "`{scope_name}` is not a scope name: use `data`, `executeData`, `procedureData`, `context` or a forEach name (letters, digits, `_`, `-`), then `.` or `/` and a path"
        ));
    }
    let scope = Scope::parse(scope_name);
    if scope_end == r.len() {
        return Ok((scope, None));
    }
    let rest = &r[scope_end + 1..];
    if rest.trim().is_empty() {
        return Err(format!(
            "`{r}` ends after the scope separator: add a path or drop the `{}`",
            &r[scope_end..scope_end + 1]
        ));
    }
    let path = if r.contains(['/', '[', '@']) {
        rest.to_string()
    } else {
        let segs: Vec<&str> = rest.split('.').collect();
        if segs.iter().any(|seg| seg.is_empty()) {
            return Err(format!(
                "`{r}` has an empty name between dots: write `scope.name.name`"
            ));
        }
        if let Some(bad) = segs.iter().find(|seg| !is_plain_name(seg)) {
            return Err(format!(
                "`{bad}` in `{r}` is not a plain element name; write the path with `/` (e.g. `data/a/b`) to use XPath syntax"
            ));
        }
        segs.join("/")
    };
    Path::parse(&path).map_err(|e| format!("in `{r}`: {e}"))?;
    Ok((scope, Some(path)))
}

/// Letters, digits, `_` and `-`, starting with a letter or `_`.
pub(crate) fn is_plain_name(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_alphanumeric() || c == '_' || c == '-')
}

fn column_of(s: &str, byte: usize) -> usize {
    s.get(..byte).map(|p| p.chars().count()).unwrap_or(0) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(scope: Scope, path: Option<&str>) -> TemplatePart {
        TemplatePart::Ref {
            scope,
            path: path.map(str::to_string),
        }
    }

    #[test]
    fn refs() {
        assert_eq!(
            parse_ref("data.zone"),
            Ok((Scope::Data, Some("zone".into())))
        );
        assert_eq!(
            parse_ref("data/zone"),
            Ok((Scope::Data, Some("zone".into())))
        );
        assert_eq!(
            parse_ref(" data.tenant.name "),
            Ok((Scope::Data, Some("tenant/name".into())))
        );
        assert_eq!(
            parse_ref("data/users/user[@status='new']/@name"),
            Ok((Scope::Data, Some("users/user[@status='new']/@name".into())))
        );
        assert_eq!(
            parse_ref("data.users/user"),
            Ok((Scope::Data, Some("users/user".into())))
        );
        assert_eq!(parse_ref("data/a.b"), Ok((Scope::Data, Some("a.b".into()))));
        assert_eq!(
            parse_ref("executeData.id"),
            Ok((Scope::ExecuteData, Some("id".into())))
        );
        assert_eq!(
            parse_ref("procedureData.x"),
            Ok((Scope::ProcedureData, Some("x".into())))
        );
        assert_eq!(
            parse_ref("context.errorContext"),
            Ok((Scope::Context, Some("errorContext".into())))
        );
        assert_eq!(
            parse_ref("user.name"),
            Ok((Scope::Named("user".into()), Some("name".into())))
        );
        assert_eq!(parse_ref("data"), Ok((Scope::Data, None)));
        assert_eq!(parse_ref("user"), Ok((Scope::Named("user".into()), None)));
    }

    #[test]
    fn bad_refs() {
        assert!(parse_ref("").unwrap_err().contains("empty reference"));
        assert!(parse_ref("   ").unwrap_err().contains("empty reference"));
        assert!(parse_ref("data.").unwrap_err().contains("add a path"));
        assert!(parse_ref("data/").unwrap_err().contains("add a path"));
        assert!(parse_ref(".x").unwrap_err().contains("no scope"));
        assert!(parse_ref("/x").unwrap_err().contains("no scope"));
        assert!(parse_ref("data..x").unwrap_err().contains("empty name"));
        assert!(parse_ref("da ta.x")
            .unwrap_err()
            .contains("not a scope name"));
        assert!(parse_ref("1x.y").unwrap_err().contains("not a scope name"));
        assert!(parse_ref("data.a b")
            .unwrap_err()
            .contains("plain element name"));
    }

    #[test]
    fn templates() {
        assert_eq!(parse_template(""), Ok(vec![]));
        assert_eq!(
            parse_template("plain"),
            Ok(vec![TemplatePart::Lit("plain".into())])
        );
        assert_eq!(
            parse_template("v=spf1 include:{{ data.domain }} -all"),
            Ok(vec![
                TemplatePart::Lit("v=spf1 include:".into()),
                r(Scope::Data, Some("domain")),
                TemplatePart::Lit(" -all".into()),
            ])
        );
        assert_eq!(
            parse_template("{{data.a}}{{ user }}"),
            Ok(vec![
                r(Scope::Data, Some("a")),
                r(Scope::Named("user".into()), None)
            ])
        );
        assert_eq!(
            parse_template("a }} b"),
            Ok(vec![TemplatePart::Lit("a }} b".into())])
        );
        assert_eq!(
            parse_template("é{{ data/x[@a='1'] }}"),
            Ok(vec![
                TemplatePart::Lit("é".into()),
                r(Scope::Data, Some("x[@a='1']"))
            ])
        );
    }

    #[test]
    fn bad_templates() {
        let e = parse_template("ab {{ data.x").unwrap_err();
        assert!(e.contains("unclosed `{{` at column 4"), "{e}");
        let e = parse_template("{{ }}").unwrap_err();
        assert!(e.contains("empty reference"), "{e}");
        let e = parse_template("{{ a {{ b }}").unwrap_err();
        assert!(e.contains("cannot nest"), "{e}");
        let e = parse_template("x{{ data. }}").unwrap_err();
        assert!(e.contains("column 2"), "{e}");
    }

    #[test]
    fn single_ref() {
        assert_eq!(
            is_single_ref(" {{ data.zone }} "),
            Some((Scope::Data, Some("zone".into())))
        );
        assert_eq!(is_single_ref("{{data}}"), Some((Scope::Data, None)));
        assert_eq!(is_single_ref("x{{ data.zone }}"), None);
        assert_eq!(is_single_ref("{{ data.a }}{{ data.b }}"), None);
        assert_eq!(is_single_ref("{{ data.a }"), None);
        assert_eq!(is_single_ref("{{ }}"), None);
        assert_eq!(is_single_ref("data.zone"), None);
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "{{",
            "}}",
            "{{{",
            "{{{{}}}}",
            "{{é",
            "é{{}}é",
            "{{ data.\u{0} }}",
            "{",
        ] {
            let _ = parse_template(s);
            let _ = is_single_ref(s);
            let _ = parse_ref(s);
        }
    }
}
