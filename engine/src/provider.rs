//! The provider boundary: the trait every provider implements, the registry the executor
//! dispatches through, and the error classes that drive retry versus rollback.
//!
//! The engine never names a concrete provider. A provider serves the leaf procedures of a
//! provider namespace; each call carries an idempotency key (transaction id + step
//! instance id) that stays the same on every retry and after a crash, so a retried or
//! recovered call can be recognised. The contract every provider keeps is on [`Provider`].

mod purge;

use crate::data::Element;
use crate::model::{InputSpec, ProcKind};
pub use crate::state::ProviderState;
use crate::TxnId;
use async_trait::async_trait;
pub use purge::{PurgeScope, Purged, StatusOf, TxnStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Identity of one provider call, carried with every call and undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallContext {
    /// Transaction id (UUIDv7 text).
    pub txn_id: TxnId,
    /// Step instance id: the step path through nested calls and iterations,
    /// e.g. `zone/records[2]/add`.
    pub step_id: String,
    /// 1 for the first try, 2 for the first retry, … Not part of the idempotency key: every
    /// attempt is the same call.
    pub attempt: u32,
    /// Namespace of the called procedure.
    pub namespace: String,
    /// The called procedure (provider entry point).
    pub procedure: String,
}

impl CallContext {
    /// `txn_id/step_id`: identifies the call (one step instance of one transaction), the
    /// same on every attempt and after a crash. The attempt number is [`CallContext::attempt`].
    pub fn idempotency_key(&self) -> String {
        format!("{}/{}", self.txn_id, self.step_id)
    }
}

/// One provider call.
#[derive(Debug, Clone)]
pub struct Call {
    /// Who and where.
    pub context: CallContext,
    /// The namespace's `providerContext` (e.g. which server).
    pub provider_context: Element,
    /// The step's executeData after the before-transforms; root named `executeData`.
    pub execute_data: Element,
    /// The provider's own keys in the engine's store ([`ProviderState`]): writable in
    /// `execute` of a write procedure, read-only in a read procedure and in `recover`,
    /// unlocked and read-only in a preview. [`ProviderState::detached`] in a call built
    /// by hand.
    pub state: ProviderState,
    /// Passed once the engine's intent record of this call is durable: a provider that
    /// asked to be called before that ([`Provider::awaits_intent`]) must pass it
    /// ([`Call::intent_durable`]) before the call's first side effect. Already passed in
    /// every other call, and [`IntentBarrier::passed`] in a call built by hand.
    pub intent: IntentBarrier,
}

impl Call {
    /// Waits until the engine's intent record of this call is durable (at once when it
    /// already is, or when the call does not wait for it). An error means the engine could
    /// not journal the intent: the call must change nothing and fail with that error
    /// (after removing what it wrote for its own recovery, such as an intent marker).
    pub async fn intent_durable(&self) -> Result<(), ProviderError> {
        self.intent.wait().await
    }

    /// [`Call::intent_durable`] for code on a blocking thread (never on an async runtime
    /// worker: it blocks the thread; the engine's sink panics there, failing the call).
    pub fn intent_durable_blocking(&self) -> Result<(), ProviderError> {
        self.intent.wait_blocking()
    }

    /// Whether the engine keeps this call's recovery marker in its journal: the provider
    /// then passes [`Call::intent_durable_with`] instead of syncing a marker of its own
    /// (see [`Provider::journals_markers`]). `false` for a call without a durable journal
    /// behind it (`--ephemeral`, a read, a call built by hand): the provider keeps its own
    /// marker, if it needs one.
    pub fn journals_markers(&self) -> bool {
        self.intent.journals_markers()
    }

    /// Makes the call's intent record durable together with `marker`: the provider's own
    /// record of what the call is about to change, written into the engine's journal
    /// after the intent and synced with it (one sync for both). Given back to
    /// [`Provider::recover`] as [`Call::journaled_marker`]. May be called again to replace
    /// the marker (each call is durable before it returns; the last one is given back).
    /// Only when [`Call::journals_markers`]; an error otherwise, and an error when the
    /// engine could not journal it: the call must then change nothing and fail with it.
    pub async fn intent_durable_with(&self, marker: Element) -> Result<(), ProviderError> {
        self.intent.wait_with(marker).await
    }

    /// [`Call::intent_durable_with`] for code on a blocking thread (never on an async
    /// runtime worker: it blocks the thread; the engine's sink panics there, failing the
    /// call). The marker is written by this thread itself.
    pub fn intent_durable_with_blocking(&self, marker: Element) -> Result<(), ProviderError> {
        self.intent.wait_with_blocking(marker)
    }

    /// The last marker of this call the engine journaled ([`Call::intent_durable_with`]):
    /// in [`Provider::recover`], after a crash or for a call in doubt in this process.
    /// `None` when none was journaled (the call changed nothing, or the provider kept its
    /// marker itself).
    pub fn journaled_marker(&self) -> Option<Element> {
        self.intent.journaled_marker()
    }
}

/// Where the engine journals one call's intent sync and its provider's recovery markers
/// ([`Call::intent_durable_with`]). The engine appends the call's intent record before the
/// call without syncing it; the sink's [`MarkerSink::mark`] syncs it, with the marker
/// written after it. The engine makes one per call of a provider that
/// [`Provider::journals_markers`]; a provider's tests implement it to play the engine.
#[async_trait]
pub trait MarkerSink: Send + Sync + fmt::Debug {
    /// Makes the call's intent record durable, with `marker` (when given) written after it
    /// and durable too, before returning. Callable from any executor (a provider's blocking
    /// thread waits on it with a plain executor). `Err`: why it could not be journaled (the
    /// engine gave the call up, or its journal failed): the call must change nothing.
    async fn mark(&self, marker: Option<Element>) -> Result<(), String>;

    /// [`MarkerSink::mark`] from a provider's blocking thread (never an async runtime
    /// worker: it blocks the thread). By default a plain executor waits on `mark`; a sink
    /// that can write from this thread itself overrides it and spares the two hand-overs
    /// between threads a `mark` run elsewhere costs.
    fn mark_blocking(&self, marker: Option<Element>) -> Result<(), String> {
        futures::executor::block_on(self.mark(marker))
    }

    /// Whether the intent record is durable (a [`MarkerSink::mark`] succeeded).
    fn is_durable(&self) -> bool;

    /// The last marker a [`MarkerSink::mark`] made durable, if any.
    fn last(&self) -> Option<Element>;
}

/// What the engine's intent write of one call came to: not yet (`None`), done (`Ok`), or
/// failed (the error's text).
type IntentResult = Option<Result<(), String>>;

/// The barrier a provider called before its call's intent record is durable passes before
/// its first side effect ([`Provider::awaits_intent`]). Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct IntentBarrier {
    /// `None`: nothing to wait for (the intent was durable before the call, or there is
    /// none to wait for).
    pending: Option<tokio::sync::watch::Receiver<IntentResult>>,
    /// The engine's writer of this call's intent sync and markers
    /// ([`IntentBarrier::with_sink`]); passing the barrier goes through it.
    sink: Option<Arc<dyn MarkerSink>>,
    /// The marker the journal held for this call when it was read back (recovery after a
    /// crash: [`IntentBarrier::recovered`]).
    recovered: Option<Element>,
}

