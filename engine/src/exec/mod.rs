//! The executor: runs a compiled program on tokio. Every ready step of a plan runs
//! concurrently (provider calls bounded by a limit); forEach, when, repeat, select,
//! try/catch and nested calls follow `mps-semantics.md`; a failure undoes every completed
//! call in reverse order. The same code path runs in plan (dry-run) mode, where providers
//! are asked for a preview instead of being called.

pub mod journal;
mod redact;

pub use journal::{Journal, JournalError, NoJournal, StepDone, StepIntent, TxnStart, TxnState};
pub use redact::Redactor;

use crate::compile::{
    check_request, compile_request, Body, CForEach, CPart, CSource, CTransform, CWhen, Catalog,
    CompileErrors, CompiledProcedure, ExecNode, Leaf, Limits, Plan, PlanNode, Program, ScriptNode,
};
use crate::data::transform::{extract, place, remove};
use crate::data::{Element, IfNull, Mode, Path, Scalar};
use crate::model::{CallTarget, ProcKind, Request, RequestTarget, Scope};
use crate::provider::{
    Call, CallContext, Done, Preview, Provider, ProviderError, ProviderRegistry,
};
use crate::script::{ScriptEngine, ScriptError, ScriptHost, Vars};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::{info_span, Instrument};

/// Tunables of the executor.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most provider calls in flight at once within one transaction.
    pub max_parallel: usize,
    /// A provider call that takes longer fails the step.
    pub step_timeout: Duration,
    /// Extra attempts for a transient provider error.
    pub retries: u32,
    /// Attempts for each undo before the transaction ends in rollback_failed.
    pub undo_attempts: u32,
    /// First retry delay (doubles each attempt).
    pub retry_backoff: Duration,
    /// Most forEach iterations of one step.
    pub max_iterations: usize,
    /// Compiler limits.
    pub limits: Limits,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_parallel: 16,
            step_timeout: Duration::from_secs(300),
            retries: 2,
            undo_attempts: 3,
            retry_backoff: Duration::from_millis(50),
            max_iterations: 100_000,
            limits: Limits::default(),
        }
    }
}

/// Progress notifications for a person watching (the CLI's progress bar).
#[derive(Debug, Clone)]
pub enum Event {
    /// A provider call starts.
    StepStarted {
        /// Step path.
        step: String,
        /// `Namespace/Procedure`.
        target: String,
    },
    /// A provider call ended.
    StepFinished {
        /// Step path.
        step: String,
        /// Whether it succeeded.
        ok: bool,
    },
    /// An undo starts.
    Undoing {
        /// Step path.
        step: String,
    },
}

/// One entry of the error stack: the originating leaf first, then each enclosing procedure.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ErrorSource {
    /// Namespace.
    pub namespace: String,
    /// Procedure.
    pub procedure: String,
    /// Step path where it was called.
    pub step: String,
}

/// Why a transaction failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// HRESULT-style code.
    pub code: u32,
    /// What happened.
    pub message: String,
    /// The failing step's path.
    pub step: String,
    /// The error stack.
    pub sources: Vec<ErrorSource>,
}

impl Failure {
    fn data(step: &str, message: impl Into<String>) -> Failure {
        Failure {
            code: ProviderError::E_INVALIDARG,
            message: message.into(),
            step: step.to_string(),
            sources: Vec::new(),
        }
    }
}

/// An undo that kept failing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UndoFailure {
    /// Step path of the call that could not be undone.
    pub step: String,
    /// `Namespace/Procedure`.
    pub target: String,
    /// The last error.
    pub message: String,
}

/// What happened to a transaction.
#[derive(Debug, Clone)]
pub struct TxnResult {
    /// Transaction id (UUIDv7).
    pub txn_id: String,
    /// Final state.
    pub state: TxnState,
    /// The final `data` (on commit).
    pub data: Option<Element>,
    /// The failure (on rollback).
    pub failure: Option<Failure>,
    /// Undos that failed.
    pub undo_failures: Vec<UndoFailure>,
    /// Provider calls made.
    pub calls: usize,
    /// Calls undone.
    pub undone: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Redacts secrets from anything shown.
    pub redactor: Redactor,
    /// The final state could not be journaled (the outcome above still happened).
    pub journal_error: Option<String>,
}

/// One step of a dry run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanEntry {
    /// Step path.
    pub step: String,
    /// Wave of the top-level step it belongs to (steps of a wave may run at once).
    pub wave: usize,
    /// `Namespace/Procedure` of the provider leaf.
    pub target: String,
    /// Provider name.
    pub provider: String,
    /// Resolved executeData (secrets masked).
    #[serde(skip)]
    pub inputs: Element,
    /// What the provider says would change.
    pub preview: Preview,
    /// Inputs that are only known once earlier steps have run.
    pub unresolved: Vec<String>,
}

/// Errors before anything ran.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The request does not compile.
    #[error("{0}")]
    Compile(#[from] CompileErrors),
}

type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// The engine: a catalog, providers and options. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Engine {
    catalog: Arc<Catalog>,
    /// Compiled programs of simple requests, by target: a call's program depends only on
    /// the (immutable) catalog, so transactions of the same procedure share one.
    programs: Arc<Mutex<HashMap<String, Arc<Program>>>>,
    registry: ProviderRegistry,
    options: EngineOptions,
    journal: Arc<dyn Journal>,
    events: Option<EventSink>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunMode {
    Execute,
    Plan,
}

struct Completed {
    /// Completions counted when the call started: calls that completed earlier may be
    /// what it depends on.
    started_after: usize,
    seq: usize,
    step: String,
    target: String,
    kind: ProcKind,
    provider: Arc<dyn Provider>,
    done: Done,
}

/// Adds a completed call, growing the list 1, 2, 4, … instead of from 4: an entry is ~430
/// bytes, and most transactions in flight hold one or two.
fn push_completed(completed: &mut Vec<Completed>, c: Completed) {
    if completed.len() == completed.capacity() {
        completed.reserve_exact(completed.len().max(1));
    }
    completed.push(c);
}

struct Txn {
    id: String,
    mode: RunMode,
    program: Arc<Program>,
    context: Mutex<Element>,
    completed: Mutex<Vec<Completed>>,
    /// Completions so far (orders undo: see `Completed::started_after`).
    completions: AtomicUsize,
    calls: AtomicUsize,
    permits: Semaphore,
    plan: Mutex<Vec<PlanEntry>>,
    waves: HashMap<String, usize>,
    redactor: Redactor,
    /// Set when resuming after a crash.
    resume: Option<Resume>,
}

struct Invocation {
    data: Mutex<Element>,
    procedure_data: Mutex<Element>,
    selects: Mutex<HashMap<String, String>>,
}

/// A step completed before a crash, replayed when a resumable transaction resumes.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// Its exact output executeData.
    pub output: Element,
    /// Its undo record, if any.
    pub undo: Option<Element>,
    /// The attempt that succeeded.
    pub attempt: u32,
}

/// What a resumed transaction takes from its journal.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// The transaction id to continue.
    pub txn_id: String,
    /// Completed provider calls by step path.
    pub done: HashMap<String, Replayed>,
    /// For steps that were tried but not completed: the next attempt number to use.
    pub next_attempt: HashMap<String, u32>,
}

