//! Plain data describing namespaces, procedures, steps and requests: one model under both
//! the MPS-style XML syntax and the YAML syntax (see `request` for the parsers).

use crate::data::{Element, IfNull, Mode, Scalar};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where something was declared, for error messages (`file:line:column`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// The file (or `<request>`, `<inline>`).
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: u32,
    /// 1-based column; 0 when unknown.
    pub column: u32,
}

impl SourceRef {
    /// A location in a file.
    pub fn new(file: impl Into<String>, line: u32, column: u32) -> Self {
        SourceRef {
            file: file.into(),
            line,
            column,
        }
    }
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}", self.file),
            (l, 0) => write!(f, "{}:{}", self.file, l),
            (l, c) => write!(f, "{}:{}:{}", self.file, l, c),
        }
    }
}

/// Who may call a procedure.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Callable by simple requests.
    Public,
    /// Callable only from other procedures (or by trusted requests). The MPS SDK default.
    #[default]
    Private,
}

/// Transaction kind of a procedure.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProcKind {
    /// Reads only: nothing to undo.
    Read,
    /// Executes and is rolled back on failure.
    #[default]
    Write,
    /// Execute, prepare, then commit or abort.
    TwoPhase,
}

impl fmt::Display for ProcKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProcKind::Read => "read",
            ProcKind::Write => "write",
            ProcKind::TwoPhase => "two-phase",
        })
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Public => "public",
            Access::Private => "private",
        })
    }
}

/// A declared input of a procedure (a child of `data`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InputSpec {
    /// Element name under `data` (a path is allowed: `tenant/name`).
    pub name: String,
    /// Type hint (`string`, `int`, `bool`, `list`, `map`); informational plus light checks.
    pub ty: Option<String>,
    /// Must be present when the procedure is called.
    pub required: bool,
    /// Never logged, journaled or returned in clear text (MPS `do-not-log`).
    pub secret: bool,
    /// Value used when the input is absent.
    pub default: Option<Scalar>,
    /// Human description.
    pub description: Option<String>,
    /// A provider's check of the value: a constant given for this input is checked when a
    /// request compiles (`validate`, `plan`, `run`), before any provider is called.
    #[serde(skip)]
    pub check: Option<InputCheck>,
}

/// A check of one input's text value; `Err` says what is wrong and what is accepted
/// (e.g. "must be one of A, AAAA, …; got \"AAA\"").
#[derive(Clone, Copy)]
pub struct InputCheck(pub fn(&str) -> Result<(), String>);

impl std::fmt::Debug for InputCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InputCheck")
    }
}

impl PartialEq for InputCheck {
    /// Checks are code, not data: two specs that differ only in their check are the same
    /// declaration.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

/// The named data scopes a transform, forEach or `when` can read or write.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// The request's (or, in a nested call, the caller's executeData's) data.
    Data,
    /// The current step's own data.
    ExecuteData,
    /// Data shared by the steps of one procedure invocation.
    ProcedureData,
    /// Engine-managed context (`errorContext` inside a catch).
    Context,
    /// A forEach variable of the current step.
    Named(String),
}

impl Scope {
    /// Parses a scope name as written in XML/YAML.
    pub(crate) fn parse(s: &str) -> Scope {
        match s {
            "data" => Scope::Data,
            "executeData" => Scope::ExecuteData,
            "procedureData" => Scope::ProcedureData,
            "context" => Scope::Context,
            other => Scope::Named(other.to_string()),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Data => f.write_str("data"),
            Scope::ExecuteData => f.write_str("executeData"),
            Scope::ProcedureData => f.write_str("procedureData"),
            Scope::Context => f.write_str("context"),
            Scope::Named(n) => f.write_str(n),
        }
    }
}

/// A rhai script embedded in a definition, with where its text starts (for errors).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Script {
    /// The rhai source.
    pub source: String,
    /// Where the source text starts in its file.
    pub origin: SourceRef,
    /// Columns by which each line after the first stands further right in the file than
    /// in `source` (a YAML block scalar strips its indentation); 0 = as written.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub indent: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Script {
    /// A script from text and its location.
    pub fn new(source: impl Into<String>, origin: SourceRef) -> Self {
        Script {
            source: source.into(),
            origin,
            indent: 0,
        }
    }

    /// The same script, its later lines indented by `indent` columns in the file.
    pub fn with_indent(mut self, indent: u32) -> Self {
        self.indent = indent;
        self
    }
}

