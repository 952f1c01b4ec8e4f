//! The executor: runs a compiled program on tokio. Every ready step of a plan runs
//! concurrently (provider calls bounded by a limit); forEach, when, repeat, select,
//! try/catch and nested calls follow the MPS rules described in `docs/mps.md`; a failure
//! undoes every completed call in reverse order. The same code path runs in plan (dry-run)
//! mode, where providers are asked for a preview instead of being called.
//!
//! `run` walks a transaction and its plan, `call` makes one provider call, `transform`
//! reads and writes the data scopes, `script` runs script steps, and `rollback` commits
//! two-phase calls or undoes completed ones; `retry` says how often and how long a call,
//! a settlement or an undo is tried again; `state` is what a running transaction holds.

mod call;
mod context;
mod items;
pub(crate) mod journal;
pub(crate) mod queue;
mod redact;
mod retry;
mod rollback;
mod run;
mod script;
mod state;
mod transform;

pub use journal::{
    Journal, JournalError, NoJournal, ScriptUndoDone, StepDone, StepIntent, StepMarker, TxnStart,
    TxnState,
};
pub use queue::{JobSink, QueuedCall};
pub(crate) use redact::Redactor;
pub(crate) use retry::{Attempts, GaveUp};
pub use retry::{RetryOptions, RetryPolicies, RetryPolicy, RetryUse};
pub(crate) use rollback::{undo_in_dependency_order, UndoError, UndoOrder, WaitedOut};
pub(crate) use script::{journaled_script_undo, SCRIPT_NAMESPACE, SCRIPT_UNDO_TARGET};

use crate::compile::{check_request, compile_request, Catalog, CompileErrors, Limits, Program};
use crate::data::Element;
use crate::model::{Request, RequestTarget};
use crate::provider::{Preview, ProviderError, ProviderRegistry};
use crate::TxnId;
use state::{lock, RunMode, Txn};
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Tunables of the executor.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most provider calls in flight at once within one transaction.
    pub max_parallel: usize,
    /// A provider call that takes longer fails the step.
    pub step_timeout: Duration,
    /// How often and how long calls, settlements of in-doubt calls and undos are tried
    /// again after a retryable error, globally and per provider.
    pub retry: RetryOptions,
    /// Most forEach iterations of one step.
    pub max_iterations: usize,
    /// Compiler limits.
    pub limits: Limits,
    /// Most calls in flight at once to a provider, by provider name, over every transaction
    /// this engine (and its clones) runs: a slow backend is not flooded by a daemon's
    /// workers. Recovery and undo calls are not counted.
    pub provider_limits: std::collections::BTreeMap<String, usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_parallel: 16,
            step_timeout: Duration::from_secs(300),
            retry: RetryOptions::default(),
            max_iterations: 100_000,
            limits: Limits::default(),
            provider_limits: Default::default(),
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
        /// The attempt that ended it (1 for the first; the journal's `attempt`).
        attempt: u32,
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
    pub(crate) fn data(step: &str, message: impl Into<String>) -> Failure {
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
    pub txn_id: TxnId,
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
    /// The final state could not be journaled (the outcome above still happened).
    pub journal_error: Option<String>,
    /// The request's `context/clientContext`, handed back to the client (secrets masked).
    pub client_context: Option<Element>,
    /// The transaction rolled back because a step's transient provider error (timeout,
    /// busy, connection refused) outlasted the engine's retries: the same request may
    /// succeed later (a job queue retries it).
    pub transient: bool,
    /// The response as the journal kept it with the final state (a journal that keeps
    /// responses, `DurableJournal::with_responses`), handed back so that a caller keeping
    /// it too (the daemon's job queue) neither builds nor seals it again. `None` when the
    /// journal keeps none.
    pub kept_response: Option<KeptResponse>,
}

/// A response a journal kept with a transaction's final state: the document and the text
/// it stored, sealed with the journal's seal key when it has one.
#[derive(Debug, Clone)]
pub struct KeptResponse {
    /// The response document ([`crate::response::to_value`] of the result).
    pub doc: serde_json::Value,
    /// The document's JSON text as [`crate::txn::SealKey::seal`] sealed it (base64), or the
    /// JSON text itself when the journal has no seal key.
    pub text: String,
    /// Whether `text` is sealed.
    pub sealed: bool,
}