/// Bindings of forEach names to their current node, per iteration.
type Bindings = Vec<(String, Element)>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere already failed this step; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// An engine over a catalog and providers.
    pub fn new(catalog: Catalog, registry: ProviderRegistry, options: EngineOptions) -> Engine {
        Engine {
            catalog: Arc::new(catalog),
            programs: Arc::default(),
            registry,
            options,
            journal: Arc::new(NoJournal),
            events: None,
        }
    }

    /// Reports every transition to `journal`.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Engine {
        self.journal = journal;
        self
    }

    /// Sends progress events to `sink`.
    pub fn with_events(mut self, sink: impl Fn(&Event) + Send + Sync + 'static) -> Engine {
        self.events = Some(Arc::new(sink));
        self
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The providers.
    pub fn registry(&self) -> &ProviderRegistry {
        &self.registry
    }

    /// The options.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Compiles a request.
    pub fn compile(&self, request: &Request) -> Result<Program, CompileErrors> {
        compile_request(&self.catalog, request, &self.options.limits)
    }

    /// The program of a request: a simple request's is compiled once per target and shared
    /// (its own checks, access and required inputs, run every time); a trusted request's
    /// body is compiled each time.
    pub fn program(&self, request: &Request) -> Result<Arc<Program>, CompileErrors> {
        let RequestTarget::Call(target) = &request.target else {
            return Ok(Arc::new(self.compile(request)?));
        };
        check_request(&self.catalog, request)?;
        let key = target.to_string();
        if let Some(p) = lock(&self.programs).get(&key) {
            return Ok(p.clone());
        }
        let program = Arc::new(self.compile(request)?);
        lock(&self.programs).insert(key, program.clone());
        Ok(program)
    }

    /// Compiles and runs a request as one transaction.
    pub async fn run(&self, request: &Request) -> Result<TxnResult, RunError> {
        let program = self.program(request)?;
        Ok(self
            .run_program(program, request.data.clone(), request.context.clone())
            .await)
    }

    /// Compiles a request and walks it without calling any provider: returns the provider
    /// calls that would be made, with their resolved inputs and the providers' previews.
    pub async fn plan(&self, request: &Request) -> Result<Vec<PlanEntry>, RunError> {
        let program = self.program(request)?;
        let txn = self.new_txn(
            program.clone(),
            RunMode::Plan,
            &request.data,
            request.context.clone(),
        );
        let _ = self.run_entry(&txn, request.data.clone()).await;
        let mut entries = std::mem::take(&mut *lock(&txn.plan));
        for e in &mut entries {
            txn.redactor.redact_element(&mut e.inputs);
        }
        Ok(entries)
    }

    fn new_txn(
        &self,
        program: Arc<Program>,
        mode: RunMode,
        data: &Element,
        context: Element,
    ) -> Txn {
        let waves = match &program.entry.body {
            Body::Steps(plan) => plan
                .waves()
                .into_iter()
                .enumerate()
                .flat_map(|(w, nodes)| nodes.into_iter().map(move |n| (w, n)))
                .map(|(w, n)| (plan.graph[n].id().to_string(), w))
                .collect(),
            Body::Leaf(_) => HashMap::new(),
        };
        let redactor = Redactor::new(program.secrets.clone(), data);
        Txn {
            id: uuid::Uuid::now_v7().to_string(),
            mode,
            program,
            context: Mutex::new(context),
            completed: Mutex::new(Vec::new()),
            completions: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            permits: Semaphore::new(self.options.max_parallel.max(1)),
            plan: Mutex::new(Vec::new()),
            waves,
            redactor,
            resume: None,
        }
    }

    /// Runs a compiled program as one transaction: commit, or roll back everything done.
    pub async fn run_program(
        &self,
        program: Arc<Program>,
        data: Element,
        context: Element,
    ) -> TxnResult {
        self.run_txn(program, data, context, None).await
    }

    /// Continues a resumable transaction after a crash: steps its journal shows completed
    /// are not called again (their recorded results are used), the rest run as usual.
    pub async fn resume_program(
        &self,
        program: Arc<Program>,
        data: Element,
        context: Element,
        resume: Resume,
    ) -> TxnResult {
        self.run_txn(program, data, context, Some(resume)).await
    }

    async fn run_txn(
        &self,
        program: Arc<Program>,
        data: Element,
        context: Element,
        resume: Option<Resume>,
    ) -> TxnResult {
        let started_at = Instant::now();
        let mut txn = self.new_txn(program, RunMode::Execute, &data, context);
        let resuming = resume.is_some();
        if let Some(r) = resume {
            txn.id = r.txn_id.clone();
            txn.resume = Some(r);
        }
        let span = info_span!("txn", txn.id = %txn.id, procedure = %txn.program.entry.target);
        async {
            let started = if resuming {
                self.journal.txn_state(&txn.id, TxnState::Running, Some("resumed after a crash")).await
            } else {
                // Scoped here, so the transaction's task does not carry them while it runs.
                let target = txn.program.entry.target.to_string();
                let mut shown = data.clone();
                txn.redactor.redact_element(&mut shown);
                self.journal
                .txn_started(&TxnStart {
                    txn_id: &txn.id,
                    target: &target,
                    kind: txn.program.entry.kind,
                    resumable: txn.program.entry.resumable,
                    definitions: &txn.program.definitions_hash,
                    data: &shown,
                    request_data: &data,
                    secret: txn.redactor.contains_secret(&data),
                    pinned: &txn.program.pinned,
                })
                .await
            };
            tracing::info!("transaction started");
            let result = match started {
                Ok(()) => self.run_entry(&txn, data).await,
                Err(e) => Err(Failure { code: ProviderError::E_FAIL, message: e.to_string(), step: String::new(), sources: Vec::new() }),
            };
            let result = match result {
                Ok(data) => self.two_phase(&txn).await.map(|()| data),
                Err(f) => Err(f),
            };
            let mut out = TxnResult {
                txn_id: txn.id.clone(),
                state: TxnState::Committed,
                data: None,
                failure: None,
                undo_failures: Vec::new(),
                calls: txn.calls.load(AtomicOrdering::Relaxed),
                undone: 0,
                elapsed: Duration::ZERO,
                redactor: txn.redactor.clone(),
                journal_error: None,
            };
            match result {
                Ok(mut data) => {
                    txn.redactor.redact_element(&mut data);
                    out.data = Some(data);
                    tracing::info!("committed");
                }
                Err(mut failure) => {
                    failure.message = txn.redactor.redact_text(&failure.message);
                    tracing::warn!(step = %failure.step, error = %failure.message, "step failed; rolling back");
                    let _ = self.journal.txn_state(&txn.id, TxnState::RollingBack, Some(&failure.message)).await;
                    let (undone, failures) = self.rollback(&txn).await;
                    out.undone = undone;
                    out.state = if failures.is_empty() { TxnState::RolledBack } else { TxnState::RollbackFailed };
                    out.undo_failures = failures;
                    out.failure = Some(failure);
                }
            }
            let message = out.failure.as_ref().map(|f| f.message.clone());
            if let Err(e) = self.journal.txn_state(&txn.id, out.state, message.as_deref()).await {
                tracing::error!(error = %e, "the final state could not be journaled");
                out.journal_error = Some(e.to_string());
                if out.state == TxnState::Committed {
                    // A commit the journal could lose is not a commit: recovery would find
                    // the transaction unfinished and roll it back after the caller was told
                    // otherwise. Roll back now (undos are idempotent, so recovery repeating
                    // them is harmless) and report the failure.
                    let (undone, failures) = self.rollback(&txn).await;
                    out.undone = undone;
                    out.state = if failures.is_empty() { TxnState::RolledBack } else { TxnState::RollbackFailed };
                    out.undo_failures = failures;
                    out.data = None;
                    out.failure = Some(Failure {
                        code: ProviderError::E_FAIL,
                        message: format!("the commit could not be journaled, so the transaction was rolled back: {e}"),
                        step: String::new(),
                        sources: Vec::new(),
                    });
                    let _ = self.journal.txn_state(&txn.id, out.state, out.failure.as_ref().map(|f| f.message.as_str())).await;
                }
            }
            out.elapsed = started_at.elapsed();
            out
        }
        .instrument(span)
        .await
    }

    async fn run_entry(&self, txn: &Txn, data: Element) -> Result<Element, Failure> {
        let entry = txn.program.entry.clone();
        let mut data = data;
        data.name = "data".into();
        match &entry.body {
            Body::Steps(plan) => {
                apply_defaults(&entry, &mut data);
                let inv = Invocation::new(data, entry.procedure_data.clone());
                let r = self.run_plan(txn, &inv, plan, "").await;
                match r {
                    Ok(()) => Ok(inv.into_data()),
                    Err(mut f) => {
                        f.sources.push(ErrorSource {
                            namespace: entry.target.namespace.clone(),
                            procedure: entry.target.procedure.clone(),
                            step: String::new(),
                        });
                        Err(f)
                    }
                }
            }
            Body::Leaf(leaf) => {
                let mut ed = data;
                ed.name = "executeData".into();
                // Boxed: inline, this rarely taken branch would size every transaction's
                // task for a provider call's state (the memory benchmark's figure).
                let mut out =
                    Box::pin(self.call_provider(txn, &entry, leaf, ed, &entry.target.procedure))
                        .await?;
                out.name = "data".into();
                Ok(out)
            }
        }
    }

    /// Runs the steps of a plan: each step starts as soon as everything it depends on has
    /// finished. After a failure no new step starts; the running ones finish (so their
    /// results are recorded for rollback) and the first failure is returned.
    fn run_plan<'a>(
        &'a self,
        txn: &'a Txn,
        inv: &'a Invocation,
        plan: &'a Plan,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        async move {
            let n = plan.graph.node_count();
            let mut indeg = vec![0usize; n];
            for e in plan.graph.raw_edges() {
                indeg[e.target().index()] += 1;
            }
            let mut ready: BinaryHeap<Reverse<usize>> =
                (0..n).filter(|&i| indeg[i] == 0).map(Reverse).collect();
            let mut running = FuturesUnordered::new();
            let mut failure: Option<Failure> = None;
            loop {
                if failure.is_none() {
                    while let Some(Reverse(i)) = ready.pop() {
                        let node = &plan.graph[petgraph::graph::NodeIndex::new(i)];
                        running.push(self.run_node(txn, inv, node, prefix).map(move |r| (i, r)));
                    }
                }
                match running.next().await {
                    None => break,
                    Some((i, Ok(()))) => {
                        for m in plan.graph.neighbors(petgraph::graph::NodeIndex::new(i)) {
                            indeg[m.index()] -= 1;
                            if indeg[m.index()] == 0 {
                                ready.push(Reverse(m.index()));
                            }
                        }
                    }
                    Some((_, Err(f))) => {
                        if failure.is_none() {
                            failure = Some(f);
                        }
                    }
                }
            }
            match failure {
                Some(f) => Err(f),
                None => Ok(()),
            }
        }
        .boxed()
    }

    fn run_node<'a>(
        &'a self,
        txn: &'a Txn,
        inv: &'a Invocation,
        node: &'a PlanNode,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<(), Failure>> {
        async move {
            match node {
                PlanNode::Execute(e) => self.run_execute(txn, inv, e, prefix).await,
                PlanNode::Script(sn) => self.run_script(txn, inv, sn, prefix).await,
                PlanNode::Select(s) => {
                    let step = format!("{prefix}{}", s.id);
                    let value = self.read_string(txn, inv, &[], &Element::new("executeData"), &s.scope, s.path.as_ref(), &step)?;
                    let case = match value {
                        None => s.if_null_case.clone().or_else(|| s.default_case.clone()),
                        Some(v) => s.cases.iter().find(|(val, _)| *val == v).map(|(_, c)| c.clone()).or_else(|| s.default_case.clone()),
                    };
                    if let Some(case) = case {
                        lock(&inv.selects).insert(s.name.clone(), case);
                    }
                    Ok(())
                }
                PlanNode::Try(t) => {
                    let body_prefix = format!("{prefix}{}/", t.id);
                    match self.run_plan(txn, inv, &t.body, &body_prefix).await {
                        Ok(()) => Ok(()),
                        Err(f) if txn.mode == RunMode::Plan => Err(f),
                        Err(f) => {
                            tracing::info!(step = %f.step, error = %f.message, "error caught; running catch");
                            lock(&txn.context).children.retain(|c| !matches!(c, crate::data::Node::Element(e) if e.name == "errorContext"));
                            lock(&txn.context).push(error_context(&f));
                            let catch_prefix = format!("{prefix}{}/catch/", t.id);
                            self.run_plan(txn, inv, &t.catch, &catch_prefix).await
                        }
                    }
                }
            }
        }
        .boxed()
    }

    async fn run_execute(
        &self,
        txn: &Txn,
        inv: &Invocation,
        node: &ExecNode,
        prefix: &str,
    ) -> Result<(), Failure> {
        let step = format!("{prefix}{}", node.id);
        let iterations = self.iterations(txn, inv, node, &step)?;
        for (suffix, mut bindings) in iterations {
            let step = format!("{step}{suffix}");
            if !self.conditions(txn, inv, &bindings, node, &step)? {
                continue;
            }
            let repeat = match &node.repeat {
                None => 1,
                Some(r) => match self.read_string(
                    txn,
                    inv,
                    &bindings,
                    &node.execute_data,
                    &r.scope,
                    r.path.as_ref(),
                    &step,
                )? {
                    Some(v) => v.trim().parse::<usize>().map_err(|_| {
                        Failure::data(&step, format!("repeat count `{v}` is not a whole number"))
                    })?,
                    None => match r.if_null {
                        IfNull::Fail => {
                            return Err(Failure::data(
                                &step,
                                "repeat: the count path selects nothing",
                            ))
                        }
                        IfNull::Skip => 0,
                        IfNull::Ignore => 1,
                    },
                },
            };
            if repeat > self.options.max_iterations {
                return Err(Failure::data(
                    &step,
                    format!(
                        "repeat count {repeat} is over the limit of {}",
                        self.options.max_iterations
                    ),
                ));
            }
            for r in 0..repeat {
                let step = if node.repeat.is_some() {
                    format!("{step}#{}", r + 1)
                } else {
                    step.clone()
                };
                let mut ed = node.execute_data.clone();
                ed.name = "executeData".into();
                let mut unresolved = Vec::new();
                if !self.transforms(
                    txn,
                    inv,
                    &mut bindings,
                    &mut ed,
                    &node.before,
                    &step,
                    &mut unresolved,
                )? {
                    continue; // ifNull="skip": this iteration does not run
                }
                if let Some(target) = &node.call {
                    ed = self.invoke(txn, target, ed, &step, unresolved).await?;
                }
                let mut ignored = Vec::new();
                self.transforms(
                    txn,
                    inv,
                    &mut bindings,
                    &mut ed,
                    &node.after,
                    &step,
                    &mut ignored,
                )?;
            }
        }
        Ok(())
    }

    /// Runs a rhai script step on a blocking thread. The script's `call_procedure` calls come
    /// back here over a channel and run as nested calls of this transaction (journaled and
    /// undone like any other); its result goes into `data`.
    async fn run_script(
        &self,
        txn: &Txn,
        inv: &Invocation,
        sn: &ScriptNode,
        prefix: &str,
    ) -> Result<(), Failure> {
        let step = format!("{prefix}{}", sn.id);
        let none: Bindings = Vec::new();
        let literal = Element::new("executeData");
        if !self.check(txn, inv, &none, &sn.when, &literal, &step)? {
            return Ok(());
        }
        if txn.mode == RunMode::Plan {
            let top = step.split(['/', '[', '#']).next().unwrap_or(&step);
            lock(&txn.plan).push(PlanEntry {
                step: step.clone(),
                wave: txn.waves.get(top).copied().unwrap_or(0),
                target: "(script)".into(),
                provider: "rhai".into(),
                inputs: literal,
                preview: Preview::Unknown,
                unresolved: vec!["a script step runs only for real".into()],
            });
            return Ok(());
        }
        let vars = self.vars(txn, inv, &none, &literal);
        let data_before = crate::data::json::to_json(&lock(&inv.data));
        let engine = self.catalog.script_engine().clone();
        let script = sn.script.clone();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<HostCall>();
        let host = Arc::new(ChannelHost {
            tx,
            allowed: sn.calls.iter().map(|t| t.to_string()).collect(),
        });
        let span = info_span!("script", step.id = %step);
        let handle = tokio::task::spawn_blocking(move || {
            span.in_scope(|| engine.run_step(&script, &vars, host))
        });
        let mut n = 0;
        while let Some(call) = rx.recv().await {
            n += 1;
            let reply = match call.target.rsplit_once('/') {
                None => Err(format!("`{}` is not Namespace/Procedure", call.target)),
                Some((ns, p)) => {
                    let target = CallTarget {
                        namespace: ns.to_string(),
                        procedure: p.to_string(),
                    };
                    match crate::data::json::from_json("executeData", &call.data) {
                        Err(e) => Err(format!("call data: {e}")),
                        Ok(ed) => match self
                            .invoke(txn, &target, ed, &format!("{step}/call{n}"), Vec::new())
                            .await
                        {
                            Ok(out) => Ok(crate::data::json::to_json(&out)),
                            Err(f) => Err(format!(
                                "{} failed at {}: {} (code {:#010x})",
                                target, f.step, f.message, f.code
                            )),
                        },
                    }
                }
            };
            let _ = call.reply.send(reply);
        }
        let result = handle
            .await
            .map_err(|e| Failure::data(&step, format!("script step stopped: {e}")))?;
        let value = result.map_err(|e| script_failure(&step, &e))?;
        if !value.is_null() {
            let mut data = lock(&inv.data);
            match &sn.output {
                Some(path) => {
                    let name = path
                        .as_str()
                        .rsplit('/')
                        .next()
                        .unwrap_or("result")
                        .to_string();
                    let node = crate::data::json::from_json(&name, &value)
                        .map_err(|e| Failure::data(&step, format!("script result: {e}")))?;
                    place(&mut data, Some(path), node, Mode::Replace)
                        .map_err(|e| Failure::data(&step, format!("script result: {e}")))?;
                }
                None => {
                    if !value.is_object() {
                        return Err(Failure::data(
                            &step,
                            "a script step without `output:` must return a map (merged into data)",
                        ));
                    }
                    let node = crate::data::json::from_json("data", &value)
                        .map_err(|e| Failure::data(&step, format!("script result: {e}")))?;
                    place(&mut data, None, node, Mode::Merge)
                        .map_err(|e| Failure::data(&step, format!("script result: {e}")))?;
                }
            }
        }
        if let Some(undo) = &sn.undo {
            let started_after = txn.completions.load(AtomicOrdering::SeqCst);
            let seq = txn.completions.fetch_add(1, AtomicOrdering::SeqCst);
            let provider: Arc<dyn Provider> = Arc::new(ScriptUndo {
                engine: self.catalog.script_engine().clone(),
                script: undo.clone(),
                data: data_before,
                result: value,
            });
            push_completed(
                &mut lock(&txn.completed),
                Completed {
                    started_after,
                    seq,
                    step: step.clone(),
                    target: "(script undo)".into(),
                    kind: ProcKind::Write,
                    provider,
                    done: Done {
                        context: CallContext {
                            txn_id: txn.id.clone(),
                            step_id: step.clone(),
                            attempt: 1,
                            namespace: "(script)".into(),
                            procedure: sn.id.clone(),
                        },
                        provider_context: Element::new("providerContext"),
                        undo: Element::new("undo"),
                        execute_data: None,
                    },
                },
            );
        }
        Ok(())
    }

    /// Expands the forEach nodes (each nested in the previous) into iterations.
    fn iterations(
        &self,
        txn: &Txn,
        inv: &Invocation,
        node: &ExecNode,
        step: &str,
    ) -> Result<Vec<(String, Bindings)>, Failure> {
        let mut iters: Vec<(String, Bindings)> = vec![(String::new(), Vec::new())];
        for f in &node.for_each {
            let mut next = Vec::new();
            for (suffix, bindings) in iters {
                let mut nodes = self.select_nodes(txn, inv, &bindings, f, step)?;
                for w in &node.when {
                    if let CWhen::Filter { for_each, script } = w {
                        if *for_each == f.name && !nodes.is_empty() {
                            // One conversion of the data scopes for all items.
                            let vars = self.vars(txn, inv, &bindings, &node.execute_data);
                            let engine = self.catalog.script_engine();
                            let mut kept = Vec::with_capacity(nodes.len());
                            for n in nodes {
                                let item = crate::data::json::to_json(&n);
                                if engine
                                    .eval_filter(script, &vars, &item)
                                    .map_err(|e| script_failure(step, &e))?
                                {
                                    kept.push(n);
                                }
                            }
                            nodes = kept;
                        }
                    }
                }
                if nodes.is_empty() {
                    match f.if_null {
                        IfNull::Fail if txn.mode == RunMode::Execute => {
                            return Err(Failure::data(
                                step,
                                format!("forEach `{}`: {} selects nothing (set ifNull=\"skip\" to allow none)", f.name, describe(&f.root, f.path.as_ref())),
                            ))
                        }
                        IfNull::Ignore => {
                            let mut b = bindings.clone();
                            b.push((f.name.clone(), Element::new(f.name.clone())));
                            next.push((suffix.clone(), b));
                        }
                        _ => {}
                    }
                }
                for (i, e) in nodes.into_iter().enumerate() {
                    let mut b = bindings.clone();
                    b.push((f.name.clone(), e));
                    next.push((format!("{suffix}[{}]", i + 1), b));
                }
                if next.len() > self.options.max_iterations {
                    return Err(Failure::data(
                        step,
                        format!(
                            "forEach produces more than {} iterations",
                            self.options.max_iterations
                        ),
                    ));
                }
            }
            iters = next;
        }
        Ok(iters)
    }

    fn select_nodes(
        &self,
        txn: &Txn,
        inv: &Invocation,
        bindings: &Bindings,
        f: &CForEach,
        step: &str,
    ) -> Result<Vec<Element>, Failure> {
        let mut scratch = Element::new("executeData");
        let mut b = bindings.clone();
        self.with_scope(txn, inv, &mut b, &mut scratch, &f.root, step, |root| {
            extract(root, f.path.as_ref())
        })
    }

    fn conditions(
        &self,
        txn: &Txn,
        inv: &Invocation,
        bindings: &Bindings,
        node: &ExecNode,
        step: &str,
    ) -> Result<bool, Failure> {
        self.check(txn, inv, bindings, &node.when, &node.execute_data, step)
    }

    /// Evaluates conditions; all must hold. forEach filters were applied when the
    /// iterations were built.
    fn check(
        &self,
        txn: &Txn,
        inv: &Invocation,
        bindings: &Bindings,
        when: &[CWhen],
        execute_data: &Element,
        step: &str,
    ) -> Result<bool, Failure> {
        for w in when {
            let ok = match w {
                CWhen::Exists(scope, path) | CWhen::Missing(scope, path) => {
                    let mut scratch = execute_data.clone();
                    let mut b = bindings.clone();
                    let found =
                        self.with_scope(txn, inv, &mut b, &mut scratch, scope, step, |root| {
                            match path {
                                None => true,
                                Some(p) => !p.select(root).is_empty(),
                            }
                        })?;
                    matches!(w, CWhen::Exists(..)) == found
                }
                CWhen::Case { select, case } => lock(&inv.selects)
                    .get(select)
                    .map(|c| c == case)
                    .unwrap_or(false),
                CWhen::Expr(script) => {
                    let vars = self.vars(txn, inv, bindings, execute_data);
                    self.catalog
                        .script_engine()
                        .eval_condition(script, &vars)
                        .map_err(|e| script_failure(step, &e))?
                }
                CWhen::Filter { .. } => true,
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The data scopes as rhai variables.
    fn vars(
        &self,
        txn: &Txn,
        inv: &Invocation,
        bindings: &Bindings,
        execute_data: &Element,
    ) -> Vars {
        let mut v = Vars::new();
        v.push_element("data", &lock(&inv.data));
        v.push_element("procedureData", &lock(&inv.procedure_data));
        v.push_element("context", &lock(&txn.context));
        v.push_element("executeData", execute_data);
        for (name, e) in bindings {
            v.push_element(name.clone(), e);
        }
        v
    }

    #[allow(clippy::too_many_arguments)]
    fn read_string(
        &self,
        txn: &Txn,
        inv: &Invocation,
        bindings: &[(String, Element)],
        ed: &Element,
        scope: &Scope,
        path: Option<&Path>,
        step: &str,
    ) -> Result<Option<String>, Failure> {
        let mut scratch = ed.clone();
        let mut b = bindings.to_vec();
        self.with_scope(
            txn,
            inv,
            &mut b,
            &mut scratch,
            scope,
            step,
            |root| match path {
                None => Some(root.string_value()),
                Some(p) => p.select(root).first().map(selected_string),
            },
        )
    }

    /// Runs `f` on the root of a scope. Locks are held only for the closure, never across
    /// an await.
    #[allow(clippy::too_many_arguments)]
    fn with_scope<R>(
        &self,
        txn: &Txn,
        inv: &Invocation,
        bindings: &mut Bindings,
        ed: &mut Element,
        scope: &Scope,
        step: &str,
        f: impl FnOnce(&mut Element) -> R,
    ) -> Result<R, Failure> {
        Ok(match scope {
            Scope::Data => f(&mut lock(&inv.data)),
            Scope::ProcedureData => f(&mut lock(&inv.procedure_data)),
            Scope::Context => f(&mut lock(&txn.context)),
            Scope::ExecuteData => f(ed),
            Scope::Named(name) => match bindings.iter_mut().rev().find(|(n, _)| n == name) {
                Some((_, e)) => f(e),
                None => {
                    return Err(Failure::data(
                        step,
                        format!("`{name}` is not a data scope or a forEach of this step"),
                    ))
                }
            },
        })
    }

    /// Applies transforms in order. Returns false when an `ifNull="skip"` source was missing.
    #[allow(clippy::too_many_arguments)]
    fn transforms(
        &self,
        txn: &Txn,
        inv: &Invocation,
        bindings: &mut Bindings,
        ed: &mut Element,
        list: &[CTransform],
        step: &str,
        unresolved: &mut Vec<String>,
    ) -> Result<bool, Failure> {
        for t in list {
            let mut template_missing = Vec::new();
            let nodes: Vec<Element> = match &t.source {
                CSource::Node(scope, path) => {
                    self.with_scope(txn, inv, bindings, ed, scope, step, |root| {
                        extract(root, path.as_ref())
                    })?
                }
                CSource::Expr(script) => {
                    let vars = self.vars(txn, inv, bindings, ed);
                    match self.catalog.script_engine().eval_value(script, &vars) {
                        Ok(serde_json::Value::Null) => Vec::new(),
                        Ok(v) => vec![crate::data::json::from_json("value", &v)
                            .map_err(|e| Failure::data(step, format!("expression result: {e}")))?],
                        Err(e) if txn.mode == RunMode::Plan => {
                            unresolved.push(format!("expression ({})", e.message()));
                            continue;
                        }
                        Err(e) => return Err(script_failure(step, &e)),
                    }
                }
                CSource::Template(parts) => {
                    let mut text = String::new();
                    let mut missing = Vec::new();
                    for part in parts {
                        match part {
                            CPart::Lit(s) => text.push_str(s),
                            CPart::Ref(scope, path) => {
                                let v =
                                    self.with_scope(txn, inv, bindings, ed, scope, step, |root| {
                                        match path {
                                            None => Some(root.string_value()),
                                            Some(p) => p.select(root).first().map(selected_string),
                                        }
                                    })?;
                                match v {
                                    Some(v) => text.push_str(&v),
                                    None => missing.push(describe(scope, path.as_ref())),
                                }
                            }
                        }
                    }
                    template_missing = missing;
                    if template_missing.is_empty() {
                        vec![Element::with_text("value", text)]
                    } else {
                        Vec::new()
                    }
                }
            };
            if nodes.is_empty() {
                // Name what is missing: the node path, or each missing template placeholder.
                let whats = match &t.source {
                    CSource::Node(scope, path) => vec![describe(scope, path.as_ref())],
                    CSource::Template(_) => template_missing,
                    CSource::Expr(_) => vec!["the expression's value (null)".to_string()],
                };
                if txn.mode == RunMode::Plan {
                    if t.if_null == IfNull::Fail {
                        unresolved.extend(whats);
                    }
                    continue;
                }
                let what = whats.join(", ");
                match t.if_null {
                    IfNull::Fail => {
                        return Err(Failure::data(
                            step,
                            format!("{what} selects nothing (set ifNull=\"ignore\" to allow it, or supply it in the request data)"),
                        ))
                    }
                    IfNull::Ignore => continue,
                    IfNull::Skip => return Ok(false),
                }
            }
            if t.mode == Mode::Move {
                if let CSource::Node(scope, Some(path)) = &t.source {
                    self.with_scope(txn, inv, bindings, ed, scope, step, |root| {
                        remove(root, path)
                    })?;
                }
            }
            for node in nodes {
                let dest = t.dest_path.as_ref();
                let mode = t.mode;
                self.with_scope(txn, inv, bindings, ed, &t.destination, step, |root| {
                    place(root, dest, node, mode)
                })?
                .map_err(|e| {
                    Failure::data(
                        step,
                        format!(
                            "{} {}: {e}",
                            t.destination,
                            dest.map(|d| d.as_str()).unwrap_or("")
                        ),
                    )
                })?;
            }
        }
        Ok(true)
    }

    /// Calls a procedure: a provider leaf, or a nested procedure whose `data` is the
    /// caller's executeData (and whose final `data` comes back as executeData).
    fn invoke<'a>(
        &'a self,
        txn: &'a Txn,
        target: &'a CallTarget,
        ed: Element,
        step: &'a str,
        unresolved: Vec<String>,
    ) -> BoxFuture<'a, Result<Element, Failure>> {
        async move {
            let Some(callee) = txn.program.procedure(target).cloned() else {
                return Err(Failure::data(step, format!("`{target}` was not compiled into this program")));
            };
            match &callee.body {
                Body::Leaf(leaf) => {
                    if txn.mode == RunMode::Plan {
                        return self.preview(txn, &callee, leaf, ed, step, unresolved).await;
                    }
                    self.call_provider(txn, &callee, leaf, ed, step).await
                }
                Body::Steps(plan) => {
                    let mut data = ed;
                    data.name = "data".into();
                    apply_defaults(&callee, &mut data);
                    if txn.mode == RunMode::Execute {
                        for input in callee.inputs.iter().filter(|i| i.required && i.default.is_none()) {
                            let present = Path::parse(&input.name).map(|p| !p.select(&data).is_empty()).unwrap_or(false);
                            if !present {
                                return Err(Failure::data(step, format!("`{target}` needs input `{}`, which the calling step did not pass", input.name)));
                            }
                        }
                    }
                    let inv = Invocation::new(data, callee.procedure_data.clone());
                    let prefix = format!("{step}/");
                    match self.run_plan(txn, &inv, plan, &prefix).await {
                        Ok(()) => {
                            let mut out = inv.into_data();
                            out.name = "executeData".into();
                            Ok(out)
                        }
                        Err(mut f) => {
                            f.sources.push(ErrorSource {
                                namespace: target.namespace.clone(),
                                procedure: target.procedure.clone(),
                                step: step.to_string(),
                            });
                            Err(f)
                        }
                    }
                }
            }
        }
        .boxed()
    }

    async fn preview(
        &self,
        txn: &Txn,
        callee: &CompiledProcedure,
        leaf: &Leaf,
        ed: Element,
        step: &str,
        unresolved: Vec<String>,
    ) -> Result<Element, Failure> {
        let provider = self.provider(leaf, step)?;
        let call = Call {
            context: self.call_context(txn, callee, leaf, step, 1),
            provider_context: leaf.provider_context.clone(),
            execute_data: ed,
        };
        let preview = if unresolved.is_empty() {
            provider
                .preview(&call)
                .await
                .unwrap_or_else(|e| Preview::Change(format!("(preview failed: {})", e.message())))
        } else {
            Preview::Unknown
        };
        let top = step.split(['/', '[', '#']).next().unwrap_or(step);
        lock(&txn.plan).push(PlanEntry {
            step: step.to_string(),
            wave: txn.waves.get(top).copied().unwrap_or(0),
            target: callee.target.to_string(),
            provider: leaf.provider.clone(),
            inputs: call.execute_data.clone(),
            preview,
            unresolved,
        });
        Ok(call.execute_data)
    }

    fn provider(&self, leaf: &Leaf, step: &str) -> Result<Arc<dyn Provider>, Failure> {
        self.registry
            .get(&leaf.provider)
            .cloned()
            .ok_or_else(|| Failure {
                code: ProviderError::E_FAIL,
                message: format!("provider `{}` is not registered", leaf.provider),
                step: step.to_string(),
                sources: Vec::new(),
            })
    }

    fn call_context(
        &self,
        txn: &Txn,
        callee: &CompiledProcedure,
        leaf: &Leaf,
        step: &str,
        attempt: u32,
    ) -> CallContext {
        CallContext {
            txn_id: txn.id.clone(),
            step_id: step.to_string(),
            attempt,
            namespace: callee.target.namespace.clone(),
            procedure: leaf.entry.clone(),
        }
    }

    fn emit(&self, event: Event) {
        if let Some(sink) = &self.events {
            sink(&event);
        }
    }

    async fn call_provider(
        &self,
        txn: &Txn,
        callee: &CompiledProcedure,
        leaf: &Leaf,
        ed: Element,
        step: &str,
    ) -> Result<Element, Failure> {
        let provider = self.provider(leaf, step)?;
        let target = callee.target.to_string();
        let span =
            info_span!("step", step.id = %step, provider = %leaf.provider, procedure = %target);
        async {
            self.emit(Event::StepStarted { step: step.to_string(), target: target.clone() });
            if let Some(r) = txn.resume.as_ref().and_then(|r| r.done.get(step)) {
                // Completed before the crash: use the journaled result, call nothing.
                if callee.kind != ProcKind::Read {
                    if let Some(undo) = &r.undo {
                        let started_after = txn.completions.load(AtomicOrdering::SeqCst);
                        let seq = txn.completions.fetch_add(1, AtomicOrdering::SeqCst);
                        push_completed(&mut lock(&txn.completed), Completed {
                            started_after,
                            seq,
                            step: step.to_string(),
                            target: target.clone(),
                            kind: callee.kind,
                            provider: provider.clone(),
                            done: Done {
                                context: self.call_context(txn, callee, leaf, step, r.attempt),
                                provider_context: leaf.provider_context.clone(),
                                undo: undo.clone(),
                                execute_data: leaf.save_data_for_rollback.then(|| ed.clone()),
                            },
                        });
                    }
                }
                self.emit(Event::StepFinished { step: step.to_string(), ok: true });
                return Ok(r.output.clone());
            }
            let mut attempt = txn.resume.as_ref().and_then(|r| r.next_attempt.get(step).copied()).unwrap_or(1);
            loop {
                let context = self.call_context(txn, callee, leaf, step, attempt);
                let journaling = self.journal.records();
                if journaling {
                    let mut logged = ed.clone();
                    txn.redactor.redact_element(&mut logged);
                    let secret = txn.redactor.contains_secret(&ed);
                    self.journal
                        .step_intent(&StepIntent {
                            context: &context,
                            provider: &leaf.provider,
                            target: &target,
                            kind: callee.kind,
                            provider_context: &leaf.provider_context,
                            input: &logged,
                            call_data: &ed,
                            secret,
                        })
                        .await
                        .map_err(|e| fail(step, &target, ProviderError::E_FAIL, e.to_string()))?;
                }
                let started_after = txn.completions.load(AtomicOrdering::SeqCst);
                let call = Call { context: context.clone(), provider_context: leaf.provider_context.clone(), execute_data: ed.clone() };
                let permit = txn.permits.acquire().await;
                txn.calls.fetch_add(1, AtomicOrdering::Relaxed);
                let result = tokio::time::timeout(self.options.step_timeout, AssertUnwindSafe(provider.execute(call)).catch_unwind()).await;
                drop(permit);
                let error = match result {
                    Ok(Ok(Ok(outcome))) => {
                        let mut out = outcome.execute_data;
                        out.name = "executeData".into();
                        let keep = callee.kind != ProcKind::Read && outcome.undo.is_some();
                        let journaled = if journaling {
                            let mut logged_out = out.clone();
                            txn.redactor.redact_element(&mut logged_out);
                            let saved = (keep && leaf.save_data_for_rollback).then_some(&ed);
                            let undo_ref = if keep { outcome.undo.as_ref() } else { None };
                            let secret = undo_ref.is_some_and(|u| txn.redactor.contains_secret(u))
                                || saved.is_some_and(|s| txn.redactor.contains_secret(s));
                            self.journal
                                .step_done(&StepDone {
                                    context: &context,
                                    output: &logged_out,
                                    undo: undo_ref,
                                    saved,
                                    secret,
                                    result: txn.program.entry.resumable.then_some(&out),
                                    result_secret: txn.program.entry.resumable && txn.redactor.contains_secret(&out),
                                })
                                .await
                        } else {
                            Ok(())
                        };
                        let seq = txn.completions.fetch_add(1, AtomicOrdering::SeqCst);
                        if keep {
                            if let Some(undo) = outcome.undo {
                                let mut completed = lock(&txn.completed);
                                push_completed(&mut completed, Completed {
                                    started_after,
                                    seq,
                                    step: step.to_string(),
                                    target: target.clone(),
                                    kind: callee.kind,
                                    provider: provider.clone(),
                                    done: Done {
                                        context,
                                        provider_context: leaf.provider_context.clone(),
                                        undo,
                                        execute_data: leaf.save_data_for_rollback.then(|| ed.clone()),
                                    },
                                });
                            }
                        }
                        // The call happened and is registered for undo even when journaling it failed.
                        journaled.map_err(|e| fail(step, &target, ProviderError::E_FAIL, e.to_string()))?;
                        tracing::debug!("step done");
                        self.emit(Event::StepFinished { step: step.to_string(), ok: true });
                        return Ok(out);
                    }
                    Ok(Ok(Err(e))) => e,
                    Ok(Err(panic)) => ProviderError::permanent(format!("provider `{}` panicked: {}", leaf.provider, panic_message(&panic))),
                    Err(_) => ProviderError::permanent(format!(
                        "provider `{}` did not answer within {:?} (step timeout); whatever it did is its own to clean up",
                        leaf.provider, self.options.step_timeout
                    )),
                };
                let _ = self.journal.step_failed(&context, &txn.redactor.redact_text(&error.to_string())).await;
                if matches!(error, ProviderError::Transient { .. }) && attempt <= self.options.retries {
                    tracing::warn!(attempt, error = %error, "transient error; retrying");
                    tokio::time::sleep(self.options.retry_backoff * 2u32.saturating_pow(attempt - 1)).await;
                    attempt += 1;
                    continue;
                }
                tracing::warn!(error = %error, "step failed");
                self.emit(Event::StepFinished { step: step.to_string(), ok: false });
                return Err(Failure {
                    code: error.code(),
                    message: error.message(),
                    step: step.to_string(),
                    sources: vec![ErrorSource {
                        namespace: callee.target.namespace.clone(),
                        procedure: callee.target.procedure.clone(),
                        step: step.to_string(),
                    }],
                });
            }
        }
        .instrument(span)
        .await
    }

    /// Two-phase procedures: prepare every two-phase call in order; only if all prepared,
    /// commit them in the same order. A failed prepare fails the transaction (rollback).
    async fn two_phase(&self, txn: &Txn) -> Result<(), Failure> {
        let calls: Vec<(String, String, Arc<dyn Provider>, Done)> = lock(&txn.completed)
            .iter()
            .filter(|c| c.kind == ProcKind::TwoPhase)
            .map(|c| {
                (
                    c.step.clone(),
                    c.target.clone(),
                    c.provider.clone(),
                    c.done.clone(),
                )
            })
            .collect();
        for (step, target, provider, done) in &calls {
            let r = provider.prepare(done).await;
            let err = r.as_ref().err().map(|e| e.to_string());
            let _ = self
                .journal
                .phase_done(&done.context, "prepare", err.as_deref())
                .await;
            if let Err(e) = r {
                return Err(fail(
                    step,
                    target,
                    e.code(),
                    format!("prepare failed: {}", e.message()),
                ));
            }
        }
        for (step, _, provider, done) in &calls {
            let r = provider.commit(done).await;
            let err = r.as_ref().err().map(|e| e.to_string());
            let _ = self
                .journal
                .phase_done(&done.context, "commit", err.as_deref())
                .await;
            if let Err(e) = r {
                // Commit must not fail (MPS event 4107): the change is prepared but not visible.
                tracing::error!(step = %step, error = %e, "two-phase commit failed; the system may be inconsistent");
            }
        }
        Ok(())
    }

    /// Undoes every completed call in reverse dependency order: a call is undone only after
    /// every call that started after it completed (and so may depend on it) was undone;
    /// calls that overlapped in time are independent and are undone concurrently. Each undo
    /// is retried with backoff; returns how many were undone and what kept failing.
    async fn rollback(&self, txn: &Txn) -> (usize, Vec<UndoFailure>) {
        let completed = std::mem::take(&mut *lock(&txn.completed));
        let order: Vec<UndoOrder> = completed
            .iter()
            .map(|c| UndoOrder {
                started_after: c.started_after,
                seq: c.seq,
            })
            .collect();
        let mut undone = 0;
        let mut failures = Vec::new();
        let results = undo_in_dependency_order(&order, |i| {
            let c = &completed[i];
            self.undo_one(c.provider.clone(), c.done.clone(), c.step.clone())
        })
        .await;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => undone += 1,
                Err(message) => failures.push(UndoFailure {
                    step: completed[i].step.clone(),
                    target: completed[i].target.clone(),
                    message: txn.redactor.redact_text(&message),
                }),
            }
        }
        (undone, failures)
    }

    /// One undo with retries and backoff, journaled.
    pub(crate) async fn undo_one(
        &self,
        provider: Arc<dyn Provider>,
        done: Done,
        step: String,
    ) -> Result<(), String> {
        let span = info_span!("undo", step.id = %step, provider = %provider.name());
        async {
            self.emit(Event::Undoing { step: step.clone() });
            let mut last = String::new();
            for attempt in 1..=self.options.undo_attempts.max(1) {
                match AssertUnwindSafe(provider.undo(done.clone()))
                    .catch_unwind()
                    .await
                {
                    Ok(Ok(())) => {
                        let _ = self.journal.undo_done(&done.context, None).await;
                        return Ok(());
                    }
                    Ok(Err(e)) => last = e.to_string(),
                    Err(p) => last = format!("undo panicked: {}", panic_message(&p)),
                }
                tracing::warn!(attempt, error = %last, "undo failed");
                if attempt < self.options.undo_attempts {
                    tokio::time::sleep(
                        self.options.retry_backoff * 2u32.saturating_pow(attempt - 1),
                    )
                    .await;
                }
            }
            let _ = self.journal.undo_done(&done.context, Some(&last)).await;
            Err(last)
        }
        .instrument(span)
        .await
    }
}

