//! What the journal stores: one record per transition, keyed by transaction id and a
//! per-transaction sequence number, plus a summary per transaction, an audit entry and the
//! definitions a transaction was pinned to. Every stored shape is a serde type that names
//! its format, so a journal written by an older provisio stays readable: the summary, audit
//! and pinned-definitions values carry `format` (absent = format 1, the first), and a
//! journal record's `type` tag is its format (a changed record gets a new tag; the old tag
//! and its shape stay readable). `engine/tests/journal_fixture.rs` holds them to that.

use crate::data::Element;
use crate::exec::TxnState;
use crate::model::ProcKind;
use crate::TxnId;
use serde::{Deserialize, Serialize};

/// The format of the summaries, audit entries and pinned-definitions values this code
/// writes; it reads every format up to this one. Format 2: the pinned definitions may refer
/// to the request data stored once in the journal ([`StoredData`]) instead of holding it;
/// summaries and audit entries are unchanged.
pub const FORMAT: u32 = 2;

/// The format of a value written before values named their format.
fn first_format() -> u32 {
    1
}

/// A stored value that names its format.
pub trait Versioned: serde::de::DeserializeOwned {
    /// What it is, for messages (`the summary`).
    const WHAT: &'static str;
    /// The format it was written in.
    fn format(&self) -> u32;
}

/// A stored value that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the JSON of the expected shape (damaged, or an unknown record type).
    #[error("{what} does not parse: {source}")]
    Malformed {
        /// What was read (`a journal record`, `the summary`, …).
        what: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// Written by a newer provisio in a format this one does not know.
    #[error("{what} is in journal format {found}; this provisio reads formats up to {FORMAT}\n  hint: inspect this journal with the provisio version that wrote it (or a newer one)")]
    TooNew {
        /// What was read.
        what: &'static str,
        /// Its format.
        found: u32,
    },
}

/// Reads a stored value of a known format.
pub fn decode<T: Versioned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let value: T = serde_json::from_slice(bytes).map_err(|source| DecodeError::Malformed {
        what: T::WHAT,
        source,
    })?;
    if value.format() > FORMAT {
        return Err(DecodeError::TooNew {
            what: T::WHAT,
            found: value.format(),
        });
    }
    Ok(value)
}

/// Reads journal records: one (`Record`) or a finished transaction's array (`Vec<Record>`).
pub(crate) fn decode_records<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|source| DecodeError::Malformed {
        what: "a journal record",
        source,
    })
}

/// Width of a transaction id in keys (UUID text).
pub(crate) const TXN_ID_LEN: usize = 36;

