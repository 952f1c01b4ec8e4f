//! The compiler: resolves a request's procedure and everything it calls, and turns each
//! procedure's steps into a checked DAG (`Plan`): cycles, unknown names, access, inputs,
//! data-flow dependencies and races, call depth and recursion.
//!
//! ```
//! use provisio_engine::{Catalog, Limits, compile_procedure};
//! use provisio_engine::model::CallTarget;
//! use provisio_engine::provider::ProviderRegistry;
//! let catalog = Catalog::new(vec![], &ProviderRegistry::new()).unwrap();
//! let target = CallTarget { namespace: "Nowhere".into(), procedure: "Nothing".into() };
//! assert!(compile_procedure(&catalog, &target, &Limits::default()).is_err());
//! ```

mod catalog;
mod error;
pub mod graph;

pub(crate) use catalog::hex_sha256;
pub use catalog::Catalog;
pub(crate) use error::closest;
pub use error::{CompileError, CompileErrors};

use crate::data::{Element, IfNull, Mode, Path};
use crate::model::{
    Access, CallTarget, InputSpec, Ordering, ProcKind, Procedure, Request, RequestTarget, Scope,
    SourceRef, Step, TransformSource, Warning, When,
};
use crate::request::template::{parse_template, TemplatePart};
use crate::script::{CompiledScript, ScriptOrigin};
use petgraph::algo::{has_path_connecting, tarjan_scc, toposort, DfsSpace};
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// Compiler limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest chain of nested procedure calls.
    pub max_call_depth: usize,
    /// Most steps in one procedure (counting nested try/catch blocks).
    pub max_steps: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_call_depth: 32,
            max_steps: 100_000,
        }
    }
}

/// A compiled request: its entry procedure and every procedure it can reach.
#[derive(Debug, Clone)]
pub struct Program {
    /// What the request runs.
    pub entry: Arc<CompiledProcedure>,
    /// Every reachable procedure by target.
    pub(crate) procedures: HashMap<CallTarget, Arc<CompiledProcedure>>,
    /// Names of secret inputs anywhere in the program (redacted in output).
    pub(crate) secrets: BTreeSet<String>,
    /// Hash over the definitions the program was compiled from (see [`Program::pinned`]).
    pub(crate) definitions_hash: String,
    /// The namespaces it was compiled from: (hash, serialized definition) per namespace,
    /// plus a trusted request's own procedure body under the name `(request)`.
    pub(crate) pinned: Vec<(String, String, Arc<Vec<u8>>)>,
    /// What its procedures ask for that Provisio does not do (yet); see [`Warning`].
    pub(crate) warnings: Vec<Warning>,
}

impl Program {
    /// What the program's procedures ask for that Provisio does not do (yet): `validate`
    /// prints these, and a run logs them.
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }

    /// A reachable procedure.
    pub(crate) fn procedure(&self, target: &CallTarget) -> Option<&Arc<CompiledProcedure>> {
        self.procedures.get(target)
    }
}

/// A procedure ready to run.
#[derive(Debug, Clone)]
pub struct CompiledProcedure {
    /// Its name.
    pub(crate) target: CallTarget,
    /// read | write | two-phase.
    pub(crate) kind: ProcKind,
    /// Declared inputs (defaults are applied at invocation).
    pub(crate) inputs: Vec<InputSpec>,
    /// Initial procedureData.
    pub(crate) procedure_data: Element,
    /// After a crash, resume instead of rolling back.
    pub(crate) resumable: bool,
    /// Written to the audit log when it is a request's entry (MPS `auditEnabled`).
    pub(crate) audit: bool,
    /// Each invocation's time is logged (MPS `perfEnabled`).
    pub(crate) perf: bool,
    /// A provider leaf or a plan of steps.
    pub body: Body,
}

/// What a procedure does.
#[derive(Debug, Clone)]
pub enum Body {
    /// A provider entry point.
    Leaf(Leaf),
    /// Steps.
    Steps(Plan),
}

/// A provider leaf.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Registered provider name.
    pub(crate) provider: String,
    /// Entry point.
    pub(crate) entry: String,
    /// The namespace's providerContext.
    pub(crate) provider_context: Element,
    /// Keep executeData for the undo.
    pub(crate) save_data_for_rollback: bool,
}

/// A DAG of steps.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Nodes are steps; an edge a → b means b runs after a.
    pub(crate) graph: DiGraph<PlanNode, Dep>,
    /// A topological order (declaration order among independent steps).
    pub(crate) order: Vec<NodeIndex>,
}

/// Why an edge exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dep {
    /// Document order of a sequential procedure.
    Sequence,
    /// An explicit `needs:`.
    Needs,
    /// Derived: the later step reads what the earlier one writes.
    DataFlow,
    /// `when select=…` reads the select's result.
    Select,
}

/// One step of a plan.
#[derive(Debug, Clone)]
pub enum PlanNode {
    /// A call or transform.
    Execute(Box<ExecNode>),
    /// try/catch.
    Try(Box<TryNode>),
    /// select/where.
    Select(Box<SelectNode>),
    /// A rhai script step.
    Script(Box<ScriptNode>),
}

/// A compiled script step.
#[derive(Debug, Clone)]
pub struct ScriptNode {
    /// Step id.
    pub(crate) id: String,
    /// The script.
    pub(crate) script: CompiledScript,
    /// The undo script.
    pub(crate) undo: Option<CompiledScript>,
    /// Procedures it may call.
    pub(crate) calls: Vec<CallTarget>,
    /// Conditions.
    pub(crate) when: Vec<CWhen>,
    /// Where the result goes under `data` (`None`: merged into `data`).
    pub(crate) output: Option<Path>,
}

impl PlanNode {
    /// The step id.
    pub fn id(&self) -> &str {
        match self {
            PlanNode::Execute(n) => &n.id,
            PlanNode::Try(n) => &n.id,
            PlanNode::Select(n) => &n.id,
            PlanNode::Script(n) => &n.id,
        }
    }
}