/// When a completed call started and finished, in completion counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UndoOrder {
    /// Completions counted when the call started.
    pub started_after: usize,
    /// Its own completion number.
    pub seq: usize,
}

/// Runs `undo(i)` for every call so that a call is undone only after every call that
/// started after it completed; independent calls run concurrently. Returns results by index.
pub async fn undo_in_dependency_order<'a, F, Fut>(
    order: &[UndoOrder],
    undo: F,
) -> Vec<Result<(), String>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + 'a,
{
    let n = order.len();
    // blockers[i]: calls that must be undone before i (they started after i completed).
    let mut waiting: Vec<usize> = vec![0; n];
    let mut unblocks: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in 0..n {
            if i != j && order[j].started_after > order[i].seq {
                waiting[i] += 1;
                unblocks[j].push(i);
            }
        }
    }
    let mut results: Vec<Result<(), String>> = vec![Ok(()); n];
    let mut running = FuturesUnordered::new();
    let mut ready: Vec<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    ready.sort_by_key(|&i| Reverse(order[i].seq));
    loop {
        for i in ready.drain(..) {
            let fut = undo(i);
            running.push(async move { (i, fut.await) });
        }
        match running.next().await {
            None => break,
            Some((i, r)) => {
                results[i] = r;
                let mut next: Vec<usize> = Vec::new();
                for &k in &unblocks[i] {
                    waiting[k] -= 1;
                    if waiting[k] == 0 {
                        next.push(k);
                    }
                }
                next.sort_by_key(|&k| Reverse(order[k].seq));
                ready.extend(next);
            }
        }
    }
    results
}