impl IntentBarrier {
    /// A barrier already passed (a call built by hand, or one whose intent is durable
    /// before it is made).
    pub fn passed() -> IntentBarrier {
        IntentBarrier::default()
    }

    /// A barrier that passes when its [`IntentGate`] is opened (or fails when the gate is
    /// dropped unopened: the engine gave the call up before its intent was written). The
    /// engine makes one per call that awaits its intent; a provider's tests make one to
    /// play the engine.
    pub fn closed() -> (IntentBarrier, IntentGate) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let barrier = IntentBarrier {
            pending: Some(rx),
            ..IntentBarrier::default()
        };
        (barrier, IntentGate(tx))
    }

    /// A barrier passed through `sink`: the call's intent is appended but not yet durable,
    /// and the provider's [`Call::intent_durable_with`] (or [`Call::intent_durable`])
    /// makes it durable, with the provider's marker, in one sync.
    pub fn with_sink(sink: Arc<dyn MarkerSink>) -> IntentBarrier {
        IntentBarrier {
            sink: Some(sink),
            ..IntentBarrier::default()
        }
    }

    /// A barrier already passed, carrying the marker the journal held for the call (its
    /// last [`Call::intent_durable_with`] before a crash): for the call recovery hands to
    /// [`Provider::recover`].
    pub fn recovered(marker: Option<Element>) -> IntentBarrier {
        IntentBarrier {
            recovered: marker,
            ..IntentBarrier::default()
        }
    }

    /// Whether a call holding it must wait for the engine's intent (false once passed).
    pub fn is_pending(&self) -> bool {
        if let Some(sink) = &self.sink {
            return !sink.is_durable();
        }
        self.pending
            .as_ref()
            .is_some_and(|rx| rx.borrow().is_none())
    }

    /// See [`Call::journals_markers`].
    pub fn journals_markers(&self) -> bool {
        self.sink.is_some()
    }

    /// See [`Call::journaled_marker`].
    pub fn journaled_marker(&self) -> Option<Element> {
        match &self.sink {
            Some(sink) => sink.last(),
            None => self.recovered.clone(),
        }
    }

    /// See [`Call::intent_durable`].
    pub async fn wait(&self) -> Result<(), ProviderError> {
        if let Some(sink) = &self.sink {
            if sink.is_durable() {
                return Ok(());
            }
            return Self::verdict(Some(sink.mark(None).await));
        }
        let Some(rx) = &self.pending else {
            return Ok(());
        };
        let mut rx = rx.clone();
        let outcome = rx.wait_for(Option::is_some).await.map(|r| r.clone());
        Self::verdict(outcome.ok().flatten())
    }

    /// See [`Call::intent_durable_blocking`].
    pub fn wait_blocking(&self) -> Result<(), ProviderError> {
        if let Some(sink) = &self.sink {
            if sink.is_durable() {
                return Ok(());
            }
            return Self::verdict(Some(sink.mark_blocking(None)));
        }
        if self.pending.is_none() {
            return Ok(());
        }
        // The watch channel's wait and the sink's need no runtime: a plain executor parks
        // this thread.
        futures::executor::block_on(self.wait())
    }

    /// See [`Call::intent_durable_with`].
    pub async fn wait_with(&self, marker: Element) -> Result<(), ProviderError> {
        let Some(sink) = &self.sink else {
            return Err(ProviderError::invalid(
                "the engine keeps no marker of this call (Call::journals_markers is false): \
                 the provider keeps its marker itself",
            ));
        };
        Self::verdict(Some(sink.mark(Some(marker)).await))
    }

    /// See [`Call::intent_durable_with_blocking`].
    pub fn wait_with_blocking(&self, marker: Element) -> Result<(), ProviderError> {
        let Some(sink) = &self.sink else {
            return futures::executor::block_on(self.wait_with(marker));
        };
        Self::verdict(Some(sink.mark_blocking(Some(marker))))
    }

    fn verdict(outcome: IntentResult) -> Result<(), ProviderError> {
        match outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ProviderError::permanent(format!(
                "not applied: the engine could not journal the call's intent ({e})"
            ))),
            None => Err(ProviderError::permanent(
                "not applied: the engine gave the call up before its intent was journaled",
            )),
        }
    }
}

