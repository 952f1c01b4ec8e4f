//! The durable journal: implements the executor's [`Journal`] hook on a [`Store`]. Intents
//! are synced before the provider call they announce; results ride on the next sync (the
//! next intent or the final state), so a step's result and the next step's intent share
//! one fdatasync, and concurrent transactions share syncs through the store's group commit.

use super::packed;
use super::records::{
    chunk_key, data_key, now_ms, pinned_key, plan_key, record_key, record_prefix, response_key,
    AuditEntry, Guarded, JournalKey, Pin, PinnedDefinitions, Record, ScriptUndoRecord, StoredData,
    StoredResponse, TxnSummary, CHUNK_BYTES, DATA_CHUNK_BYTES, FORMAT, TRUSTED_REQUEST_PIN,
};
use super::recovery::{self, PlanRecord};
use super::seal::{SealError, SealKey};
use crate::data::{json, Element};
use crate::exec::{
    Journal, JournalError, ScriptUndoDone, StepDone, StepIntent, StepMarker, TxnStart, TxnState,
};
use crate::provider::CallContext;
use crate::store::{prefix_end, Batch, KeyRange, Space, Store, StoreError};
use crate::TxnId;
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
#[cfg(feature = "failpoints")]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Fault injection for crash tests (cargo feature `failpoints`, which tests enable and
/// release builds do not): abort the process at the n-th journal write
/// (`PROVISIO_CRASH_AT=n`), before it reaches the store or just after the store took it
/// (`PROVISIO_CRASH_WHEN=before|after`). "After" a write that was not synced (a done
/// record, an intent waiting for its marker) loses it with whatever else was unsynced, as
/// a kill -9 would.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CrashPoint {
    /// 1-based write number.
    pub(crate) at: u64,
    /// Abort after the write instead of before it.
    pub(crate) after: bool,
}

#[cfg(feature = "failpoints")]
impl CrashPoint {
    /// Reads `PROVISIO_CRASH_AT` / `PROVISIO_CRASH_WHEN`.
    pub(crate) fn from_env() -> Option<CrashPoint> {
        let at = std::env::var("PROVISIO_CRASH_AT").ok()?.parse().ok()?;
        let after = std::env::var("PROVISIO_CRASH_WHEN")
            .map(|w| w == "after")
            .unwrap_or(false);
        Some(CrashPoint { at, after })
    }
}

/// The armed crash point and the journal writes counted against it.
#[cfg(feature = "failpoints")]
#[derive(Debug, Default)]
struct FailPoints {
    crash: Option<CrashPoint>,
    writes: AtomicU64,
}

#[cfg(feature = "failpoints")]
impl FailPoints {
    fn new() -> FailPoints {
        FailPoints::default()
    }

    /// Counts a journal write; returns its 1-based number.
    fn count(&self) -> u64 {
        self.writes.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Aborts the process when write `n` is the armed crash point (`after`: once written).
    fn check(&self, n: u64, after: bool) {
        if let Some(c) = self.crash {
            if c.at == n && c.after == after {
                tracing::error!(
                    write = n,
                    after,
                    "fault injection: aborting at a journal write"
                );
                std::process::abort();
            }
        }
    }
}

/// Without the `failpoints` feature: nothing is counted, nothing read, nothing aborts.
#[cfg(not(feature = "failpoints"))]
#[derive(Debug)]
struct FailPoints;

#[cfg(not(feature = "failpoints"))]
impl FailPoints {
    fn new() -> FailPoints {
        FailPoints
    }

    fn count(&self) -> u64 {
        0
    }

