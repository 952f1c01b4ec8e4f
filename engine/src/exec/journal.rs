//! The hook a durable journal plugs into: the executor reports every transaction and step
//! transition here, before and after each provider call. The default records nothing.

use crate::data::Element;
use crate::provider::CallContext;
use async_trait::async_trait;

/// Final or intermediate state of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnState {
    /// Accepted, not started.
    Queued,
    /// Steps are running.
    Running,
    /// Every step succeeded.
    Committed,
    /// A step failed; undoing.
    RollingBack,
    /// Everything done was undone.
    RolledBack,
    /// Some undo failed: an operator must look.
    RollbackFailed,
}

impl TxnState {
    /// Whether the transaction has ended (committed, rolled back, or rollback failed).
    pub(crate) fn is_final(self) -> bool {
        matches!(
            self,
            TxnState::Committed | TxnState::RolledBack | TxnState::RollbackFailed
        )
    }
}

impl std::fmt::Display for TxnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A journal write failed: the transaction cannot safely go on.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The durable journal could not encode or store the record.
    #[error("journal: {0}")]
    Write(#[from] crate::txn::WriteError),
    /// Another [`Journal`] implementation failed (see [`JournalError::other`]).
    #[error("journal: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl JournalError {
    /// The failure of a [`Journal`] other than the durable one.
    pub fn other(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> JournalError {
        JournalError::Other(error.into())
    }
}

/// A transaction begins.
#[derive(Debug, Clone)]
pub struct TxnStart<'a> {
    /// Transaction id.
    pub(crate) txn_id: &'a crate::TxnId,
    /// `Namespace/Procedure` of the entry.
    pub(crate) target: &'a str,
    /// Kind of the entry procedure.
    pub(crate) kind: crate::model::ProcKind,
    /// Resume instead of rolling back after a crash.
    pub(crate) resumable: bool,
    /// Hash of the pinned definitions.
    pub(crate) definitions: &'a str,
    /// The request data with secrets masked.
    pub(crate) data: &'a Element,
    /// The request data as received (kept sealed when `secret`, for resuming).
    pub(crate) request_data: &'a Element,
    /// `request_data` holds secrets.
    pub(crate) secret: bool,
    /// The definitions the program was compiled from: (namespace, hash, bytes).
    pub(crate) pinned: &'a [(String, String, std::sync::Arc<Vec<u8>>)],
    /// Write the final outcome to the audit log (MPS `auditEnabled` of the entry).
    pub(crate) audit: bool,
}

/// A provider call is about to be made.
#[derive(Debug, Clone)]
pub struct StepIntent<'a> {
    /// Identity (idempotency key inside).
    pub context: &'a CallContext,
    /// Registered provider name.
    pub provider: &'a str,
    /// `Namespace/Procedure` of the leaf.
    pub target: &'a str,
    /// Kind of the leaf.
    pub kind: crate::model::ProcKind,
    /// The namespace's providerContext.
    pub provider_context: &'a Element,
    /// executeData with secrets masked (for people).
    pub input: &'a Element,
    /// executeData as sent (for a recovery call); seal it when `secret`.
    pub call_data: &'a Element,
    /// `call_data` holds secrets.
    pub secret: bool,
    /// The record must be durable before the call is made (`false` for a read, and for a
    /// provider whose effects are all provider-state writes, see
    /// [`crate::provider::Provider::effects_in_state_only`]).
    pub durable: bool,
}

/// A provider's recovery marker of a call in flight ([`Journal::step_marker`]).
#[derive(Debug, Clone)]
pub struct StepMarker<'a> {
    /// Identity of the call.
    pub context: &'a CallContext,
    /// The marker (`None`: the call's intent made durable with no marker).
    pub marker: Option<&'a Element>,
    /// `marker` may hold secrets (the call's data does, or the marker does).
    pub secret: bool,
}

/// A provider call succeeded.
#[derive(Debug, Clone)]
pub struct StepDone<'a> {
    /// Identity.
    pub context: &'a CallContext,
    /// Output with secrets masked.
    pub output: &'a Element,
    /// The provider's undo record, as returned; seal it when `secret`.
    pub undo: Option<&'a Element>,
    /// executeData kept for the undo (saveDataForRollback); seal it when `secret`.
    pub saved: Option<&'a Element>,
    /// `undo` or `saved` hold secrets.
    pub secret: bool,
    /// The exact output (kept only for resumable transactions, sealed when it holds secrets).
    pub result: Option<&'a Element>,
    /// `result` holds secrets.
    pub result_secret: bool,
    /// The call's provider-state writes. A journal whose [`Journal::state_store`] is the
    /// store it writes to puts them ([`crate::StateChange::add_to`]) in the same batch as the
    /// record, and what reverses them ([`crate::StateChange::to_record`]) in the record;
    /// any other journal ignores them (the engine applies them itself).
    pub state: Option<&'a crate::StateChange>,
}

/// A script step with an undo script finished: what the undo needs after a crash.
#[derive(Debug, Clone)]
pub struct ScriptUndoDone<'a> {
    /// Identity of the step (attempt 1; a script step is not retried).
    pub(crate) context: &'a CallContext,
    /// The undo script.
    pub(crate) script: &'a crate::script::CompiledScript,
    /// Its inputs `{ data, result }`; seal them when `secret`.
    pub(crate) vars: &'a serde_json::Value,
    /// `vars` hold secrets.
    pub(crate) secret: bool,
}