/// A compiled execute/transform step.
#[derive(Debug, Clone)]
pub struct ExecNode {
    /// Step id.
    pub(crate) id: String,
    /// Called procedure (resolved and compiled); `None` for a transform.
    pub call: Option<CallTarget>,
    /// forEach nodes, outermost first.
    pub(crate) for_each: Vec<CForEach>,
    /// Conditions.
    pub(crate) when: Vec<CWhen>,
    /// Repeat count source.
    pub(crate) repeat: Option<CRepeat>,
    /// Literal executeData.
    pub(crate) execute_data: Element,
    /// before transforms.
    pub(crate) before: Vec<CTransform>,
    /// after transforms.
    pub(crate) after: Vec<CTransform>,
    /// MPS `sensitive`: seal the rollback data of this call and below (`None` inherits).
    pub(crate) sensitive: Option<bool>,
    /// forEach names the step writes into (a transform's destination, or the source of a
    /// `move`): their items are put back into the scope they came from after each iteration.
    pub(crate) write_back: Vec<String>,
    /// forEach names a `move` takes whole: their items are detached from where they were.
    pub(crate) detach: Vec<String>,
    /// An MPS `queue` step: the call is queued as a job instead of running inline.
    pub(crate) queue: Option<crate::model::QueueStep>,
}

/// A compiled forEach.
#[derive(Debug, Clone)]
pub(crate) struct CForEach {
    /// Variable name.
    pub(crate) name: String,
    /// Root scope.
    pub(crate) root: Scope,
    /// Path.
    pub(crate) path: Option<Path>,
    /// Null handling.
    pub(crate) if_null: IfNull,
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub(crate) enum CWhen {
    /// Path selects something.
    Exists(Scope, Option<Path>),
    /// Path selects nothing.
    Missing(Scope, Option<Path>),
    /// A rhai condition.
    Expr(CompiledScript),
    /// A rhai forEach filter with `item` bound to that forEach's current node.
    Filter {
        /// The forEach name.
        for_each: String,
        /// The filter.
        script: CompiledScript,
    },
    /// Select resolved to a case.
    Case {
        /// Select name.
        select: String,
        /// Case.
        case: String,
    },
}

/// A compiled repeat.
#[derive(Debug, Clone)]
pub(crate) struct CRepeat {
    /// Scope.
    pub(crate) scope: Scope,
    /// Path.
    pub(crate) path: Option<Path>,
    /// Null handling.
    pub(crate) if_null: IfNull,
}

/// A compiled transform.
#[derive(Debug, Clone)]
pub(crate) struct CTransform {
    /// Source.
    pub(crate) source: CSource,
    /// Destination scope.
    pub(crate) destination: Scope,
    /// Destination path.
    pub(crate) dest_path: Option<Path>,
    /// Mode.
    pub(crate) mode: Mode,
    /// Null handling.
    pub(crate) if_null: IfNull,
    /// The compiled XSL templates, applied to each source node.
    pub(crate) xsl: Option<Arc<CXsl>>,
}

/// Compiled XSL templates of a transform.
#[derive(Debug)]
pub(crate) struct CXsl {
    /// The stylesheet.
    pub(crate) sheet: provisio_xslt::Stylesheet,
    /// `allowNullTransform`: a result without an element leaves the target untouched.
    pub(crate) allow_null: bool,
    /// Where the templates were written.
    pub(crate) at: SourceRef,
}

/// A compiled transform source.
#[derive(Debug, Clone)]
pub(crate) enum CSource {
    /// A node.
    Node(Scope, Option<Path>),
    /// A text template.
    Template(Vec<CPart>),
    /// A rhai expression.
    Expr(CompiledScript),
}

/// A compiled template part.
#[derive(Debug, Clone)]
pub(crate) enum CPart {
    /// Literal text.
    Lit(String),
    /// A node's string value.
    Ref(Scope, Option<Path>),
}

/// A compiled try/catch.
#[derive(Debug, Clone)]
pub struct TryNode {
    /// Step id.
    pub(crate) id: String,
    /// The try block.
    pub(crate) body: Plan,
    /// The catch block.
    pub(crate) catch: Plan,
}

/// A compiled select.
#[derive(Debug, Clone)]
pub struct SelectNode {
    /// Step id.
    pub(crate) id: String,
    /// Select name.
    pub(crate) name: String,
    /// Scope read.
    pub(crate) scope: Scope,
    /// Path.
    pub(crate) path: Option<Path>,
    /// (value, case) pairs.
    pub(crate) cases: Vec<(String, String)>,
    /// Default case.
    pub(crate) default_case: Option<String>,
    /// Case when nothing is selected.
    pub(crate) if_null_case: Option<String>,
}

/// Compiles a request: resolves its target (a simple request may only call a public
/// procedure, and must supply its required inputs) and everything reachable from it.
pub fn compile_request(
    catalog: &Catalog,
    request: &Request,
    limits: &Limits,
) -> Result<Program, CompileErrors> {
    check_request(catalog, request)?;
    let mut cx = Compiler::new(catalog, limits);
    let entry = match &request.target {
        RequestTarget::Call(target) => cx.procedure(target.clone(), &request.source_ref),
        RequestTarget::Trusted(p) => {
            cx.trusted = Some(serde_json::to_vec(p).unwrap_or_default());
            let target = CallTarget {
                namespace: "(request)".into(),
                procedure: p.name.clone(),
            };
            cx.compile_body(target, p, "(request)")
        }
    };
    cx.finish(entry)
}

/// The checks a request must pass before it compiles, that depend on the request itself
/// rather than on the procedure: for a call, the target exists, is public and gets every
/// required input. (A trusted request carries its own body; it has none of these.)
pub(crate) fn check_request(catalog: &Catalog, request: &Request) -> Result<(), CompileErrors> {
    let RequestTarget::Call(target) = &request.target else {
        return Ok(());
    };
    let (ns, p) = catalog
        .resolve(target, &request.source_ref)
        .map_err(|e| CompileErrors(vec![e]))?;
    if p.access == Access::Private {
        return Err(CompileErrors(vec![CompileError::Private {
            namespace: ns.name.clone(),
            procedure: p.name.clone(),
            public: ns
                .procedures
                .iter()
                .filter(|p| p.access == Access::Public)
                .map(|p| p.name.clone())
                .collect(),
            at: request.source_ref.clone(),
        }]));
    }
    let mut missing = Vec::new();
    for input in p
        .inputs
        .iter()
        .filter(|i| i.required && i.default.is_none())
    {
        let present = Path::parse(&input.name)
            .map(|path| !path.select(&request.data).is_empty())
            .unwrap_or(false);
        if !present {
            missing.push(CompileError::MissingInput {
                procedure: target.to_string(),
                input: input.name.clone(),
                at: request.source_ref.clone(),
            });
        }
    }
    // A request that calls a provider procedure directly: its data are the call's inputs.
    missing.extend(
        constant_input_errors(catalog, target, &request.data)
            .into_iter()
            .map(|message| CompileError::Invalid {
                step: target.procedure.clone(),
                message,
                at: request.source_ref.clone(),
            }),
    );
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CompileErrors(missing))
    }
}

