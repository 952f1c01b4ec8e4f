//! Compile errors: each names the step, procedure and file, and says what to do.

use crate::model::SourceRef;
use std::fmt;

/// Why a request or procedure cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A namespace that no file or provider declares.
    #[error("{at}: unknown namespace `{name}`{}", suggest(.suggestion))]
    UnknownNamespace {
        /// The name as written.
        name: String,
        /// The closest known name.
        suggestion: Option<String>,
        /// Where it was referenced.
        at: SourceRef,
    },
    /// A procedure the namespace does not have.
    #[error("{at}: namespace `{namespace}` has no procedure `{name}`{}", suggest(.suggestion))]
    UnknownProcedure {
        /// Namespace.
        namespace: String,
        /// The name as written.
        name: String,
        /// The closest known procedure.
        suggestion: Option<String>,
        /// Where it was referenced.
        at: SourceRef,
    },
    /// A private procedure called from a simple request.
    #[error("{at}: `{namespace}/{procedure}` is private: requests may only call public procedures{}", hint_public(.public))]
    Private {
        /// Namespace.
        namespace: String,
        /// Procedure.
        procedure: String,
        /// Public procedures of that namespace.
        public: Vec<String>,
        /// Where.
        at: SourceRef,
    },
    /// A required input is missing from the request data.
    #[error("{at}: `{procedure}` needs input `{input}`, which the request's data does not have\n  hint: add <{input}>…</{input}> under data (YAML/JSON: `data: {{ {input}: … }}`)")]
    MissingInput {
        /// The procedure.
        procedure: String,
        /// The input.
        input: String,
        /// Where.
        at: SourceRef,
    },
    /// A `needs:` entry names no step of the procedure.
    #[error("{at}: step `{step}` needs `{missing}`, which is not a step of `{procedure}`{}", suggest(.suggestion))]
    UnknownNeed {
        /// Procedure.
        procedure: String,
        /// Step.
        step: String,
        /// The unknown id.
        missing: String,
        /// Closest id.
        suggestion: Option<String>,
        /// Where.
        at: SourceRef,
    },
    /// Steps that depend on each other in a circle.
    #[error("{at}: `{procedure}` has a dependency cycle: {}\n  hint: remove one of these `needs:` entries", .steps.join(" -> "))]
    Cycle {
        /// Procedure.
        procedure: String,
        /// The steps of the cycle, in order, first repeated at the end.
        steps: Vec<String>,
        /// Where the procedure is declared.
        at: SourceRef,
    },
    /// Procedures that call each other in a circle (recursion).
    #[error("{at}: recursive call: {}\n  hint: procedures may not call themselves, directly or through others", .chain.join(" -> "))]
    Recursion {
        /// The call chain, first repeated at the end.
        chain: Vec<String>,
        /// Where the last call is.
        at: SourceRef,
    },
    /// Calls nested deeper than the limit.
    #[error("{at}: calls nest {depth} deep (limit {limit}): {}", .chain.join(" -> "))]
    TooDeep {
        /// The chain.
        chain: Vec<String>,
        /// How deep.
        depth: usize,
        /// The limit.
        limit: usize,
        /// Where.
        at: SourceRef,
    },
    /// A procedure with more steps than the limit.
    #[error("{at}: `{procedure}` has {count} steps (limit {limit})\n  hint: split it into procedures that call each other")]
    TooManySteps {
        /// Procedure.
        procedure: String,
        /// Count.
        count: usize,
        /// Limit.
        limit: usize,
        /// Where.
        at: SourceRef,
    },
    /// Two steps that may run at the same time touch the same data.
    #[error("{at}: race in `{procedure}`: step `{first}` {first_access} `{path}` and step `{second}` {second_access} it, but neither depends on the other\n  hint: add `needs: [{first}]` to step `{second}` (or make the procedure sequential)")]
    Race {
        /// Procedure.
        procedure: String,
        /// One step.
        first: String,
        /// "writes" / "reads".
        first_access: &'static str,
        /// The other step.
        second: String,
        /// "writes" / "reads".
        second_access: &'static str,
        /// The data path both touch.
        path: String,
        /// Where.
        at: SourceRef,
    },
    /// A bad path, template, forEach or select reference.
    #[error("{at}: step `{step}`: {message}")]
    Invalid {
        /// Step.
        step: String,
        /// What.
        message: String,
        /// Where.
        at: SourceRef,
    },
    /// A namespace declares a provider that is not registered, or an entry it lacks.
    #[error("{at}: {message}")]
    Provider {
        /// What.
        message: String,
        /// Where.
        at: SourceRef,
    },
    /// Two definitions of the same namespace.
    #[error("{at}: namespace `{name}` is already defined at {first}")]
    DuplicateNamespace {
        /// Name.
        name: String,
        /// The first definition.
        first: SourceRef,
        /// The second.
        at: SourceRef,
    },
}

impl CompileError {
    /// A stable code for documentation and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            CompileError::UnknownNamespace { .. } => "PRV0101",
            CompileError::UnknownProcedure { .. } => "PRV0102",
            CompileError::Private { .. } => "PRV0103",
            CompileError::MissingInput { .. } => "PRV0104",
            CompileError::UnknownNeed { .. } => "PRV0105",
            CompileError::Cycle { .. } => "PRV0106",
            CompileError::Recursion { .. } => "PRV0107",
            CompileError::TooDeep { .. } => "PRV0108",
            CompileError::TooManySteps { .. } => "PRV0109",
            CompileError::Race { .. } => "PRV0110",
            CompileError::Invalid { .. } => "PRV0111",
            CompileError::Provider { .. } => "PRV0112",
            CompileError::DuplicateNamespace { .. } => "PRV0113",
        }
    }
}

fn suggest(s: &Option<String>) -> String {
    match s {
        Some(s) => format!("; did you mean `{s}`?"),
        None => String::new(),
    }
}

fn hint_public(p: &[String]) -> String {
    if p.is_empty() {
        String::new()
    } else {
        format!("\n  hint: public procedures there: {}", p.join(", "))
    }
}

/// The closest candidate, if it is close enough to be a likely typo (the one rule every
/// "did you mean" follows: `request::rules::suggest`).
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    crate::request::rules::suggest(name, candidates).map(str::to_string)
}

/// Several compile errors (validation reports all of them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileErrors(pub Vec<CompileError>);

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error[{}]: {e}", e.code())?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileErrors {}
