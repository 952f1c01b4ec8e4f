//! Script errors, and the translation of rhai errors and positions into them.

use rhai::{EvalAltResult, ParseError, ParseErrorType, Position};

use super::limits::ScriptLimits;

/// Where a script's text starts inside a definition file: script line 1 is `line`, and
/// column `c` of the script's first line is `column + c - 1`; later lines keep their
/// column plus `indent` (the indentation a YAML block scalar stripped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ScriptOrigin {
    /// The definition file (as shown to users).
    pub(crate) file: String,
    /// 1-based line of the script's first character in `file`.
    pub(crate) line: u32,
    /// 1-based column of the script's first character in `file`.
    pub(crate) column: u32,
    /// Columns added to the column of every line after the first.
    pub(crate) indent: u32,
}

impl ScriptOrigin {
    /// An origin at `file:line:column`.
    pub fn new(file: impl Into<String>, line: u32, column: u32) -> Self {
        Self {
            file: file.into(),
            line,
            column,
            indent: 0,
        }
    }

    /// The same origin for a script whose lines after the first stand `indent` columns
    /// further right in the file than in the script's text (a YAML block scalar).
    pub fn with_indent(mut self, indent: u32) -> Self {
        self.indent = indent;
        self
    }

    /// The file `(line, column)` of a position inside the script; no position maps to the
    /// script's start.
    pub(crate) fn map(&self, pos: Position) -> (u32, u32) {
        let line = self.line.max(1);
        let column = self.column.max(1);
        match pos.line() {
            None => (line, column),
            Some(l) => {
                let l = u32::try_from(l).unwrap_or(u32::MAX).max(1);
                let c = u32::try_from(pos.position().unwrap_or(1))
                    .unwrap_or(u32::MAX)
                    .max(1);
                if l == 1 {
                    (line, column.saturating_add(c - 1))
                } else {
                    (line.saturating_add(l - 1), c.saturating_add(self.indent))
                }
            }
        }
    }
}

/// A script that failed to compile or run. Displays as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// The script does not parse (or names an undefined variable).
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        /// Definition file.
        file: String,
        /// Line in `file`.
        line: u32,
        /// Column in `file`.
        column: u32,
        /// What is wrong.
        message: String,
    },
    /// The script failed while running (including an uncaught `throw`).
    #[error("{file}:{line}:{column}: {message}")]
    Runtime {
        /// Definition file.
        file: String,
        /// Line in `file`.
        line: u32,
        /// Column in `file`.
        column: u32,
        /// What went wrong.
        message: String,
    },
    /// The script hit a resource limit.
    #[error("{file}:{line}:{column}: {message}")]
    Limit {
        /// Which limit: "operations", "call depth", "string size", "array size", "map size",
        /// "wall time" or "expression depth".
        limit: &'static str,
        /// Definition file.
        file: String,
        /// Line in `file`.
        line: u32,
        /// Column in `file`.
        column: u32,
        /// What was exceeded, naming the setting.
        message: String,
    },
    /// The script ran but its result has the wrong type (or cannot become JSON).
    #[error("{file}:{line}:{column}: {message}")]
    Type {
        /// Definition file.
        file: String,
        /// Line in `file`.
        line: u32,
        /// Column in `file`.
        column: u32,
        /// What was expected and what came.
        message: String,
    },
}

impl ScriptError {
    /// The message without the location.
    pub fn message(&self) -> &str {
        match self {
            Self::Syntax { message, .. }
            | Self::Runtime { message, .. }
            | Self::Limit { message, .. }
            | Self::Type { message, .. } => message,
        }
    }

    /// `(file, line, column)` in the definition file.
    pub fn location(&self) -> (&str, u32, u32) {
        match self {
            Self::Syntax {
                file, line, column, ..
            }
            | Self::Runtime {
                file, line, column, ..
            }
            | Self::Limit {
                file, line, column, ..
            }
            | Self::Type {
                file, line, column, ..
            } => (file, *line, *column),
        }
    }

    /// The limit hit, for [`ScriptError::Limit`].
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            Self::Limit { limit, .. } => Some(limit),
            _ => None,
        }
    }

    pub(crate) fn type_error(origin: &ScriptOrigin, message: String) -> Self {
        let (line, column) = origin.map(Position::NONE);
        Self::Type {
            file: origin.file.clone(),
            line,
            column,
            message,
        }
    }
}

/// Marker returned from `on_progress` when the wall-time deadline passed; scripts cannot
/// construct it, so an `ErrorTerminated` carrying it is always ours.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallTimeExceeded;

/// Describes a data-size limit from rhai's text ("Length of string", "Size of array/BLOB",
/// "Size of object map", with "literal" variants from the parser).
fn size_limit(what: &str, limits: &ScriptLimits) -> (&'static str, String) {
    let w = what.to_ascii_lowercase();
    if w.contains("string") {
        (
            "string size",
            format!(
                "string longer than {} bytes (limit max_string_size)",
                limits.max_string_size
            ),
        )
    } else if w.contains("map") {
        (
            "map size",
            format!(
                "object map larger than {} entries (limit max_map_size)",
                limits.max_map_size
            ),
        )
    } else {
        (
            "array size",
            format!(
                "array larger than {} items (limit max_array_size)",
                limits.max_array_size
            ),
        )
    }
}