/// What the callee's input checks ([`InputSpec::check`]) say about the constant (plain
/// text) inputs in `data`: one message per bad value. Templates are only known at run
/// time; the provider checks those itself.
fn constant_input_errors(catalog: &Catalog, target: &CallTarget, data: &Element) -> Vec<String> {
    let Ok((_, callee)) = catalog.resolve(target, &SourceRef::new("", 0, 0)) else {
        // Reported where the target is resolved.
        return Vec::new();
    };
    let mut errors = Vec::new();
    for spec in &callee.inputs {
        let Some(check) = spec.check else { continue };
        for value in data
            .elements()
            .filter(|c| c.name.as_str() == spec.name && c.elements().next().is_none())
        {
            if let Err(why) = (check.0)(&value.string_value()) {
                errors.push(format!("input `{}` of `{target}`: {why}", spec.name));
            }
        }
    }
    errors
}

/// Compiles one procedure by name, without the access and input checks of a request
/// (for `provisio graph`, validation and tests).
pub fn compile_procedure(
    catalog: &Catalog,
    target: &CallTarget,
    limits: &Limits,
) -> Result<Program, CompileErrors> {
    let mut cx = Compiler::new(catalog, limits);
    let entry = cx.procedure(target.clone(), &SourceRef::new("<command line>", 0, 0));
    cx.finish(entry)
}

/// Compiles every procedure of every namespace; returns all errors (for `validate`).
pub fn check_catalog(catalog: &Catalog, limits: &Limits) -> Vec<CompileError> {
    let mut cx = Compiler::new(catalog, limits);
    for ns in catalog.namespaces() {
        for p in &ns.procedures {
            let target = CallTarget {
                namespace: ns.name.clone(),
                procedure: p.name.clone(),
            };
            let _ = cx.procedure(target, &p.source_ref);
        }
    }
    let mut seen = HashSet::new();
    cx.errors.retain(|e| seen.insert(e.to_string()));
    cx.errors
}

struct Compiler<'a> {
    catalog: &'a Catalog,
    limits: &'a Limits,
    done: HashMap<CallTarget, Arc<CompiledProcedure>>,
    in_progress: Vec<(CallTarget, SourceRef)>,
    errors: Vec<CompileError>,
    secrets: BTreeSet<String>,
    /// A trusted request's procedure, serialized for pinning.
    trusted: Option<Vec<u8>>,
    /// forEach names of the step being compiled (variables its scripts may use).
    step_names: Vec<String>,
    /// What the compiled procedures ask for that Provisio does not do (yet).
    warnings: Vec<Warning>,
}