/// Opens an [`IntentBarrier`] with the intent write's result (the engine's end).
#[derive(Debug)]
pub struct IntentGate(tokio::sync::watch::Sender<IntentResult>);

impl IntentGate {
    /// The intent write is over (`Err`: why it failed): its result goes to every holder of
    /// the barrier.
    pub fn open(self, result: Result<(), String>) {
        self.0.send_replace(Some(result));
    }
}

/// What a successful call returns.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The executeData handed back (outputs added); after-transforms read it.
    pub execute_data: Element,
    /// What the provider needs to reverse the call (e.g. the path it created). `None`
    /// means there is nothing to undo.
    pub undo: Option<Element>,
}

/// A completed call, handed back to the provider to undo it.
#[derive(Debug, Clone)]
pub struct Done {
    /// The original call context.
    pub context: CallContext,
    /// The namespace's `providerContext`.
    pub provider_context: Element,
    /// The undo record the provider returned.
    pub undo: Element,
    /// The call's executeData, only when the procedure has `saveDataForRollback`.
    pub execute_data: Option<Element>,
    /// The provider's state, read-only: an undo sees the step's own writes, which the
    /// engine reverses itself once the undo succeeds (see [`ProviderState`]).
    pub state: ProviderState,
}

/// What a provider expects a call to do, for `provisio plan`. A preview promises what the
/// run will do: `NoChange` only when the call will succeed without changing anything, and
/// `Fail` whenever the provider can already see that the call will fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Preview {
    /// The call would create or add something (a human sentence).
    Change(String),
    /// The call would change or remove something that exists (a human sentence).
    Update(String),
    /// The call will succeed and change nothing (the desired state is already there).
    NoChange(String),
    /// The call will fail, and why (e.g. "zone example.com already exists").
    Fail(String),
    /// The provider cannot tell without doing it.
    Unknown,
}