impl Invocation {
    fn new(data: Element, procedure_data: Element) -> Invocation {
        let mut pd = procedure_data;
        pd.name = "procedureData".into();
        Invocation {
            data: Mutex::new(data),
            procedure_data: Mutex::new(pd),
            selects: Mutex::new(HashMap::new()),
        }
    }

    fn into_data(self) -> Element {
        self.data.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

fn fail(step: &str, target: &str, code: u32, message: String) -> Failure {
    let (namespace, procedure) = target.rsplit_once('/').unwrap_or((target, ""));
    Failure {
        code,
        message,
        step: step.to_string(),
        sources: vec![ErrorSource {
            namespace: namespace.to_string(),
            procedure: procedure.to_string(),
            step: step.to_string(),
        }],
    }
}

fn apply_defaults(p: &CompiledProcedure, data: &mut Element) {
    for input in &p.inputs {
        if let Some(default) = &input.default {
            if data.child(&input.name).is_none() && !input.name.contains('/') {
                data.push(Element::with_scalar(input.name.clone(), default.clone()));
            }
        }
    }
}

fn selected_string(s: &crate::data::path::Selected<'_>) -> String {
    match s {
        crate::data::path::Selected::Element(e) => e.string_value(),
        crate::data::path::Selected::Attr { value, .. } => value.to_string(),
        crate::data::path::Selected::Text(t) => t.clone(),
    }
}

fn describe(scope: &Scope, path: Option<&Path>) -> String {
    match path {
        Some(p) => format!("{scope}/{}", p.as_str()),
        None => scope.to_string(),
    }
}

fn error_context(f: &Failure) -> Element {
    let mut e = Element::new("errorContext");
    e.set_attr("code", format!("{:#010x}", f.code));
    e.set_attr("description", f.message.clone());
    e.set_attr("step", f.step.clone());
    for s in &f.sources {
        let mut src = Element::new("errorSource");
        src.set_attr("namespace", s.namespace.clone());
        src.set_attr("procedure", s.procedure.clone());
        e.push(src);
    }
    e.push(Element::with_scalar(
        "code",
        Scalar::Str(format!("{:#010x}", f.code).into()),
    ));
    e
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

fn script_failure(step: &str, e: &ScriptError) -> Failure {
    let code = if e.limit().is_some() {
        crate::codes::E_SCRIPT_LIMIT
    } else {
        ProviderError::E_FAIL
    };
    Failure {
        code,
        message: e.to_string(),
        step: step.to_string(),
        sources: Vec::new(),
    }
}

/// A `call_procedure` request from a script thread, answered by the step's async task.
struct HostCall {
    target: String,
    data: serde_json::Value,
    reply: std::sync::mpsc::Sender<Result<serde_json::Value, String>>,
}

/// The script's view of the engine: calls travel over a channel to the async side.
struct ChannelHost {
    tx: tokio::sync::mpsc::UnboundedSender<HostCall>,
    allowed: Vec<String>,
}

impl ScriptHost for ChannelHost {
    fn call(&self, target: &str, data: serde_json::Value) -> Result<serde_json::Value, String> {
        if !self.allowed.iter().any(|a| a == target) {
            return Err(format!(
                "`{target}` is not in this step's `calls:` list ({}); declare it so it is checked and compiled with the procedure",
                if self.allowed.is_empty() { "empty".to_string() } else { self.allowed.join(", ") }
            ));
        }
        let (reply, answer) = std::sync::mpsc::channel();
        self.tx
            .send(HostCall {
                target: target.to_string(),
                data,
                reply,
            })
            .map_err(|_| "the transaction is gone".to_string())?;
        answer
            .recv()
            .map_err(|_| "the transaction is gone".to_string())?
    }
}

/// Runs a script step's undo script during rollback.
struct ScriptUndo {
    engine: Arc<ScriptEngine>,
    script: crate::script::CompiledScript,
    data: serde_json::Value,
    result: serde_json::Value,
}

#[async_trait::async_trait]
impl Provider for ScriptUndo {
    fn name(&self) -> &str {
        "(script)"
    }
    fn procedures(&self) -> Vec<crate::provider::ProcedureSpec> {
        Vec::new()
    }
    async fn execute(&self, _call: Call) -> Result<crate::provider::Outcome, ProviderError> {
        Err(ProviderError::Unsupported("script undo only undoes".into()))
    }
    async fn undo(&self, _done: Done) -> Result<(), ProviderError> {
        let engine = self.engine.clone();
        let script = self.script.clone();
        let vars = Vars::new()
            .with("data", &self.data)
            .with("result", &self.result);
        tokio::task::spawn_blocking(move || engine.eval_value(&script, &vars))
            .await
            .map_err(|e| ProviderError::permanent(format!("undo script stopped: {e}")))?
            .map(|_| ())
            .map_err(|e| ProviderError::permanent(e.to_string()))
    }
}