impl<'a> Compiler<'a> {
    fn new(catalog: &'a Catalog, limits: &'a Limits) -> Compiler<'a> {
        Compiler {
            catalog,
            limits,
            done: HashMap::new(),
            in_progress: Vec::new(),
            errors: Vec::new(),
            secrets: BTreeSet::new(),
            trusted: None,
            step_names: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn finish(mut self, entry: Option<Arc<CompiledProcedure>>) -> Result<Program, CompileErrors> {
        let mut seen = HashSet::new();
        self.errors.retain(|e| seen.insert(e.to_string()));
        match entry {
            Some(entry) if self.errors.is_empty() => {
                let mut names: Vec<&str> = self.done.keys().map(|t| t.namespace.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                let mut pinned: Vec<(String, String, Arc<Vec<u8>>)> = names
                    .into_iter()
                    .filter_map(|n| {
                        self.catalog
                            .pinned(n)
                            .map(|(h, b)| (n.to_string(), h.clone(), b.clone()))
                    })
                    .collect();
                if let Some(body) = self.trusted.take() {
                    pinned.push(("(request)".to_string(), hex_sha256(&body), Arc::new(body)));
                }
                let joined: String = pinned.iter().map(|(n, h, _)| format!("{n}={h};")).collect();
                let definitions_hash = hex_sha256(joined.as_bytes());
                Ok(Program {
                    entry,
                    procedures: self.done,
                    secrets: self.secrets,
                    definitions_hash,
                    pinned,
                    warnings: self.warnings,
                })
            }
            _ => Err(CompileErrors(self.errors)),
        }
    }

    /// Compiles (or returns the already compiled) procedure; `None` after recording errors.
    fn procedure(&mut self, target: CallTarget, at: &SourceRef) -> Option<Arc<CompiledProcedure>> {
        if let Some(p) = self.done.get(&target) {
            return Some(p.clone());
        }
        if let Some(pos) = self.in_progress.iter().position(|(t, _)| *t == target) {
            let mut chain: Vec<String> = self.in_progress[pos..]
                .iter()
                .map(|(t, _)| t.to_string())
                .collect();
            chain.push(target.to_string());
            self.errors.push(CompileError::Recursion {
                chain,
                at: at.clone(),
            });
            return None;
        }
        if self.in_progress.len() >= self.limits.max_call_depth {
            let mut chain: Vec<String> = self
                .in_progress
                .iter()
                .map(|(t, _)| t.to_string())
                .collect();
            chain.push(target.to_string());
            self.errors.push(CompileError::TooDeep {
                depth: chain.len(),
                chain,
                limit: self.limits.max_call_depth,
                at: at.clone(),
            });
            return None;
        }
        let (ns, p) = match self.catalog.resolve(&target, at) {
            Ok(x) => x,
            Err(e) => {
                self.errors.push(e);
                return None;
            }
        };
        for i in p.inputs.iter().filter(|i| i.secret) {
            self.secrets
                .insert(i.name.rsplit('/').next().unwrap_or(&i.name).to_string());
        }
        let compiled = if p.steps.is_empty() {
            let provider = ns.provider.clone()?;
            Arc::new(CompiledProcedure {
                target: target.clone(),
                kind: p.kind,
                inputs: p.inputs.clone(),
                procedure_data: p.procedure_data.clone(),
                resumable: p.resumable,
                audit: p.audit,
                perf: p.perf,
                body: Body::Leaf(Leaf {
                    provider,
                    entry: p.entry.clone().unwrap_or_else(|| p.name.clone()),
                    provider_context: ns.provider_context.clone(),
                    save_data_for_rollback: p.save_data_for_rollback,
                }),
            })
        } else {
            self.in_progress.push((target.clone(), at.clone()));
            let ns_name = ns.name.clone();
            let result = self.compile_body(target.clone(), p, &ns_name);
            self.in_progress.pop();
            result?
        };
        self.done.insert(target, compiled.clone());
        Some(compiled)
    }

    fn compile_body(
        &mut self,
        target: CallTarget,
        p: &Procedure,
        _ns: &str,
    ) -> Option<Arc<CompiledProcedure>> {
        let count = count_steps(&p.steps);
        if count > self.limits.max_steps {
            self.errors.push(CompileError::TooManySteps {
                procedure: target.to_string(),
                count,
                limit: self.limits.max_steps,
                at: p.source_ref.clone(),
            });
            return None;
        }
        for i in p.inputs.iter().filter(|i| i.secret) {
            self.secrets
                .insert(i.name.rsplit('/').next().unwrap_or(&i.name).to_string());
        }
        self.warnings.extend(p.warnings());
        let before = self.errors.len();
        let plan = self.plan(&target, p, &p.steps);
        if self.errors.len() > before {
            return None;
        }
        Some(Arc::new(CompiledProcedure {
            target,
            kind: p.kind,
            inputs: p.inputs.clone(),
            procedure_data: p.procedure_data.clone(),
            resumable: p.resumable,
            audit: p.audit,
            perf: p.perf,
            body: Body::Steps(plan),
        }))
    }

    fn plan(&mut self, target: &CallTarget, p: &Procedure, steps: &[Step]) -> Plan {
        let pname = target.to_string();
        let mut graph: DiGraph<PlanNode, Dep> = DiGraph::with_capacity(steps.len(), steps.len());
        let mut ids: HashMap<&str, NodeIndex> = HashMap::with_capacity(steps.len());
        let mut accesses: Vec<Accesses> = Vec::with_capacity(steps.len());
        for step in steps {
            let (node, acc) = self.node(target, p, step);
            let idx = graph.add_node(node);
            if ids.insert(step.id(), idx).is_some() {
                self.errors.push(CompileError::Invalid {
                    step: step.id().to_string(),
                    message: format!(
                        "two steps of `{pname}` are named `{}`; step ids must be unique",
                        step.id()
                    ),
                    at: step.source_ref().clone(),
                });
            }
            accesses.push(acc);
        }
        // Selects are named per procedure (MPS): a `when` anywhere in the procedure may
        // name a select of any block. In each block, the step holding a select is ordered
        // before every other step whose subtree reads it.
        let defined: Vec<Vec<&str>> = steps.iter().map(selects_defined).collect();
        for (i, step) in steps.iter().enumerate() {
            let me = NodeIndex::new(i);
            if p.ordering == Ordering::Sequential && i > 0 {
                graph.add_edge(NodeIndex::new(i - 1), me, Dep::Sequence);
            }
            for need in step.needs() {
                match ids.get(need.as_str()) {
                    // One edge per pair: a `needs` on the previous step of a sequential
                    // block repeats the order's edge (and `graph` drew it twice).
                    Some(&from) if graph.contains_edge(from, me) => {}
                    Some(&from) => {
                        graph.add_edge(from, me, Dep::Needs);
                    }
                    None => self.errors.push(CompileError::UnknownNeed {
                        procedure: pname.clone(),
                        step: step.id().to_string(),
                        missing: need.clone(),
                        suggestion: closest(need, steps.iter().map(|s| s.id())),
                        at: step.source_ref().clone(),
                    }),
                }
            }
            for select in selects_read(step) {
                let mut found = false;
                for (j, names) in defined.iter().enumerate() {
                    if j == i || !names.contains(&select) {
                        continue;
                    }
                    found = true;
                    if p.ordering == Ordering::Sequential && j > i {
                        self.errors.push(CompileError::Invalid {
                            step: step.id().to_string(),
                            message: format!(
                                "`when` uses select `{select}` before it is evaluated: in `{pname}` the select comes later in document order"
                            ),
                            at: step.source_ref().clone(),
                        });
                        continue;
                    }
                    let from = NodeIndex::new(j);
                    if !graph.contains_edge(from, me) {
                        graph.add_edge(from, me, Dep::Select);
                    }
                }
                if !found
                    && !defined[i].contains(&select)
                    && !procedure_selects(&p.steps).contains(&select)
                {
                    self.errors.push(CompileError::Invalid {
                        step: step.id().to_string(),
                        message: format!(
                            "`when` names select `{select}`, which is not a select of `{pname}`"
                        ),
                        at: step.source_ref().clone(),
                    });
                }
            }
        }
        // Cycles first: races and order mean nothing in a cyclic graph.
        if let Err(cycle) = toposort(&graph, None) {
            let steps_in_cycle = describe_cycle(&graph, cycle.node_id());
            self.errors.push(CompileError::Cycle {
                procedure: pname,
                steps: steps_in_cycle,
                at: p.source_ref.clone(),
            });
            return Plan {
                graph,
                order: Vec::new(),
            };
        }
        if p.ordering == Ordering::Parallel {
            self.data_flow(&pname, p, &mut graph, &accesses);
        }
        let order = match toposort(&graph, None) {
            Ok(o) => o,
            Err(cycle) => {
                let steps_in_cycle = describe_cycle(&graph, cycle.node_id());
                self.errors.push(CompileError::Cycle {
                    procedure: pname,
                    steps: steps_in_cycle,
                    at: p.source_ref.clone(),
                });
                Vec::new()
            }
        };
        let order = stable_order(&graph, order);
        Plan { graph, order }
    }

    /// Derives data-flow edges (a later-declared step reads what an earlier one writes) and
    /// reports the conflicts that remain unordered.
    fn data_flow(
        &mut self,
        pname: &str,
        p: &Procedure,
        graph: &mut DiGraph<PlanNode, Dep>,
        accesses: &[Accesses],
    ) {
        // Index accesses by (scope, first segment) so only plausible pairs are compared.
        let mut by_key: HashMap<(u8, &str), Vec<StepAccess<'_>>> = HashMap::new();
        let mut roots: Vec<(usize, u8, bool, &Vec<String>)> = Vec::new();
        for (i, acc) in accesses.iter().enumerate() {
            for (scope, segs, write) in acc.iter() {
                match segs.first() {
                    Some(first) => by_key
                        .entry((scope, first.as_str()))
                        .or_default()
                        .push((i, write, segs)),
                    None => roots.push((i, scope, write, segs)),
                }
            }
        }
        let mut pairs: BTreeSet<(usize, usize, bool, bool, String)> = BTreeSet::new();
        for list in by_key.values() {
            for (a_pos, &(a, aw, asegs)) in list.iter().enumerate() {
                for &(b, bw, bsegs) in &list[a_pos + 1..] {
                    if a != b && (aw || bw) && overlaps(asegs, bsegs) {
                        let (i, j, iw, jw, path) = order_pair(a, aw, asegs, b, bw, bsegs);
                        pairs.insert((i, j, iw, jw, path));
                    }
                }
            }
        }
        for &(a, ascope, aw, _) in &roots {
            for (b, acc) in accesses.iter().enumerate() {
                for (bscope, bsegs, bw) in acc.iter() {
                    if a != b && ascope == bscope && (aw || bw) {
                        let empty = Vec::new();
                        let (i, j, iw, jw, path) = order_pair(a, aw, &empty, b, bw, bsegs);
                        pairs.insert((i, j, iw, jw, path));
                    }
                }
            }
        }
        let mut space = DfsSpace::new(&*graph);
        for (i, j, iw, jw, path) in pairs {
            let (ni, nj) = (NodeIndex::new(i), NodeIndex::new(j));
            if has_path_connecting(&*graph, ni, nj, Some(&mut space))
                || has_path_connecting(&*graph, nj, ni, Some(&mut space))
            {
                continue;
            }
            let (si, sj) = (graph[ni].id().to_string(), graph[nj].id().to_string());
            if iw && !jw {
                // The later step reads what the earlier writes: that is a data-flow dependency.
                graph.add_edge(ni, nj, Dep::DataFlow);
                space = DfsSpace::new(&*graph);
                continue;
            }
            self.errors.push(CompileError::Race {
                procedure: pname.to_string(),
                first: si,
                first_access: if iw { "writes" } else { "reads" },
                second: sj,
                second_access: if jw { "writes" } else { "reads" },
                path,
                at: p.source_ref.clone(),
            });
        }
    }

    fn node(&mut self, target: &CallTarget, p: &Procedure, step: &Step) -> (PlanNode, Accesses) {
        let mut acc = Accesses::default();
        match step {
            Step::Execute(e) => {
                let at = &e.source_ref;
                let callee = e.call.as_ref().and_then(|t| self.procedure(t.clone(), at));
                if let Some(c) = callee.as_ref().filter(|c| c.kind != ProcKind::Read) {
                    if p.kind == ProcKind::Read {
                        self.errors.push(CompileError::Invalid {
                            step: e.id.clone(),
                            message: format!(
                                "`{target}` is a read procedure, but its step calls `{}`, which is {}",
                                c.target,
                                match c.kind {
                                    ProcKind::TwoPhase => "two-phase",
                                    _ => "a write procedure",
                                }
                            ),
                            at: at.clone(),
                        });
                    }
                }
                let call = callee.map(|c| c.target.clone());
                if let (Some(t), Some(_)) = (&e.call, &e.queue) {
                    // A queued job runs later as a simple request of its own, which may
                    // call only public procedures.
                    if let Ok((_, q)) = self.catalog.resolve(t, at) {
                        if q.access == Access::Private {
                            self.errors.push(CompileError::Invalid {
                                step: e.id.clone(),
                                message: format!(
                                    "`{t}` is private: a queued job runs later as a request of its own, which may call only public procedures"
                                ),
                                at: at.clone(),
                            });
                        }
                    }
                    // The step writes `context/queueContext/@queueId`.
                    acc.write(&Scope::Context, Some("queueContext"));
                }
                if let Some(t) = &e.call {
                    let errors = constant_input_errors(self.catalog, t, &e.execute_data)
                        .into_iter()
                        .map(|message| CompileError::Invalid {
                            step: e.id.clone(),
                            message,
                            at: at.clone(),
                        });
                    self.errors.extend(errors);
                }
                let mut for_each = Vec::new();
                let mut names: Vec<String> = Vec::new();
                for f in &e.for_each {
                    if let Scope::Named(n) = &f.root {
                        if !names.contains(n) {
                            self.errors.push(CompileError::Invalid {
                                step: e.id.clone(),
                                message: format!("forEach `{}` has root `{n}`, which is not an earlier forEach of this step", f.name),
                                at: at.clone(),
                            });
                        }
                    }
                    let path = self.path(&e.id, at, f.path.as_deref());
                    acc.read(&f.root, f.path.as_deref());
                    for_each.push(CForEach {
                        name: f.name.clone(),
                        root: f.root.clone(),
                        path,
                        if_null: f.if_null,
                    });
                    names.push(f.name.clone());
                }
                self.step_names = names.clone();
                let when = self.conditions(&e.id, &e.when, &names, &mut acc);
                let repeat = e.repeat.as_ref().map(|r| {
                    acc.read(&r.scope, r.path.as_deref());
                    CRepeat {
                        scope: r.scope.clone(),
                        path: self.path(&e.id, at, r.path.as_deref()),
                        if_null: r.if_null,
                    }
                });
                let before: Vec<CTransform> = e
                    .before
                    .iter()
                    .map(|t| self.transform(&e.id, t, &mut acc))
                    .collect();
                let after: Vec<CTransform> = e
                    .after
                    .iter()
                    .map(|t| self.transform(&e.id, t, &mut acc))
                    .collect();
                let (write_back, detach) = for_each_writes(&for_each, &before, &after);
                for name in &write_back {
                    // Writing into an item writes into the list its outermost forEach reads.
                    if let Some((scope, path)) = for_each_base(&e.for_each, name) {
                        acc.write(scope, path);
                    }
                }
                (
                    PlanNode::Execute(Box::new(ExecNode {
                        id: e.id.clone(),
                        call,
                        for_each,
                        when,
                        repeat,
                        execute_data: e.execute_data.clone(),
                        before,
                        after,
                        sensitive: e.sensitive,
                        write_back,
                        detach,
                        queue: e.queue,
                    })),
                    acc,
                )
            }
            Step::Try(t) => {
                let body = self.plan(target, p, &t.body);
                let catch = self.plan(target, p, &t.catch);
                for s in t.body.iter().chain(t.catch.iter()) {
                    let (_, a) = self.node_accesses_only(target, p, s);
                    acc.items.extend(a.items);
                }
                (
                    PlanNode::Try(Box::new(TryNode {
                        id: t.id.clone(),
                        body,
                        catch,
                    })),
                    acc,
                )
            }
            Step::Script(sc) => {
                let at = &sc.source_ref;
                self.step_names.clear();
                let calls = sc
                    .calls
                    .iter()
                    .filter_map(|t| self.procedure(t.clone(), at).map(|c| c.target.clone()))
                    .collect();
                let when = self.conditions(&sc.id, &sc.when, &[], &mut acc);
                acc.read(&Scope::Data, None);
                acc.write(&Scope::Data, sc.output.as_deref());
                let script = self.script(&sc.id, &sc.script, &[]);
                let undo = sc
                    .undo
                    .as_ref()
                    .and_then(|u| self.script(&sc.id, u, &["result"]));
                let output = self.path(&sc.id, at, sc.output.as_deref());
                match script {
                    Some(script) => (
                        PlanNode::Script(Box::new(ScriptNode {
                            id: sc.id.clone(),
                            script,
                            undo,
                            calls,
                            when,
                            output,
                        })),
                        acc,
                    ),
                    // The error is recorded; a placeholder keeps the graph's indices aligned.
                    None => (
                        PlanNode::Select(Box::new(SelectNode {
                            id: sc.id.clone(),
                            name: String::new(),
                            scope: Scope::Data,
                            path: None,
                            cases: Vec::new(),
                            default_case: None,
                            if_null_case: None,
                        })),
                        acc,
                    ),
                }
            }
            Step::Select(s) => {
                acc.read(&s.scope, s.path.as_deref());
                let path = self.path(&s.id, &s.source_ref, s.path.as_deref());
                (
                    PlanNode::Select(Box::new(SelectNode {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        scope: s.scope.clone(),
                        path,
                        cases: s.cases.clone(),
                        default_case: s.default_case.clone(),
                        if_null_case: s.if_null_case.clone(),
                    })),
                    acc,
                )
            }
        }
    }

    /// Accesses of a nested step without recording errors twice.
    fn node_accesses_only(
        &mut self,
        target: &CallTarget,
        p: &Procedure,
        step: &Step,
    ) -> (PlanNode, Accesses) {
        let before = self.errors.len();
        let r = self.node(target, p, step);
        self.errors.truncate(before);
        r
    }

    fn transform(
        &mut self,
        step: &str,
        t: &crate::model::Transform,
        acc: &mut Accesses,
    ) -> CTransform {
        let at = &t.source_ref;
        let source = match &t.source {
            TransformSource::Node { scope, path } => {
                acc.read(scope, path.as_deref());
                if t.mode == Mode::Move {
                    acc.write(scope, path.as_deref());
                }
                CSource::Node(scope.clone(), self.path(step, at, path.as_deref()))
            }
            TransformSource::Expr(script) => {
                acc.read(&Scope::Data, None);
                let names: Vec<String> = self.step_names.clone();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                match self.script(step, script, &names) {
                    Some(c) => CSource::Expr(c),
                    None => CSource::Template(Vec::new()),
                }
            }
            TransformSource::Template(text) => match parse_template(text) {
                Ok(parts) => CSource::Template(
                    parts
                        .into_iter()
                        .map(|part| match part {
                            TemplatePart::Lit(s) => CPart::Lit(s),
                            TemplatePart::Ref { scope, path } => {
                                acc.read(&scope, path.as_deref());
                                let p = self.path(step, at, path.as_deref());
                                CPart::Ref(scope, p)
                            }
                        })
                        .collect(),
                ),
                Err(message) => {
                    self.errors.push(CompileError::Invalid {
                        step: step.to_string(),
                        message: format!("template `{text}`: {message}"),
                        at: at.clone(),
                    });
                    CSource::Template(Vec::new())
                }
            },
        };
        acc.write(&t.destination, t.destination_path.as_deref());
        let xsl = t.xsl.as_ref().and_then(|x| {
            let file = &x.source_ref.file;
            match provisio_xslt::Stylesheet::compile(&x.stylesheet, file) {
                Ok(sheet) => Some(Arc::new(CXsl {
                    sheet,
                    allow_null: t.allow_null_transform,
                    at: x.source_ref.clone(),
                })),
                Err(e) => {
                    let at = match e.line {
                        Some(line) => SourceRef::new(file.clone(), line, 1),
                        None => x.source_ref.clone(),
                    };
                    self.errors.push(CompileError::Invalid {
                        step: step.to_string(),
                        message: format!("xsl:template: {}", e.message),
                        at,
                    });
                    None
                }
            }
        });
        CTransform {
            source,
            destination: t.destination.clone(),
            dest_path: self.path(step, at, t.destination_path.as_deref()),
            mode: t.mode,
            if_null: t.if_null,
            xsl,
        }
    }

    /// Compiles the conditions of a step (paths, selects, rhai expressions and filters).
    fn conditions(
        &mut self,
        step: &str,
        list: &[When],
        names: &[String],
        acc: &mut Accesses,
    ) -> Vec<CWhen> {
        let mut out = Vec::new();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        for w in list {
            match w {
                When::Exists { scope, path } => {
                    acc.read(scope, path.as_deref());
                    out.push(CWhen::Exists(
                        scope.clone(),
                        self.path(step, &SourceRef::default(), path.as_deref()),
                    ));
                }
                When::Missing { scope, path } => {
                    acc.read(scope, path.as_deref());
                    out.push(CWhen::Missing(
                        scope.clone(),
                        self.path(step, &SourceRef::default(), path.as_deref()),
                    ));
                }
                When::Case { select, case } => out.push(CWhen::Case {
                    select: select.clone(),
                    case: case.clone(),
                }),
                When::Expr(script) => {
                    acc.read(&Scope::Data, None);
                    if let Some(c) = self.script(step, script, &name_refs) {
                        out.push(CWhen::Expr(c));
                    }
                }
                When::Filter { for_each, script } => {
                    if !names.contains(for_each) {
                        self.errors.push(CompileError::Invalid {
                            step: step.to_string(),
                            message: format!(
                                "filter for forEach `{for_each}`, which this step does not have"
                            ),
                            at: script.origin.clone(),
                        });
                        continue;
                    }
                    acc.read(&Scope::Data, None);
                    let mut with_item = name_refs.clone();
                    with_item.push("item");
                    if let Some(c) = self.script(step, script, &with_item) {
                        out.push(CWhen::Filter {
                            for_each: for_each.clone(),
                            script: c,
                        });
                    }
                }
            }
        }
        out
    }

    /// Compiles a rhai script once; syntax errors carry the definition file's line.
    fn script(
        &mut self,
        step: &str,
        script: &crate::model::Script,
        names: &[&str],
    ) -> Option<CompiledScript> {
        let origin = ScriptOrigin::new(
            script.origin.file.clone(),
            script.origin.line.max(1),
            script.origin.column.max(1),
        )
        .with_indent(script.indent);
        match self
            .catalog
            .script_engine()
            .compile_with_names(&script.source, &origin, names)
        {
            Ok(c) => Some(c),
            Err(e) => {
                // the error's own position (inside the script), said once
                let (file, line, column) = e.location();
                self.errors.push(CompileError::Invalid {
                    step: step.to_string(),
                    message: format!("script: {}", e.message()),
                    at: SourceRef::new(file, line, column),
                });
                None
            }
        }
    }

    fn path(&mut self, step: &str, at: &SourceRef, path: Option<&str>) -> Option<Path> {
        let text = path?;
        match Path::parse(text) {
            Ok(p) => Some(p),
            Err(e) => {
                self.errors.push(CompileError::Invalid {
                    step: step.to_string(),
                    message: e.to_string(),
                    at: at.clone(),
                });
                None
            }
        }
    }
}

fn count_steps(steps: &[Step]) -> usize {
    steps
        .iter()
        .map(|s| match s {
            Step::Try(t) => 1 + count_steps(&t.body) + count_steps(&t.catch),
            _ => 1,
        })
        .sum()
}

/// One access of a step: (step index, is_write, leading path segments).
type StepAccess<'a> = (usize, bool, &'a Vec<String>);

/// Reads and writes of one step on the shared scopes (`data`, `procedureData`).
#[derive(Debug, Default)]
struct Accesses {
    /// (scope: 0 data / 1 procedureData, leading plain segments, is_write)
    items: Vec<(u8, Vec<String>, bool)>,
}

impl Accesses {
    fn read(&mut self, scope: &Scope, path: Option<&str>) {
        self.add(scope, path, false);
    }
    fn write(&mut self, scope: &Scope, path: Option<&str>) {
        self.add(scope, path, true);
    }
    fn add(&mut self, scope: &Scope, path: Option<&str>, write: bool) {
        let s = match scope {
            Scope::Data => 0,
            Scope::ProcedureData => 1,
            _ => return,
        };
        self.items
            .push((s, path.map(leading_segments).unwrap_or_default(), write));
    }
    fn iter(&self) -> impl Iterator<Item = (u8, &Vec<String>, bool)> {
        self.items.iter().map(|(s, p, w)| (*s, p, *w))
    }
}

/// The plain element names a path starts with, up to the first step that is not a plain
/// name (wildcards, attributes, `.`), with predicates dropped: conservative for overlap.
pub(crate) fn leading_segments(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut cur = String::new();
    let mut stop = false;
    // Inside `Q{uri}` (a namespaced name): a `/` of the URI does not end the step.
    let mut in_uri = false;
    let push = |cur: &mut String, out: &mut Vec<String>, stop: &mut bool| {
        if *stop {
            return;
        }
        let name = cur.trim();
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.starts_with('@')
            || name == "*"
            || name.contains('(')
        {
            *stop = true;
        } else {
            out.push(name.to_string());
        }
        cur.clear();
    };
    for c in path.chars() {
        if in_uri {
            if depth == 0 {
                cur.push(c);
            }
            in_uri = c != '}';
            continue;
        }
        match (quote, c) {
            (None, '{') => {
                in_uri = true;
                if depth == 0 {
                    cur.push(c);
                }
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'') | (None, '"') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => depth = depth.saturating_sub(1),
            (None, '/') if depth == 0 => push(&mut cur, &mut out, &mut stop),
            (None, c) if depth == 0 => cur.push(c),
            _ => {}
        }
    }
    push(&mut cur, &mut out, &mut stop);
    out
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.iter().zip(b.iter()).all(|(x, y)| x == y)
}

fn order_pair(
    a: usize,
    aw: bool,
    asegs: &[String],
    b: usize,
    bw: bool,
    bsegs: &[String],
) -> (usize, usize, bool, bool, String) {
    let longer = if asegs.len() >= bsegs.len() {
        asegs
    } else {
        bsegs
    };
    let path = if longer.is_empty() {
        "(the whole scope)".to_string()
    } else {
        longer.join("/")
    };
    if a < b {
        (a, b, aw, bw, path)
    } else {
        (b, a, bw, aw, path)
    }
}

/// Names the steps of a cycle through `start`, in order, first repeated at the end.
fn describe_cycle(graph: &DiGraph<PlanNode, Dep>, start: NodeIndex) -> Vec<String> {
    let scc = tarjan_scc(graph)
        .into_iter()
        .find(|c| c.contains(&start) && (c.len() > 1 || graph.contains_edge(start, start)));
    let Some(scc) = scc else {
        return vec![graph[start].id().to_string()];
    };
    let members: HashSet<NodeIndex> = scc.iter().copied().collect();
    // Breadth-first from start back to start inside the component.
    let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    let mut end = None;
    while let Some(n) = queue.pop_front() {
        for m in graph.neighbors(n) {
            if !members.contains(&m) {
                continue;
            }
            if m == start {
                end = Some(n);
                break;
            }
            if let std::collections::hash_map::Entry::Vacant(v) = prev.entry(m) {
                v.insert(n);
                queue.push_back(m);
            }
        }
        if end.is_some() {
            break;
        }
    }
    let mut chain = vec![graph[start].id().to_string()];
    if let Some(mut n) = end {
        let mut back = Vec::new();
        while n != start {
            back.push(graph[n].id().to_string());
            match prev.get(&n) {
                Some(&p) => n = p,
                None => break,
            }
        }
        back.reverse();
        chain.extend(back);
    }
    chain.push(graph[start].id().to_string());
    chain
}

/// A topological order that keeps declaration order among independent steps (Kahn's
/// algorithm with a min-heap on the node index), so runs and plans are deterministic.
fn stable_order(graph: &DiGraph<PlanNode, Dep>, fallback: Vec<NodeIndex>) -> Vec<NodeIndex> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let n = graph.node_count();
    let mut indeg = vec![0usize; n];
    for e in graph.raw_edges() {
        indeg[e.target().index()] += 1;
    }
    let mut heap: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
    let mut out = Vec::with_capacity(n);
    while let Some(Reverse(i)) = heap.pop() {
        out.push(NodeIndex::new(i));
        for m in graph.neighbors(NodeIndex::new(i)) {
            indeg[m.index()] -= 1;
            if indeg[m.index()] == 0 {
                heap.push(Reverse(m.index()));
            }
        }
    }
    if out.len() == n {
        out
    } else {
        fallback
    }
}

