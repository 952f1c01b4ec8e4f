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

impl std::fmt::Display for TxnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TxnState::Queued => "queued",
            TxnState::Running => "running",
            TxnState::Committed => "committed",
            TxnState::RollingBack => "rolling_back",
            TxnState::RolledBack => "rolled_back",
            TxnState::RollbackFailed => "rollback_failed",
        })
    }
}

/// A journal write failed: the transaction cannot safely go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal: {0}")]
pub struct JournalError(pub String);

/// Receives the executor's transitions. Inputs and undo records arrive already redacted
/// of declared secrets.
#[async_trait]
pub trait Journal: Send + Sync {
    /// A transaction changed state.
    async fn txn_state(&self, txn_id: &str, state: TxnState) -> Result<(), JournalError>;
    /// About to call a provider (intent).
    async fn step_intent(&self, call: &CallContext, input: &Element) -> Result<(), JournalError>;
    /// A provider call succeeded.
    async fn step_done(
        &self,
        call: &CallContext,
        output: &Element,
        undo: Option<&Element>,
    ) -> Result<(), JournalError>;
    /// A provider call failed.
    async fn step_failed(&self, call: &CallContext, message: &str) -> Result<(), JournalError>;
    /// An undo finished (ok or not).
    async fn undo_done(&self, call: &CallContext, error: Option<&str>) -> Result<(), JournalError>;
}

/// A journal that keeps nothing (the engine core without durability).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoJournal;

#[async_trait]
impl Journal for NoJournal {
    async fn txn_state(&self, _: &str, _: TxnState) -> Result<(), JournalError> {
        Ok(())
    }
    async fn step_intent(&self, _: &CallContext, _: &Element) -> Result<(), JournalError> {
        Ok(())
    }
    async fn step_done(
        &self,
        _: &CallContext,
        _: &Element,
        _: Option<&Element>,
    ) -> Result<(), JournalError> {
        Ok(())
    }
    async fn step_failed(&self, _: &CallContext, _: &str) -> Result<(), JournalError> {
        Ok(())
    }
    async fn undo_done(&self, _: &CallContext, _: Option<&str>) -> Result<(), JournalError> {
        Ok(())
    }
}