/// Where a transform takes its value from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TransformSource {
    /// A node selected from a scope (`source` + `sourcePath`).
    Node {
        /// The scope.
        scope: Scope,
        /// Path below the scope root; `None` = the root itself.
        path: Option<String>,
    },
    /// A text template with `{{ scope/path }}` placeholders (YAML `with:` strings,
    /// XML `template="…"`): the result is one text element.
    Template(String),
    /// A rhai expression over the data scopes; its value (map, list or scalar) becomes
    /// the node (YAML `$expr`, XML `expr="…"`).
    Expr(Script),
}

/// One `before` or `after` node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transform {
    /// What is copied (or moved).
    pub source: TransformSource,
    /// The destination scope.
    pub destination: Scope,
    /// Path under the destination (the target node); `None` = the scope root.
    pub destination_path: Option<String>,
    /// insert (default), merge, replace, move.
    pub mode: Mode,
    /// What to do when the source selects nothing.
    pub if_null: IfNull,
    /// Where it was declared.
    pub source_ref: SourceRef,
    /// MPS `xsl:template` children (XML only): the source node is transformed by the
    /// stylesheet they make before it is placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xsl: Option<XslTemplates>,
    /// MPS `allowNullTransform`: an XSL result without an element leaves the target
    /// untouched instead of failing the step.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_null_transform: bool,
}

/// The XSL templates of a `before`/`after`, as one XSLT 1.0 stylesheet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct XslTemplates {
    /// The stylesheet: an `xsl:stylesheet` holding the templates as written, each on the
    /// line of its file where it was written (so libxslt's line numbers are the file's).
    pub stylesheet: String,
    /// Where the first template was written.
    pub source_ref: SourceRef,
}

/// A forEach node: iterate over the nodes a path selects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForEach {
    /// The variable name the current node is exposed under.
    pub name: String,
    /// `data`, `procedureData` or an earlier forEach name.
    pub root: Scope,
    /// Path from the root; `None` = the root itself.
    pub path: Option<String>,
    /// fail (default) | skip | ignore.
    pub if_null: IfNull,
}

/// A `when` condition: all of a step's conditions must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum When {
    /// True iff the path selects something.
    Exists {
        /// The scope.
        scope: Scope,
        /// Path under it; `None` = the root.
        path: Option<String>,
    },
    /// True iff the named select resolved to this case.
    Case {
        /// The select's name.
        select: String,
        /// The case.
        case: String,
    },
    /// True iff the rhai expression returns true (YAML `if:`, XML `<when expr="…"/>`).
    Expr(Script),
    /// forEach filter: true iff the rhai expression returns true with `item` bound to the
    /// current node of forEach `for_each` (YAML forEach `filter:`, XML `<forEach filter="…"/>`).
    Filter {
        /// The forEach variable the filter applies to.
        for_each: String,
        /// The expression.
        script: Script,
    },
    /// True iff the path selects nothing (YAML `unless:`; XML `when … not="1"`).
    Missing {
        /// The scope.
        scope: Scope,
        /// Path under it.
        path: Option<String>,
    },
}

/// `repeat`: run the call N times, N read from a path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repeat {
    /// The scope.
    pub scope: Scope,
    /// Path under it.
    pub path: Option<String>,
    /// fail | skip | ignore (= run once).
    pub if_null: IfNull,
}

/// Which procedure a step calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallTarget {
    /// Namespace name, e.g. `Hosted DNS`.
    pub namespace: String,
    /// Procedure name, e.g. `CreateTenantZone`.
    pub procedure: String,
}

impl fmt::Display for CallTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.procedure)
    }
}

/// An `execute` step, or a `transform` step when `call` is `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecuteStep {
    /// Step id, unique in its procedure (YAML key; XML `id` attribute or `step<N>`).
    pub id: String,
    /// The called procedure; `None` for a transform step.
    pub call: Option<CallTarget>,
    /// forEach nodes, outermost first.
    pub for_each: Vec<ForEach>,
    /// All must hold for an iteration to run.
    pub when: Vec<When>,
    /// Optional repeat count.
    pub repeat: Option<Repeat>,
    /// The literal initial executeData (root named `executeData`).
    pub execute_data: Element,
    /// Applied in order before the call.
    pub before: Vec<Transform>,
    /// Applied in order after the call.
    pub after: Vec<Transform>,
    /// Explicit dependencies (YAML `needs:`) by step id.
    pub needs: Vec<String>,
    /// Where it was declared.
    pub source_ref: SourceRef,
    /// MPS `sensitive`: `Some(true)` seals the journaled rollback data of this call and
    /// everything it calls, `Some(false)` stops sealing below here, `None` inherits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitive: Option<bool>,
    /// MPS `impersonate`: whose identity the call runs with.
    #[serde(default, skip_serializing_if = "Impersonate::is_inherit")]
    pub impersonate: Impersonate,
    /// MPS `trusted`: the callee would receive `securityContext/authentication`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_credentials: bool,
    /// An MPS `queue` step: the call is queued as a job of its own instead of running
    /// inline (`None`: an execute or transform step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStep>,
}