impl Plan {
    /// The steps, in the order they were added to the plan.
    pub fn steps(&self) -> impl Iterator<Item = &PlanNode> {
        self.graph.node_weights()
    }

    /// The edges as `(from, to, why)` step ids: `to` runs after `from`.
    pub fn edges(&self) -> impl Iterator<Item = (&str, &str, Dep)> {
        self.graph.raw_edges().iter().map(|e| {
            (
                self.graph[e.source()].id(),
                self.graph[e.target()].id(),
                e.weight,
            )
        })
    }
}

/// The names of the selects a step defines: itself, or any select inside its try/catch.
fn selects_defined(step: &Step) -> Vec<&str> {
    let mut out = Vec::new();
    fn walk<'s>(step: &'s Step, out: &mut Vec<&'s str>) {
        match step {
            Step::Select(s) => out.push(s.name.as_str()),
            Step::Try(t) => t.body.iter().chain(&t.catch).for_each(|s| walk(s, out)),
            Step::Execute(_) | Step::Script(_) => {}
        }
    }
    walk(step, &mut out);
    out
}

/// Every select defined anywhere in a procedure's steps.
fn procedure_selects(steps: &[Step]) -> Vec<&str> {
    steps.iter().flat_map(selects_defined).collect()
}

/// The names of the selects a step's conditions read, in it or anywhere inside it.
fn selects_read(step: &Step) -> Vec<&str> {
    let mut out = Vec::new();
    fn cases<'s>(when: &'s [When], out: &mut Vec<&'s str>) {
        for w in when {
            if let When::Case { select, .. } = w {
                if !out.contains(&select.as_str()) {
                    out.push(select.as_str());
                }
            }
        }
    }
    fn walk<'s>(step: &'s Step, out: &mut Vec<&'s str>) {
        match step {
            Step::Execute(e) => cases(&e.when, out),
            Step::Script(s) => cases(&s.when, out),
            Step::Try(t) => t.body.iter().chain(&t.catch).for_each(|s| walk(s, out)),
            Step::Select(_) => {}
        }
    }
    walk(step, &mut out);
    out
}