/// Receives the executor's transitions. Every method defaults to keeping nothing, so a
/// journal for a test spells out only what it does differently; a durable journal
/// implements them all.
#[async_trait]
pub trait Journal: Send + Sync {
    /// Whether this journal keeps anything. When it does not, the executor skips building
    /// the redacted copies of every call's input and output that only a journal needs.
    fn records(&self) -> bool {
        true
    }
    /// The store this journal writes provider state to, with its records: `Some` promises
    /// that [`Journal::step_done`] writes [`StepDone::state`] and
    /// [`Journal::undo_done_with_state`] writes the reversal in the same atomic batch as
    /// their record. `None` (the default): the engine keeps provider state itself, in memory.
    fn state_store(&self) -> Option<std::sync::Arc<dyn crate::Store>> {
        None
    }
    /// The durable journal a rollback reads completed calls' undos back from. `Some`: after
    /// each [`Journal::step_done`] the executor keeps only where the call's records are
    /// (their sequence numbers, as recovery does) instead of its undo record, executeData
    /// and provider-state writes, and its undo reads them back from the journal's store when
    /// it runs — so a rollback's memory follows the number of calls, not what they carry.
    /// `None` (the default): the executor keeps every completed call's undo in memory (a
    /// journal with nothing to read back from, such as the ephemeral one).
    fn read_back(&self) -> Option<&crate::txn::DurableJournal> {
        None
    }
    /// A transaction began.
    async fn txn_started(&self, _start: &TxnStart<'_>) -> Result<(), JournalError> {
        Ok(())
    }
    /// A transaction changed state; a final state is durable when this returns.
    async fn txn_state(
        &self,
        _txn_id: &crate::TxnId,
        _state: TxnState,
        _message: Option<&str>,
    ) -> Result<(), JournalError> {
        Ok(())
    }
    /// A transaction ended with `result` (its final state, and the data or error its
    /// caller is given): durable when this returns, like a final [`Journal::txn_state`].
    /// A journal that keeps responses (`DurableJournal::with_responses`) writes the
    /// response in the same atomic batch as the final state, so that what the caller was
    /// told can be read back after a crash, and hands it back (the engine puts it in
    /// [`super::TxnResult::kept_response`]); the default records the state alone.
    async fn txn_ended(
        &self,
        result: &super::TxnResult,
        message: Option<&str>,
    ) -> Result<Option<super::KeptResponse>, JournalError> {
        self.txn_state(&result.txn_id, result.state, message)
            .await
            .map(|()| None)
    }
    /// About to call a provider: durable when this returns.
    async fn step_intent(&self, _intent: &StepIntent<'_>) -> Result<(), JournalError> {
        Ok(())
    }
    /// Whether this journal keeps providers' recovery markers ([`Journal::step_marker`])
    /// and gives them back at recovery: the engine then lets a provider that
    /// [`crate::Provider::journals_markers`] put its marker here instead of syncing one of
    /// its own. `false` (the default): such a provider keeps its marker itself.
    fn keeps_markers(&self) -> bool {
        false
    }
    /// A provider's recovery marker of a call whose intent was appended without being
    /// made durable ([`StepIntent::durable`] `false`): written after it, and both durable
    /// when this returns (one sync). `marker` `None`: the intent made durable alone. Seal
    /// the marker when `secret`. Only called when [`Journal::keeps_markers`].
    async fn step_marker(&self, _marker: &StepMarker<'_>) -> Result<(), JournalError> {
        Ok(())
    }
    /// A provider call succeeded (made durable by the next durable write at the latest).
    async fn step_done(&self, _done: &StepDone<'_>) -> Result<(), JournalError> {
        Ok(())
    }
    /// A provider call's outcome is unknown (the provider said so, or it timed out or
    /// panicked); a settlement follows as `step_done` (applied) or `step_failed` (not
    /// applied), or none when the provider cannot tell.
    async fn step_in_doubt(&self, _call: &CallContext, _message: &str) -> Result<(), JournalError> {
        Ok(())
    }
    /// A script step with an undo script finished: durable when this returns.
    async fn script_done(&self, _done: &ScriptUndoDone<'_>) -> Result<(), JournalError> {
        Ok(())
    }
    /// A provider call failed.
    async fn step_failed(&self, _call: &CallContext, _message: &str) -> Result<(), JournalError> {
        Ok(())
    }
    /// An undo finished (ok or not).
    async fn undo_done(
        &self,
        _call: &CallContext,
        _error: Option<&str>,
    ) -> Result<(), JournalError> {
        Ok(())
    }
    /// An undo succeeded and the step's provider-state writes are reversed by `state`
    /// (written in the same batch as the undo record by a journal that keeps state; see
    /// [`Journal::state_store`]). The default records the undo alone.
    async fn undo_done_with_state(
        &self,
        call: &CallContext,
        _state: &crate::StateChange,
    ) -> Result<(), JournalError> {
        self.undo_done(call, None).await
    }
    /// Two-phase: a prepare or commit finished.
    async fn phase_done(
        &self,
        _call: &CallContext,
        _phase: &str,
        _error: Option<&str>,
    ) -> Result<(), JournalError> {
        Ok(())
    }
}

/// A journal that keeps nothing (the engine core without durability).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoJournal;

#[async_trait]
impl Journal for NoJournal {
    fn records(&self) -> bool {
        false
    }
}

/// A journal write the transaction does not wait on has failed: the work it records happened
/// (or failed) all the same, so the transaction goes on, and the record is missing. Logs the
/// error with `meaning`: what recovery will conclude without the record.
pub(crate) fn log_lapse(result: Result<(), JournalError>, record: &str, meaning: &str) {
    if let Err(e) = result {
        tracing::error!(error = %e, record, "not journaled: {meaning}");
    }
}
