//! Crash recovery and operator commands: finds transactions a crash left `running` or
//! `rolling_back`, settles their in-doubt steps (an intent with no result) through the
//! provider's `recover` (by idempotency key), and rolls them back in reverse dependency
//! order with every undo journaled. `resume_rollback` continues a `rollback_failed` one.

use super::index::{self, IndexError};
use super::journal::{DurableJournal, GuardError};
use super::records::{
    decode, decode_records, now_ms, pinned_key, AuditEntry, DecodeError, Guarded, JournalKey,
    PinnedDefinitions, Record, ScriptUndoRecord, TxnSummary, CHUNK_TAG, FORMAT, PLAN_TAG,
    TRUSTED_REQUEST_PIN,
};
use super::stream::RecordStream;
use crate::compile::{compile_request, Catalog};
use crate::data::Element;
use crate::exec::{journaled_script_undo, SCRIPT_NAMESPACE, SCRIPT_UNDO_TARGET};
use crate::exec::{
    undo_in_dependency_order, Engine, Journal, JournalError, Redactor, StepDone, TxnState,
    UndoError, UndoOrder, WaitedOut,
};
use crate::exec::{Replayed, Resume};
use crate::model::{CallTarget, Format, Namespace, Procedure, Request, RequestTarget, SourceRef};
use crate::provider::{Call, CallContext, Done, Provider};
use crate::script::ScriptOrigin;
use crate::state::{Access, StateChange, StateRecord};
use crate::store::{prefix_end, Batch, KeyRange, Space, StoreError};
use crate::TxnId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What recovery did to one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Transaction id.
    pub txn_id: TxnId,
    /// State found.
    pub from: TxnState,
    /// State left.
    pub to: TxnState,
    /// Calls undone now.
    pub undone: usize,
    /// In-doubt steps found (settled or not).
    pub in_doubt: usize,
    /// What an operator must look at.
    pub problems: Vec<String>,
}

/// Recovery failures (the store could not be read).
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Store problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A summary or record that does not parse.
    #[error("journal record of {txn} cannot be read: {source}")]
    Record {
        /// Transaction.
        txn: String,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// The final state of a recovered transaction could not be journaled.
    #[error("the outcome of recovering {txn} cannot be journaled: {source}\n  hint: run `provisio recover` again once the journal is writable; the transaction is still unfinished there")]
    Journal {
        /// Transaction.
        txn: TxnId,
        /// The journal's failure.
        #[source]
        source: JournalError,
    },
    /// No such transaction (or an ambiguous prefix).
    #[error("{0}")]
    NotFound(String),
    /// The transaction index could not be read or built.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A recovery task panicked or was cancelled.
    #[error("a recovery task failed: {0}\n  hint: run `provisio recover` again; transactions not yet recovered are still in the journal")]
    Task(String),
}

/// Every transaction summary, newest first, optionally only those in `state`. With a state
/// and a built index ([`index::ensure`]) it reads only that state's transactions; otherwise
/// every summary (this never writes, so it never builds the index).
pub fn list(
    journal: &DurableJournal,
    state: Option<TxnState>,
) -> Result<Vec<TxnSummary>, RecoveryError> {
    let store = &**journal.store();
    if let Some(st) = state {
        if index::is_built(store)? {
            let mut out = index::in_state(store, st)?;
            out.sort_by(newest_first);
            return Ok(out);
        }
    }
    let mut out = Vec::new();
    for (k, v) in store.scan(Space::Txns, b"")? {
        let s: TxnSummary = decode(&v).map_err(|source| RecoveryError::Record {
            txn: String::from_utf8_lossy(&k).into_owned(),
            source,
        })?;
        if state.is_none_or(|st| st == s.state) {
            out.push(s);
        }
    }
    out.sort_by(newest_first);
    Ok(out)
}

fn newest_first(a: &TxnSummary, b: &TxnSummary) -> std::cmp::Ordering {
    b.started_ms.cmp(&a.started_ms).then(b.id.cmp(&a.id))
}

/// The states a crash leaves a transaction in that recovery finishes.
const RECOVERED_STATES: [TxnState; 3] =
    [TxnState::Running, TxnState::RollingBack, TxnState::Queued];

/// Every transaction in one of `states`, newest first, through the state index: reads the
/// summaries of those transactions only, whatever the number of finished ones. Builds the
/// index first when it is missing (a journal written before it: every summary is read
/// once, and the index keys written), so call it only where writing is allowed.
pub async fn in_states(
    journal: &DurableJournal,
    states: &[TxnState],
) -> Result<Vec<TxnSummary>, RecoveryError> {
    let store = &**journal.store();
    index::ensure(store).await?;
    let mut out = Vec::new();
    for st in states {
        out.extend(index::in_state(store, *st)?);
    }
    out.sort_by(newest_first);
    Ok(out)
}

/// The transactions that are not over: every one but the committed and rolled-back ones (a
/// `rollback_failed` one may still be resumed, so what providers keep for it must stay).
/// Through the state index, like [`in_states`] (it may build it).
pub async fn live(journal: &DurableJournal) -> Result<Vec<TxnSummary>, RecoveryError> {
    in_states(
        journal,
        &[
            TxnState::Queued,
            TxnState::Running,
            TxnState::RollingBack,
            TxnState::RollbackFailed,
        ],
    )
    .await
}

/// Resolves a full id or a unique prefix of one (reads at most two summaries).
pub fn resolve(journal: &DurableJournal, id: &str) -> Result<TxnSummary, RecoveryError> {
    match index::find(&**journal.store(), id)? {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(RecoveryError::NotFound(format!(
            "no transaction `{id}`\n  hint: `provisio tx list` shows them"
        ))),
        Err(n) => Err(RecoveryError::NotFound(format!(
            "`{id}` matches {}{n} transactions; give more characters",
            if n >= 100 { "at least " } else { "" }
        ))),
    }
}

/// The journal of one transaction, in order, with sequence numbers: its chunks of
/// consecutive records (one array under its id in a journal written before chunks), and
/// the records under their own keys (written since the last chunk, or left by a crash).
pub fn records(
    journal: &DurableJournal,
    txn_id: &TxnId,
) -> Result<Vec<(u64, Record)>, RecoveryError> {
    let bad = |source: DecodeError| RecoveryError::Record {
        txn: txn_id.to_string(),
        source,
    };
    let mut out = Vec::new();
    // A page of store values at a time, each dropped once decoded: the transaction's
    // encoded journal (~0.9 KiB per call) is never held whole beside its records.
    let prefix = txn_id.as_bytes();
    let end = prefix_end(prefix);
    let mut from = prefix.to_vec();
    loop {
        let page = journal.store().scan_range(
            Space::Journal,
            KeyRange::new(&from, end.as_deref()),
            RECORD_VALUES_PER_READ,
            false,
        )?;
        let full = page.len() == RECORD_VALUES_PER_READ;
        if let Some((last, _)) = page.last() {
            from.clone_from(last);
            from.push(0);
        }
        for (k, v) in page {
            decode_into(txn_id, &k, &v, &mut out).map_err(bad)?;
        }
        if !full {
            break;
        }
    }
    out.sort_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// Store values read per call by [`records`] (a chunk holds at most a few KiB of records).
const RECORD_VALUES_PER_READ: usize = 64;

/// Appends the records under journal key `k` (value `v`) of `txn_id` to `out`.
fn decode_into(
    txn_id: &TxnId,
    k: &[u8],
    v: &[u8],
    out: &mut Vec<(u64, Record)>,
) -> Result<(), DecodeError> {
    match JournalKey::parse(txn_id, k) {
        Some(JournalKey::Whole) => {
            let all: Vec<Record> = decode_records(v)?;
            out.extend(all.into_iter().enumerate().map(|(i, r)| (i as u64, r)));
        }
        Some(JournalKey::Chunk(first)) => {
            let all: Vec<Record> = decode_records(v)?;
            out.extend(
                all.into_iter()
                    .enumerate()
                    .map(|(i, r)| (first + i as u64, r)),
            );
        }
        Some(JournalKey::Record(seq)) => out.push((seq, decode_records(v)?)),
        // A key of another transaction whose id starts with this one (ids are fixed width,
        // so only a foreign layout).
        None => {}
    }
    Ok(())
}

/// Finishes every transaction left `running` or `rolling_back` by a crash.
pub async fn recover(
    engine: &Engine,
    journal: &Arc<DurableJournal>,
) -> Result<Vec<Recovered>, RecoveryError> {
    // Through the state index: a journal of a million finished transactions costs a
    // start-up what its unfinished ones do (the first start after an upgrade builds it).
    let unfinished = in_states(journal, &RECOVERED_STATES).await?;
    // Independent transactions recover concurrently, as tasks (so every worker thread takes
    // part) and at most RECOVERY_CONCURRENCY at a time; their journal writes share syncs.
    let limit = Arc::new(tokio::sync::Semaphore::new(RECOVERY_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for s in unfinished {
        // Several processes may share the store (PostgreSQL): a transaction another live
        // process runs or recovers is its own, and is left alone. This process runs
        // nothing while it recovers (at start, or `provisio recover`): what it still holds
        // was cut short in it, and is recovered like the rest.
        journal.store().disown(s.id.as_str());
        if !journal.store().own(s.id.as_str()).await? {
            tracing::info!(txn.id = %s.id, "left to the live process that owns it");
            continue;
        }
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (engine, journal) = (engine.clone(), journal.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let id = s.id.clone();
            let r = recover_one(&engine, &journal, s).await;
            // Recovery's final record gave it up already; not when it stopped short.
            journal.store().disown(id.as_str());
            r
        });
    }
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(r) => out.push(r?),
            Err(e) => return Err(RecoveryError::Task(e.to_string())),
        }
    }
    out.sort_by(|a, b| a.txn_id.cmp(&b.txn_id));
    Ok(out)
}

/// Recovers one transaction left unfinished by a process that stopped (another node of
/// a shared PostgreSQL store died while running it), exactly as [`recover`] does at start:
/// settles its in-doubt steps, resumes or rolls it back. `None`: it is not unfinished, or
/// a live process owns it (it runs there, or is recovered there).
pub async fn recover_txn(
    engine: &Engine,
    journal: &Arc<DurableJournal>,
    id: &str,
) -> Result<Option<Recovered>, RecoveryError> {
    if !journal.store().own(id).await? {
        return Ok(None);
    }
    // Read under ownership: the state another process left before it stopped.
    let found = match index::summary(&**journal.store(), id) {
        Ok(found) => found,
        Err(e) => {
            journal.store().disown(id);
            return Err(e.into());
        }
    };
    let r = match found {
        Some(s) if RECOVERED_STATES.contains(&s.state) => {
            recover_one(engine, journal, s).await.map(Some)
        }
        _ => Ok(None),
    };
    journal.store().disown(id);
    r
}

/// The message recovery journals when it starts rolling a transaction back (kept in its
/// summary when the rollback succeeds): a transaction rolled back with it was cut short
/// by a crash, not ended by its own failure.
pub const RECOVERY_MESSAGE: &str = "recovering after a crash";

/// How many transactions recover at once.
const RECOVERY_CONCURRENCY: usize = 64;