/// Errors a provider reports. The class decides what the engine does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProviderError {
    /// Worth retrying (timeouts, connection refused, busy).
    #[error("transient error {code:#010x}: {message}")]
    Transient {
        /// HRESULT-style code.
        code: u32,
        /// What happened.
        message: String,
    },
    /// Retrying will not help (bad input, conflict, permission): roll back.
    #[error("error {code:#010x}: {message}")]
    Permanent {
        /// HRESULT-style code.
        code: u32,
        /// What happened.
        message: String,
    },
    /// The outcome is unknown: the request may or may not have been applied (the provider
    /// process crashed or the connection broke after the request was sent, the call timed
    /// out, a blocking operation was abandoned). The engine settles such a call through
    /// [`Provider::recover`] before it retries or rolls back; see [`Provider`].
    #[error("outcome unknown {code:#010x}: {message}")]
    InDoubt {
        /// HRESULT-style code.
        code: u32,
        /// What happened.
        message: String,
    },
    /// The provider does not implement this operation (e.g. two-phase).
    #[error("not supported: {0}")]
    Unsupported(String),
}

impl ProviderError {
    /// E_FAIL, the MPS catch-all code.
    pub const E_FAIL: u32 = crate::codes::E_FAIL;
    /// E_INVALIDARG.
    pub const E_INVALIDARG: u32 = crate::codes::E_INVALIDARG;

    /// A permanent error with E_FAIL.
    pub fn permanent(message: impl Into<String>) -> Self {
        ProviderError::Permanent {
            code: Self::E_FAIL,
            message: message.into(),
        }
    }

    /// A permanent error for bad input (E_INVALIDARG).
    pub fn invalid(message: impl Into<String>) -> Self {
        ProviderError::Permanent {
            code: Self::E_INVALIDARG,
            message: message.into(),
        }
    }

    /// A transient error with E_FAIL.
    pub fn transient(message: impl Into<String>) -> Self {
        ProviderError::Transient {
            code: Self::E_FAIL,
            message: message.into(),
        }
    }

    /// An in-doubt error with E_FAIL: the request may have been applied.
    pub fn in_doubt(message: impl Into<String>) -> Self {
        ProviderError::InDoubt {
            code: Self::E_FAIL,
            message: message.into(),
        }
    }

    /// Whether the call's outcome is unknown (see [`ProviderError::InDoubt`]).
    pub fn is_in_doubt(&self) -> bool {
        matches!(self, ProviderError::InDoubt { .. })
    }