/// A handle that stops a running transaction: once [`Cancel::cancel`] is called, no further
/// provider call starts (calls already in flight finish), the step that would have started
/// fails with `E_ABORT`, and the transaction rolls back as after any failure. Cheap to
/// clone; every clone sets the same flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// A handle not yet cancelled.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks the transaction to stop and roll back.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// How a caller controls one run ([`Engine::run_controlled`]).
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// The transaction id to use instead of a new one: a job queue records it before the
    /// run, so that after a crash it finds the transaction recovery finished instead of
    /// starting a second one. It must not name a transaction already in the journal.
    pub txn_id: Option<TxnId>,
    /// Stops the run (see [`Cancel`]).
    pub cancel: Option<Cancel>,
}

/// One step of a dry run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlanEntry {
    /// Step path.
    pub step: String,
    /// Its wave: the calls of a wave may run at once; a call's wave is after those of every
    /// call it waits for (through `needs`, data, nested procedures and forEach iterations).
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
    /// A run of this transaction id is already under way in this engine (or a clone of
    /// it): a second run would interleave its journal records, provider-state locks and
    /// outcome with the first's. Nothing was run or journaled for this one.
    #[error(
        "transaction {txn} is already running in this process; a second run of the same id is \
         refused: wait for the first run to end"
    )]
    AlreadyRunning {
        /// The transaction id asked for.
        txn: TxnId,
    },
}

/// A transaction id a run of this engine is using ([`Engine::claim_run`]); given back when
/// the run ends or its task is dropped.
struct RunningId {
    running: Arc<Mutex<std::collections::HashSet<TxnId>>>,
    id: TxnId,
}

impl Drop for RunningId {
    fn drop(&mut self) {
        lock(&self.running).remove(&self.id);
    }
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
    /// Provider state: in the journal's store when it keeps state, else in memory.
    state: Arc<crate::state::StateSpace>,
    events: Option<EventSink>,
    /// The `provider_limits` as semaphores, shared by the clones.
    provider_permits: Arc<HashMap<String, Arc<Semaphore>>>,
    /// Where `queue` steps put their jobs (`None`: a `queue` step fails).
    jobs: Option<Arc<dyn JobSink>>,
    /// The transaction ids chosen by callers ([`RunControl::txn_id`]) whose runs are under
    /// way, shared by the clones: one id runs once at a time.
    running: Arc<Mutex<std::collections::HashSet<TxnId>>>,
}

/// How long a call waits for a provider-state key another transaction holds: half the step
/// timeout, so a long wait ends as a clean transient error (retried under the `calls`
/// policy) rather than as a step timeout, which would leave the call in doubt.
fn lock_wait(options: &EngineOptions) -> Duration {
    options.step_timeout / 2
}

/// A step completed before a crash, replayed when a resumable transaction resumes.
#[derive(Debug, Clone)]
pub(crate) struct Replayed {
    /// Its exact output executeData.
    pub(crate) output: Element,
    /// Its undo record, if any.
    pub(crate) undo: Option<Element>,
    /// The attempt that succeeded.
    pub(crate) attempt: u32,
    /// Its provider-state writes (what reverses them), locked again for the transaction.
    pub(crate) state: Option<Arc<crate::StateChange>>,
}

/// What a resumed transaction takes from its journal.
#[derive(Debug, Clone)]
pub(crate) struct Resume {
    /// The transaction id to continue.
    pub(crate) txn_id: TxnId,
    /// Completed provider calls by step path.
    pub(crate) done: HashMap<String, Replayed>,
    /// For steps that were tried but not completed: the next attempt number to use.
    pub(crate) next_attempt: HashMap<String, u32>,
}