async fn recover_one(
    engine: &Engine,
    journal: &DurableJournal,
    s: TxnSummary,
) -> Result<Recovered, RecoveryError> {
    if s.resumable && s.state == TxnState::Running {
        tracing::warn!(txn.id = %s.id, "resuming a resumable transaction left unfinished");
        match resume(engine, journal, &s).await? {
            Resumption::Resumed(r) => return Ok(r),
            Resumption::NotResumable(why) => {
                tracing::warn!(txn.id = %s.id, reason = %why, "cannot resume; rolling back instead")
            }
        }
    }
    tracing::warn!(txn.id = %s.id, state = %s.state, "recovering a transaction left unfinished");
    roll_back(engine, journal, s).await
}

/// Continues the rollback of a `rollback_failed` transaction after the operator fixed the
/// cause: retries exactly the undos that have not succeeded.
pub async fn resume_rollback(
    engine: &Engine,
    journal: &DurableJournal,
    id: &str,
) -> Result<Recovered, RecoveryError> {
    let s = resolve(journal, id)?;
    if s.state != TxnState::RollbackFailed {
        return Err(RecoveryError::NotFound(format!(
            "transaction {} is {}, not rollback_failed: nothing to resume",
            s.id, s.state
        )));
    }
    roll_back(engine, journal, s).await
}

/// What an operator recorded with [`resolve_step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Transaction id.
    pub txn_id: String,
    /// Step path.
    pub step: String,
    /// The attempts of the step resolved (usually one).
    pub attempts: Vec<u32>,
    /// What was open about it before: `in doubt` or `not undone`.
    pub was: &'static str,
    /// The finding: its effect exists (`true`) or there is nothing to undo (`false`).
    pub applied: bool,
}

/// Records an operator's finding about a step of a `rollback_failed` transaction that is in
/// doubt or whose undo has not succeeded: `applied` (its effect exists: the next
/// `resume_rollback` undoes it) or not (nothing to undo: it is skipped). Journaled with who
/// said so, and audited. Refuses a finished or unfinished transaction, an unknown step, and
/// a step with nothing open (never applied, already undone, or declaring no undo).
pub async fn resolve_step(
    journal: &DurableJournal,
    id: &str,
    step: &str,
    applied: bool,
) -> Result<Resolution, RecoveryError> {
    let s = resolve(journal, id)?;
    match s.state {
        TxnState::RollbackFailed => {}
        TxnState::Committed | TxnState::RolledBack => {
            return Err(RecoveryError::NotFound(format!(
                "transaction {} is {}: it is finished, there is nothing to resolve",
                s.id, s.state
            )))
        }
        _ => {
            return Err(RecoveryError::NotFound(format!(
                "transaction {} is {}, not rollback_failed: run `provisio recover` first; \
                 only what recovery could not settle is resolved by hand",
                s.id, s.state
            )))
        }
    }
    let (next_seq, steps, calls) = calls_of_step(journal, &s.id, step)?;
    let of_step: Vec<&JournaledCall> = calls.iter().filter(|c| c.context.step_id == step).collect();
    if of_step.is_empty() {
        return Err(RecoveryError::NotFound(format!(
            "transaction {} has no step `{step}`; its steps: {}",
            s.id,
            if steps.is_empty() {
                "none".to_string()
            } else {
                steps.join(", ")
            }
        )));
    }
    let open: Vec<(&JournaledCall, &'static str)> = of_step
        .iter()
        .filter_map(|c| c.open_question().map(|q| (*c, q)))
        .collect();
    if open.is_empty() {
        let why = if of_step.iter().any(|c| c.undone) {
            "it was undone"
        } else if of_step.iter().any(|c| c.done.is_some()) {
            "it declared no undo: nothing to undo"
        } else {
            "it failed: it was never applied"
        };
        return Err(RecoveryError::NotFound(format!(
            "step `{step}` of transaction {} is not in doubt and has no failed undo ({why}); nothing to resolve",
            s.id
        )));
    }
    journal.adopt(s.clone(), next_seq);
    let finding = if applied { "applied" } else { "not applied" };
    let mut attempts = Vec::new();
    for (c, was) in &open {
        let record = Record::Resolved {
            at_ms: now_ms(),
            step: step.to_string(),
            attempt: c.context.attempt,
            applied,
            who: journal.who().to_string(),
        };
        let now = now_ms();
        let audit = AuditEntry {
            format: FORMAT,
            txn_id: s.id.clone(),
            who: journal.who().to_string(),
            what: s.target.clone(),
            started_ms: now,
            finished_ms: now,
            outcome: s.state,
            message: Some(format!(
                "tx resolve: step {step} (attempt {}, {was}) recorded as {finding}",
                c.context.attempt
            )),
        };
        let mut extra = Batch::new();
        let mut key = now.to_be_bytes().to_vec();
        key.extend_from_slice(s.id.as_bytes());
        key.extend_from_slice(format!("/resolve/{step}/{}", c.context.attempt).as_bytes());
        extra.put(
            Space::Audit,
            key,
            serde_json::to_vec(&audit).map_err(|e| RecoveryError::Journal {
                txn: s.id.clone(),
                source: JournalError::other(e),
            })?,
        );
        journal
            .append(&s.id, &record, true, extra)
            .await
            .map_err(|e| RecoveryError::Journal {
                txn: s.id.clone(),
                source: e.into(),
            })?;
        attempts.push(c.context.attempt);
    }
    Ok(Resolution {
        txn_id: s.id.to_string(),
        step: step.to_string(),
        attempts,
        was: open[0].1,
        applied,
    })
}

/// A provider call as the journal tells it: its intent, and what became of it.
struct JournaledCall {
    /// Sequence number of the intent.
    intent_seq: u64,
    context: CallContext,
    provider: String,
    /// `Namespace/Procedure` of the leaf.
    target: String,
    /// Shared by the calls of one procedure (consecutive equal contexts are one value).
    provider_context: Arc<Element>,
    /// What it was called with; dropped once it completed or failed (only an in-doubt call
    /// is asked about again).
    call_data: Option<Box<Guarded>>,
    /// The provider's last recovery marker of the call ([`Record::Marker`]), given back to
    /// its `recover`; dropped, as `call_data` is, once the call completed or failed.
    marker: Option<Box<Guarded>>,
    /// It completed (or was settled as applied at recovery).
    done: Option<Completed>,
    /// It failed (or was settled as not applied).
    failed: bool,
    /// Its undo succeeded.
    undone: bool,
    /// The operator's latest finding (`provisio tx resolve`): applied or not.
    resolved: Option<bool>,
}

impl JournaledCall {
    /// Neither completed nor failed, and not found "not applied" by the operator: the
    /// provider may or may not have applied it.
    fn in_doubt(&self) -> bool {
        self.done.is_none() && !self.failed && self.resolved != Some(false)
    }

    /// Completed with something to undo, not undone yet, and not found "not applied" by
    /// the operator (the rule [`CallSlot::to_undo`] follows; the tests compare the two).
    #[cfg(test)]
    fn to_undo(&self) -> bool {
        self.done.as_ref().is_some_and(Completed::has_undo)
            && !self.undone
            && self.resolved != Some(false)
    }

    /// What an operator may resolve about this call, whatever they said before: that it is
    /// in doubt, or that its undo has not succeeded; `None` when there is nothing to say.
    fn open_question(&self) -> Option<&'static str> {
        match &self.done {
            None if !self.failed => Some("in doubt"),
            Some(d) if d.has_undo() && !self.undone => Some("not undone"),
            _ => None,
        }
    }
}

/// A completed call: where its completion is in the journal and what undoes it.
struct Completed {
    /// Sequence number of the completion (the intent's, for a call settled at recovery):
    /// what the undo order was computed from before [`CallSlot`] (the tests compare them).
    #[cfg_attr(not(test), allow(dead_code))]
    seq: u64,
    /// The provider's undo record (`None`: nothing to undo).
    undo: Option<Guarded>,
    /// A script step's undo script and its inputs (instead of a provider's undo record).
    script: Option<Box<(ScriptUndoRecord, Guarded<serde_json::Value>)>>,
    /// The values its provider-state writes replaced (what reverses them).
    state: Option<Box<Guarded<StateRecord>>>,
}

impl Completed {
    fn has_undo(&self) -> bool {
        self.undo.is_some() || self.script.is_some() || self.state.is_some()
    }
}

/// Rolls back what the journal says was done and not yet undone, settling in-doubt calls
/// first, and journals the outcome.
async fn roll_back(
    engine: &Engine,
    journal: &DurableJournal,
    summary: TxnSummary,
) -> Result<Recovered, RecoveryError> {
    // The provider-state keys its reversals lock go when it is recovered (or given up).
    let _locks = crate::state::Release::new(engine.state().clone(), summary.id.clone());
    // The journal is read once, a few store values at a time, into 24 bytes per call
    // (where its records are, what became of it); each undo reads its call's records back
    // from the store when it runs. Memory follows the calls' count, not their contents.
    let (mut calls, next_seq) = plan_calls(&**journal.store(), &summary.id)?;
    journal.adopt(summary.clone(), next_seq);
    // Nothing is undone unless the journal can say so: with the journal unwritable the
    // transaction stays unfinished there, and the next recovery starts over.
    journal
        .txn_state(&summary.id, TxnState::RollingBack, Some(RECOVERY_MESSAGE))
        .await
        .map_err(|source| RecoveryError::Journal {
            txn: summary.id.clone(),
            source,
        })?;
    let mut problems = Vec::new();
    let reader = std::sync::Mutex::new(RecordReader::new(&**journal.store(), &summary.id));
    let (in_doubt, settled) =
        settle_slots(engine, journal, &reader, &mut calls, &mut problems).await;
    let (order, pending) = undo_plan(&calls);
    let undone = run_slot_undos(
        engine,
        journal,
        &reader,
        &calls,
        &settled,
        (&order, &pending),
        &mut problems,
    )
    .await;
    let to = if problems.is_empty() {
        TxnState::RolledBack
    } else {
        TxnState::RollbackFailed
    };
    let message = (!problems.is_empty()).then(|| problems.join("; "));
    journal
        .txn_state(&summary.id, to, message.as_deref())
        .await
        .map_err(|source| RecoveryError::Journal {
            txn: summary.id.clone(),
            source,
        })?;
    if to == TxnState::RolledBack {
        // The plan read no provider names (it decodes no record whole), so every provider
        // hears of it: a rollback is rare, and one told of a transaction it never saw has
        // nothing to drop (`Provider::transaction_over` is cheap and idempotent).
        engine.transaction_over(&summary.id).await;
    }
    Ok(Recovered {
        txn_id: summary.id,
        from: summary.state,
        to,
        undone,
        in_doubt,
        problems,
    })
}

