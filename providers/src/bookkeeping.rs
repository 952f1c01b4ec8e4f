//! Helpers shared by the bookkeeping providers (Exchange 2007 Resource Manager, Managed
//! Plans), which keep their records only in provider state: key escaping, name and size
//! checks, inputs written as attributes or child elements, and a view of the state that a
//! preview reads without writing.

use provisio_engine::data::{Element, Node};
use provisio_engine::model::{InputCheck, InputSpec, ProcKind};
use provisio_engine::provider::ProcedureSpec;
use provisio_engine::provider::{Preview, ProviderError};
use provisio_engine::ProviderState;
use provisio_engine::UndoKind;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A procedure of a bookkeeping provider: a read has nothing to undo; a write is reversed by
/// the engine restoring the state it wrote.
pub(crate) fn spec(
    name: &str,
    kind: ProcKind,
    description: &str,
    inputs: Vec<InputSpec>,
) -> ProcedureSpec {
    ProcedureSpec {
        name: name.to_string(),
        kind,
        undo: if kind == ProcKind::Read {
            UndoKind::Nothing
        } else {
            UndoKind::Reversible
        },
        description: description.to_string(),
        inputs,
    }
}

/// Largest size accepted in any unit (2^40: a petabyte of megabytes is already absurd).
pub(crate) const MAX_SIZE: u64 = 1 << 40;

/// A name as one key component: `%` and `/` are written `%25` and `%2F`, so a name holding
/// a slash (an LDAP path) cannot reach into another record's keys.
pub(crate) fn esc(s: &str) -> String {
    s.replace('%', "%25").replace('/', "%2F")
}

/// An attribute of `e`, else the text of its child of that name (YAML and JSON have no
/// attributes); trimmed, absent when empty.
pub(crate) fn field(e: &Element, name: &str) -> Option<String> {
    e.attr(name)
        .map(str::to_string)
        .or_else(|| e.child(name).map(Element::string_value))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// [`field`], required: the error names the input as `at`.
pub(crate) fn req_field(e: &Element, name: &str, at: &str) -> Result<String, ProviderError> {
    field(e, name).ok_or_else(|| ProviderError::invalid(format!("input `{at}` is required")))
}

/// A name: at most `max` characters, no control characters, no surrounding spaces.
pub(crate) fn check_name(at: &str, value: &str, max: usize) -> Result<String, ProviderError> {
    let bad = |why: &str| {
        Err(ProviderError::invalid(format!(
            "input `{at}` {why}, got {value:?}"
        )))
    };
    if value.is_empty() {
        return bad("is empty");
    }
    if value.chars().count() > max {
        return bad(&format!("is longer than {max} characters"));
    }
    if value.chars().any(char::is_control) {
        return bad("holds a control character");
    }
    if value.trim() != value {
        return bad("starts or ends with a space");
    }
    Ok(value.to_string())
}

/// A whole number of `unit` above zero (at most [`MAX_SIZE`]).
pub(crate) fn parse_size(at: &str, text: &str, unit: &str) -> Result<u64, ProviderError> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 && n <= MAX_SIZE => Ok(n),
        _ => Err(ProviderError::invalid(format!(
            "input `{at}` must be a whole number of {unit} from 1 to {MAX_SIZE}, got {text:?}"
        ))),
    }
}

/// The compile-time check of a size input (a constant in a request is refused before
/// anything runs).
pub(crate) const SIZE_CHECK: InputCheck = InputCheck(|v| match v.trim().parse::<u64>() {
    Ok(n) if n > 0 && n <= MAX_SIZE => Ok(()),
    _ => Err(format!(
        "must be a whole number from 1 to {MAX_SIZE}, got {v:?}"
    )),
});