/// A compile error as a [`ScriptError`].
pub(crate) fn from_parse(
    err: &ParseError,
    origin: &ScriptOrigin,
    limits: &ScriptLimits,
) -> ScriptError {
    let (line, column) = origin.map(err.1);
    let file = origin.file.clone();
    match err.0.as_ref() {
        ParseErrorType::ExprTooDeep => ScriptError::Limit {
            limit: "expression depth",
            file,
            line,
            column,
            message: format!(
                "expression nested deeper than {} levels (limit max_expr_depth)",
                limits.max_expr_depth
            ),
        },
        ParseErrorType::LiteralTooLarge(what, _) => {
            let (limit, message) = size_limit(what, limits);
            ScriptError::Limit {
                limit,
                file,
                line,
                column,
                message,
            }
        }
        other => ScriptError::Syntax {
            file,
            line,
            column,
            message: other.to_string(),
        },
    }
}

/// A thrown value as message text: strings as they are, anything else in rhai's form.
fn thrown_text(v: &rhai::Dynamic) -> String {
    match v.read_lock::<rhai::ImmutableString>() {
        Some(s) => s.to_string(),
        None => v.to_string(),
    }
}

/// A run-time error as a [`ScriptError`]; errors inside script-defined functions report the
/// innermost position and name the functions they passed through.
pub(crate) fn from_eval(
    err: EvalAltResult,
    origin: &ScriptOrigin,
    limits: &ScriptLimits,
) -> ScriptError {
    let mut err = err;
    let mut via = Vec::new();
    let mut outer = Position::NONE;
    loop {
        match err {
            EvalAltResult::ErrorInFunctionCall(name, _, inner, pos) => {
                via.push(format!("in call to function `{name}`"));
                if outer.is_none() {
                    outer = pos;
                }
                err = *inner;
            }
            EvalAltResult::ErrorInModule(name, inner, pos) => {
                via.push(format!("in module `{name}`"));
                if outer.is_none() {
                    outer = pos;
                }
                err = *inner;
            }
            _ => break,
        }
    }
    let mut pos = err.take_position();
    if pos.is_none() {
        pos = outer;
    }
    let (line, column) = origin.map(pos);
    let file = origin.file.clone();
    let with_via = |m: String| {
        if via.is_empty() {
            m
        } else {
            format!("{m} ({})", via.join(", "))
        }
    };
    let limit = |limit: &'static str, message: String| ScriptError::Limit {
        limit,
        file: origin.file.clone(),
        line,
        column,
        message: with_via(message),
    };
    match err {
        EvalAltResult::ErrorTooManyOperations(_) => limit(
            "operations",
            format!(
                "script ran more than {} operations (limit max_operations)",
                limits.max_operations
            ),
        ),
        EvalAltResult::ErrorStackOverflow(_) => limit(
            "call depth",
            format!(
                "function calls nested deeper than {} levels (limit max_call_levels)",
                limits.max_call_levels
            ),
        ),
        EvalAltResult::ErrorDataTooLarge(ref what, _) => {
            let (l, m) = size_limit(what, limits);
            limit(l, m)
        }
        EvalAltResult::ErrorTerminated(ref token, _) if token.is::<WallTimeExceeded>() => limit(
            "wall time",
            format!(
                "script ran longer than {:?} (limit wall_time)",
                limits.wall_time
            ),
        ),
        EvalAltResult::ErrorParsing(ref e, _) => match e {
            ParseErrorType::ExprTooDeep => limit(
                "expression depth",
                format!(
                    "expression nested deeper than {} levels (limit max_expr_depth)",
                    limits.max_expr_depth
                ),
            ),
            other => ScriptError::Syntax {
                file,
                line,
                column,
                message: with_via(other.to_string()),
            },
        },
        EvalAltResult::ErrorMismatchOutputType(ref want, ref got, _) => ScriptError::Type {
            file,
            line,
            column,
            message: with_via(format!("script must return {want}, got {got}")),
        },
        EvalAltResult::ErrorTooManyModules(_) | EvalAltResult::ErrorModuleNotFound(..) => {
            ScriptError::Runtime {
                file,
                line,
                column,
                message: with_via("modules cannot be imported in Provisio scripts".to_string()),
            }
        }
        EvalAltResult::ErrorRuntime(ref v, _) => ScriptError::Runtime {
            file,
            line,
            column,
            message: with_via(thrown_text(v)),
        },
        other => ScriptError::Runtime {
            file,
            line,
            column,
            message: with_via(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_map_through_origin() {
        let o = ScriptOrigin::new("ns.yaml", 10, 7);
        assert_eq!(o.map(Position::new(1, 1)), (10, 7));
        assert_eq!(o.map(Position::new(1, 4)), (10, 10));
        assert_eq!(o.map(Position::new(3, 2)), (12, 2));
        assert_eq!(o.map(Position::NONE), (10, 7));
    }
}
