//! What the journal stores: one record per transition, keyed by transaction id and a
//! per-transaction sequence number, plus a summary per transaction and an audit entry.

use crate::data::Element;
use crate::exec::TxnState;
use crate::model::ProcKind;
use serde::{Deserialize, Serialize};

/// Width of a transaction id in keys (UUID text).
pub const TXN_ID_LEN: usize = 36;

/// The journal key of record `seq` of a transaction.
pub fn record_key(txn_id: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(TXN_ID_LEN + 8);
    k.extend_from_slice(txn_id.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Data that may hold secrets: kept in clear, sealed, or withheld.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarded {
    /// No secret inside: kept as is.
    Plain(Element),
    /// Held secrets: encrypted with the seal key (base64 of nonce ‖ ciphertext).
    Sealed(String),
    /// Held secrets and no seal key was configured: not kept.
    Withheld,
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The transaction began.
    Started {
        /// When.
        at_ms: u64,
        /// `Namespace/Procedure`.
        target: String,
        /// read | write | two-phase.
        kind: ProcKind,
        /// Resume instead of rolling back after a crash.
        resumable: bool,
        /// Hash of the pinned definitions.
        definitions: String,
        /// Who asked (user or client name).
        who: String,
        /// Request data, secrets masked (map view).
        data: serde_json::Value,
    },
    /// The transaction changed state.
    State {
        /// When.
        at_ms: u64,
        /// New state.
        state: TxnState,
        /// Why (failure message), if any.
        message: Option<String>,
    },
    /// About to call a provider.
    Intent {
        /// When.
        at_ms: u64,
        /// Step path.
        step: String,
        /// Attempt (1-based).
        attempt: u32,
        /// Namespace of the leaf.
        namespace: String,
        /// Provider entry point.
        procedure: String,
        /// Registered provider.
        provider: String,
        /// `Namespace/Procedure` of the leaf.
        target: String,
        /// Kind of the leaf.
        kind: ProcKind,
        /// The namespace's providerContext.
        provider_context: Element,
        /// executeData, secrets masked (map view).
        input: serde_json::Value,
        /// Full executeData for a recovery call, sealed when it holds secrets.
        call_data: Guarded,
    },
    /// The call succeeded.
    Done {
        /// When.
        at_ms: u64,
        /// Step path.
        step: String,
        /// Attempt.
        attempt: u32,
        /// Output executeData, secrets masked (map view).
        output: serde_json::Value,
        /// What the provider needs to undo it (`None`: nothing to undo).
        undo: Option<Guarded>,
        /// executeData kept for the undo (saveDataForRollback).
        saved: Option<Guarded>,
        /// The exact output, for resuming (resumable transactions only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        result: Option<Guarded>,
    },
    /// The call failed.
    Failed {
        /// When.
        at_ms: u64,
        /// Step path.
        step: String,
        /// Attempt.
        attempt: u32,
        /// The error, secrets masked.
        message: String,
    },
    /// An undo finished.
    Undone {
        /// When.
        at_ms: u64,
        /// Step path.
        step: String,
        /// Attempt of the call undone.
        attempt: u32,
        /// `None` when the undo succeeded.
        error: Option<String>,
    },
    /// Two-phase: a prepare or commit finished.
    Phase {
        /// When.
        at_ms: u64,
        /// Step path.
        step: String,
        /// `prepare` or `commit`.
        phase: String,
        /// `None` when it succeeded.
        error: Option<String>,
    },
}

/// The summary kept per transaction (`tx list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnSummary {
    /// Transaction id.
    pub id: String,
    /// Current state.
    pub state: TxnState,
    /// `Namespace/Procedure`.
    pub target: String,
    /// Who asked.
    pub who: String,
    /// Start time.
    pub started_ms: u64,
    /// Last change.
    pub updated_ms: u64,
    /// Resume instead of rolling back after a crash.
    pub resumable: bool,
    /// Pinned definitions hash.
    pub definitions: String,
    /// Failure or operator message.
    pub message: Option<String>,
}

/// One audit entry: who, what, when, outcome. Append-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Transaction id.
    pub txn_id: String,
    /// Who asked.
    pub who: String,
    /// `Namespace/Procedure`.
    pub what: String,
    /// Start time.
    pub started_ms: u64,
    /// End time.
    pub finished_ms: u64,
    /// Final state.
    pub outcome: TxnState,
    /// Failure message, if any.
    pub message: Option<String>,
}