/// The journal key of record `seq` of a transaction.
pub(crate) fn record_key(txn_id: &TxnId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(TXN_ID_LEN + 8);
    k.extend_from_slice(txn_id.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The tag byte after the transaction id in the key of a chunk of compacted records.
pub(crate) const CHUNK_TAG: u8 = b'C';

/// The most bytes of records one compacted chunk holds (a lone larger record is a chunk of
/// its own). sled 0.34 keeps values inside its tree nodes (a leaf splits past 16 entries),
/// rewrites a whole node whenever an entry of it changes, and writes a node larger than a
/// quarter segment (128 KiB by default) as a separate blob file. A transaction's records
/// compacted into one multi-megabyte value were rewritten that way hundreds of times (4 GB
/// of store for 10 MB of records); 17 chunks of 6 KiB stay under the blob size.
pub(crate) const CHUNK_BYTES: usize = 6 * 1024;

/// The journal key of a chunk of compacted records whose first record is `first_seq`
/// (sorts after the transaction's per-record keys).
pub(crate) fn chunk_key(txn_id: &TxnId, first_seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(TXN_ID_LEN + 9);
    k.extend_from_slice(txn_id.as_bytes());
    k.push(CHUNK_TAG);
    k.extend_from_slice(&first_seq.to_be_bytes());
    k
}

/// The tag byte after the transaction id in the key of a chunk's plan: what recovery's plan
/// needs of each record of the chunk of compacted records with the same first sequence
/// number (`recovery::plan_chunk`), written in the chunk's batch. Recovery plans from these
/// alone (~17 bytes a record against ~0.9 KiB), so its forward pass over a 100,000-call
/// journal does not pull every chunk through sled's cache; a journal written before them
/// (no plan keys) is planned from its chunks. None of [`JournalKey`]'s layouts: readers of
/// records skip them; pruning the transaction removes them with its other keys.
pub(crate) const PLAN_TAG: u8 = b'P';

/// The journal key of the plan of the chunk whose first record is `first_seq`.
pub(crate) fn plan_key(txn_id: &TxnId, first_seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(TXN_ID_LEN + 9);
    k.extend_from_slice(txn_id.as_bytes());
    k.push(PLAN_TAG);
    k.extend_from_slice(&first_seq.to_be_bytes());
    k
}

/// The tag byte after the transaction id in the key of a chunk of the request's data,
/// stored once per transaction in the packed encoding (`txn/packed.rs`) and referred to by
/// the `started_v2` record and the pinned definitions ([`StoredData`]). Such keys are none
/// of [`JournalKey`]'s layouts: readers of records skip them.
pub(crate) const DATA_TAG: u8 = b'D';

/// The most bytes of the request's data one chunk holds. Written once and never changed, so
/// sled's rewrites (see [`CHUNK_BYTES`]) do not apply; kept under sled's blob size all the
/// same, so a leaf of them is stored inline.
pub(crate) const DATA_CHUNK_BYTES: usize = 6 * 1024;

/// The journal key of chunk `index` of a transaction's request data.
pub(crate) fn data_key(txn_id: &TxnId, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(TXN_ID_LEN + 9);
    k.extend_from_slice(txn_id.as_bytes());
    k.push(DATA_TAG);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// The tag byte after the transaction id in the key of a transaction's [`StoredResponse`]
/// (none of [`JournalKey`]'s layouts: readers of records skip it; pruning the transaction
/// removes it with its other keys).
pub(crate) const RESPONSE_TAG: u8 = b'R';

/// The journal key of a transaction's [`StoredResponse`].
pub(crate) fn response_key(txn_id: &TxnId) -> Vec<u8> {
    let mut k = Vec::with_capacity(TXN_ID_LEN + 1);
    k.extend_from_slice(txn_id.as_bytes());
    k.push(RESPONSE_TAG);
    k
}

/// What a transaction's caller was told when it ended (the response document with its
/// secrets masked, as `provisio_engine::response::to_value` makes it), written by a journal
/// that keeps responses in the same atomic batch as the final state: a job queue that lost
/// track of the transaction in a crash answers with exactly this, not a response rebuilt
/// from the records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The response document: plain, or sealed when the journal has a seal key.
    pub response: Guarded<serde_json::Value>,
    /// It rolled back because of a transient provider error (the request may be tried
    /// again as a new transaction).
    #[serde(default)]
    pub transient: bool,
}

/// The prefix of the keys of a transaction's single records (sequence numbers below
/// 2^56, so their first byte is 0): a scan of it skips the chunks of compacted records and
/// of the request's data.
pub(crate) fn record_prefix(txn_id: &TxnId) -> Vec<u8> {
    let mut k = Vec::with_capacity(TXN_ID_LEN + 1);
    k.extend_from_slice(txn_id.as_bytes());
    k.push(0);
    k
}

/// The request data of a transaction, stored once in the journal space (keys
/// `data_key(txn, 0..chunks)`) in the packed encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredData {
    /// How many chunks.
    pub chunks: u64,
    /// Their total size.
    pub bytes: u64,
    /// The stored tree is the request data with its secrets masked (the request held
    /// secrets; the exact data is sealed in the pinned definitions, or withheld); `false`:
    /// the data exactly as received.
    pub masked: bool,
}

/// What a key of the journal space under a transaction's id holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JournalKey {
    /// All records of a finished transaction as one array, sequence number = index (the
    /// layout before chunks; still read).
    Whole,
    /// One record.
    Record(u64),
    /// An array of consecutive records, the first one numbered as given.
    Chunk(u64),
}