/// What makes an execute step a `queue` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStep {
    /// MPS `queueSuspended` (default `true`): the job runs only if the submitting
    /// transaction commits, and is removed if it rolls back. `false`: it runs whatever the
    /// submitter's outcome.
    pub suspended: bool,
}

/// MPS `impersonate` on an execute step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Impersonate {
    /// `0`: the caller's choice (at the top: the engine's identity).
    #[default]
    Inherit,
    /// `1`: the requester, or the credentials in `securityContext`.
    Caller,
    /// `2`: the engine's own identity.
    Engine,
}

impl Impersonate {
    /// Whether this is the default.
    pub fn is_inherit(&self) -> bool {
        *self == Impersonate::Inherit
    }
}

/// Something a definition asks for that Provisio does not do (yet): shown by `validate`
/// and logged when a request that reaches it runs. Not an error: the request runs, and
/// the message says how Provisio behaves instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// What, and what Provisio does instead.
    pub message: String,
    /// Where it was written.
    pub at: SourceRef,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// A try block with its catch block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TryStep {
    /// Step id.
    pub id: String,
    /// Steps of the try.
    pub body: Vec<Step>,
    /// Steps of the catch; run with `context/errorContext` set.
    pub catch: Vec<Step>,
    /// Explicit dependencies.
    pub needs: Vec<String>,
    /// Where it was declared.
    pub source_ref: SourceRef,
}

/// A `select` with its `where` cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectStep {
    /// Step id.
    pub id: String,
    /// The select's name, referenced by `when select=… case=…`.
    pub name: String,
    /// The scope read.
    pub scope: Scope,
    /// Path under it.
    pub path: Option<String>,
    /// (value, case) pairs in document order.
    pub cases: Vec<(String, String)>,
    /// Case when no value matched.
    pub default_case: Option<String>,
    /// Case when the path selects nothing.
    pub if_null_case: Option<String>,
    /// Explicit dependencies.
    pub needs: Vec<String>,
    /// Where it was declared.
    pub source_ref: SourceRef,
}

/// A rhai script step: reads the data scopes, may call the procedures it declares (as
/// nested calls of the same transaction), and returns a value placed into `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptStep {
    /// Step id.
    pub id: String,
    /// The script.
    pub script: Script,
    /// Run when the transaction rolls back after this step succeeded (sees `data` and
    /// `result`).
    pub undo: Option<Script>,
    /// Procedures the script may call with `call_procedure` (checked at compile time).
    pub calls: Vec<CallTarget>,
    /// Conditions, as for execute steps.
    pub when: Vec<When>,
    /// Where the result goes under `data`; `None` merges a map result into `data`.
    pub output: Option<String>,
    /// Explicit dependencies.
    pub needs: Vec<String>,
    /// Where it was declared.
    pub source_ref: SourceRef,
}

/// One step of a procedure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// A call (or a pure transform).
    Execute(ExecuteStep),
    /// try/catch.
    Try(TryStep),
    /// select/where.
    Select(SelectStep),
    /// A rhai script.
    Script(ScriptStep),
}

impl Step {
    /// The step id.
    pub fn id(&self) -> &str {
        match self {
            Step::Execute(s) => &s.id,
            Step::Try(s) => &s.id,
            Step::Select(s) => &s.id,
            Step::Script(s) => &s.id,
        }
    }

    /// Explicit dependencies.
    pub fn needs(&self) -> &[String] {
        match self {
            Step::Execute(s) => &s.needs,
            Step::Try(s) => &s.needs,
            Step::Select(s) => &s.needs,
            Step::Script(s) => &s.needs,
        }
    }

    /// Where it was declared.
    pub fn source_ref(&self) -> &SourceRef {
        match self {
            Step::Execute(s) => &s.source_ref,
            Step::Try(s) => &s.source_ref,
            Step::Select(s) => &s.source_ref,
            Step::Script(s) => &s.source_ref,
        }
    }
}