/// The provider calls of a transaction, in the order of their intents, with their
/// completions, failures and successful undos. Takes the records apart as it goes (their
/// parts move into the calls), so the two are not held whole side by side.
/// `tx resolve`'s read of a journal, streamed ([`RecordStream`]): the calls of `step` only
/// (the other steps' records are dropped as they are read), the sequence number after the
/// last record, and the names of the transaction's calls in order (consecutive repeats
/// once, as a message lists them), so a 100,000-call journal is never held whole.
fn calls_of_step(
    journal: &DurableJournal,
    txn_id: &TxnId,
    step: &str,
) -> Result<(u64, Vec<String>, Vec<JournaledCall>), RecoveryError> {
    let mut next_seq = 0;
    let mut steps: Vec<String> = Vec::new();
    let mut scripts: HashSet<String> = HashSet::new();
    let stream = RecordStream::new(&**journal.store(), txn_id).filter(|r| {
        let Ok((seq, record)) = r else {
            return true;
        };
        next_seq = seq + 1;
        let (name, new_call) = match record {
            Record::Intent { step, .. } => (step, true),
            // A resumed transaction's script step is journaled again as the same call.
            Record::ScriptDone { step, .. } => (step, scripts.insert(step.clone())),
            Record::Done { step, .. }
            | Record::Failed { step, .. }
            | Record::InDoubt { step, .. }
            | Record::Marker { step, .. }
            | Record::Undone { step, .. }
            | Record::Resolved { step, .. }
            | Record::Phase { step, .. } => (step, false),
            // Not of a call (the start, state changes): kept, as before.
            _ => return true,
        };
        if new_call && steps.last() != Some(name) {
            steps.push(name.clone());
        }
        name == step
    });
    let calls = journaled_calls(txn_id, stream)?;
    Ok((next_seq, steps, calls))
}

fn journaled_calls(
    txn_id: &TxnId,
    records: impl IntoIterator<Item = Result<(u64, Record), RecoveryError>>,
) -> Result<Vec<JournaledCall>, RecoveryError> {
    let mut calls: Vec<JournaledCall> = Vec::new();
    let mut index: HashMap<(String, u32), usize> = HashMap::new();
    for record in records {
        let (seq, r) = record?;
        match r {
            Record::Intent {
                step,
                attempt,
                namespace,
                procedure,
                provider,
                target,
                provider_context,
                call_data,
                ..
            } => {
                index.insert((step.clone(), attempt), calls.len());
                let provider_context = match calls.last() {
                    Some(last) if *last.provider_context == provider_context => {
                        last.provider_context.clone()
                    }
                    _ => Arc::new(provider_context),
                };
                calls.push(JournaledCall {
                    intent_seq: seq,
                    context: CallContext {
                        txn_id: txn_id.clone(),
                        step_id: step,
                        attempt,
                        namespace,
                        procedure,
                    },
                    provider,
                    target,
                    provider_context,
                    call_data: Some(Box::new(call_data)),
                    marker: None,
                    done: None,
                    failed: false,
                    undone: false,
                    resolved: None,
                });
            }
            Record::ScriptDone {
                step, undo, vars, ..
            } => {
                let done = Some(Completed {
                    seq,
                    undo: None,
                    script: Some(Box::new((undo, vars))),
                    state: None,
                });
                // A resumed transaction runs its script steps again: the latest record of
                // a step stands for it.
                if let Some(&i) = index.get(&(step.clone(), 1)) {
                    if calls[i].done.as_ref().is_some_and(|d| d.script.is_some()) {
                        calls[i].intent_seq = seq;
                        calls[i].done = done;
                        calls[i].undone = false;
                        continue;
                    }
                }
                index.insert((step.clone(), 1), calls.len());
                let procedure = step.rsplit('/').next().unwrap_or(&step).to_string();
                calls.push(JournaledCall {
                    intent_seq: seq,
                    context: CallContext {
                        txn_id: txn_id.clone(),
                        step_id: step,
                        attempt: 1,
                        namespace: SCRIPT_NAMESPACE.to_string(),
                        procedure,
                    },
                    provider: SCRIPT_NAMESPACE.to_string(),
                    target: SCRIPT_UNDO_TARGET.to_string(),
                    provider_context: Arc::new(Element::new("providerContext")),
                    call_data: None,
                    marker: None,
                    done,
                    failed: false,
                    undone: false,
                    resolved: None,
                });
            }
            Record::Resolved {
                step,
                attempt,
                applied,
                ..
            } => {
                if let Some(&i) = index.get(&(step, attempt)) {
                    calls[i].resolved = Some(applied);
                }
            }
            Record::Done {
                step,
                attempt,
                undo,
                state,
                ..
            } => {
                if let Some(&i) = index.get(&(step, attempt)) {
                    calls[i].done = Some(Completed {
                        seq,
                        undo,
                        script: None,
                        state: state.map(Box::new),
                    });
                    calls[i].call_data = None;
                    calls[i].marker = None;
                }
            }
            Record::Failed { step, attempt, .. } => {
                if let Some(&i) = index.get(&(step, attempt)) {
                    calls[i].failed = true;
                    calls[i].call_data = None;
                    calls[i].marker = None;
                }
            }
            Record::Marker {
                step,
                attempt,
                marker: Some(marker),
                ..
            } => {
                if let Some(&i) = index.get(&(step, attempt)) {
                    if calls[i].in_doubt() {
                        calls[i].marker = Some(Box::new(marker));
                    }
                }
            }
            Record::Undone {
                step,
                attempt,
                error: None,
                ..
            } => {
                if let Some(&i) = index.get(&(step, attempt)) {
                    calls[i].undone = true;
                }
            }
            _ => {}
        }
    }
    Ok(calls)
}

/// Asks the provider of every in-doubt call whether the call with its idempotency key was
/// applied (a transient answer is asked again under the provider's `settle` retry policy),
/// and marks it done (to be undone) or failed. Returns how many were in doubt;
/// what cannot be settled goes to `problems`.
async fn settle_in_doubt(
    engine: &Engine,
    journal: &DurableJournal,
    calls: &mut [JournaledCall],
    problems: &mut Vec<String>,
) -> usize {
    let mut in_doubt = 0;
    for c in calls.iter_mut().filter(|c| c.in_doubt()) {
        in_doubt += 1;
        let Some(provider) = engine.registry().get(&c.provider).cloned() else {
            problems.push(format!(
                "step {step}: provider `{}` is not registered; cannot settle the in-doubt call \
                 (register it, or check by hand and `provisio tx resolve {} {step} --applied|--not-applied`)",
                c.provider,
                c.context.txn_id,
                step = c.context.step_id,
            ));
            continue;
        };
        let data = match c.call_data.as_deref().map(|d| journal.unguard(d)) {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                problems.push(format!("step {} was in doubt: {e}", c.context.step_id));
                continue;
            }
            // Dropped only once the call completed or failed (then it is not in doubt).
            None => {
                problems.push(format!(
                    "step {} was in doubt and its journaled input is missing",
                    c.context.step_id
                ));
                continue;
            }
        };
        // The provider's marker of the call, when it kept one in the journal: without it
        // (sealed, no seal key) its recover would take the call for one that changed nothing.
        let marker = match c.marker.as_deref().map(|m| journal.unguard(m)).transpose() {
            Ok(marker) => marker,
            Err(e) => {
                problems.push(format!(
                    "step {} was in doubt and its provider's marker cannot be read: {e}",
                    c.context.step_id
                ));
                continue;
            }
        };
        let call = Call {
            context: c.context.clone(),
            provider_context: (*c.provider_context).clone(),
            execute_data: data,
            state: engine
                .state()
                .handle(&c.context.txn_id, &c.provider, Access::Read("recover")),
            intent: crate::provider::IntentBarrier::recovered(marker),
        };
        // Retryable answers are asked again under the provider's `settle` retry policy.
        let settled = engine
            .recover_call(provider.as_ref(), &call, &Redactor::default())
            .await;
        call.state.call_finished();
        match settled {
            Ok(Some(undo)) => {
                tracing::info!(step = %c.context.step_id, "in-doubt call was applied; it will be undone");
                journal_settlement(
                    &c.context,
                    journal
                        .step_done(&StepDone {
                            context: &c.context,
                            output: &Element::new("executeData"),
                            undo: Some(&undo),
                            saved: None,
                            secret: false,
                            result: None,
                            result_secret: false,
                            state: None,
                        })
                        .await,
                );
                c.done = Some(Completed {
                    seq: c.intent_seq,
                    undo: Some(Guarded::Plain(undo)),
                    script: None,
                    state: None,
                });
            }
            Ok(None) if c.resolved == Some(true) => problems.push(format!(
                "step {step} ({target}): recorded as applied by an operator, but the provider finds no such call; \
                 check again, then `provisio tx resolve {txn} {step} --applied|--not-applied`",
                step = c.context.step_id,
                target = c.target,
                txn = c.context.txn_id,
            )),
            Ok(None) => {
                tracing::info!(step = %c.context.step_id, "in-doubt call was not applied");
                journal_settlement(
                    &c.context,
                    journal
                        .step_failed(&c.context, "not applied (settled at recovery)")
                        .await,
                );
                c.failed = true;
            }
            Err(e) if c.resolved == Some(true) => problems.push(format!(
                "step {step} ({target}): recorded as applied by an operator, but the provider cannot give its undo record: {e}; \
                 undo it by hand, then `provisio tx resolve {txn} {step} --not-applied`",
                step = c.context.step_id,
                target = c.target,
                txn = c.context.txn_id,
            )),
            Err(e) => problems.push(format!(
                "step {step} ({target}) was in doubt and the provider cannot tell whether it was applied: {e}; \
                 check it by hand, then `provisio tx resolve {txn} {step} --applied|--not-applied`",
                step = c.context.step_id,
                target = c.target,
                txn = c.context.txn_id,
            )),
        }
    }
    in_doubt
}

/// Logs a settlement of an in-doubt call that could not be journaled. Recovery goes on: the
/// settlement is only a shortcut, since a later recovery that finds the call still in doubt
/// asks the provider again by the same idempotency key.
fn journal_settlement(context: &CallContext, written: Result<(), JournalError>) {
    if let Err(e) = written {
        tracing::warn!(
            txn.id = %context.txn_id,
            step = %context.step_id,
            error = %e,
            "cannot journal how an in-doubt call was settled; if recovery stops before this transaction is finished, the next recovery asks the provider again"
        );
    }
}

/// A provider call as a rollback plans it: where its records are in the journal and what
/// became of it — 24 bytes, whatever the call carried. Its records are read back from the
/// store when its undo runs ([`RecordReader`]), so recovering 100,000 calls holds 100,000 of
/// these, not 100,000 calls' contexts, inputs and undo records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CallSlot {
    /// Sequence number of its intent (of its `script_done` record for a script step).
    intent_seq: u64,
    /// Sequence number of its completion (of the intent for a call settled now) with
    /// [`slot::DONE`]; without it, of its provider's last recovery marker with a marker
    /// ([`Record::Marker`]; 0: none, the transaction's first record is its start): kept
    /// while the call is in flight, so that settling it reads the marker back without
    /// another pass over the journal.
    done_seq: u64,
    /// What became of it: the [`slot`] bits.
    flags: u8,
}