impl Engine {
    /// An engine over a catalog and providers.
    pub fn new(catalog: Catalog, registry: ProviderRegistry, options: EngineOptions) -> Engine {
        let provider_permits = options
            .provider_limits
            .iter()
            .map(|(name, n)| (name.clone(), Arc::new(Semaphore::new((*n).max(1)))))
            .collect();
        let wait = lock_wait(&options);
        Engine {
            catalog: Arc::new(catalog),
            programs: Arc::default(),
            registry,
            options,
            journal: Arc::new(NoJournal),
            state: Arc::new(crate::state::StateSpace::in_memory(wait)),
            events: None,
            provider_permits: Arc::new(provider_permits),
            jobs: None,
            running: Arc::default(),
        }
    }

    /// Takes `id` for one run, or refuses it when another run of the engine (or of a clone)
    /// holds it.
    fn claim_run(&self, id: &TxnId) -> Result<RunningId, RunError> {
        if !lock(&self.running).insert(id.clone()) {
            return Err(RunError::AlreadyRunning { txn: id.clone() });
        }
        Ok(RunningId {
            running: self.running.clone(),
            id: id.clone(),
        })
    }

    /// A permit to call `provider`, when it has a limit (`EngineOptions::provider_limits`).
    pub(crate) async fn provider_permit(
        &self,
        provider: &str,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = self.provider_permits.get(provider)?.clone();
        semaphore.acquire_owned().await.ok()
    }