impl JournalKey {
    /// Classifies `key`, a key found under `txn_id`; `None` for a key of another layout.
    pub(crate) fn parse(txn_id: &TxnId, key: &[u8]) -> Option<JournalKey> {
        let rest = key.strip_prefix(txn_id.as_bytes())?;
        let be = |b: &[u8]| b.try_into().ok().map(u64::from_be_bytes);
        match rest.len() {
            0 => Some(JournalKey::Whole),
            8 => be(rest).map(JournalKey::Record),
            9 if rest[0] == CHUNK_TAG => be(&rest[1..]).map(JournalKey::Chunk),
            _ => None,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Data that may hold secrets: kept in clear, sealed, or withheld. Mostly an element (call
/// data, undo records); a script undo's inputs are JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarded<T = Element> {
    /// No secret inside: kept as is.
    Plain(T),
    /// Held secrets: encrypted with the seal key (base64 of nonce ‖ ciphertext).
    Sealed(String),
    /// Held secrets and no seal key was configured: not kept.
    Withheld,
}

/// One journal record. Its `type` tag names its shape: change a shape under a new tag and
/// keep the old variant, so journals written before stay readable.
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
    /// The transaction began (`started_v2`): as [`Record::Started`], with the request data
    /// stored once beside the records instead of copied into this one.
    StartedV2 {
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
        /// Where the request data is (secrets masked when `masked`).
        data: StoredData,
        /// Written to the audit log when final (MPS `auditEnabled` of the entry).
        #[serde(default = "audited", skip_serializing_if = "is_audited")]
        audit: bool,
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
    /// The provider's recovery marker of a call in flight (`Provider::journals_markers`):
    /// what it is about to change, written after the call's intent and synced with it (one
    /// sync for both), before the call's first side effect. A call may write several; the
    /// last one with a marker is given back to `Provider::recover` when the call is in
    /// doubt. A journal written before markers has none; a provisio that does not know
    /// this type refuses the journal ("unknown variant `marker`").
    Marker {
        /// When.
        at_ms: u64,
        /// Step path.
        step: String,
        /// Attempt.
        attempt: u32,
        /// The marker, sealed when the call's data holds secrets; `None`: the intent made
        /// durable with no marker (`Call::intent_durable`).
        marker: Option<Guarded>,
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
        /// The values the call's provider-state writes replaced (written in the same batch
        /// as this record): what reverses them. Sealed with the undo record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<Guarded<crate::StateRecord>>,
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
    /// The call's outcome is unknown (crash, timeout, broken connection after sending).
    /// Until a `done` (applied) or `failed` (not applied) record of the same attempt
    /// settles it, the call is in doubt.
    InDoubt {
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
    /// A script step with an undo script finished: what its undo needs, so that a rollback
    /// after a crash (or `tx resume-rollback`) runs it like a provider undo.
    ScriptDone {
        /// When.
        at_ms: u64,
        /// Step path.
        step: String,
        /// The undo script.
        undo: ScriptUndoRecord,
        /// Its inputs `{ data, result }`: `data` as it was before the step and the step's
        /// result; sealed when they hold secrets (withheld without a seal key).
        vars: Guarded<serde_json::Value>,
    },
    /// An operator recorded what became of an in-doubt call or of a call whose undo failed
    /// (`provisio tx resolve`).
    Resolved {
        /// When.
        at_ms: u64,
        /// Step path.
        step: String,
        /// Attempt of the call resolved.
        attempt: u32,
        /// `true`: its effect exists (the rollback undoes it); `false`: there is nothing to
        /// undo.
        applied: bool,
        /// Who said so (the real user of the process).
        who: String,
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

/// An undo script as journaled: its text and where it came from (for error positions).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptUndoRecord {
    /// The script text.
    pub source: String,
    /// The definition file it came from.
    pub file: String,
    /// 1-based line of its first character in `file`.
    pub line: u32,
    /// 1-based column of its first character in `file`.
    pub column: u32,
}

/// The summary kept per transaction (`tx list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TxnSummary {
    /// Format of this value ([`FORMAT`] when written now).
    #[serde(default = "first_format")]
    pub format: u32,
    /// Transaction id.
    pub id: crate::TxnId,
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
    pub(crate) resumable: bool,
    /// Pinned definitions hash.
    pub definitions: String,
    /// Failure or operator message.
    pub message: Option<String>,
    /// Written to the audit log when final (MPS `auditEnabled` of the entry procedure).
    #[serde(default = "audited", skip_serializing_if = "is_audited")]
    pub(crate) audit: bool,
}

fn audited() -> bool {
    true
}

fn is_audited(audit: &bool) -> bool {
    *audit
}

/// One audit entry: who, what, when, outcome. Append-only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Format of this value ([`FORMAT`] when written now).
    #[serde(default = "first_format")]
    pub format: u32,
    /// Transaction id.
    pub(crate) txn_id: TxnId,
    /// Who asked.
    pub who: String,
    /// `Namespace/Procedure`.
    pub(crate) what: String,
    /// Start time.
    pub(crate) started_ms: u64,
    /// End time.
    pub(crate) finished_ms: u64,
    /// Final state.
    pub(crate) outcome: TxnState,
    /// Failure message, if any.
    pub(crate) message: Option<String>,
}

impl Versioned for TxnSummary {
    const WHAT: &'static str = "the transaction summary";
    fn format(&self) -> u32 {
        self.format
    }
}

impl Versioned for AuditEntry {
    const WHAT: &'static str = "the audit entry";
    fn format(&self) -> u32 {
        self.format
    }
}

/// The pin name under which a trusted request's own procedure is pinned (as the compiler
/// names it).
pub(crate) const TRUSTED_REQUEST_PIN: &str = "(request)";

/// The key of a transaction's [`PinnedDefinitions`] in the definitions space (the
/// definitions themselves are keyed by their hash).
pub(crate) fn pinned_key(txn_id: &TxnId) -> Vec<u8> {
    format!("txn/{txn_id}").into_bytes()
}

/// What a transaction was compiled from, so a resumable one can be compiled again exactly:
/// the hash of each namespace's definition and the request data as received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinnedDefinitions {
    /// Format of this value ([`FORMAT`] when written now).
    #[serde(default = "first_format")]
    pub(crate) format: u32,
    /// One per namespace the program used.
    pub(crate) pins: Vec<Pin>,
    /// The request data as received, sealed when it holds secrets; `Withheld` when it is
    /// `stored` instead.
    pub(crate) request: Guarded,
    /// Format 2: the request data as received is the one stored in the journal (it held no
    /// secret), not `request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stored: Option<StoredData>,
}

impl Versioned for PinnedDefinitions {
    const WHAT: &'static str = "the pinned definitions";
    fn format(&self) -> u32 {
        self.format
    }
}

/// One pinned definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pin {
    /// The namespace (or [`TRUSTED_REQUEST_PIN`] for a trusted request's procedure).
    pub(crate) namespace: String,
    /// Its key in the definitions space: the SHA-256 of its serialized definition.
    pub(crate) hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_without_format_is_format_1_and_a_newer_format_is_refused() {
        let old = br#"{"pins":[{"namespace":"N","hash":"h"}],"request":"withheld"}"#;
        let pinned: PinnedDefinitions = decode(old).expect("format 1 reads");
        assert_eq!(pinned.format, 1);
        assert_eq!(pinned.pins[0].hash, "h");

        let newer = br#"{"format":3,"pins":[],"request":"withheld"}"#;
        let e = decode::<PinnedDefinitions>(newer).expect_err("format 3 is refused");
        assert!(matches!(e, DecodeError::TooNew { found: 3, .. }), "{e}");
        assert!(e.to_string().contains("reads formats up to 2"), "{e}");

        let e = decode::<PinnedDefinitions>(br#"{"pins":3}"#).expect_err("malformed");
        assert!(matches!(e, DecodeError::Malformed { .. }), "{e}");
    }
}