/// The bits of [`CallSlot::flags`].
mod slot {
    /// It completed (or was settled as applied).
    pub(super) const DONE: u8 = 1;
    /// It failed (or was settled as not applied).
    pub(super) const FAILED: u8 = 2;
    /// Its undo succeeded.
    pub(super) const UNDONE: u8 = 4;
    /// An operator recorded a finding (`provisio tx resolve`) ...
    pub(super) const RESOLVED: u8 = 8;
    /// ... and the finding is "applied".
    pub(super) const APPLIED: u8 = 16;
    /// Its completion carries an undo record or an undo script (the provider is called).
    pub(super) const UNDO: u8 = 32;
    /// Its completion reverses provider-state writes.
    pub(super) const STATE: u8 = 64;
    /// A script step (its one record is the `script_done`).
    pub(super) const SCRIPT: u8 = 128;
}

impl CallSlot {
    fn has(self, bits: u8) -> bool {
        self.flags & bits == bits
    }

    fn resolved_not_applied(self) -> bool {
        self.has(slot::RESOLVED) && !self.has(slot::APPLIED)
    }

    /// As [`JournaledCall::in_doubt`].
    fn in_doubt(self) -> bool {
        !self.has(slot::DONE) && !self.has(slot::FAILED) && !self.resolved_not_applied()
    }

    /// As [`JournaledCall::to_undo`].
    fn to_undo(self) -> bool {
        self.has(slot::DONE)
            && self.flags & (slot::UNDO | slot::STATE) != 0
            && !self.has(slot::UNDONE)
            && !self.resolved_not_applied()
    }

    /// The sequence number of the call's last marker, while it is not completed.
    fn marker_seq(self) -> Option<u64> {
        (!self.has(slot::DONE) && self.done_seq != 0).then_some(self.done_seq)
    }

    /// Completed, what it completed with replacing what it had.
    fn complete(&mut self, seq: u64, bits: u8) {
        self.done_seq = seq;
        self.flags = (self.flags & !(slot::UNDO | slot::STATE | slot::SCRIPT)) | slot::DONE | bits;
    }
}

/// A call's identity in the journal (its step and attempt) as 128 bits of SHA-256, so that
/// the planning index holds no step names. Stored in the chunks' plans
/// ([`plan_chunk`]), so it must not change between builds (std's hasher may).
fn call_key(step: &str, attempt: u32) -> u128 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update((step.len() as u64).to_be_bytes());
    h.update(step.as_bytes());
    h.update(attempt.to_be_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

/// The calls of a transaction as its rollback plans them, and the sequence number after its
/// last record. Read from the chunks' plans ([`PLAN_TAG`]) and the records under their own
/// keys when its chunks have plans: the chunks themselves (~60 MiB at 100,000 calls, held
/// in sled's cache once read: sled 0.34 evicts only once 64 accesses queued in one of 256
/// shards, which one forward pass never does) are not read. A journal written before plans,
/// or with a gap in its records' numbers (a write that failed, or a chunk without its plan),
/// is planned from its records.
fn plan_calls(
    store: &dyn crate::store::Store,
    txn_id: &TxnId,
) -> Result<(Vec<CallSlot>, u64), RecoveryError> {
    let plans = [txn_id.as_bytes(), &[PLAN_TAG]].concat();
    let planned = !store
        .scan_range(
            Space::Journal,
            KeyRange::new(&plans, prefix_end(&plans).as_deref()),
            1,
            false,
        )?
        .is_empty();
    if planned {
        let (mut next_seq, mut gap) = (0, false);
        let stream = RecordStream::<PlanRecord>::with_chunks(store, txn_id, PLAN_TAG, decode_plan)
            .map(|r| {
                r.inspect(|(seq, _)| {
                    gap |= *seq != next_seq;
                    next_seq = seq + 1;
                })
            });
        let calls = call_slots(stream)?;
        if !gap {
            return Ok((calls, next_seq));
        }
        tracing::debug!(txn.id = %txn_id, "a gap in the planned records: planning from the records");
    }
    let mut next_seq = 0;
    let stream = RecordStream::<PlanRecord>::decoding(store, txn_id)
        .map(|r| r.inspect(|(seq, _)| next_seq = seq + 1));
    let calls = call_slots(stream)?;
    Ok((calls, next_seq))
}

/// A journal record as recovery's plan reads it ([`call_slots`]): its type and the few
/// fields that say which call it is about and what became of it. The decoder skips the rest
/// (inputs, outputs, contexts, undo records) without building it: the plan's pass over a
/// transaction of 100,000 calls decoded every record whole, and each undo decoded its
/// chunk again (recovery's CPU doubled). Read as a [`PlanRecord`].
#[derive(Debug, Clone, serde::Deserialize)]
struct SlotRecord {
    #[serde(rename = "type")]
    kind: SlotKind,
    #[serde(default)]
    step: String,
    #[serde(default)]
    attempt: u32,
    #[serde(default)]
    applied: bool,
    /// Present (not null) in a completion with an undo record.
    #[serde(default)]
    undo: Option<serde::de::IgnoredAny>,
    /// Present in a completion with provider-state writes.
    #[serde(default)]
    state: Option<serde::de::IgnoredAny>,
    /// Present in an undo record of an undo that failed.
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
    /// Present (not null) in a marker record that holds a marker.
    #[serde(default)]
    marker: Option<serde::de::IgnoredAny>,
}

/// The [`Record`] types [`call_slots`] reads (`type` tags); the others are skipped. The
/// discriminants are their codes in a chunk's plan ([`plan_chunk`]): never change one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum SlotKind {
    Intent = 1,
    ScriptDone = 2,
    Resolved = 3,
    Done = 4,
    Failed = 5,
    Undone = 6,
    Marker = 7,
    #[serde(other)]
    Other = 0,
}

impl SlotKind {
    fn from_code(code: u8) -> Option<SlotKind> {
        [
            SlotKind::Other,
            SlotKind::Intent,
            SlotKind::ScriptDone,
            SlotKind::Resolved,
            SlotKind::Done,
            SlotKind::Failed,
            SlotKind::Undone,
            SlotKind::Marker,
        ]
        .get(usize::from(code))
        .copied()
    }
}

/// What [`call_slots`] needs of one record: its type, the call it is about ([`call_key`]
/// of its step and attempt; a `script_done` is attempt 1; 0 for records of no call) and the
/// [`plan_bit`]s. Decoded from a record's JSON (through [`SlotRecord`]) or from a chunk's
/// plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "SlotRecord")]
pub(crate) struct PlanRecord {
    kind: SlotKind,
    call: u128,
    bits: u8,
}

/// The bits of [`PlanRecord::bits`] (stored in the chunks' plans: never change one).
mod plan_bit {
    /// A `resolved` record's finding is "applied".
    pub(super) const APPLIED: u8 = 1;
    /// A `done` record carries an undo record.
    pub(super) const UNDO: u8 = 2;
    /// A `done` record reverses provider-state writes.
    pub(super) const STATE: u8 = 4;
    /// An `undone` record of an undo that failed.
    pub(super) const ERROR: u8 = 8;
}

impl From<SlotRecord> for PlanRecord {
    fn from(r: SlotRecord) -> PlanRecord {
        // A marker record without a marker (the intent made durable alone) is of no use
        // to the plan: planned as a record of no call.
        let kind = match r.kind {
            SlotKind::Marker if r.marker.is_none() => SlotKind::Other,
            kind => kind,
        };
        let call = match kind {
            SlotKind::Other => 0,
            SlotKind::ScriptDone => call_key(&r.step, 1),
            _ => call_key(&r.step, r.attempt),
        };
        let mut bits = 0;
        for (on, bit) in [
            (r.applied, plan_bit::APPLIED),
            (r.undo.is_some(), plan_bit::UNDO),
            (r.state.is_some(), plan_bit::STATE),
            (r.error.is_some(), plan_bit::ERROR),
        ] {
            if on {
                bits |= bit;
            }
        }
        PlanRecord { kind, call, bits }
    }
}

/// The format byte a chunk's plan starts with.
const PLAN_FORMAT: u8 = 1;

/// The plan of a chunk of compacted records (the records' JSON, in order), written beside
/// it under [`super::records::plan_key`]: a format byte, then per record a byte (its
/// [`SlotKind`] code in the low nibble, its [`plan_bit`]s in the high one) and, for a record
/// of a call, its 16-byte [`call_key`] — 17 bytes a call's record.
pub(crate) fn plan_chunk<'r>(
    records: impl IntoIterator<Item = &'r [u8]>,
) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = vec![PLAN_FORMAT];
    for json in records {
        let r: PlanRecord = serde_json::from_slice(json)?;
        out.push(r.kind as u8 | r.bits << 4);
        if r.kind != SlotKind::Other {
            out.extend_from_slice(&r.call.to_be_bytes());
        }
    }
    Ok(out)
}

/// Reads a chunk's plan written by [`plan_chunk`].
fn decode_plan(bytes: &[u8]) -> Result<Vec<PlanRecord>, DecodeError> {
    let bad = |why: &str| DecodeError::Malformed {
        what: "a chunk's plan",
        source: <serde_json::Error as serde::de::Error>::custom(why),
    };
    let Some((&format, mut rest)) = bytes.split_first() else {
        return Err(bad("empty"));
    };
    if format != PLAN_FORMAT {
        return Err(bad(&format!("unknown plan format {format}")));
    }
    let mut out = Vec::with_capacity(rest.len() / 17 + 1);
    while let Some((&head, tail)) = rest.split_first() {
        let kind = SlotKind::from_code(head & 0x0f).ok_or_else(|| bad("unknown record type"))?;
        let (call, tail) = if kind == SlotKind::Other {
            (0, tail)
        } else {
            let key: [u8; 16] = tail
                .get(..16)
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| bad("truncated"))?;
            (u128::from_be_bytes(key), &tail[16..])
        };
        out.push(PlanRecord {
            kind,
            call,
            bits: head >> 4,
        });
        rest = tail;
    }
    Ok(out)
}

/// Where each call is in [`call_slots`]'s list, by [`call_key`]: 24 bytes an entry (a
/// `u128` key is aligned to 16 bytes, and made an entry of 32 with a `usize`).
#[derive(Default)]
struct CallIndex(HashMap<(u64, u64), u32>);

impl CallIndex {
    fn split(key: u128) -> (u64, u64) {
        ((key >> 64) as u64, key as u64)
    }

    fn insert(&mut self, key: u128, at: usize) {
        // A transaction of 4 billion calls does not fit in memory as slots either.
        let at = u32::try_from(at).unwrap_or(u32::MAX);
        self.0.insert(CallIndex::split(key), at);
    }

    fn get(&self, key: u128) -> Option<usize> {
        self.0.get(&CallIndex::split(key)).map(|&at| at as usize)
    }
}