    /// Reports every transition to `journal`.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> Engine {
        match journal.state_store() {
            Some(store) => {
                let wait = lock_wait(&self.options);
                self.state = crate::state::StateSpace::shared(store, wait)
            }
            // From a journal that kept state to one that does not: state in memory again.
            None if self.state.in_journal() => {
                self.state = Arc::new(crate::state::StateSpace::in_memory(lock_wait(
                    &self.options,
                )))
            }
            None => {}
        }
        self.journal = journal;
        self
    }

    /// Puts the jobs of `queue` steps into `sink`, and tells it how each transaction ended
    /// (held jobs are released on commit, removed on rollback).
    pub fn with_jobs(mut self, sink: Arc<dyn JobSink>) -> Engine {
        self.jobs = Some(sink);
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
    pub(crate) fn registry(&self) -> &ProviderRegistry {
        &self.registry
    }

    /// Tells every registered provider that transaction `txn_id` is over
    /// ([`crate::Provider::transaction_over`]), for a transaction the journal shows
    /// `committed` or `rolled_back` whose run could not tell its providers itself: finished
    /// by recovery, or whose process died between journaling its end and telling them. Never
    /// call it for a transaction that is not over: its providers drop what settles and
    /// undoes its calls.
    pub async fn transaction_over(&self, txn_id: &TxnId) {
        for provider in self.registry.iter() {
            provider.transaction_over(txn_id.as_ref()).await;
        }
    }

    /// The latest value of `key` in `provider`'s state, as the last write left it (a
    /// transaction still running may have written it; it is not locked). For operators and
    /// tests: providers read through [`crate::ProviderState`].
    pub fn state_value(
        &self,
        provider: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, crate::StoreError> {
        self.state.peek(provider, key)
    }

    /// Every key of `provider`'s state starting with `prefix`, with its latest value, as the
    /// last writes left them (not locked; a running transaction may have written some). For
    /// operators and for a provider that rebuilds what it derives from its state at start,
    /// after recovery, when no transaction runs.
    pub fn state_entries(
        &self,
        provider: &str,
        prefix: &[u8],
    ) -> Result<Vec<crate::KeyValue>, crate::StoreError> {
        self.state.peek_scan(provider, prefix)
    }

    /// Provider state.
    pub(crate) fn state(&self) -> &Arc<crate::state::StateSpace> {
        &self.state
    }

    /// The options.
    pub(crate) fn options(&self) -> &EngineOptions {
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

    /// As [`Engine::run`], for a caller that is done with the request: its data moves into
    /// the transaction instead of being copied (a wide request's data tree is several times
    /// the size of its text).
    pub async fn run_owned(&self, request: Request) -> Result<TxnResult, RunError> {
        let program = self.program(&request)?;
        Ok(self
            .run_program(program, request.data, request.context)
            .await)
    }

    /// As [`Engine::run_owned`], with the transaction id chosen by the caller and a
    /// cancellation handle (the daemon's jobs). A chosen id runs once at a time:
    /// [`RunError::AlreadyRunning`] while another run of this engine (or a clone) uses it.
    pub async fn run_controlled(
        &self,
        request: Request,
        control: RunControl,
    ) -> Result<TxnResult, RunError> {
        let program = self.program(&request)?;
        self.run_program_controlled(program, request.data, request.context, control)
            .await
    }

    /// As [`Engine::run_controlled`], for a request its caller compiled already (with
    /// [`Engine::program`], against this engine's catalog): `data` and `context` are the
    /// request's. A daemon that checked a trusted request at submission runs it without
    /// compiling its body a second time.
    pub async fn run_program_controlled(
        &self,
        program: Arc<Program>,
        data: Element,
        context: Element,
        control: RunControl,
    ) -> Result<TxnResult, RunError> {
        let _running = control
            .txn_id
            .as_ref()
            .map(|id| self.claim_run(id))
            .transpose()?;
        Ok(self.run_txn(program, data, context, None, control).await)
    }

    /// Compiles a request and walks it without calling any provider: returns the provider
    /// calls that would be made, with their resolved inputs and the providers' previews.
    pub async fn plan(&self, request: &Request) -> Result<Vec<PlanEntry>, RunError> {
        let program = self.program(request)?;
        Ok(self.plan_program(program, request).await)
    }

    /// [`Engine::plan`] of a request already compiled (`program` is what
    /// [`Engine::program`] made of `request`): the daemon compiles a request once to check
    /// the caller's rights, then plans it without compiling it again.
    pub async fn plan_program(&self, program: Arc<Program>, request: &Request) -> Vec<PlanEntry> {
        let txn = self.new_txn(
            program.clone(),
            RunMode::Plan,
            &request.data,
            request.context.clone(),
        );
        let _ = self.run_entry(&txn, request.data.clone()).await;
        let mut entries = std::mem::take(&mut *lock(&txn.plan));
        // Recorded as the walk reached them; listed by wave (stable: in walk order within).
        entries.sort_by_key(|e| e.wave);
        for e in &mut entries {
            txn.redactor.redact_element(&mut e.inputs);
        }
        entries
    }

    fn new_txn(
        &self,
        program: Arc<Program>,
        mode: RunMode,
        data: &Element,
        context: Element,
    ) -> Txn {
        let redactor = Redactor::new(program.secrets.clone(), data);
        context::learn_credentials(&context, &redactor);
        let id = TxnId::new_v7();
        let mut context = context;
        let client_transaction_id = context::stamp_transaction_id(&mut context, &id);
        Txn {
            id,
            mode,
            program,
            context: Mutex::new(context),
            completed: Mutex::new(state::CompletedList::default()),
            located: Mutex::new(state::Chunked::default()),
            completions: AtomicUsize::new(0),
            state_chain: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            permits: Semaphore::new(self.options.max_parallel.max(1)),
            plan: Mutex::new(Vec::new()),
            redactor,
            resume: None,
            in_doubt: Mutex::new(Vec::new()),
            client_transaction_id,
            cancel: None,
            transient_step: Mutex::new(None),
            providers_called: Mutex::new(Vec::new()),
        }
    }

    /// Runs a compiled program as one transaction: commit, or roll back everything done.
    pub async fn run_program(
        &self,
        program: Arc<Program>,
        data: Element,
        context: Element,
    ) -> TxnResult {
        self.run_txn(program, data, context, None, RunControl::default())
            .await
    }

    /// Continues a resumable transaction after a crash: steps its journal shows completed
    /// are not called again (their recorded results are used), the rest run as usual.
    pub(crate) async fn resume_program(
        &self,
        program: Arc<Program>,
        data: Element,
        context: Element,
        resume: Resume,
    ) -> TxnResult {
        self.run_txn(program, data, context, Some(resume), RunControl::default())
            .await
    }

    fn emit(&self, event: Event) {
        if let Some(sink) = &self.events {
            sink(&event);
        }
    }
}