    /// The HRESULT-style code.
    pub fn code(&self) -> u32 {
        match self {
            ProviderError::Transient { code, .. }
            | ProviderError::Permanent { code, .. }
            | ProviderError::InDoubt { code, .. } => *code,
            ProviderError::Unsupported(_) => crate::codes::E_NOTIMPL,
        }
    }

    /// The message without the code.
    pub fn message(&self) -> String {
        match self {
            ProviderError::Transient { message, .. }
            | ProviderError::Permanent { message, .. }
            | ProviderError::InDoubt { message, .. } => message.clone(),
            ProviderError::Unsupported(m) => format!("not supported: {m}"),
        }
    }
}

/// How a provider procedure is reversed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UndoKind {
    /// `Provider::undo` reverses it with the undo record.
    Reversible,
    /// Nothing to reverse (reads).
    Nothing,
    /// Cannot be reversed (e.g. MoveMailbox in MPS): documented, rollback skips it with a warning.
    Irreversible,
}

/// A provider's description of one of its procedures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcedureSpec {
    /// Entry point name.
    pub name: String,
    /// read | write | two-phase.
    pub kind: ProcKind,
    /// How it is reversed.
    pub undo: UndoKind,
    /// What it does.
    pub description: String,
    /// Inputs it reads from executeData.
    pub inputs: Vec<InputSpec>,
}