/// How a procedure's steps are ordered when they do not say `needs:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Document order: each step depends on the previous one (XML default).
    #[default]
    Sequential,
    /// Only `needs:` and data-flow edges order steps (YAML default; XML `parallel="1"`).
    Parallel,
}

/// A procedure: a leaf served by the namespace's provider (no steps), or a composition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Procedure {
    /// Name, unique in the namespace.
    pub name: String,
    /// public | private.
    pub access: Access,
    /// read | write | two-phase.
    pub kind: ProcKind,
    /// Human description.
    pub description: Option<String>,
    /// Declared inputs.
    pub inputs: Vec<InputSpec>,
    /// Step ordering.
    pub ordering: Ordering,
    /// Initial procedureData (root named `procedureData`).
    pub procedure_data: Element,
    /// Steps; empty for a provider leaf.
    pub steps: Vec<Step>,
    /// For provider leaves: the provider's entry point when it differs from `name`.
    pub entry: Option<String>,
    /// Keep executeData for the undo call (MPS `saveDataForRollback`).
    pub save_data_for_rollback: bool,
    /// After a crash, resume instead of rolling back.
    pub resumable: bool,
    /// Where it was declared.
    pub source_ref: SourceRef,
    /// MPS `auditEnabled`: a transaction whose request calls this procedure is written to
    /// the audit log (`false`: only its journal records, until retention prunes them).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub audit: bool,
    /// MPS `perfEnabled`: each invocation's time is logged as a `provisio::perf` event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub perf: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl Procedure {
    /// The procedures this procedure's own steps call, with the id of the step that calls
    /// each, in document order: `execute` and `queue` steps (inside try/catch blocks too)
    /// and the procedures a script step declares. Not what those procedures call in turn.
    pub fn direct_calls(&self) -> Vec<(&str, &CallTarget)> {
        fn walk<'a>(steps: &'a [Step], out: &mut Vec<(&'a str, &'a CallTarget)>) {
            for step in steps {
                match step {
                    Step::Execute(e) => {
                        if let Some(c) = &e.call {
                            out.push((&e.id, c));
                        }
                    }
                    Step::Try(t) => {
                        walk(&t.body, out);
                        walk(&t.catch, out);
                    }
                    Step::Script(s) => out.extend(s.calls.iter().map(|c| (s.id.as_str(), c))),
                    Step::Select(_) => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.steps, &mut out);
        out
    }

    /// What this procedure's steps ask for that Provisio does not do yet (see [`Warning`]).
    pub fn warnings(&self) -> Vec<Warning> {
        fn walk(steps: &[Step], out: &mut Vec<Warning>) {
            for step in steps {
                match step {
                    Step::Execute(e) => {
                        for t in e.before.iter().chain(&e.after) {
                            if t.allow_null_transform && t.xsl.is_none() {
                                out.push(Warning {
                                    message: format!(
                                        "step `{}`: allowNullTransform=\"1\" without xsl:template children has no effect (it only lets an XSL template's empty result leave the target untouched)",
                                        e.id
                                    ),
                                    at: t.source_ref.clone(),
                                });
                            }
                        }
                        if e.impersonate == Impersonate::Caller {
                            out.push(Warning {
                                message: format!(
                                    "step `{}`: impersonate=\"1\" (run as the requester) has no effect yet: every call runs with the identity of the Provisio process",
                                    e.id
                                ),
                                at: e.source_ref.clone(),
                            });
                        }
                        if e.pass_credentials {
                            out.push(Warning {
                                message: format!(
                                    "step `{}`: trusted=\"1\" has no effect: Provisio never hands securityContext/authentication to the procedures it calls",
                                    e.id
                                ),
                                at: e.source_ref.clone(),
                            });
                        }
                    }
                    Step::Try(t) => {
                        walk(&t.body, out);
                        walk(&t.catch, out);
                    }
                    Step::Select(_) | Step::Script(_) => {}
                }
            }
        }
        let mut out = Vec::new();
        if self.kind == ProcKind::TwoPhase && !self.steps.is_empty() {
            out.push(Warning {
                message: format!(
                    "procedure `{}`: type=\"two-phase\" on a procedure with steps changes nothing: each call it makes is prepared and committed in two phases when the called procedure is two-phase",
                    self.name
                ),
                at: self.source_ref.clone(),
            });
        }
        walk(&self.steps, &mut out);
        out
    }

    /// A procedure with defaults (private, write, sequential, no steps).
    pub fn new(name: impl Into<String>) -> Self {
        Procedure {
            name: name.into(),
            access: Access::Private,
            kind: ProcKind::Write,
            description: None,
            inputs: Vec::new(),
            ordering: Ordering::Sequential,
            procedure_data: Element::new("procedureData"),
            steps: Vec::new(),
            entry: None,
            save_data_for_rollback: false,
            resumable: false,
            source_ref: SourceRef::default(),
            audit: true,
            perf: false,
        }
    }
}

