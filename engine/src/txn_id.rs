//! The transaction id: a UUIDv7 text for every transaction the engine starts, kept as a type
//! of its own so that an id cannot be mixed up with a step path, a target or any other string.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

/// Longest id accepted by [`TxnId::from_str`]; a UUID's text is 36 characters.
const MAX_LEN: usize = 64;

/// A transaction id. Serialized as its plain text (`#[serde(transparent)]`), so journals
/// written while ids were bare strings read back unchanged.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct TxnId(String);

/// A text that is not a transaction id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnIdError {
    /// Nothing given.
    #[error("a transaction id cannot be empty")]
    Empty,
    /// Longer than any id the engine makes.
    #[error("`{0}…` is not a transaction id: longer than {MAX_LEN} characters")]
    TooLong(String),
    /// A character outside `A-Z a-z 0-9 - _`.
    #[error(
        "`{text}` is not a transaction id: {found:?} at position {position} \
         (ids are letters, digits, `-` and `_`, e.g. `0190c0de-0000-7000-8000-0000000000b1`)"
    )]
    BadChar {
        /// The text as given (control characters escaped).
        text: String,
        /// The offending character.
        found: char,
        /// Its position (0-based, in characters).
        position: usize,
    },
}

impl TxnId {
    /// A fresh id: a UUIDv7, so ids sort by start time.
    pub fn new_v7() -> TxnId {
        TxnId(uuid::Uuid::now_v7().to_string())
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's text as bytes (the prefix of its store keys).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl FromStr for TxnId {
    type Err = TxnIdError;

    /// Checks that `text` can be a transaction id: not empty, at most 64 characters, only
    /// letters, digits, `-` and `_` (ids are store-key prefixes, so separators and control
    /// characters must never get in).
    fn from_str(text: &str) -> Result<TxnId, TxnIdError> {
        if text.is_empty() {
            return Err(TxnIdError::Empty);
        }
        if let Some((position, found)) = text
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(TxnIdError::BadChar {
                text: text.escape_debug().to_string(),
                found,
                position,
            });
        }
        if text.len() > MAX_LEN {
            return Err(TxnIdError::TooLong(text[..MAX_LEN].to_string()));
        }
        Ok(TxnId(text.to_string()))
    }
}

impl TryFrom<&str> for TxnId {
    type Error = TxnIdError;

    fn try_from(text: &str) -> Result<TxnId, TxnIdError> {
        text.parse()
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for TxnId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for TxnId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for TxnId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for TxnId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for TxnId {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl PartialEq<TxnId> for String {
    fn eq(&self, other: &TxnId) -> bool {
        *self == other.0
    }
}

impl From<TxnId> for String {
    fn from(id: TxnId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_id_parses_back_and_ids_sort_by_start() {
        let a = TxnId::new_v7();
        let b = TxnId::new_v7();
        assert_eq!(a.as_str().parse::<TxnId>().unwrap(), a);
        assert!(a < b, "{a} then {b}");
    }

    #[test]
    fn malformed_ids_are_refused_with_what_is_wrong() {
        assert_eq!("".parse::<TxnId>().unwrap_err(), TxnIdError::Empty);
        let e = "abc/../x".parse::<TxnId>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "`abc/../x` is not a transaction id: '/' at position 3 (ids are letters, digits, \
             `-` and `_`, e.g. `0190c0de-0000-7000-8000-0000000000b1`)"
        );
        let e = "a\u{0}b".parse::<TxnId>().unwrap_err();
        assert!(e.to_string().starts_with("`a\\0b` is not"), "{e}");
        let e = "x".repeat(65).parse::<TxnId>().unwrap_err();
        assert!(matches!(e, TxnIdError::TooLong(_)), "{e}");
        assert!("x".repeat(64).parse::<TxnId>().is_ok());
    }

    #[test]
    fn serialized_as_plain_text() {
        let id: TxnId = "0190c0de-0000-7000-8000-0000000000b1".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"0190c0de-0000-7000-8000-0000000000b1\"");
        assert_eq!(serde_json::from_str::<TxnId>(&json).unwrap(), id);
    }
}