/// The calls of a transaction as [`journaled_calls`] finds them, reduced to [`CallSlot`]s:
/// the same rules (the latest intent of a step and attempt stands for it; a script step run
/// again replaces its record), none of the records' contents kept (nor decoded: see
/// [`SlotRecord`]).
fn call_slots(
    records: impl IntoIterator<Item = Result<(u64, PlanRecord), RecoveryError>>,
) -> Result<Vec<CallSlot>, RecoveryError> {
    let mut calls: Vec<CallSlot> = Vec::new();
    let mut index = CallIndex::default();
    for record in records {
        let (seq, r) = record?;
        match r.kind {
            SlotKind::Intent => {
                index.insert(r.call, calls.len());
                calls.push(CallSlot {
                    intent_seq: seq,
                    done_seq: 0,
                    flags: 0,
                });
            }
            SlotKind::ScriptDone => {
                let key = r.call;
                if let Some(i) = index.get(key) {
                    if calls[i].has(slot::DONE | slot::SCRIPT) {
                        calls[i].intent_seq = seq;
                        calls[i].complete(seq, slot::SCRIPT | slot::UNDO);
                        calls[i].flags &= !slot::UNDONE;
                        continue;
                    }
                }
                index.insert(key, calls.len());
                calls.push(CallSlot {
                    intent_seq: seq,
                    done_seq: seq,
                    flags: slot::DONE | slot::SCRIPT | slot::UNDO,
                });
            }
            SlotKind::Resolved => {
                if let Some(i) = index.get(r.call) {
                    calls[i].flags |= slot::RESOLVED;
                    if r.bits & plan_bit::APPLIED != 0 {
                        calls[i].flags |= slot::APPLIED;
                    } else {
                        calls[i].flags &= !slot::APPLIED;
                    }
                }
            }
            SlotKind::Done => {
                if let Some(i) = index.get(r.call) {
                    let mut bits = 0;
                    if r.bits & plan_bit::UNDO != 0 {
                        bits |= slot::UNDO;
                    }
                    if r.bits & plan_bit::STATE != 0 {
                        bits |= slot::STATE;
                    }
                    calls[i].complete(seq, bits);
                }
            }
            SlotKind::Failed => {
                if let Some(i) = index.get(r.call) {
                    calls[i].flags |= slot::FAILED;
                }
            }
            SlotKind::Marker => {
                if let Some(i) = index.get(r.call) {
                    if !calls[i].has(slot::DONE) {
                        calls[i].done_seq = seq;
                    }
                }
            }
            SlotKind::Undone if r.bits & plan_bit::ERROR == 0 => {
                if let Some(i) = index.get(r.call) {
                    calls[i].flags |= slot::UNDONE;
                }
            }
            _ => {}
        }
    }
    Ok(calls)
}

/// The undos still to run, as [`CallSlot`] indices, and their dependency order: ordered by
/// when calls completed and started, the provider-state writers chained (see
/// [`chain_state_undos`]). Only sequence numbers are read: no record is opened here. Both
/// are held through the undo phase: 12 bytes a call (indices fit in 32 bits: see
/// [`UndoOrder`]).
fn undo_plan(calls: &[CallSlot]) -> (Vec<UndoOrder>, Vec<u32>) {
    let mut done_seqs: Vec<u64> = calls
        .iter()
        .filter(|c| c.has(slot::DONE))
        .map(|c| c.done_seq)
        .collect();
    done_seqs.sort_unstable();
    let completed_before = |seq: u64| done_seqs.partition_point(|&d| d < seq);
    // Sized once: grown by doubling they held up to twice their 24 bytes a call.
    let count = calls.iter().filter(|c| c.to_undo()).count();
    let mut order = Vec::with_capacity(count);
    let mut pending = Vec::with_capacity(count);
    for (i, c) in calls.iter().enumerate() {
        if !c.to_undo() {
            continue;
        }
        order.push(UndoOrder::new(
            completed_before(c.intent_seq),
            completed_before(c.done_seq),
        ));
        pending.push(u32::try_from(i).unwrap_or(u32::MAX));
    }
    chain_state_undos(&mut order, |k| calls[pending[k] as usize].has(slot::STATE));
    (order, pending)
}

/// Reads single records of one transaction back from the store by sequence number, for the
/// undos as they run: a per-record key, or the chunk holding it (the last few chunks read are
/// kept decoded: undos in reverse order read each chunk once), or the whole array of a
/// journal written before chunks.
struct RecordReader<'a> {
    store: &'a dyn crate::store::Store,
    txn_id: TxnId,
    /// Decoded chunks, the most recently used last: (first sequence number, records).
    chunks: Vec<(u64, Vec<Record>)>,
}

/// Chunks a [`RecordReader`] keeps decoded (a chunk is at most a few KiB of records).
const READER_CHUNKS: usize = 4;

impl<'a> RecordReader<'a> {
    fn new(store: &'a dyn crate::store::Store, txn_id: &TxnId) -> RecordReader<'a> {
        RecordReader {
            store,
            txn_id: txn_id.clone(),
            chunks: Vec::new(),
        }
    }

    fn bad(&self, source: DecodeError) -> RecoveryError {
        RecoveryError::Record {
            txn: self.txn_id.to_string(),
            source,
        }
    }

    /// The record numbered `seq`; `None` when the journal has none.
    fn record(&mut self, seq: u64) -> Result<Option<Record>, RecoveryError> {
        if let Some(r) = self.cached(seq) {
            return Ok(Some(r));
        }
        let id = self.txn_id.as_bytes();
        let key = [id, &seq.to_be_bytes()].concat();
        if let Some(v) = self.store.get(Space::Journal, &key)? {
            return decode_records(&v).map(Some).map_err(|e| self.bad(e));
        }
        // The chunk with the greatest first number not above `seq`.
        let chunk_from = [id, &[CHUNK_TAG]].concat();
        let chunk_end = [id, &[CHUNK_TAG], &(seq + 1).to_be_bytes()[..]].concat();
        let rows = self.store.scan_range(
            Space::Journal,
            KeyRange::new(&chunk_from, Some(&chunk_end)),
            1,
            true,
        )?;
        let found = match rows.into_iter().next() {
            Some((k, v)) => match JournalKey::parse(&self.txn_id, &k) {
                Some(JournalKey::Chunk(first)) => Some((first, v)),
                _ => None,
            },
            None => None,
        };
        let (first, v) = match found {
            Some(found) => found,
            // A journal written before chunks: its records are one array under the id.
            None => match self.store.get(Space::Journal, id)? {
                Some(v) => (0, v),
                None => return Ok(None),
            },
        };
        let records: Vec<Record> = decode_records(&v).map_err(|e| self.bad(e))?;
        if self.chunks.len() == READER_CHUNKS {
            self.chunks.remove(0);
        }
        self.chunks.push((first, records));
        Ok(self.cached(seq))
    }

    fn cached(&mut self, seq: u64) -> Option<Record> {
        let k = self
            .chunks
            .iter()
            .position(|(first, records)| seq >= *first && seq - first < records.len() as u64)?;
        let hit = self.chunks.remove(k);
        let r = hit.1[(seq - hit.0) as usize].clone();
        self.chunks.push(hit);
        Some(r)
    }
}

/// A call's intent read back: what its undo (or its settlement) is made with.
struct CallHead {
    context: CallContext,
    provider: String,
    target: String,
    provider_context: Element,
    call_data: Option<Guarded>,
    /// A script step's undo script and its inputs.
    script: Option<(ScriptUndoRecord, Guarded<serde_json::Value>)>,
}

/// The head of call `c` read back from the journal: its intent, or for a script step its
/// `script_done` record.
fn call_head(reader: &mut RecordReader<'_>, c: &CallSlot) -> Result<CallHead, String> {
    let txn_id = reader.txn_id.clone();
    match reader.record(c.intent_seq).map_err(|e| e.to_string())? {
        Some(Record::Intent {
            step,
            attempt,
            namespace,
            procedure,
            provider,
            target,
            provider_context,
            call_data,
            ..
        }) => Ok(CallHead {
            context: CallContext {
                txn_id,
                step_id: step,
                attempt,
                namespace,
                procedure,
            },
            provider,
            target,
            provider_context,
            call_data: Some(call_data),
            script: None,
        }),
        Some(Record::ScriptDone {
            step, undo, vars, ..
        }) => {
            let procedure = step.rsplit('/').next().unwrap_or(&step).to_string();
            Ok(CallHead {
                context: CallContext {
                    txn_id,
                    step_id: step,
                    attempt: 1,
                    namespace: SCRIPT_NAMESPACE.to_string(),
                    procedure,
                },
                provider: SCRIPT_NAMESPACE.to_string(),
                target: SCRIPT_UNDO_TARGET.to_string(),
                provider_context: Element::new("providerContext"),
                call_data: None,
                script: Some((undo, vars)),
            })
        }
        Some(_) | None => Err(format!(
            "journal record {} of {} is not the call's intent",
            c.intent_seq, reader.txn_id
        )),
    }
}

fn lock_reader<'r, 'a>(
    reader: &'r std::sync::Mutex<RecordReader<'a>>,
) -> std::sync::MutexGuard<'r, RecordReader<'a>> {
    reader.lock().unwrap_or_else(|e| e.into_inner())
}

/// Settles the in-doubt calls as [`settle_in_doubt`] does, each read back from the journal
/// (a crash leaves at most the calls that were in flight in doubt). Returns how many were in
/// doubt and the undo records of those found applied (by call index).
async fn settle_slots(
    engine: &Engine,
    journal: &DurableJournal,
    reader: &std::sync::Mutex<RecordReader<'_>>,
    calls: &mut [CallSlot],
    problems: &mut Vec<String>,
) -> (usize, HashMap<usize, Element>) {
    let mut in_doubt = 0;
    let mut settled = HashMap::new();
    for (i, c) in calls.iter_mut().enumerate() {
        if !c.in_doubt() {
            continue;
        }
        let head = call_head(&mut lock_reader(reader), c);
        let head = match head {
            Ok(head) => head,
            Err(e) => {
                in_doubt += 1;
                problems.push(format!("a call in doubt cannot be read back: {e}"));
                continue;
            }
        };
        let marker = match c.marker_seq() {
            None => Ok(None),
            Some(seq) => match lock_reader(reader).record(seq) {
                Ok(Some(Record::Marker { marker, .. })) => Ok(marker.map(Box::new)),
                Ok(_) => Err(format!("journal record {seq} is not the call's marker")),
                Err(e) => Err(e.to_string()),
            },
        };
        let marker = match marker {
            Ok(marker) => marker,
            Err(e) => {
                in_doubt += 1;
                problems.push(format!(
                    "step {} was in doubt and its provider's marker cannot be read back: {e}",
                    head.context.step_id
                ));
                continue;
            }
        };
        let mut call = [JournaledCall {
            intent_seq: c.intent_seq,
            context: head.context,
            provider: head.provider,
            target: head.target,
            provider_context: Arc::new(head.provider_context),
            call_data: head.call_data.map(Box::new),
            marker,
            done: None,
            failed: false,
            undone: false,
            resolved: c.has(slot::RESOLVED).then_some(c.has(slot::APPLIED)),
        }];
        in_doubt += settle_in_doubt(engine, journal, &mut call, problems).await;
        let [call] = call;
        if let Some(done) = call.done {
            c.complete(c.intent_seq, slot::UNDO);
            if let Some(Guarded::Plain(undo)) = done.undo {
                settled.insert(i, undo);
            }
        } else if call.failed {
            c.flags |= slot::FAILED;
        }
    }
    (in_doubt, settled)
}

/// An undo read back from the journal, ready to run.
pub(crate) struct PreparedUndo {
    /// The provider to call (`None`: not registered in this process).
    pub(crate) provider: Option<Arc<dyn Provider>>,
    /// What its undo is called with.
    pub(crate) done: Done,
    /// `Namespace/Procedure` of the call.
    pub(crate) target: String,
    /// Its provider-state writes, reversed once the undo succeeds.
    pub(crate) state: Option<Arc<StateChange>>,
    /// Whether the provider is called (it returned an undo record).
    pub(crate) provider_undo: bool,
}

/// The undos of a running transaction's completed calls read back from its durable journal
/// as they run, the way recovery reads them ([`prepare_undo`]): the executor's rollback of a
/// durable run keeps only each call's sequence numbers (see `crate::Journal::read_back`).
pub(crate) struct LiveUndos<'a> {
    journal: &'a DurableJournal,
    reader: std::sync::Mutex<RecordReader<'a>>,
}