    fn check(&self, _n: u64, _after: bool) {}
}

/// A journal write that did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A record or summary could not be encoded (a value JSON cannot hold).
    #[error("cannot encode {what} of transaction {txn}: {source}")]
    Encode {
        /// What (`a journal record`, `the summary`, …).
        what: &'static str,
        /// Transaction.
        txn: TxnId,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The store refused the read or write.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Guarded data that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Sealed, and this process has no seal key.
    #[error("the record is sealed and no seal key is configured")]
    NoSealKey,
    /// The seal key does not open it.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// Opened, but not what it should hold (damaged record).
    #[error("sealed record does not read: {0}")]
    NotAnElement(#[source] serde_json::Error),
    /// It held secrets and no seal key was configured when it was written.
    #[error("the record held secrets and was not kept (no seal key was configured)")]
    Withheld,
}

/// A transaction's stored request data that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum StoredDataError {
    /// A chunk is missing.
    #[error("chunk {index} of the stored request data is missing")]
    Missing {
        /// Which chunk.
        index: u64,
    },
    /// The chunks do not decode.
    #[error("the stored request data does not decode: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A transaction's stored response that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// It does not decode (damaged record).
    #[error("the stored response does not decode: {0}")]
    Malformed(#[source] serde_json::Error),
    /// It is sealed and cannot be opened.
    #[error(transparent)]
    Guard(#[from] GuardError),
}

fn encode<T: serde::Serialize>(
    what: &'static str,
    txn: &TxnId,
    value: &T,
) -> Result<Vec<u8>, WriteError> {
    thread_local! {
        /// Where values are encoded before they are copied out at their exact size: a
        /// record written into a new vector grew it four or five times (128 bytes doubled
        /// to ~1 KiB, each time copied), and the copy the store keeps held up to twice its
        /// size.
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// A scratch buffer that grew past this (a large summary or response) is given back.
    const KEPT: usize = 64 * 1024;
    SCRATCH
        .with(|scratch| {
            // Taken out, so an encoding that (through some value's `Serialize`) encodes again
            // on this thread uses a buffer of its own.
            let mut buf = std::mem::take(&mut *scratch.borrow_mut());
            buf.clear();
            let encoded = serde_json::to_writer(&mut buf, value).map(|()| buf.as_slice().to_vec());
            if buf.capacity() <= KEPT {
                *scratch.borrow_mut() = buf;
            }
            encoded
        })
        .map_err(|source| WriteError::Encode {
            what,
            txn: txn.clone(),
            source,
        })
}

struct Live {
    next_seq: u64,
    summary: TxnSummary,
    /// Its records can be compacted into chunks as it goes and at its end: those this
    /// process writes (from [`Live::written_from`] on), until its final record.
    compactable: bool,
    /// The first record this process wrote: 0, or where a transaction adopted at recovery
    /// (or by `tx resolve`) went on. The final compaction takes the records under their own
    /// keys from here: those an earlier process left stay as they are (a journal written
    /// before chunks may hold 100,000 of them; rewriting them is no part of finishing).
    written_from: u64,
    /// Bytes of the records still under their own keys (written since the last chunk).
    tail_bytes: usize,
    /// Records numbered below this were taken into a chunk by a compaction made while the
    /// transaction runs (or are being written by the step that took them): the next such
    /// compaction takes only later ones, so two never put a record into two chunks.
    chunked_to: u64,
    /// The sequence numbers of the intents of calls under way (by step and attempt), until
    /// their outcome is written: what [`DurableJournal::take_located`] pairs with a
    /// completion. Holds the calls in flight (and those left in doubt), not every call.
    intents: HashMap<(Box<str>, u32), u64>,
    /// Completed calls whose records can give back everything their undo needs, by step and
    /// attempt: (intent, completion) sequence numbers, until the executor takes them.
    located: HashMap<(Box<str>, u32), (u64, u64)>,
    /// The plan records ([`recovery::plan_of`]) of the records not yet compacted, by sequence
    /// number: a compaction writes each chunk's plan from these instead of decoding the
    /// records' JSON again.
    plans: HashMap<u64, PlanRecord>,
}

impl Live {
    /// A transaction whose records this process writes from `next_seq` on (0: all of them).
    fn new(next_seq: u64, summary: TxnSummary) -> Live {
        Live {
            next_seq,
            summary,
            compactable: true,
            written_from: next_seq,
            tail_bytes: 0,
            chunked_to: next_seq,
            intents: HashMap::new(),
            located: HashMap::new(),
            plans: HashMap::new(),
        }
    }
}

/// The journal on a store.
pub struct DurableJournal {
    store: Arc<dyn Store>,
    seal: Option<SealKey>,
    who: String,
    live: Mutex<HashMap<TxnId, Live>>,
    pinned_written: Mutex<HashSet<String>>,
    fail_points: FailPoints,
    /// Write each transaction's response with its final state ([`StoredResponse`]).
    keep_responses: bool,
    /// The store wants records compacted into chunks ([`Store::compacts_journal`]); else
    /// each record keeps its own key, written once as a new key.
    compacts: bool,
    /// Bytes appended without waiting for durability since the last durable append (see
    /// [`UNSYNCED_BYTES`]).
    unsynced: AtomicUsize,
}

/// A sync follows the writes that need not be durable once this many bytes were appended
/// without one. The store buffers what is not yet durable (the log's frames) until the next
/// sync: a rollback journals 100,000 undo records with no durable write between them, and
/// the buffer grew to tens of MiB (doubling as it went). One sync a MiB of records is one
/// every few thousand undos.
const UNSYNCED_BYTES: usize = 1 << 20;

impl std::fmt::Debug for DurableJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableJournal")
            .field("who", &self.who)
            .field("seal", &self.seal)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DurableJournal {
    /// A journal writing to `store`, sealing secrets with `seal` (withheld without one),
    /// recording `who` as the requester.
    pub fn new(
        store: Arc<dyn Store>,
        seal: Option<SealKey>,
        who: impl Into<String>,
    ) -> DurableJournal {
        let compacts = store.compacts_journal();
        DurableJournal {
            store,
            compacts,
            seal,
            who: who.into(),
            live: Mutex::new(HashMap::new()),
            pinned_written: Mutex::new(HashSet::new()),
            fail_points: FailPoints::new(),
            keep_responses: false,
            unsynced: AtomicUsize::new(0),
        }
    }

    /// Also writes each transaction's response (what its caller is told, secrets masked;
    /// sealed with the seal key when there is one) in the same atomic batch as its final
    /// state, for [`DurableJournal::stored_response`]: what a job queue needs to answer
    /// exactly as it did before a crash, or as the run that recovery resumed would have.
    pub fn with_responses(mut self) -> DurableJournal {
        self.keep_responses = true;
        self
    }

    /// Forgets what this journal holds in memory of a transaction whose run was stopped
    /// before it ended (the daemon stops runs when the PostgreSQL database is lost: the
    /// store forfeits their ownership). The next record written for it (another attempt,
    /// or its recovery, in this process) owns it again first, and carries on from what the
    /// store holds, not from the stopped run's view.
    pub fn forget(&self, txn_id: &str) {
        lock(&self.live).retain(|id, _| id.as_str() != txn_id);
    }

    /// The response a transaction's run ended with, when this journal (or an earlier one on
    /// the store) kept it ([`DurableJournal::with_responses`]): the document, and whether it
    /// rolled back because of a transient provider error. `None`: not kept (no journal kept
    /// it, the transaction has not ended, or recovery ended it).
    pub fn stored_response(
        &self,
        txn_id: &TxnId,
    ) -> Result<Option<(serde_json::Value, bool)>, ResponseError> {
        let Some(bytes) = self.store.get(Space::Journal, &response_key(txn_id))? else {
            return Ok(None);
        };
        let stored: StoredResponse =
            serde_json::from_slice(&bytes).map_err(ResponseError::Malformed)?;
        Ok(Some((self.unguard(&stored.response)?, stored.transient)))
    }

    /// Enables fault injection at `crash`.
    #[cfg(feature = "failpoints")]
    pub(crate) fn with_crash_point(mut self, crash: Option<CrashPoint>) -> DurableJournal {
        self.fail_points.crash = crash;
        self
    }

    /// Arms the crash point named by `PROVISIO_CRASH_AT` / `PROVISIO_CRASH_WHEN` when built
    /// with the `failpoints` feature (the crash tests); otherwise does nothing and reads no
    /// variable, so a release binary cannot be made to abort this way.
    #[cfg(feature = "failpoints")]
    pub fn with_failpoints_from_env(self) -> DurableJournal {
        self.with_crash_point(CrashPoint::from_env())
    }

    /// Without the `failpoints` feature: the journal as it is (no variable is read).
    #[cfg(not(feature = "failpoints"))]
    pub fn with_failpoints_from_env(self) -> DurableJournal {
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Keeps data that may hold secrets (an element, or a script undo's JSON inputs): plain,
    /// sealed, or withheld.
    pub(crate) fn guard<T: serde::Serialize + Clone>(&self, v: &T, secret: bool) -> Guarded<T> {
        if !secret {
            return Guarded::Plain(v.clone());
        }
        match &self.seal {
            Some(key) => Guarded::Sealed(key.seal(&serde_json::to_vec(v).unwrap_or_default())),
            None => Guarded::Withheld,
        }
    }

    /// The stored form of one pinned definition. A trusted request's own procedure is a
    /// request, not a namespace file: it may carry literal values of secret inputs (a
    /// password written into a step), so it is sealed when a seal key is configured
    /// (`Guarded::Sealed` of its JSON); namespaces are kept as they are.
    fn pin_value(&self, namespace: &str, bytes: &[u8]) -> Vec<u8> {
        match &self.seal {
            Some(key) if namespace == TRUSTED_REQUEST_PIN => {
                let sealed: Guarded<serde_json::Value> = Guarded::Sealed(key.seal(bytes));
                serde_json::to_vec(&sealed).unwrap_or_else(|_| bytes.to_vec())
            }
            _ => bytes.to_vec(),
        }
    }

    /// Who this process runs as (recorded with what it journals).
    pub(crate) fn who(&self) -> &str {
        &self.who
    }

    /// Opens guarded data (an element, or a script undo's JSON inputs).
    pub fn unguard<T: serde::de::DeserializeOwned + Clone>(
        &self,
        g: &Guarded<T>,
    ) -> Result<T, GuardError> {
        match g {
            Guarded::Plain(e) => Ok(e.clone()),
            Guarded::Sealed(s) => {
                let key = self.seal.as_ref().ok_or(GuardError::NoSealKey)?;
                let bytes = key.open(s)?;
                serde_json::from_slice(&bytes).map_err(GuardError::NotAnElement)
            }
            Guarded::Withheld => Err(GuardError::Withheld),
        }
    }

    /// Reads back the request data a transaction stored once in the journal (its
    /// `started_v2` record and format-2 pinned definitions refer to it).
    pub fn stored_data(
        &self,
        txn_id: &TxnId,
        stored: &StoredData,
    ) -> Result<Element, StoredDataError> {
        let mut bytes = Vec::with_capacity(usize::try_from(stored.bytes).unwrap_or(0));
        for index in 0..stored.chunks {
            let chunk = self
                .store
                .get(Space::Journal, &data_key(txn_id, index))?
                .ok_or(StoredDataError::Missing { index })?;
            bytes.extend_from_slice(&chunk);
        }
        packed::unpack(&bytes).map_err(StoredDataError::Malformed)
    }

    /// Adopts a transaction found at recovery, so further records continue its sequence.
    pub(crate) fn adopt(&self, mut summary: TxnSummary, next_seq: u64) {
        // The summary is written again in today's format with the next state change.
        summary.format = FORMAT;
        // Its new records (a rollback's 100,000 undo records) are compacted as they go, as a
        // live run's are: under their own keys they each cost a write into sled, and a
        // rollback cost more journal than the work it undid.
        lock(&self.live).insert(summary.id.clone(), Live::new(next_seq, summary));
    }

    /// Where the records of a completed call are, when they give back everything its undo
    /// needs ([`crate::Journal::read_back`]): the sequence numbers of its intent and of its
    /// completion. Taken once, right after [`crate::Journal::step_done`] returned: `None`
    /// when it was not written, undoes nothing, or keeps its undo withheld (a secret and
    /// no seal key) — the executor then keeps the undo in memory.
    pub(crate) fn take_located(&self, call: &CallContext) -> Option<(u64, u64)> {
        let mut live = lock(&self.live);
        let l = live.get_mut(&call.txn_id)?;
        l.located
            .remove(&(Box::from(call.step_id.as_str()), call.attempt))
    }

    /// Notes the intent of a call written as record `seq`.
    fn intent_at(&self, call: &CallContext, seq: u64) {
        if let Some(l) = lock(&self.live).get_mut(&call.txn_id) {
            l.intents
                .insert((Box::from(call.step_id.as_str()), call.attempt), seq);
        }
    }

    /// The outcome of a call was written (as record `done`, when it completed and its
    /// records can be read back for its undo): its intent is no longer under way.
    fn outcome_at(&self, call: &CallContext, done: Option<u64>) {
        if let Some(l) = lock(&self.live).get_mut(&call.txn_id) {
            let key = (Box::from(call.step_id.as_str()), call.attempt);
            let intent = l.intents.remove(&key);
            if let (Some(intent), Some(done)) = (intent, done) {
                l.located.insert(key, (intent, done));
            }
        }
    }

    /// Appends a record (plus extra writes) as one atomic batch.
    pub(crate) async fn append(
        &self,
        txn_id: &TxnId,
        record: &Record,
        durable: bool,
        extra: Batch,
    ) -> Result<(), WriteError> {
        self.append_numbered(txn_id, record, durable, extra)
            .await
            .map(|_| ())
    }

    /// [`DurableJournal::append`], returning the record's sequence number.
    async fn append_numbered(
        &self,
        txn_id: &TxnId,
        record: &Record,
        durable: bool,
        extra: Batch,
    ) -> Result<u64, WriteError> {
        let value = encode("a journal record", txn_id, record)?;
        // What the plan of the chunk that takes this record will say of it (the records are
        // JSON by then); for a type it does not know, the JSON is decoded then.
        let plan = if self.compacts {
            recovery::plan_of(record)
        } else {
            None
        };
        let mut batch = extra;
        if !lock(&self.live).contains_key(txn_id) {
            // The transaction's first record (in this process): it becomes this process's,
            // so that no other process sharing the store recovers it while it runs (a
            // fresh id is refused only when another process took the job it belongs to).
            if !self.store.own(txn_id.as_str()).await? {
                return Err(StoreError::Owned {
                    txn: txn_id.as_str().to_string(),
                }
                .into());
            }
        }
        let (seq, summary, finished, compact_from, indexed_state) = {
            let mut live = lock(&self.live);
            let l = live.entry(txn_id.clone()).or_insert_with(|| {
                let summary = TxnSummary {
                    format: FORMAT,
                    id: txn_id.clone(),
                    state: TxnState::Running,
                    target: String::new(),
                    who: self.who.clone(),
                    started_ms: now_ms(),
                    updated_ms: now_ms(),
                    resumable: false,
                    definitions: String::new(),
                    message: None,
                    audit: true,
                };
                Live::new(0, summary)
            });
            let seq = l.next_seq;
            l.next_seq += 1;
            if let (Some(plan), true) = (plan, l.compactable) {
                l.plans.insert(seq, plan);
            }
            // The state the index has for it (none before its first record).
            let indexed_state = (seq > 0).then_some(l.summary.state);
            let mut summary_write = None;
            match record {
                Record::Started {
                    target,
                    resumable,
                    definitions,
                    at_ms,
                    ..
                } => {
                    l.summary.target = target.clone();
                    l.summary.resumable = *resumable;
                    l.summary.definitions = definitions.clone();
                    l.summary.started_ms = *at_ms;
                    summary_write = Some(l.summary.clone());
                }
                Record::StartedV2 {
                    target,
                    resumable,
                    definitions,
                    at_ms,
                    audit,
                    ..
                } => {
                    l.summary.audit = *audit;
                    l.summary.target = target.clone();
                    l.summary.resumable = *resumable;
                    l.summary.definitions = definitions.clone();
                    l.summary.started_ms = *at_ms;
                    summary_write = Some(l.summary.clone());
                }
                Record::State {
                    state,
                    message,
                    at_ms,
                } => {
                    l.summary.state = *state;
                    l.summary.updated_ms = *at_ms;
                    if message.is_some() {
                        l.summary.message = message.clone();
                    }
                    summary_write = Some(l.summary.clone());
                }
                _ => {}
            }
            let finished = summary_write.as_ref().is_some_and(|s| s.state.is_final());
            // Records are compacted as the transaction goes, a chunk whenever the records
            // under their own keys fill one, and the rest at its end: so a long transaction
            // keeps at most one chunk's worth under per-record keys (they reach sled as
            // chunks only, and the final compaction is as small as a chunk).
            let compact_now = self.compacts
                && l.compactable
                && (finished || l.tail_bytes + value.len() + 1 >= CHUNK_BYTES);
            // Which per-record keys this compaction takes: from where the last one stopped,
            // or at the end every one left (all earlier writes are done by then; a record
            // written after a running compaction read the keys stays until the end).
            let compact_from = compact_now.then(|| {
                let from = if finished {
                    l.written_from
                } else {
                    l.chunked_to
                };
                l.chunked_to = seq + 1;
                from
            });
            if compact_now {
                l.tail_bytes = 0;
            } else {
                l.tail_bytes += value.len() + 1;
            }
            if finished {
                // Whatever happens to this write, later records (the rollback of a commit
                // that could not be journaled) go under their own keys.
                l.compactable = false;
            }
            (seq, summary_write, finished, compact_from, indexed_state)
        };
        if let Some(from) = compact_from {
            // The records still under their own keys and this one become bounded chunks of
            // consecutive records, and the per-record keys go: the store's overlay cancels
            // those that never reached disk. Every earlier record of the transaction was
            // written before this one, so the store returns them all (at most a chunk's
            // worth: the others are chunks already). Read from `from` on only: records an
            // earlier process left under their own keys are not read by every compaction.
            let prefix = record_prefix(txn_id);
            let end = prefix_end(&prefix);
            let earlier = self.store.scan_range(
                Space::Journal,
                KeyRange::new(&record_key(txn_id, from), end.as_deref()),
                usize::MAX,
                false,
            )?;
            let mut records: Vec<(u64, &[u8])> = Vec::with_capacity(earlier.len() + 1);
            for (k, v) in &earlier {
                match JournalKey::parse(txn_id, k) {
                    Some(JournalKey::Record(n)) if n >= from && n < seq => {
                        batch.delete(Space::Journal, k.clone());
                        records.push((n, v));
                    }
                    _ => {}
                }
            }
            // Each per-record key is put once, by its record, and deleted only here.
            batch.deletes_cancel_puts = true;
            records.push((seq, &value));
            // Concurrent steps' records may have been written out of sequence order.
            records.sort_unstable_by_key(|(n, _)| *n);
            let chunks = compact(&records);
            // Each chunk's plan (what recovery's plan needs of its records) goes beside it,
            // in the same batch: a chunk holds the records numbered from its first up to
            // the next chunk's first (a chunk ends at a gap in the numbers, too). Not for
            // the chunks written with a commit or a rollback: nothing plans a transaction
            // over (a `rollback_failed` one may be rolled back again, so it keeps them), and
            // a plan costs a decode of every record on the path of every small request.
            let over = summary
                .as_ref()
                .is_some_and(|s| matches!(s.state, TxnState::Committed | TxnState::RolledBack));
            let planned = if over { &[][..] } else { &chunks[..] };
            let mut plans = if planned.is_empty() {
                Vec::new()
            } else {
                self.take_plans(txn_id, &records)
            };
            let mut rest = &records[..];
            for (k, (first, _)) in planned.iter().enumerate() {
                let end = chunks.get(k + 1).map_or(u64::MAX, |(next, _)| *next);
                let n = rest.partition_point(|(seq, _)| *seq < end);
                let (these, later) = rest.split_at(n);
                rest = later;
                let known: Vec<Option<PlanRecord>> = plans.drain(..n).collect();
                let plan = these
                    .iter()
                    .zip(known)
                    .map(|((_, json), known)| match known {
                        Some(plan) => Ok(plan),
                        None => serde_json::from_slice::<PlanRecord>(json),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| WriteError::Encode {
                        what: "a chunk's plan",
                        txn: txn_id.clone(),
                        source,
                    })?;
                debug_assert_eq!(these.first().map(|(seq, _)| *seq), Some(*first));
                batch.put(
                    Space::Journal,
                    plan_key(txn_id, *first),
                    recovery::encode_plan(plan),
                );
            }
            for (first, chunk) in chunks {
                batch.put(Space::Journal, chunk_key(txn_id, first), chunk);
            }
        } else {
            batch.put(Space::Journal, record_key(txn_id, seq), value);
        }
        if let Some(summary) = &summary {
            batch.put(
                Space::Txns,
                txn_id.as_bytes().to_vec(),
                encode("the summary", txn_id, summary)?,
            );
            super::index::summary_written(&mut batch, indexed_state, summary);
            if finished && summary.audit {
                let audit = AuditEntry {
                    format: FORMAT,
                    txn_id: txn_id.clone(),
                    who: summary.who.clone(),
                    what: summary.target.clone(),
                    started_ms: summary.started_ms,
                    finished_ms: summary.updated_ms,
                    outcome: summary.state,
                    message: summary.message.clone(),
                };
                let mut k = summary.updated_ms.to_be_bytes().to_vec();
                k.extend_from_slice(txn_id.as_bytes());
                batch.put(Space::Audit, k, encode("the audit entry", txn_id, &audit)?);
            }
        }
        let (durable, flush) = self.bounded_unsynced(&batch, durable);
        let n = self.fail_points.count();
        self.fail_points.check(n, false);
        if self.compacts {
            self.store
                .write_for(txn_id.as_str(), batch, durable)
                .await?;
        } else {
            // Without compaction, the puts of keys this append creates go apart, as new
            // keys (a store inserts them without looking for them first).
            let (fresh, rest) = split_fresh(txn_id, batch, indexed_state.is_none());
            self.store
                .write_journal(txn_id.as_str(), fresh, rest, durable)
                .await?;
        }
        if flush {
            // In the background: nothing waits for these records to be durable, so the
            // writer (a chain of undos, one after another) does not wait for the sync. A
            // failed sync fails the store's next writes; a sync the runtime drops at its
            // end hands its lead back.
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.sync().await {
                    tracing::debug!(error = %e, "a background sync of the journal failed");
                }
            });
        }
        // Only once the final record is written: if it fails, the records that follow (the
        // rollback of a commit that could not be journaled) continue the same sequence.
        if finished {
            lock(&self.live).remove(txn_id);
            self.store.disown(txn_id.as_str());
        }
        self.fail_points.check(n, true);
        Ok(seq)
    }
}

impl DurableJournal {
    /// The plan records noted at append time of `records` (in their order), taken out of the
    /// transaction's [`Live::plans`]; `None` for one not noted (a record an earlier process
    /// wrote, or of a type [`recovery::plan_of`] leaves to its JSON). A debug build checks
    /// each against the plan record its JSON decodes to.
    fn take_plans(&self, txn_id: &TxnId, records: &[(u64, &[u8])]) -> Vec<Option<PlanRecord>> {
        let mut live = lock(&self.live);
        let mut noted = live.get_mut(txn_id).map(|l| &mut l.plans);
        records
            .iter()
            .map(|(seq, _json)| {
                let plan = noted.as_mut().and_then(|p| p.remove(seq));
                debug_assert!(
                    plan.is_none() || plan == serde_json::from_slice::<PlanRecord>(_json).ok(),
                    "the plan record noted for record {seq} is not what its JSON decodes to"
                );
                plan
            })
            .collect()
    }

    /// Whether an append of `batch` waits for durability (when asked to), and whether a
    /// sync follows it in the background (the bytes appended without a sync reach
    /// [`UNSYNCED_BYTES`] with it). Outside a Tokio runtime, the append waits instead.
    fn bounded_unsynced(&self, batch: &Batch, durable: bool) -> (bool, bool) {
        if durable {
            self.unsynced.store(0, Ordering::Relaxed);
            return (true, false);
        }
        let bytes: usize = batch
            .writes
            .iter()
            .map(|(_, k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        let before = self.unsynced.fetch_add(bytes, Ordering::Relaxed);
        if before + bytes < UNSYNCED_BYTES {
            return (false, false);
        }
        self.unsynced.store(0, Ordering::Relaxed);
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        (!in_runtime, in_runtime)
    }
}

/// Splits the batch of a journal append that compacts nothing into the puts of keys it
/// creates and the rest ([`Store::write_journal`]). Created by it: every put of the
/// journal's keys (the record, the request data's chunks, the response: each written once
/// a transaction), of its index keys (put once per state it passes through, and deleted in
/// an earlier batch when it leaves one) and of its audit entry; its pinned definitions; and
/// its summary when this is its first record (`first`). Left as they are: the summaries
/// written again, content-addressed definitions (another transaction, or node, may write
/// the same), provider state and every delete. A store applies a "new" key that exists
/// after all as a put, so a mistake here costs time, never data.
fn split_fresh(txn_id: &TxnId, batch: Batch, first: bool) -> (Batch, Batch) {
    let pinned = pinned_key(txn_id);
    let (new, old): (Vec<_>, Vec<_>) = batch.writes.into_iter().partition(|(space, key, value)| {
        value.is_some()
            && match space {
                Space::Journal | Space::Index | Space::Audit => true,
                Space::Txns => first,
                Space::Definitions => *key == pinned,
                Space::Meta | Space::Queue | Space::State => false,
            }
    });
    let fresh = Batch {
        writes: new,
        deletes_cancel_puts: false,
    };
    let rest = Batch {
        writes: old,
        deletes_cancel_puts: batch.deletes_cancel_puts,
    };
    (fresh, rest)
}

/// A transaction's records (sequence number, encoding; in order) as JSON arrays of
/// consecutive records of at most [`CHUNK_BYTES`] each, keyed by their first sequence
/// number; built from the encodings without decoding them.
fn compact(records: &[(u64, &[u8])]) -> Vec<(u64, Vec<u8>)> {
    let mut chunks: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next_seq = None;
    for &(seq, bytes) in records {
        let fits = chunks
            .last()
            .is_some_and(|(_, c)| c.len() + 1 + bytes.len() < CHUNK_BYTES);
        match chunks.last_mut() {
            Some((_, chunk)) if fits && next_seq == Some(seq) => {
                chunk.push(b',');
                chunk.extend_from_slice(bytes);
            }
            _ => {
                if let Some((_, done)) = chunks.last_mut() {
                    done.push(b']');
                }
                let mut chunk = Vec::with_capacity(CHUNK_BYTES.min(bytes.len() + 2) + 1);
                chunk.push(b'[');
                chunk.extend_from_slice(bytes);
                chunks.push((seq, chunk));
            }
        }
        next_seq = Some(seq + 1);
    }
    if let Some((_, last)) = chunks.last_mut() {
        last.push(b']');
    }
    chunks
}

#[async_trait]
impl Journal for DurableJournal {
    async fn txn_started(&self, start: &TxnStart<'_>) -> Result<(), JournalError> {
        let mut extra = Batch::new();
        {
            let mut written = lock(&self.pinned_written);
            for (namespace, hash, bytes) in start.pinned {
                if written.contains(hash) {
                    continue;
                }
                if self
                    .store
                    .get(Space::Definitions, hash.as_bytes())
                    .map_err(WriteError::from)?
                    .is_none()
                {
                    extra.put(
                        Space::Definitions,
                        hash.as_bytes().to_vec(),
                        self.pin_value(namespace, bytes),
                    );
                }
                written.insert(hash.clone());
            }
        }
        // The request data is journaled once, packed and in bounded chunks, beside the
        // records: as received when it holds no secret (the pinned definitions then refer to
        // it too), else its masked view (the exact data is sealed in the pinned definitions).
        let shown = if start.secret {
            start.data
        } else {
            start.request_data
        };
        let (chunks, bytes) = packed::pack(shown, DATA_CHUNK_BYTES);
        let stored = StoredData {
            chunks: chunks.len() as u64,
            bytes,
            masked: start.secret,
        };
        for (index, chunk) in chunks.into_iter().enumerate() {
            extra.put(Space::Journal, data_key(start.txn_id, index as u64), chunk);
        }
        let pinned = PinnedDefinitions {
            format: FORMAT,
            pins: start
                .pinned
                .iter()
                .map(|(namespace, hash, _)| Pin {
                    namespace: namespace.clone(),
                    hash: hash.clone(),
                })
                .collect(),
            request: if start.secret {
                self.guard(start.request_data, true)
            } else {
                Guarded::Withheld
            },
            stored: (!start.secret).then(|| stored.clone()),
        };
        extra.put(
            Space::Definitions,
            pinned_key(start.txn_id),
            encode("the pinned definitions", start.txn_id, &pinned)?,
        );
        let record = Record::StartedV2 {
            at_ms: now_ms(),
            target: start.target.to_string(),
            kind: start.kind,
            resumable: start.resumable,
            definitions: start.definitions.to_string(),
            who: self.who.clone(),
            data: stored,
            audit: start.audit,
        };
        Ok(self.append(start.txn_id, &record, false, extra).await?)
    }

    async fn txn_state(
        &self,
        txn_id: &TxnId,
        state: TxnState,
        message: Option<&str>,
    ) -> Result<(), JournalError> {
        let durable = state.is_final();
        let record = Record::State {
            at_ms: now_ms(),
            state,
            message: message.map(str::to_string),
        };
        Ok(self.append(txn_id, &record, durable, Batch::new()).await?)
    }

    async fn txn_ended(
        &self,
        result: &crate::TxnResult,
        message: Option<&str>,
    ) -> Result<Option<crate::KeptResponse>, JournalError> {
        let record = Record::State {
            at_ms: now_ms(),
            state: result.state,
            message: message.map(str::to_string),
        };
        let mut extra = Batch::new();
        let mut kept = None;
        if self.keep_responses {
            // Built, serialized and sealed once: the caller gets what was stored.
            let doc = crate::response::to_value(result);
            let text = doc.to_string();
            let (text, sealed) = match &self.seal {
                Some(key) => (key.seal(text.as_bytes()), true),
                None => (text, false),
            };
            let stored = StoredResponse {
                response: if sealed {
                    Guarded::Sealed(text.clone())
                } else {
                    Guarded::Plain(doc.clone())
                },
                transient: result.transient,
            };
            extra.put(
                Space::Journal,
                response_key(&result.txn_id),
                encode("the response", &result.txn_id, &stored)?,
            );
            kept = Some(crate::KeptResponse { doc, text, sealed });
        }
        let durable = result.state.is_final();
        self.append(&result.txn_id, &record, durable, extra).await?;
        Ok(kept)
    }

    async fn step_intent(&self, i: &StepIntent<'_>) -> Result<(), JournalError> {
        let record = Record::Intent {
            at_ms: now_ms(),
            step: i.context.step_id.clone(),
            attempt: i.context.attempt,
            namespace: i.context.namespace.clone(),
            procedure: i.context.procedure.clone(),
            provider: i.provider.to_string(),
            target: i.target.to_string(),
            kind: i.kind,
            provider_context: i.provider_context.clone(),
            input: json::to_json(i.input),
            call_data: self.guard(i.call_data, i.secret),
        };
        let seq = self
            .append_numbered(&i.context.txn_id, &record, i.durable, Batch::new())
            .await?;
        self.intent_at(i.context, seq);
        Ok(())
    }

    fn keeps_markers(&self) -> bool {
        true
    }

    async fn step_marker(&self, m: &StepMarker<'_>) -> Result<(), JournalError> {
        let record = Record::Marker {
            at_ms: now_ms(),
            step: m.context.step_id.clone(),
            attempt: m.context.attempt,
            marker: m.marker.map(|e| self.guard(e, m.secret)),
        };
        // Durable: the one sync of the call, taking its intent (appended before, not
        // synced) with it.
        Ok(self
            .append(&m.context.txn_id, &record, true, Batch::new())
            .await?)
    }

    async fn step_done(&self, d: &StepDone<'_>) -> Result<(), JournalError> {
        let record = Record::Done {
            at_ms: now_ms(),
            step: d.context.step_id.clone(),
            attempt: d.context.attempt,
            output: json::to_json(d.output),
            undo: d.undo.map(|u| self.guard(u, d.secret)),
            saved: d.saved.map(|s| self.guard(s, d.secret)),
            result: d.result.map(|r| self.guard(r, d.result_secret)),
            state: d.state.map(|c| self.guard(&c.to_record(), d.secret)),
        };
        // The provider-state writes go in the record's batch: both are there, or neither.
        let mut writes = Batch::new();
        if let Some(change) = d.state {
            change.add_to(&mut writes);
        }
        // Its undo can be read back unless there is none, or it is withheld.
        let undoes = d.undo.is_some() || d.state.is_some();
        let readable = undoes && !(d.secret && self.seal.is_none());
        let seq = self
            .append_numbered(&d.context.txn_id, &record, false, writes)
            .await?;
        self.outcome_at(d.context, readable.then_some(seq));
        Ok(())
    }

    async fn script_done(&self, d: &ScriptUndoDone<'_>) -> Result<(), JournalError> {
        let origin = d.script.origin();
        let record = Record::ScriptDone {
            at_ms: now_ms(),
            step: d.context.step_id.clone(),
            undo: ScriptUndoRecord {
                source: d.script.source().to_string(),
                file: origin.file.clone(),
                line: origin.line,
                column: origin.column,
            },
            vars: self.guard(d.vars, d.secret),
        };
        // Durable before the transaction goes on: the undo script is the only record of
        // what the step's undo needs (its nested calls have their own records).
        Ok(self
            .append(&d.context.txn_id, &record, true, Batch::new())
            .await?)
    }

    async fn step_failed(&self, call: &CallContext, message: &str) -> Result<(), JournalError> {
        let record = Record::Failed {
            at_ms: now_ms(),
            step: call.step_id.clone(),
            attempt: call.attempt,
            message: message.to_string(),
        };
        self.append(&call.txn_id, &record, false, Batch::new())
            .await?;
        self.outcome_at(call, None);
        Ok(())
    }

    async fn step_in_doubt(&self, call: &CallContext, message: &str) -> Result<(), JournalError> {
        let record = Record::InDoubt {
            at_ms: now_ms(),
            step: call.step_id.clone(),
            attempt: call.attempt,
            message: message.to_string(),
        };
        // Rides on the next sync: without it, recovery finds the intent without an
        // outcome, which is in doubt as well.
        Ok(self
            .append(&call.txn_id, &record, false, Batch::new())
            .await?)
    }

    fn state_store(&self) -> Option<Arc<dyn Store>> {
        Some(self.store.clone())
    }

    fn read_back(&self) -> Option<&DurableJournal> {
        Some(self)
    }

    async fn undo_done_with_state(
        &self,
        call: &CallContext,
        state: &crate::StateChange,
    ) -> Result<(), JournalError> {
        let record = Record::Undone {
            at_ms: now_ms(),
            step: call.step_id.clone(),
            attempt: call.attempt,
            error: None,
        };
        // The reversal goes in the undo record's batch: both are there, or neither.
        let mut writes = Batch::new();
        state.add_to(&mut writes);
        Ok(self.append(&call.txn_id, &record, false, writes).await?)
    }

    async fn undo_done(&self, call: &CallContext, error: Option<&str>) -> Result<(), JournalError> {
        let record = Record::Undone {
            at_ms: now_ms(),
            step: call.step_id.clone(),
            attempt: call.attempt,
            error: error.map(str::to_string),
        };
        Ok(self
            .append(&call.txn_id, &record, false, Batch::new())
            .await?)
    }

    async fn phase_done(
        &self,
        call: &CallContext,
        phase: &str,
        error: Option<&str>,
    ) -> Result<(), JournalError> {
        let record = Record::Phase {
            at_ms: now_ms(),
            step: call.step_id.clone(),
            phase: phase.to_string(),
            error: error.map(str::to_string),
        };
        Ok(self
            .append(&call.txn_id, &record, false, Batch::new())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[(u64, Vec<u8>)]) -> Vec<(u64, u64)> {
        chunks
            .iter()
            .flat_map(|(first, c)| {
                let values: Vec<u64> = serde_json::from_slice(c).unwrap();
                values
                    .into_iter()
                    .enumerate()
                    .map(move |(i, v)| (first + i as u64, v))
            })
            .collect()
    }

    #[test]
    fn compaction_keeps_every_record_in_bounded_chunks() {
        let encoded: Vec<(u64, Vec<u8>)> = (0..5000u64)
            .map(|i| (i, format!("{}", i * 1_000_003).into_bytes()))
            .collect();
        let records: Vec<(u64, &[u8])> = encoded.iter().map(|(n, b)| (*n, &b[..])).collect();
        let chunks = compact(&records);
        assert!(chunks.len() > 1, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|(_, c)| c.len() <= CHUNK_BYTES));
        let back = decode(&chunks);
        let want: Vec<(u64, u64)> = (0..5000u64).map(|i| (i, i * 1_000_003)).collect();
        assert_eq!(back, want);
    }

    #[test]
    fn a_gap_in_the_sequence_starts_a_new_chunk_and_a_large_record_stands_alone() {
        let big = format!("\"{}\"", "x".repeat(CHUNK_BYTES * 2));
        let records: Vec<(u64, &[u8])> = vec![
            (0, b"1"),
            (1, b"2"),
            (5, b"3"),
            (6, big.as_bytes()),
            (7, b"4"),
        ];
        let chunks = compact(&records);
        let firsts: Vec<u64> = chunks.iter().map(|(n, _)| *n).collect();
        assert_eq!(firsts, vec![0, 5, 6, 7]);
        assert_eq!(chunks[2].1.len(), big.len() + 2);
    }

    /// Records compacted while a transaction runs, by steps writing concurrently: an
    /// unfinished transaction reads back every record once, in order (what recovery reads
    /// after a crash), with at most a few under their own keys; after its end, all are
    /// chunks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_compacted_as_a_transaction_goes_read_back_whole_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let journal = Arc::new(DurableJournal::new(store.clone(), None, "test"));
        let txn_id: crate::TxnId = "0190f1c2-0000-7000-8000-000000000002".parse().unwrap();
        let txn = &txn_id;
        let failed = |i: usize| Record::Failed {
            at_ms: 0,
            step: format!("step{i}"),
            attempt: 1,
            message: "m".repeat(200 + i % 500),
        };
        let mut tasks = Vec::new();
        for t in 0..8 {
            let journal = journal.clone();
            let txn = txn_id.clone();
            tasks.push(tokio::spawn(async move {
                let txn = &txn;
                for i in 0..250 {
                    let r = failed(t * 1000 + i);
                    journal
                        .append(txn, &r, i % 5 == 0, Batch::new())
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let per_record = |store: &crate::store::SledStore| {
            store
                .scan(Space::Journal, &record_prefix(txn))
                .unwrap()
                .len()
        };
        let check = |n: usize| {
            let records = crate::txn::recovery::records(&journal, txn).unwrap();
            let seqs: Vec<u64> = records.iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>());
            let mut steps: Vec<String> = records
                .iter()
                .filter_map(|(_, r)| match r {
                    Record::Failed { step, .. } => Some(step.clone()),
                    _ => None,
                })
                .collect();
            steps.sort();
            steps.dedup();
            assert_eq!(steps.len(), 2000, "every record once");
        };
        check(2000);
        // ~1,000 KB of records: most are chunks already.
        let left = per_record(&store);
        assert!(left < 200, "{left} records under their own keys");

        let end = Record::State {
            at_ms: 0,
            state: TxnState::Committed,
            message: None,
        };
        journal.append(txn, &end, true, Batch::new()).await.unwrap();
        check(2001);
        assert_eq!(per_record(&store), 0);
    }

    /// Every shape of every record type, as the journal writes them: with and without the
    /// optional parts that set a plan bit.
    fn every_record() -> Vec<Record> {
        let el = || Element::with_text("undo", "u1");
        let guarded = [
            Guarded::Plain(el()),
            Guarded::Sealed("c2VhbGVk".into()),
            Guarded::Withheld,
        ];
        let state = crate::StateRecord {
            provider: "p".into(),
            before: vec![("a2V5".into(), None)],
        };
        let mut all = vec![
            Record::Started {
                at_ms: 1,
                target: "N/P".into(),
                kind: crate::model::ProcKind::Write,
                resumable: true,
                definitions: "h".into(),
                who: "w".into(),
                data: serde_json::json!({"state": 1, "error": "x", "undo": true}),
            },
            Record::StartedV2 {
                at_ms: 1,
                target: "N/P".into(),
                kind: crate::model::ProcKind::Read,
                resumable: false,
                definitions: "h".into(),
                who: "w".into(),
                data: StoredData {
                    chunks: 1,
                    bytes: 2,
                    masked: false,
                },
                audit: false,
            },
            Record::ScriptDone {
                at_ms: 1,
                step: "s[3]".into(),
                undo: ScriptUndoRecord {
                    source: "x".into(),
                    file: "f".into(),
                    line: 1,
                    column: 2,
                },
                vars: Guarded::Plain(serde_json::json!({"error": 1})),
            },
        ];
        for state in [
            TxnState::Running,
            TxnState::Committed,
            TxnState::RollbackFailed,
        ] {
            for message in [None, Some("m".to_string())] {
                all.push(Record::State {
                    at_ms: 1,
                    state,
                    message,
                });
            }
        }
        for g in &guarded {
            all.push(Record::Intent {
                at_ms: 1,
                step: "create[7]".into(),
                attempt: 2,
                namespace: "N".into(),
                procedure: "P".into(),
                provider: "Prov".into(),
                target: "N/P".into(),
                kind: crate::model::ProcKind::Write,
                provider_context: el(),
                input: serde_json::json!({"undo": 1, "state": 2}),
                call_data: g.clone(),
            });
            for undo in [None, Some(g.clone())] {
                for saved in [None, Some(g.clone())] {
                    for result in [None, Some(g.clone())] {
                        for with_state in [false, true] {
                            all.push(Record::Done {
                                at_ms: 1,
                                step: "create[7]".into(),
                                attempt: 1,
                                output: serde_json::json!({"error": "e"}),
                                undo: undo.clone(),
                                saved: saved.clone(),
                                result: result.clone(),
                                state: with_state.then(|| Guarded::Plain(state.clone())),
                            });
                        }
                    }
                }
            }
        }
        for error in [None, Some("bad".to_string())] {
            all.push(Record::Undone {
                at_ms: 1,
                step: "s".into(),
                attempt: 3,
                error: error.clone(),
            });
            for phase in ["prepare", "commit"] {
                all.push(Record::Phase {
                    at_ms: 1,
                    step: "s".into(),
                    phase: phase.into(),
                    error: error.clone(),
                });
            }
        }
        for applied in [false, true] {
            all.push(Record::Resolved {
                at_ms: 1,
                step: "s".into(),
                attempt: 4,
                applied,
                who: "op".into(),
            });
        }
        all.push(Record::Failed {
            at_ms: 1,
            step: "s".into(),
            attempt: 1,
            message: "undo state error".into(),
        });
        all.push(Record::InDoubt {
            at_ms: 1,
            step: "s".into(),
            attempt: 1,
            message: "m".into(),
        });
        // A marker of every form, and none (the intent made durable alone).
        for marker in guarded.iter().cloned().map(Some).chain([None]) {
            all.push(Record::Marker {
                at_ms: 1,
                step: "s".into(),
                attempt: 2,
                marker,
            });
        }
        all
    }

    /// The plan record the journal notes as it appends a record is exactly the one its JSON
    /// decodes to, for every record type (the chunks' plans were made from the JSON before):
    /// a type `plan_of` does not spell out is left to its JSON.
    #[test]
    fn a_plan_noted_at_append_is_the_plan_its_json_decodes_to() {
        let records = every_record();
        let mut types = HashSet::new();
        for r in &records {
            let json = serde_json::to_vec(r).unwrap();
            let decoded: PlanRecord = serde_json::from_slice(&json).unwrap();
            let noted = recovery::plan_of(r);
            assert!(
                noted.is_none_or(|noted| noted == decoded),
                "{}: noted {noted:?}, decoded {decoded:?}",
                String::from_utf8_lossy(&json)
            );
            let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
            types.insert(value["type"].as_str().unwrap().to_string());
        }
        // Every type this build writes has a shape above, and a plan noted for it.
        assert_eq!(types.len(), 12, "{types:?}");
        assert!(records.iter().all(|r| recovery::plan_of(r).is_some()));
        // And a chunk's plan from the noted records is the one made from their JSON.
        let json: Vec<Vec<u8>> = records
            .iter()
            .map(|r| serde_json::to_vec(r).unwrap())
            .collect();
        let from_json = recovery::plan_chunk(json.iter().map(|j| &j[..])).unwrap();
        let noted = recovery::encode_plan(records.iter().map(|r| recovery::plan_of(r).unwrap()));
        assert_eq!(noted, from_json);
    }

    /// A transaction journaled through compactions: every chunk's plan is the one its
    /// records' JSON gives (the plans were noted at append time).
    #[tokio::test]
    async fn the_chunks_plans_are_the_plans_of_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::SledStore::open(dir.path()).unwrap());
        let journal = DurableJournal::new(store.clone(), None, "test");
        let txn: TxnId = "0190f1c2-0000-7000-8000-000000000003".parse().unwrap();
        let records = every_record();
        // Not the first (a start) nor a final state: the chunks are planned as they go.
        let running: Vec<&Record> = records
            .iter()
            .filter(|r| !matches!(r, Record::State { state, .. } if state.is_final()))
            .collect();
        for round in 0..20 {
            for r in &running {
                journal
                    .append(&txn, r, round % 3 == 0, Batch::new())
                    .await
                    .unwrap();
            }
        }
        let txn_prefix = txn.as_bytes().to_vec();
        let all = store.scan(Space::Journal, &txn_prefix).unwrap();
        let mut checked = 0;
        for (k, plan) in &all {
            let Some(rest) = k.strip_prefix(&txn_prefix[..]) else {
                continue;
            };
            if rest.first() != Some(&super::super::records::PLAN_TAG) {
                continue;
            }
            let chunk_key = [
                &txn_prefix[..],
                &[super::super::records::CHUNK_TAG],
                &rest[1..],
            ]
            .concat();
            let chunk = &all
                .iter()
                .find(|(k, _)| *k == chunk_key)
                .expect("its chunk")
                .1;
            let values: Vec<serde_json::Value> = serde_json::from_slice(chunk).unwrap();
            let json: Vec<Vec<u8>> = values
                .iter()
                .map(|v| serde_json::to_vec(v).unwrap())
                .collect();
            let want = recovery::plan_chunk(json.iter().map(|j| &j[..])).unwrap();
            assert_eq!(plan, &want);
            checked += 1;
        }
        assert!(checked > 5, "{checked} chunks");
    }

    #[test]
    fn keys_say_what_they_hold() {
        let id: TxnId = "0190f1c2-0000-7000-8000-000000000001"
            .parse()
            .expect("an id");
        let id = &id;
        assert_eq!(
            JournalKey::parse(id, id.as_bytes()),
            Some(JournalKey::Whole)
        );
        assert_eq!(
            JournalKey::parse(id, &record_key(id, 7)),
            Some(JournalKey::Record(7))
        );
        assert_eq!(
            JournalKey::parse(id, &chunk_key(id, 9)),
            Some(JournalKey::Chunk(9))
        );
        assert_eq!(JournalKey::parse(id, b"other"), None);
        // A chunk key sorts after the transaction's record keys.
        assert!(chunk_key(id, 0) > record_key(id, 1 << 40));
    }
}