/// The forEach names a step writes into, and those a `move` takes whole (see
/// [`ExecNode::write_back`]).
fn for_each_writes(
    for_each: &[CForEach],
    before: &[CTransform],
    after: &[CTransform],
) -> (Vec<String>, Vec<String>) {
    let mut write_back: Vec<String> = Vec::new();
    let mut detach: Vec<String> = Vec::new();
    let is_item = |n: &String| for_each.iter().any(|f| &f.name == n);
    for t in before.iter().chain(after) {
        if let Scope::Named(n) = &t.destination {
            if is_item(n) && !write_back.contains(n) {
                write_back.push(n.clone());
            }
        }
        if let (Mode::Move, CSource::Node(Scope::Named(n), path)) = (t.mode, &t.source) {
            if is_item(n) {
                if !write_back.contains(n) {
                    write_back.push(n.clone());
                }
                if path.is_none() && !detach.contains(n) {
                    detach.push(n.clone());
                }
            }
        }
    }
    (write_back, detach)
}

/// The shared scope and path the outermost forEach of `name`'s chain reads (`None` when the
/// chain does not start in `data` or `procedureData`).
fn for_each_base<'a>(
    for_each: &'a [crate::model::ForEach],
    name: &str,
) -> Option<(&'a Scope, Option<&'a str>)> {
    let mut current = name;
    for _ in 0..=for_each.len() {
        let f = for_each.iter().find(|f| f.name == current)?;
        match &f.root {
            Scope::Named(outer) => current = outer,
            Scope::Data | Scope::ProcedureData => return Some((&f.root, f.path.as_deref())),
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_segments_stop_at_non_plain_steps() {
        assert_eq!(leading_segments("a/b[@x='1/2']/c"), vec!["a", "b", "c"]);
        assert_eq!(
            leading_segments("Q{http://x.test/ns}a/b[@x='{']/Q{}c"),
            vec!["Q{http://x.test/ns}a", "b", "Q{}c"]
        );
        assert_eq!(leading_segments("a/*/c"), vec!["a"]);
        assert_eq!(leading_segments("a/@name"), vec!["a"]);
        assert!(leading_segments(".").is_empty());
    }

    #[test]
    fn overlap_is_prefix() {
        let a = vec!["x".to_string()];
        let ab = vec!["x".to_string(), "y".to_string()];
        let c = vec!["z".to_string()];
        assert!(overlaps(&a, &ab));
        assert!(!overlaps(&a, &c));
        assert!(overlaps(&[], &c));
    }
}