/// Whether `name` is one of `accepted` (case-insensitive), as its canonical spelling.
pub(crate) fn one_of(
    at: &str,
    value: &str,
    accepted: &[&'static str],
) -> Result<&'static str, ProviderError> {
    accepted
        .iter()
        .find(|a| a.eq_ignore_ascii_case(value.trim()))
        .copied()
        .ok_or_else(|| {
            ProviderError::invalid(format!(
                "input `{at}` must be one of {}, got {value:?}",
                accepted.join(", ")
            ))
        })
}

/// Parses a flag: `true`/`1`/`yes` or `false`/`0`/`no`; absent → `default`.
pub(crate) fn flag(at: &str, value: Option<String>, default: bool) -> Result<bool, ProviderError> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(default),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(ProviderError::invalid(format!(
                "input `{at}` must be true/false/1/0, got {v:?}"
            ))),
        },
    }
}

/// Removes every child element named `name` (before an output of that name is added).
pub(crate) fn remove_children(e: &mut Element, name: &str) {
    e.children
        .retain(|c| !matches!(c, Node::Element(x) if x.name == name));
}

/// A text element.
pub(crate) fn text(name: &str, value: impl ToString) -> Element {
    Element::with_text(name, value.to_string())
}

/// The provider state as JSON records under text keys. Writes are skipped in a preview
/// (its handle is not writable), so one code path serves `execute` and `preview`.
pub(crate) struct Records<'a> {
    state: &'a ProviderState,
}

impl<'a> Records<'a> {
    pub(crate) fn new(state: &'a ProviderState) -> Records<'a> {
        Records { state }
    }

    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, ProviderError> {
        Ok(self.state.get_json(key.as_bytes()).await?)
    }

    pub(crate) async fn put<T: Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), ProviderError> {
        if self.state.is_writable() {
            self.state.put_json(key.as_bytes(), value).await?;
        }
        Ok(())
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), ProviderError> {
        if self.state.is_writable() {
            self.state.delete(key.as_bytes()).await?;
        }
        Ok(())
    }

    /// Every record whose key starts with `prefix`, with the key after the prefix.
    pub(crate) async fn scan<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, ProviderError> {
        let mut out = Vec::new();
        for (k, v) in self.state.scan(prefix.as_bytes()).await? {
            let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            let value = serde_json::from_slice(&v).map_err(|e| {
                ProviderError::permanent(format!(
                    "provider-state record `{prefix}{key}` does not decode: {e}"
                ))
            })?;
            out.push((key, value));
        }
        Ok(out)
    }
}

/// What a preview says about a call that ran against the unlocked state without writing:
/// a read changes nothing, a write changes what `summary` says, a permanent error will fail
/// the run too.
pub(crate) fn preview_of(
    outcome: Result<String, ProviderError>,
    read: bool,
) -> Result<Preview, ProviderError> {
    match outcome {
        Ok(summary) if read => Ok(Preview::NoChange(summary)),
        Ok(summary) => Ok(Preview::Change(summary)),
        Err(e @ ProviderError::Permanent { .. }) => Ok(Preview::Fail(e.message())),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_slashes_and_names_are_checked() {
        assert_eq!(esc("LDAP://OU=a/b%"), "LDAP:%2F%2FOU=a%2Fb%25");
        assert!(check_name("organization", "Fabrikam", 64).is_ok());
        for bad in ["", " x", "a\nb"] {
            let e = check_name("organization", bad, 64).unwrap_err();
            assert!(e.message().contains("input `organization`"), "{e}");
        }
        let e = check_name("organization", &"x".repeat(65), 64).unwrap_err();
        assert!(e.message().contains("longer than 64"), "{e}");
    }

    #[test]
    fn sizes_are_positive_whole_numbers() {
        assert_eq!(parse_size("megabytes", " 10 ", "megabytes").unwrap(), 10);
        for bad in ["0", "-5", "1.5", "ten", ""] {
            let e = parse_size("megabytes", bad, "megabytes").unwrap_err();
            assert!(e.message().contains("input `megabytes`"), "{bad}: {e}");
            assert!((SIZE_CHECK.0)(bad).is_err());
        }
        assert!((SIZE_CHECK.0)("512").is_ok());
    }
}