/// A namespace: a named group of procedures, optionally served by a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    /// Name (letters, digits, `_`, space).
    pub name: String,
    /// Human description.
    pub description: Option<String>,
    /// The provider serving leaf procedures (`providerSource`); `None` = composition only.
    pub provider: Option<String>,
    /// Copied into every provider call's `context/providerContext`.
    pub provider_context: Element,
    /// The definition cannot be replaced at run time.
    pub read_only: bool,
    /// Procedures in declaration order.
    pub procedures: Vec<Procedure>,
    /// Where it was declared.
    pub source_ref: SourceRef,
}

impl Namespace {
    /// A procedure by name.
    pub fn procedure(&self, name: &str) -> Option<&Procedure> {
        self.procedures.iter().find(|p| p.name == name)
    }
}

/// The syntax a request (and so its response) is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// MPS-style XML.
    Xml,
    /// YAML.
    Yaml,
    /// JSON.
    Json,
}

impl Format {
    /// Guesses the format from a file extension.
    pub fn from_extension(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "xml" => Some(Format::Xml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// What a request runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RequestTarget {
    /// A simple request: one public procedure.
    Call(CallTarget),
    /// A trusted request: its own procedure body.
    Trusted(Box<Procedure>),
}

/// A provisioning request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// What runs.
    pub target: RequestTarget,
    /// The request's `data` (root named `data`).
    pub data: Element,
    /// The request's `context` (root named `context`).
    pub context: Element,
    /// The syntax it was written in.
    pub format: Format,
    /// Where it came from.
    pub source_ref: SourceRef,
}

/// A batch request (MPS: a request with several `<data>` elements, or with `<globalData>`):
/// one procedure run once per data item, each run its own transaction. [`BatchRequest::split`]
/// turns it into those single requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// What runs, for every item.
    pub target: RequestTarget,
    /// Values every item sees (root named `globalData`; empty when the request has none).
    pub global_data: Element,
    /// The data items, in request order.
    pub items: Vec<BatchItem>,
    /// The request's `context`, given to every item.
    pub context: Element,
    /// The syntax it was written in.
    pub format: Format,
    /// Where it came from.
    pub source_ref: SourceRef,
}

/// One data item of a batch request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchItem {
    /// The item's `data` (root named `data`).
    pub data: Element,
    /// Where it was declared.
    pub source_ref: SourceRef,
}

impl BatchRequest {
    /// The single requests the batch stands for, one per data item in order (what MPS's
    /// queue manager does with a batch): each carries the procedure, the context, and as
    /// its `data` the `globalData` merged with the item's data by the `merge` rule (an
    /// item's element replaces global elements of the same name; its attributes win).
    /// Each request gets its own copy, so what one transaction writes into the global
    /// values is not seen by the others.
    ///
    /// The CLI runs these one after another; a daemon would queue them as jobs.
    pub fn split(&self) -> Vec<Request> {
        self.items
            .iter()
            .map(|item| {
                let mut data = self.global_data.clone();
                data.name = "data".into();
                crate::data::transform::merge_into(&mut data, item.data.clone());
                Request {
                    target: self.target.clone(),
                    data,
                    context: self.context.clone(),
                    format: self.format,
                    source_ref: item.source_ref.clone(),
                }
            })
            .collect()
    }
}

/// A parsed request document: one request, or a batch of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RequestDocument {
    /// One `data` (or none), no `globalData`: one transaction.
    Single(Request),
    /// Several `data` items and/or `globalData`: one transaction per item.
    Batch(BatchRequest),
}

impl RequestDocument {
    /// The syntax it was written in (and its response will be).
    pub fn format(&self) -> Format {
        match self {
            RequestDocument::Single(r) => r.format,
            RequestDocument::Batch(b) => b.format,
        }
    }

    /// What runs.
    pub fn target(&self) -> &RequestTarget {
        match self {
            RequestDocument::Single(r) => &r.target,
            RequestDocument::Batch(b) => &b.target,
        }
    }

    /// The single requests to run, in order: the request itself, or a batch's split.
    pub fn into_requests(self) -> Vec<Request> {
        match self {
            RequestDocument::Single(r) => vec![r],
            RequestDocument::Batch(b) => b.split(),
        }
    }
}