impl<'a> LiveUndos<'a> {
    /// The undos of `txn_id` in `journal`.
    pub(crate) fn new(journal: &'a DurableJournal, txn_id: &TxnId) -> LiveUndos<'a> {
        LiveUndos {
            journal,
            reader: std::sync::Mutex::new(RecordReader::new(&**journal.store(), txn_id)),
        }
    }

    /// The undo of the call whose intent and completion are records `intent_seq` and
    /// `done_seq`; an `Err` says why it cannot be made (the call is not undone).
    pub(crate) fn prepare(
        &self,
        engine: &Engine,
        intent_seq: u64,
        done_seq: u64,
    ) -> Result<PreparedUndo, String> {
        let slot = CallSlot {
            intent_seq,
            done_seq,
            flags: slot::DONE,
        };
        prepare_undo(
            engine,
            self.journal,
            &mut lock_reader(&self.reader),
            &slot,
            None,
        )
    }
}

/// Reads call `c`'s intent and completion back and opens what its undo needs (the undo
/// record, the kept executeData, the reversal of its provider-state writes, or its undo
/// script); `settled`: the undo record of a call settled as applied now. An `Err` is the
/// problem to report (the call is not undone).
fn prepare_undo(
    engine: &Engine,
    journal: &DurableJournal,
    reader: &mut RecordReader<'_>,
    c: &CallSlot,
    settled: Option<&Element>,
) -> Result<PreparedUndo, String> {
    let head =
        call_head(reader, c).map_err(|e| format!("a completed call cannot be undone: {e}"))?;
    let step = head.context.step_id.clone();
    let (undo, saved, state) = if let Some(undo) = settled {
        (Some(Guarded::Plain(undo.clone())), None, None)
    } else if head.script.is_some() {
        (None, None, None)
    } else {
        match reader.record(c.done_seq).map_err(|e| e.to_string()) {
            Ok(Some(Record::Done {
                undo, saved, state, ..
            })) => (undo, saved, state),
            Ok(_) => {
                return Err(format!(
                    "step {step}: cannot undo: journal record {} is not its completion",
                    c.done_seq
                ))
            }
            Err(e) => return Err(format!("step {step}: cannot undo: {e}")),
        }
    };
    let state = match state.as_ref().map(|g| journal.unguard(g)) {
        None => None,
        Some(Ok(record)) => match record.reversal() {
            // Kept as the change it reverses: the undo reverses it back.
            Ok(reversal) => Some(Arc::new(reversal.reversal())),
            Err(e) => {
                return Err(format!(
                    "step {step}: cannot undo its provider-state writes: the record does not decode: {e}"
                ))
            }
        },
        Some(Err(e)) => {
            return Err(format!(
                "step {step}: cannot undo its provider-state writes: {e}"
            ))
        }
    };
    let provider_undo = undo.is_some() || head.script.is_some();
    let (undo, script) = match (undo, &head.script) {
        (Some(undo), _) => match journal.unguard(&undo) {
            Ok(u) => (u, None),
            Err(e) => return Err(format!("step {step}: cannot undo: {e}")),
        },
        (None, Some((record, vars))) => match script_undo(engine, journal, record, vars) {
            Ok(p) => (Element::new("undo"), Some(p)),
            Err(e) => return Err(format!("step {step} (script undo): cannot undo: {e}")),
        },
        (None, None) => (Element::new("undo"), None),
    };
    let saved = saved.and_then(|s| journal.unguard(&s).ok());
    let provider = script.or_else(|| engine.registry().get(&head.provider).cloned());
    Ok(PreparedUndo {
        provider,
        done: Done {
            context: head.context,
            provider_context: head.provider_context,
            undo,
            execute_data: saved,
            state: crate::ProviderState::detached(),
        },
        target: head.target,
        state,
        provider_undo,
    })
}

/// Runs the undos of `pending` (call indices) in dependency order (`order`), each read back
/// from the journal as it starts; returns how many succeeded, failures go to `problems`.
async fn run_slot_undos(
    engine: &Engine,
    journal: &DurableJournal,
    reader: &std::sync::Mutex<RecordReader<'_>>,
    calls: &[CallSlot],
    settled: &HashMap<usize, Element>,
    (order, pending): (&[UndoOrder], &[u32]),
    problems: &mut Vec<String>,
) -> usize {
    let waited = WaitedOut::default();
    let results = undo_in_dependency_order(order, |k| {
        let i = pending[k] as usize;
        let prepared = prepare_undo(
            engine,
            journal,
            &mut lock_reader(reader),
            &calls[i],
            settled.get(&i),
        );
        let waited = &waited;
        async move {
            let p = prepared?;
            let step = p.done.context.step_id.clone();
            let txn = p.done.context.txn_id.clone();
            let r = match p.provider {
                Some(provider) => {
                    engine
                        .undo_one(provider, p.done, step.clone(), waited, p.state, p.provider_undo)
                        .await
                }
                None => Err(UndoError::NotRegistered),
            };
            r.map_err(|e| {
                format!(
                    "step {step} ({}): undo failed: {e} (fix the cause, then `provisio tx resume-rollback {txn}`; \
                     or undo it by hand, then `provisio tx resolve {txn} {step} --not-applied`)",
                    p.target,
                )
            })
        }
    })
    .await;
    problems.extend(results.failures.into_iter().map(|(_, problem)| problem));
    results.undone
}

/// Orders the undos of calls that wrote provider state one after another, the latest
/// completed first (as the run does, `Txn::state_chain`): each restores the values its
/// writes replaced, which is right only in reverse order of the writes.
fn chain_state_undos(order: &mut [UndoOrder], writes_state: impl Fn(usize) -> bool) {
    let mut writers: Vec<usize> = (0..order.len()).filter(|&k| writes_state(k)).collect();
    writers.sort_by_key(|&k| order[k].seq);
    for pair in writers.windows(2) {
        let (earlier, later) = (order[pair[0]].seq, pair[1]);
        order[later].started_after = order[later].started_after.max(earlier.saturating_add(1));
    }
}

/// A script step's undo rebuilt from the journal: its inputs opened (with the seal key when
/// sealed) and its text compiled again.
fn script_undo(
    engine: &Engine,
    journal: &DurableJournal,
    record: &ScriptUndoRecord,
    vars: &Guarded<serde_json::Value>,
) -> Result<Arc<dyn Provider>, String> {
    let vars = journal.unguard(vars).map_err(|e| e.to_string())?;
    let origin = ScriptOrigin::new(record.file.clone(), record.line, record.column);
    journaled_script_undo(
        engine.catalog().script_engine(),
        &record.source,
        &origin,
        vars,
    )
    .map_err(|e| e.to_string())
}

/// What became of an attempt to resume a resumable transaction.
#[derive(Debug)]
enum Resumption {
    /// It ran to its end.
    Resumed(Recovered),
    /// It cannot be resumed exactly: it is rolled back instead.
    NotResumable(NotResumable),
}

/// Why a resumable transaction cannot be resumed exactly.
#[derive(Debug, thiserror::Error)]
enum NotResumable {
    /// The record of what it was compiled from is not in the store.
    #[error("its pinned definitions are missing")]
    PinsMissing,
    /// That record does not read.
    #[error("pinned definitions unreadable: {0}")]
    PinsUnreadable(#[source] DecodeError),
    /// A definition it names is not in the store.
    #[error("pinned definition of `{namespace}` ({hash}) is missing")]
    DefinitionMissing {
        /// Namespace.
        namespace: String,
        /// Its hash.
        hash: String,
    },
    /// A definition it names does not parse.
    #[error("pinned definition of `{namespace}` unreadable: {source}")]
    DefinitionUnreadable {
        /// Namespace.
        namespace: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// The request data stored beside the records cannot be read back.
    #[error("its stored request data cannot be read: {0}")]
    DataUnreadable(String),
    /// Kept data (request, result, undo, call data) cannot be opened.
    #[error(transparent)]
    Guarded(#[from] GuardError),
    /// The pinned namespaces do not load with today's providers.
    #[error("pinned definitions do not load: {0}")]
    DoNotLoad(String),
    /// The summary's target is not `Namespace/Procedure`.
    #[error("target `{0}` is not Namespace/Procedure")]
    BadTarget(String),
    /// The pinned definitions do not compile with today's engine.
    #[error("pinned definitions do not compile: {0}")]
    DoNotCompile(String),
    /// A completed step's exact result was not kept.
    #[error("step {0} has no recorded result")]
    NoResult(String),
    /// A completed step's provider-state record does not decode.
    #[error("the provider-state record of step {step} does not decode: {message}")]
    StateUnreadable {
        /// The step.
        step: String,
        /// Why.
        message: String,
    },
    /// An in-doubt call's provider is gone.
    #[error("provider `{0}` is not registered")]
    ProviderMissing(String),
    /// An in-doubt call was applied and its undo failed.
    #[error(
        "step {step} was applied without a journaled result and could not be undone: {source}"
    )]
    UndoFailed {
        /// Step path.
        step: String,
        /// The undo's failure.
        source: UndoError,
    },
    /// The provider cannot tell whether an in-doubt call was applied.
    #[error("step {step} is in doubt: {message}")]
    InDoubt {
        /// Step path.
        step: String,
        /// The provider's answer.
        message: String,
    },
}

/// Why resuming stopped: the transaction cannot be resumed (roll it back), or the store
/// failed (recovery stops).
enum Stop {
    NotResumable(NotResumable),
    Failed(RecoveryError),
}

impl<E: Into<NotResumable>> From<E> for Stop {
    fn from(e: E) -> Stop {
        Stop::NotResumable(e.into())
    }
}

impl Stop {
    fn store(e: impl Into<RecoveryError>) -> Stop {
        Stop::Failed(e.into())
    }
}

/// Resumes a resumable transaction with the definitions it was pinned to.
async fn resume(
    engine: &Engine,
    journal: &DurableJournal,
    summary: &TxnSummary,
) -> Result<Resumption, RecoveryError> {
    match try_resume(engine, journal, summary).await {
        Ok(r) => Ok(Resumption::Resumed(r)),
        Err(Stop::NotResumable(why)) => Ok(Resumption::NotResumable(why)),
        Err(Stop::Failed(e)) => Err(e),
    }
}

async fn try_resume(
    engine: &Engine,
    journal: &DurableJournal,
    summary: &TxnSummary,
) -> Result<Recovered, Stop> {
    let pinned = load_pinned(journal, &summary.id)?;
    let data = journal.unguard(&pinned.request)?;
    let program = compile_pinned(engine, summary, pinned, &data)?;
    let records = records(journal, &summary.id).map_err(Stop::store)?;
    let next_seq = records.last().map(|(s, _)| s + 1).unwrap_or(0);
    journal.adopt(summary.clone(), next_seq);
    let (resume, in_doubt) = replay(journal, &summary.id, &records)?;
    let in_doubt_count = in_doubt.len();
    settle_before_resuming(engine, journal, in_doubt).await?;
    // Its run tells the providers it is over: those of the replayed calls too (a replayed
    // call counts as called, `Txn::providers_called`).
    let result = engine
        .resume_program(Arc::new(program), data, Element::new("context"), resume)
        .await;
    let problems = result
        .undo_failures
        .iter()
        .map(|u| format!("step {} ({}): undo failed: {}", u.step, u.target, u.message))
        .collect();
    Ok(Recovered {
        txn_id: summary.id.clone(),
        from: summary.state,
        to: result.state,
        undone: result.undone,
        in_doubt: in_doubt_count,
        problems,
    })
}

/// The definitions a transaction was compiled from, as pinned when it started.
struct Pinned {
    namespaces: Vec<Namespace>,
    /// A trusted request's own procedure.
    trusted: Option<Procedure>,
    request: Guarded,
}

fn load_pinned(journal: &DurableJournal, txn_id: &TxnId) -> Result<Pinned, Stop> {
    let store = journal.store();
    let bytes = store
        .get(Space::Definitions, &pinned_key(txn_id))
        .map_err(Stop::store)?
        .ok_or(NotResumable::PinsMissing)?;
    let pinned: PinnedDefinitions = decode(&bytes).map_err(NotResumable::PinsUnreadable)?;
    let mut namespaces = Vec::with_capacity(pinned.pins.len());
    let mut trusted = None;
    for pin in pinned.pins {
        let bytes = store
            .get(Space::Definitions, pin.hash.as_bytes())
            .map_err(Stop::store)?
            .ok_or_else(|| NotResumable::DefinitionMissing {
                namespace: pin.namespace.clone(),
                hash: pin.hash.clone(),
            })?;
        if pin.namespace == TRUSTED_REQUEST_PIN {
            // Sealed when a seal key was configured (it may hold literal secrets), else
            // plain (and before the sealing existed).
            trusted = match serde_json::from_slice::<Guarded<Procedure>>(&bytes) {
                Ok(sealed @ Guarded::Sealed(_)) => Some(journal.unguard(&sealed).map_err(|e| {
                    NotResumable::DataUnreadable(format!(
                        "the trusted request's procedure is sealed and cannot be opened: {e}"
                    ))
                })?),
                _ => serde_json::from_slice(&bytes).ok(),
            };
        } else {
            namespaces.push(serde_json::from_slice(&bytes).map_err(|source| {
                NotResumable::DefinitionUnreadable {
                    namespace: pin.namespace,
                    source,
                }
            })?);
        }
    }
    let request = match &pinned.stored {
        // Format 2: the data as received is the copy stored beside the records.
        Some(stored) => Guarded::Plain(
            journal
                .stored_data(txn_id, stored)
                .map_err(|e| NotResumable::DataUnreadable(e.to_string()))?,
        ),
        None => pinned.request,
    };
    Ok(Pinned {
        namespaces,
        trusted,
        request,
    })
}

/// Compiles the pinned definitions and request again.
fn compile_pinned(
    engine: &Engine,
    summary: &TxnSummary,
    pinned: Pinned,
    data: &Element,
) -> Result<crate::compile::Program, Stop> {
    let catalog = Catalog::new(pinned.namespaces, engine.registry()).map_err(|e| {
        NotResumable::DoNotLoad(
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let target = match pinned.trusted {
        Some(p) => RequestTarget::Trusted(Box::new(p)),
        None => {
            let (ns, p) = summary
                .target
                .rsplit_once('/')
                .ok_or_else(|| NotResumable::BadTarget(summary.target.clone()))?;
            RequestTarget::Call(CallTarget {
                namespace: ns.to_string(),
                procedure: p.to_string(),
            })
        }
    };
    let request = Request {
        target,
        data: data.clone(),
        context: Element::new("context"),
        format: Format::Yaml,
        source_ref: SourceRef::new("<journal>", 0, 0),
    };
    compile_request(&catalog, &request, &engine.options().limits)
        .map_err(|e| Stop::from(NotResumable::DoNotCompile(e.to_string())))
}

/// An intent with neither result nor failure in the journal.
struct InDoubtIntent {
    context: CallContext,
    provider: String,
    provider_context: Element,
    call_data: Guarded,
    /// The provider's last recovery marker of the call ([`Record::Marker`]).
    marker: Option<Guarded>,
}

/// What the journal says completed (replayed, not run again), the attempt each retried step
/// goes on with, and the calls in doubt (in the order of their intents).
fn replay(
    journal: &DurableJournal,
    txn_id: &TxnId,
    records: &[(u64, Record)],
) -> Result<(Resume, Vec<InDoubtIntent>), Stop> {
    let mut intents: Vec<InDoubtIntent> = Vec::new();
    let mut settled: HashSet<(&str, u32)> = HashSet::new();
    // The last marker of each call not settled yet (a call's marker precedes its outcome).
    let mut markers: HashMap<(&str, u32), &Guarded> = HashMap::new();
    let mut resume = Resume {
        txn_id: txn_id.clone(),
        done: HashMap::new(),
        next_attempt: HashMap::new(),
    };
    for (_, r) in records {
        match r {
            Record::Intent {
                step,
                attempt,
                namespace,
                procedure,
                provider,
                provider_context,
                call_data,
                ..
            } => {
                intents.push(InDoubtIntent {
                    context: CallContext {
                        txn_id: txn_id.clone(),
                        step_id: step.clone(),
                        attempt: *attempt,
                        namespace: namespace.clone(),
                        procedure: procedure.clone(),
                    },
                    provider: provider.clone(),
                    provider_context: provider_context.clone(),
                    call_data: call_data.clone(),
                    marker: None,
                });
                let next = resume.next_attempt.entry(step.clone()).or_insert(1);
                *next = (*next).max(attempt + 1);
            }
            Record::Done {
                step,
                attempt,
                undo,
                result,
                state,
                ..
            } => {
                settled.insert((step, *attempt));
                markers.remove(&(step.as_str(), *attempt));
                let result = result
                    .as_ref()
                    .ok_or_else(|| NotResumable::NoResult(step.clone()))?;
                let output = journal.unguard(result)?;
                let undo = undo.as_ref().map(|u| journal.unguard(u)).transpose()?;
                let state = match state.as_ref().map(|g| journal.unguard(g)).transpose()? {
                    None => None,
                    // Kept as the change the record reverses.
                    Some(record) => Some(Arc::new(
                        record
                            .reversal()
                            .map_err(|e| NotResumable::StateUnreadable {
                                step: step.clone(),
                                message: e.to_string(),
                            })?
                            .reversal(),
                    )),
                };
                resume.done.insert(
                    step.clone(),
                    Replayed {
                        output,
                        undo,
                        attempt: *attempt,
                        state,
                    },
                );
            }
            Record::Failed { step, attempt, .. } => {
                settled.insert((step, *attempt));
                markers.remove(&(step.as_str(), *attempt));
            }
            Record::Marker {
                step,
                attempt,
                marker: Some(marker),
                ..
            } if !settled.contains(&(step.as_str(), *attempt)) => {
                markers.insert((step, *attempt), marker);
            }
            _ => {}
        }
    }
    intents.retain(|i| !settled.contains(&(i.context.step_id.as_str(), i.context.attempt)));
    for i in &mut intents {
        let key = (i.context.step_id.as_str(), i.context.attempt);
        i.marker = markers.get(&key).map(|&m| m.clone());
    }
    Ok((resume, intents))
}

/// Settles the in-doubt calls before resuming: one not applied is journaled as failed; one
/// applied is undone, since its result never reached the journal, and the resumed run makes
/// it again (next attempt) so its result is known.
async fn settle_before_resuming(
    engine: &Engine,
    journal: &DurableJournal,
    in_doubt: Vec<InDoubtIntent>,
) -> Result<(), Stop> {
    for i in in_doubt {
        let step = i.context.step_id.clone();
        let p = engine
            .registry()
            .get(&i.provider)
            .cloned()
            .ok_or_else(|| NotResumable::ProviderMissing(i.provider.clone()))?;
        let execute_data = journal.unguard(&i.call_data)?;
        let marker = i.marker.as_ref().map(|m| journal.unguard(m)).transpose()?;
        let call = Call {
            context: i.context.clone(),
            provider_context: i.provider_context.clone(),
            execute_data,
            state: engine
                .state()
                .handle(&i.context.txn_id, &i.provider, Access::Read("recover")),
            intent: crate::provider::IntentBarrier::recovered(marker),
        };
        let settled = engine
            .recover_call(p.as_ref(), &call, &Redactor::default())
            .await;
        call.state.call_finished();
        match settled {
            Ok(None) => journal_settlement(
                &i.context,
                journal
                    .step_failed(&i.context, "not applied (settled at recovery)")
                    .await,
            ),
            Ok(Some(undo)) => {
                let done = Done {
                    context: i.context,
                    provider_context: i.provider_context,
                    undo,
                    execute_data: None,
                    state: crate::ProviderState::detached(),
                };
                let waited = WaitedOut::default();
                if let Err(source) = engine
                    .undo_one(p.clone(), done, step.clone(), &waited, None, true)
                    .await
                {
                    return Err(NotResumable::UndoFailed { step, source }.into());
                }
            }
            Err(message) => return Err(NotResumable::InDoubt { step, message }.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProcKind;

    /// A deterministic pseudo-random sequence (the tests need no seed file).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, below: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % below
        }
    }

    fn intent(step: &str, attempt: u32) -> Record {
        Record::Intent {
            at_ms: 0,
            step: step.to_string(),
            attempt,
            namespace: "N".into(),
            procedure: "Create".into(),
            provider: "Rec".into(),
            target: "N/Create".into(),
            kind: ProcKind::Write,
            provider_context: Element::new("providerContext"),
            input: serde_json::Value::Null,
            call_data: Guarded::Plain(Element::new("executeData")),
        }
    }

    /// A journal of calls that overlap (up to eight in flight), some retried, failed,
    /// without an undo, writing provider state, script steps (some run again), some undone
    /// already or resolved by an operator, and the calls in flight at the end in doubt.
    fn journal(seed: u64, calls: usize) -> Vec<(u64, Record)> {
        let mut rng = Lcg(seed);
        let mut out: Vec<Record> = Vec::new();
        let mut open: Vec<(String, u32)> = Vec::new();
        let mut finished: Vec<(String, u32)> = Vec::new();
        let mut scripts: Vec<String> = Vec::new();
        let mut started = 0;
        while started < calls || !open.is_empty() {
            let roll = rng.next(100);
            if started < calls && (open.is_empty() || (roll < 45 && open.len() < 8)) {
                // A retried step reuses its step id with the next attempt.
                let (step, attempt) = match finished.last() {
                    Some((s, a)) if roll < 5 => (s.clone(), a + 1),
                    _ => (format!("s/{started}"), 1),
                };
                out.push(intent(&step, attempt));
                // Its provider's markers, some with none (the intent made durable alone).
                for _ in 0..rng.next(3) {
                    out.push(Record::Marker {
                        at_ms: 0,
                        step: step.clone(),
                        attempt,
                        marker: (rng.next(4) != 0)
                            .then(|| Guarded::Plain(Element::with_text("path", &step))),
                    });
                }
                open.push((step, attempt));
                started += 1;
            } else if roll < 52 && started < calls {
                let step = match scripts.last() {
                    Some(s) if roll < 48 => s.clone(),
                    _ => format!("script/{started}"),
                };
                out.push(Record::ScriptDone {
                    at_ms: 0,
                    step: step.clone(),
                    undo: ScriptUndoRecord {
                        source: "x".into(),
                        file: "f".into(),
                        line: 1,
                        column: 1,
                    },
                    vars: Guarded::Plain(serde_json::Value::Null),
                });
                scripts.push(step);
                started += 1;
            } else if roll < 56 && !finished.is_empty() {
                let (step, attempt) = finished[rng.next(finished.len() as u64) as usize].clone();
                out.push(Record::Undone {
                    at_ms: 0,
                    step,
                    attempt,
                    error: (roll == 55).then(|| "no".to_string()),
                });
            } else if roll < 58 && !finished.is_empty() {
                let (step, attempt) = finished[rng.next(finished.len() as u64) as usize].clone();
                out.push(Record::Resolved {
                    at_ms: 0,
                    step,
                    attempt,
                    applied: roll == 57,
                    who: "op".into(),
                });
            } else if started >= calls && rng.next(4) == 0 {
                // The end: what is still open stays in doubt.
                break;
            } else {
                let k = rng.next(open.len() as u64) as usize;
                let (step, attempt) = open.remove(k);
                let r = rng.next(10);
                out.push(if r == 0 {
                    Record::Failed {
                        at_ms: 0,
                        step: step.clone(),
                        attempt,
                        message: "failed".into(),
                    }
                } else {
                    Record::Done {
                        at_ms: 0,
                        step: step.clone(),
                        attempt,
                        output: serde_json::Value::Null,
                        undo: (r != 1).then(|| Guarded::Plain(Element::new("undo"))),
                        saved: None,
                        result: None,
                        state: (r >= 8).then_some(Guarded::Withheld),
                    }
                });
                finished.push((step, attempt));
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, r)| (i as u64 + 3, r))
            .collect()
    }

    /// The undo order as recovery computed it before [`CallSlot`]: from every journaled
    /// call held in memory ([`journaled_calls`]), by intent sequence number.
    fn in_memory_order(records: &[(u64, Record)]) -> (Vec<UndoOrder>, Vec<(u64, u64)>) {
        let id = TxnId::new_v7();
        let calls = journaled_calls(&id, records.iter().cloned().map(Ok)).expect("calls");
        let mut done_seqs: Vec<u64> = calls
            .iter()
            .filter_map(|c| c.done.as_ref().map(|d| d.seq))
            .collect();
        done_seqs.sort_unstable();
        let completed_before = |seq: u64| done_seqs.partition_point(|&d| d < seq);
        let mut order = Vec::new();
        let mut which = Vec::new();
        let mut state = Vec::new();
        for c in calls.iter().filter(|c| c.to_undo()) {
            let done = c.done.as_ref().expect("completed");
            order.push(UndoOrder::new(
                completed_before(c.intent_seq),
                completed_before(done.seq),
            ));
            which.push((c.intent_seq, done.seq));
            state.push(done.state.is_some());
        }
        chain_state_undos(&mut order, |k| state[k]);
        (order, which)
    }

    #[test]
    fn the_streamed_undo_plan_is_the_in_memory_order() {
        let (mut undos, mut markers) = (0, 0);
        for seed in 0..200 {
            let records = journal(seed, 1 + (seed as usize * 37) % 400);
            let (order, which) = in_memory_order(&records);
            let slots = call_slots(records.iter().map(|(seq, r)| {
                let json = serde_json::to_vec(r).expect("encodes");
                Ok((*seq, serde_json::from_slice(&json).expect("a slot record")))
            }))
            .expect("slots");
            let (streamed, pending) = undo_plan(&slots);
            assert_eq!(streamed, order, "seed {seed}");
            let streamed_which: Vec<(u64, u64)> = pending
                .iter()
                .map(|&i| (slots[i as usize].intent_seq, slots[i as usize].done_seq))
                .collect();
            assert_eq!(streamed_which, which, "seed {seed}");
            // The same calls are in doubt.
            let id = TxnId::new_v7();
            let calls = journaled_calls(&id, records.iter().cloned().map(Ok)).expect("calls");
            let doubt: Vec<u64> = calls
                .iter()
                .filter(|c| c.in_doubt())
                .map(|c| c.intent_seq)
                .collect();
            let slot_doubt: Vec<u64> = slots
                .iter()
                .filter(|c| c.in_doubt())
                .map(|c| c.intent_seq)
                .collect();
            assert_eq!(slot_doubt, doubt, "seed {seed}");
            // Each call in doubt finds its last marker: the plan by its sequence number.
            let by_seq: HashMap<u64, &Record> = records.iter().map(|(n, r)| (*n, r)).collect();
            let marked: Vec<Option<Guarded>> = slots
                .iter()
                .filter(|c| c.in_doubt())
                .map(|c| match c.marker_seq().map(|n| by_seq[&n]) {
                    Some(Record::Marker { marker, .. }) => marker.clone(),
                    Some(other) => panic!("not a marker: {other:?}"),
                    None => None,
                })
                .collect();
            let want: Vec<Option<Guarded>> = calls
                .iter()
                .filter(|c| c.in_doubt())
                .map(|c| c.marker.as_deref().cloned())
                .collect();
            assert_eq!(marked, want, "seed {seed}");
            markers += want.iter().flatten().count();
            undos += order.len();
        }
        // The journals exercise the order: thousands of undos, state chains among them.
        assert!(undos > 5_000, "{undos}");
        assert!(markers > 50, "{markers} calls in doubt with a marker");
    }

    /// The plan of a journal: every call's slot, and the sequence number after the last.
    fn planned(
        store: &dyn crate::store::Store,
        id: &TxnId,
    ) -> Result<(Vec<CallSlot>, u64), RecoveryError> {
        plan_calls(store, id)
    }

    /// A chunk's plan reads back as the records' plan records.
    #[test]
    fn a_chunks_plan_reads_back_as_its_records() {
        let records = journal(7, 300);
        let json: Vec<Vec<u8>> = records
            .iter()
            .map(|(_, r)| serde_json::to_vec(r).expect("encodes"))
            .collect();
        let plan = plan_chunk(json.iter().map(|j| &j[..])).expect("plan");
        let want: Vec<PlanRecord> = json
            .iter()
            .map(|j| serde_json::from_slice(j).expect("a plan record"))
            .collect();
        assert_eq!(decode_plan(&plan).expect("decodes"), want);
        // About 17 bytes a record of a call.
        assert!(plan.len() <= 1 + 17 * json.len(), "{}", plan.len());
        assert!(decode_plan(&plan[..plan.len() - 1]).is_err(), "truncated");
        assert!(decode_plan(&[9]).is_err(), "unknown format");
        // The call key is SHA-256's (pinned here), not a hasher's that may change between
        // builds: plans written by one build are read by the next.
        assert_ne!(call_key("create[0]", 1), call_key("create[0]", 2));
        assert_eq!(call_key("s", 1), 0xa93d164f2fdb84c17fbce05cb8b5807a);
    }

    /// Recovery's plan of a journal written by the durable journal (compacted into chunks
    /// with their plans as it went) reads only the plans: it is the same with every chunk
    /// damaged. Without plans (a journal written before them) or with one missing, it is
    /// read from the chunks, the same.
    #[tokio::test]
    async fn the_plan_reads_the_chunks_plans_and_without_them_the_chunks() {
        let dir = tempfile::tempdir().expect("temp dir");
        use crate::store::Store;
        let store: Arc<dyn Store> =
            Arc::new(crate::store::SledStore::open(dir.path()).expect("sled"));
        let durable = DurableJournal::new(store.clone(), None, "test");
        let id = TxnId::new_v7();
        // Retries, scripts, state writes, resolutions, failed undos: a few thousand records.
        let records = journal(11, 1_500);
        for (_, r) in &records {
            durable
                .append(&id, r, false, Batch::new())
                .await
                .expect("append");
        }
        // The journal numbers them from 0.
        let want = call_slots(records.iter().enumerate().map(|(seq, (_, r))| {
            let json = serde_json::to_vec(r).expect("encodes");
            Ok((
                seq as u64,
                serde_json::from_slice(&json).expect("a plan record"),
            ))
        }))
        .expect("slots");
        assert!(want.iter().filter(|c| c.to_undo()).count() > 500);
        let want = (want, records.len() as u64);
        let tagged = |tag: u8| {
            store
                .scan(Space::Journal, &[id.as_bytes(), &[tag]].concat())
                .expect("scan")
        };
        let chunks = tagged(CHUNK_TAG);
        let plans = tagged(PLAN_TAG);
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        assert_eq!(plans.len(), chunks.len(), "a plan per chunk");
        assert_eq!(planned(&*store, &id).expect("plan"), want);

        // The chunks are not read: damaged, the plan is the same.
        let mut b = Batch::new();
        for (k, _) in &chunks {
            b.put(Space::Journal, k.clone(), b"not json".to_vec());
        }
        store.write(b, false).await.expect("damage");
        assert_eq!(planned(&*store, &id).expect("plan"), want);

        // A journal written before plans: planned from its chunks.
        let mut b = Batch::new();
        for (k, v) in &chunks {
            b.put(Space::Journal, k.clone(), v.clone());
        }
        b.delete(Space::Journal, plans[plans.len() / 2].0.clone());
        store.write(b, false).await.expect("restore");
        assert_eq!(planned(&*store, &id).expect("one plan missing"), want);
        let mut b = Batch::new();
        for (k, _) in &plans {
            b.delete(Space::Journal, k.clone());
        }
        store.write(b, false).await.expect("no plans");
        assert_eq!(planned(&*store, &id).expect("no plans"), want);
    }

    #[test]
    fn a_call_slot_is_small() {
        assert!(std::mem::size_of::<CallSlot>() <= 24);
        // An entry of the plan's index of calls: a key and a slot number.
        assert!(std::mem::size_of::<((u64, u64), u32)>() <= 24);
    }

    #[test]
    fn the_index_of_calls_finds_each_by_its_whole_key() {
        let mut index = CallIndex::default();
        let (a, b) = (call_key("create[1]", 1), call_key("create[1]", 2));
        index.insert(a, 7);
        index.insert(b, 8);
        // Keys equal in either half are different calls.
        let (high, low) = (a & (u128::MAX << 64), a & u128::from(u64::MAX));
        assert_eq!((index.get(a), index.get(b)), (Some(7), Some(8)));
        assert_eq!((index.get(high), index.get(low)), (None, None));
        index.insert(a, 9);
        assert_eq!(
            index.get(a),
            Some(9),
            "the latest intent stands for the call"
        );
    }
}