/// A provider: code that talks to a real system and serves leaf procedures.
///
/// # Does nothing twice, undoes everything: the idempotency contract
///
/// Every call carries an idempotency key ([`CallContext::idempotency_key`],
/// `txn_id/step_id`) that names the *call*, not an attempt: a retry, and the engine's
/// recovery after a crash, use the same key (the attempt number is passed separately in
/// [`CallContext::attempt`]). A provider that changes anything keeps the contract:
///
/// - **Report what you know.** `Ok` means applied (with its undo record); `Transient` and
///   `Permanent` mean *not applied* (clean up partial work before returning them). When the
///   outcome is not known — the request was sent and then the process crashed, the
///   connection broke or the answer did not come in time — return
///   [`ProviderError::InDoubt`]. An error before the request left (connection refused,
///   spawn failure) is not in doubt. The engine also counts its own step timeout and a
///   panic in `execute` as in doubt.
/// - **Settle by key.** [`Provider::recover`] answers, for a call in doubt, whether the
///   call with that key was applied: `Some(undo)` (applied; the undo record `execute`
///   would have returned), `None` (not applied: nothing of it is left), or an error when
///   it cannot tell. It must not guess: "cannot tell" sends the transaction to an operator
///   with the step named, a wrong "not applied" leaves an effect behind. The engine
///   settles every in-doubt call before it retries it (same key) or rolls back, and again
///   in crash recovery for calls whose outcome never reached the journal. An applied call
///   counts as done: its undo is registered and the step's output is the call's input
///   executeData (the outputs `execute` would have added are not known).
/// - **Undo is idempotent** and may be called again after a crash.
/// - Work that outlives an abandoned call (a blocking task after a step timeout) must be
///   finished or fenced before `recover` answers for that key.
///
/// # After the engine's intent: when a call is made
///
/// A durable journal records each call's intent (its idempotency key and executeData)
/// durably before the call can change anything, so that after a crash recovery knows
/// which calls to settle. By default the engine makes the call only once that record is
/// durable. A provider that keeps its own intent marker (a record it syncs before its
/// change, to answer [`Provider::recover`]) pays a second sync per call after the
/// journal's; with [`Provider::awaits_intent`] it is called at once instead, and passes
/// [`Call::intent_durable`] between its own marker and its change, so the two syncs
/// overlap. Crash-wise: a crash before both are durable leaves at most the provider's
/// marker and no change (the provider waits for both); the engine never saw the call and
/// the marker goes when the transaction is over. A crash after both is the usual in-doubt
/// call, settled by `recover` from the marker.
///
/// With [`Provider::journals_markers`] the two syncs become one: the engine appends the
/// intent without syncing it and gives the call a sink; the provider's marker goes into
/// the journal after the intent ([`Call::intent_durable_with`]) and one sync makes both
/// durable. Recovery hands the marker back ([`Call::journaled_marker`]). A crash before
/// that sync leaves neither, or the intent alone (another call's sync took it): a call
/// with no marker, which changed nothing.
///
/// # The async methods must not block the async runtime
///
/// The engine runs many steps on a few runtime worker threads and bounds each call with a
/// step timeout, which can only take effect at an `.await`. A method that does blocking
/// work inline — synchronous file I/O, `fsync`, a blocking socket or process wait, a long
/// computation — stalls every other step on that worker and cannot be interrupted by the
/// timeout. Run such work off the runtime (`tokio::task::spawn_blocking`, as `tokio::fs`
/// does) or use async I/O. Work handed to the blocking pool keeps running after a timeout
/// has given up on it, so it must still leave the system consistent (its intent marker,
/// undo record or `recover` answer settles it).
#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider id (`providerSource` in a namespace), e.g. `Filesystem`.
    fn name(&self) -> &str;

    /// The namespace this provider's procedures are published under when no namespace
    /// file declares it, e.g. `Filesystem Provider`.
    fn namespace(&self) -> String {
        format!("{} Provider", self.name())
    }

    /// The procedures it serves.
    fn procedures(&self) -> Vec<ProcedureSpec>;

    /// Whether every effect of this provider's calls is a write to its own provider state
    /// ([`ProviderState`]): nothing outside the engine's store changes (an embedded
    /// directory, bookkeeping such as allocations and plans). The engine then does not
    /// make the call's intent record durable before the call: the call's state writes
    /// reach the disk in the same batch as its `done` record, or neither does, so a crash
    /// can lose the call only together with its effect. A transaction of such calls syncs
    /// its journal when it ends, not once per call. Say `true` only when it holds for
    /// every procedure, every call; the default is `false`.
    fn effects_in_state_only(&self) -> bool {
        false
    }

    /// Whether this call is to be made while the engine's intent record of it is still
    /// being made durable, so that the provider's own preparations (checks, its intent
    /// marker and that marker's sync) overlap the journal's sync. `true` is a promise:
    /// the provider passes [`Call::intent_durable`] (or
    /// [`Call::intent_durable_blocking`]) before the call's first side effect, and when
    /// that fails, changes nothing, undoes what it wrote for its own recovery and returns
    /// the error (the engine then handles the call as one whose intent could not be
    /// journaled: not applied, the transaction rolls back). What it did before the barrier
    /// must be harmless if the engine never learns of the call (a crash before its intent
    /// is durable): an intent marker is, since the transaction's end removes it
    /// ([`Provider::transaction_over`], [`Provider::purge`]). The step timeout counts from
    /// the call, so it includes the wait. Asked only for a write whose intent must be
    /// durable before the call (not for a read, nor for a provider whose
    /// [`Provider::effects_in_state_only`]), and only when the journal keeps records. The
    /// default is `false`: the call is made once the intent is durable.
    fn awaits_intent(&self, _call: &Call) -> bool {
        false
    }

    /// Whether this call's recovery marker is to be kept in the engine's journal instead
    /// of a store of the provider's own: the engine then appends the call's intent record
    /// without syncing it and makes the call at once, with a sink
    /// ([`Call::journals_markers`] is true); the provider passes
    /// [`Call::intent_durable_with`] with its marker (or [`Call::intent_durable`] when it
    /// has none) before the call's first side effect, and one sync makes the intent and
    /// the marker durable together. [`Provider::recover`] then finds the marker in
    /// [`Call::journaled_marker`]. `true` is the same promise as
    /// [`Provider::awaits_intent`]'s (nothing changed before the barrier; when it fails,
    /// change nothing and return its error), and wins over it. Asked under the same
    /// conditions, and only when the engine's journal keeps markers (the durable journal
    /// does; `Journal::keeps_markers`); when the call has no sink the provider keeps its
    /// marker itself. The default is `false`.
    fn journals_markers(&self, _call: &Call) -> bool {
        false
    }

    /// Runs one call. Must clean up its own partial work when it fails: the engine only
    /// undoes calls that succeeded.
    async fn execute(&self, call: Call) -> Result<Outcome, ProviderError>;

    /// Reverses a call that succeeded. Must be idempotent: it may be called again after a
    /// crash.
    async fn undo(&self, done: Done) -> Result<(), ProviderError>;

    /// Settles a call in doubt (after an [`ProviderError::InDoubt`] error, a step timeout or
    /// a crash): was the call with this idempotency key (`call.context`) applied? Returns
    /// its undo record if it was, `None` if it was not. A transient error is asked again; any other error, and the
    /// default for providers that cannot tell, sends the transaction to an operator
    /// (`rollback_failed`, the step named): the engine never guesses.
    async fn recover(&self, call: &Call) -> Result<Option<Element>, ProviderError> {
        Err(ProviderError::Unsupported(format!(
            "{} cannot tell whether {} ({}) was applied",
            self.name(),
            call.context.procedure,
            call.context.idempotency_key()
        )))
    }

    /// Says what the call would do without changing anything (for `provisio plan`). An
    /// error here (bad input, a server that cannot be asked) is shown as a failure.
    async fn preview(&self, _call: &Call) -> Result<Preview, ProviderError> {
        Ok(Preview::Unknown)
    }

    /// Two-phase: makes the executed change ready to commit.
    async fn prepare(&self, done: &Done) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported(format!(
            "{} has no two-phase prepare for {}",
            self.name(),
            done.context.procedure
        )))
    }

    /// Removes what the provider kept only so that calls could be undone (a trash, copies of
    /// deleted things, intent markers), for the transactions `scope` says may go: over for
    /// good and past the retention. Never touches what a transaction that is not over may
    /// still need. The default keeps nothing, so it has nothing to purge.
    async fn purge(&self, _scope: &PurgeScope) -> Result<Purged, ProviderError> {
        Ok(Purged::default())
    }
    /// Transaction `txn_id` is over (committed or rolled back, and its final state
    /// journaled): none of its calls will be undone, prepared, committed or settled again,
    /// so what the provider kept only for that (intent markers of its calls) may go.
    /// Called once the transaction ends, for each provider its run called (a call replayed
    /// by a resumed run counts); when recovery rolls a transaction back, for every provider
    /// (recovery's plan does not read which ones its calls went to), so it may name a
    /// transaction the provider never saw; and through [`crate::Engine::transaction_over`]
    /// (the daemon, settling after a restart a transaction whose process died between its
    /// journaled end and this call). Best effort: what is left is for [`Provider::purge`].
    /// The default has nothing to drop.
    async fn transaction_over(&self, _txn_id: &str) {}
    /// Two-phase: makes the prepared change visible. Must not fail.
    async fn commit(&self, done: &Done) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported(format!(
            "{} has no two-phase commit for {}",
            self.name(),
            done.context.procedure
        )))
    }
}

