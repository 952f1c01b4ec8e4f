//! Field names that are rhai keywords: `data.go`, `data.match`, `item.fn` read the field.
//!
//! Data comes from requests written by people who never heard of rhai, so any field name
//! must be reachable with the dot syntax the docs show. rhai reserves many words (`go`,
//! `match`, `case`, `default`, `new`, `fn`, `if`, …) and refuses them after a `.`; a token
//! mapper turns a keyword or reserved word that directly follows `.` or `?.` into a plain
//! identifier. Positions stay those of the source text (a rewrite of the text to
//! `data["go"]` would shift every later column of an error), and string literals and
//! comments are never touched because they are not tokens of that kind.

use std::cell::Cell;

use rhai::{is_valid_identifier, Engine, LexError, Token};

thread_local! {
    /// Whether the previous token of the script being tokenized on this thread was `.` or
    /// `?.`. A script is tokenized on one thread from start to end, in order (the parser
    /// peeks ahead but each token passes the mapper once).
    static AFTER_DOT: Cell<bool> = const { Cell::new(false) };
}

/// Forgets the previous script's last token; call before each compilation on this thread
/// (a script ending in `.` must not turn the next script's leading `if` into a name).
pub(crate) fn reset() {
    AFTER_DOT.with(|c| c.set(false));
}

/// Installs the mapper on `engine`.
pub(crate) fn register(engine: &mut Engine) {
    #[allow(deprecated)] // rhai marks the token mapper "volatile", not deprecated.
    engine.on_parse_token(|token, _pos, _state| {
        let after_dot =
            AFTER_DOT.with(|c| c.replace(matches!(token, Token::Period | Token::Elvis)));
        if !after_dot {
            return token;
        }
        let word: Option<String> = match &token {
            Token::Reserved(s) => Some(s.to_string()),
            // A disabled keyword (`eval`) arrives as an error already.
            Token::LexError(e) => match &**e {
                LexError::ImproperSymbol(s, _) => Some(s.clone()),
                _ => None,
            },
            t if t.is_literal() => Some(t.literal_syntax().to_string()),
            _ => None,
        };
        match word {
            Some(w) if is_valid_identifier(&w) => Token::Identifier(Box::new(w.as_str().into())),
            _ => token,
        }
    });
}