impl fmt::Debug for dyn Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Provider({})", self.name())
    }
}

/// The providers known to an engine, by name. Cloning shares the map (an engine is cloned
/// per transaction task; providers are registered once, at setup).
#[derive(Clone, Default)]
pub struct ProviderRegistry {
    providers: Arc<BTreeMap<String, Arc<dyn Provider>>>,
}

impl ProviderRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a provider under its name.
    pub fn register(&mut self, provider: Arc<dyn Provider>) {
        Arc::make_mut(&mut self.providers).insert(provider.name().to_string(), provider);
    }

    /// A provider by name.
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.get(name)
    }

    /// All providers, by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.providers.values()
    }

    /// Runs every provider's [`Provider::purge`]; returns each provider's name with what it
    /// removed or why it could not.
    pub async fn purge_all(
        &self,
        scope: &PurgeScope,
    ) -> Vec<(String, Result<Purged, ProviderError>)> {
        let mut out = Vec::new();
        for p in self.providers.values() {
            out.push((p.name().to_string(), p.purge(scope).await));
        }
        out
    }
    /// Provider names.
    pub fn names(&self) -> Vec<String> {
        self.providers.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Plays the engine: keeps what it is asked to journal, or fails as a broken journal.
    #[derive(Debug, Default)]
    struct KeptMarkers {
        marks: Mutex<Vec<Option<Element>>>,
        broken: bool,
    }

    #[async_trait]
    impl MarkerSink for KeptMarkers {
        async fn mark(&self, marker: Option<Element>) -> Result<(), String> {
            if self.broken {
                return Err("the disk is full".into());
            }
            self.marks.lock().unwrap().push(marker);
            Ok(())
        }

        fn is_durable(&self) -> bool {
            !self.marks.lock().unwrap().is_empty()
        }

        fn last(&self) -> Option<Element> {
            self.marks
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find_map(Clone::clone)
        }
    }

    fn marker(name: &str) -> Element {
        let mut m = Element::new("marker");
        m.push(Element::with_text("path", name));
        m
    }

    #[tokio::test]
    async fn a_barrier_with_a_sink_passes_through_it_and_gives_the_last_marker_back() {
        let sink = Arc::new(KeptMarkers::default());
        let barrier = IntentBarrier::with_sink(sink.clone());
        assert!(barrier.journals_markers());
        assert!(
            barrier.is_pending(),
            "nothing is durable before the first mark"
        );
        assert_eq!(barrier.journaled_marker(), None);
        barrier.wait_with(marker("a")).await.unwrap();
        assert!(!barrier.is_pending());
        barrier.wait_with(marker("a/b")).await.unwrap();
        // Once durable, a plain wait journals nothing more.
        barrier.wait().await.unwrap();
        assert_eq!(sink.marks.lock().unwrap().len(), 2);
        assert_eq!(barrier.journaled_marker(), Some(marker("a/b")));
    }

    #[tokio::test]
    async fn a_plain_wait_on_a_sink_syncs_the_intent_without_a_marker() {
        let sink = Arc::new(KeptMarkers::default());
        let barrier = IntentBarrier::with_sink(sink.clone());
        barrier.wait().await.unwrap();
        assert_eq!(*sink.marks.lock().unwrap(), vec![None]);
        assert_eq!(barrier.journaled_marker(), None);
    }

    #[test]
    fn a_blocking_thread_passes_a_sink_without_a_runtime() {
        let sink = Arc::new(KeptMarkers::default());
        let barrier = IntentBarrier::with_sink(sink.clone());
        std::thread::spawn(move || barrier.wait_with_blocking(marker("x")))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(sink.last(), Some(marker("x")));
    }

    #[tokio::test]
    async fn a_failed_sink_fails_the_call_as_an_intent_not_journaled() {
        let sink = Arc::new(KeptMarkers {
            broken: true,
            ..KeptMarkers::default()
        });
        let barrier = IntentBarrier::with_sink(sink);
        let err = barrier.wait_with(marker("a")).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("could not journal the call's intent")
                && err.to_string().contains("the disk is full"),
            "{err}"
        );
        assert!(barrier.is_pending());
    }

    #[tokio::test]
    async fn without_a_sink_a_marker_is_refused_and_a_recovered_one_is_given_back() {
        let err = IntentBarrier::passed()
            .wait_with(marker("a"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("journals_markers"), "{err}");
        assert!(!IntentBarrier::passed().journals_markers());
        let recovered = IntentBarrier::recovered(Some(marker("a")));
        assert!(!recovered.is_pending() && !recovered.journals_markers());
        recovered.wait().await.unwrap();
        assert_eq!(recovered.journaled_marker(), Some(marker("a")));
    }
}
