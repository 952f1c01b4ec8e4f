//! Crash recovery and operator commands: finds transactions a crash left `running` or
//! `rolling_back`, settles their in-doubt steps (an intent with no result) through the
//! provider's `recover` (by idempotency key), and rolls them back in reverse dependency
//! order with every undo journaled. `resume_rollback` continues a `rollback_failed` one.

use super::index::{self, IndexError};
use super::journal::{DurableJournal, GuardError};
use super::records::{
    decode, decode_records, now_ms, pinned_key, AuditEntry, DecodeError, Guarded, JournalKey,
    PinnedDefinitions, Record, ScriptUndoRecord, TxnSummary, FORMAT, TRUSTED_REQUEST_PIN,
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

/// The journal of one transaction, in order, with sequence numbers. A finished
/// transaction's records are one array under its id (sequence number = index); records
/// written after that (a resumed rollback) follow under their own keys.
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
    let records = records(journal, &s.id)?;
    let next_seq = records.last().map(|(n, _)| n + 1).unwrap_or(0);
    let calls = journaled_calls(&s.id, records.into_iter().map(Ok))?;
    let of_step: Vec<&JournaledCall> = calls.iter().filter(|c| c.context.step_id == step).collect();
    if of_step.is_empty() {
        let mut steps: Vec<&str> = calls.iter().map(|c| c.context.step_id.as_str()).collect();
        steps.dedup();
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
    /// the operator.
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
    /// Sequence number of the completion (the intent's, for a call settled at recovery).
    seq: u64,
    /// The provider's undo record (`None`: nothing to undo).
    undo: Option<Guarded>,
    /// executeData kept for the undo.
    saved: Option<Box<Guarded>>,
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

/// An undo to run: which call, the undo request, and for a script step its undo script
/// (run in place of a provider); the reversal of its provider-state writes, and whether the
/// provider is called (it has an undo record).
struct PendingUndo {
    call: usize,
    /// The undo record, opened (the call's context and provider context are the call's:
    /// the [`Done`] is built when the undo runs).
    undo: Element,
    /// executeData kept for the undo.
    saved: Option<Element>,
    script: Option<Arc<dyn Provider>>,
    state: Option<Arc<StateChange>>,
    provider_undo: bool,
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
    // The records are read a few store values at a time and taken apart as they come:
    // the calls keep what the undos need, never the whole decoded journal beside them.
    let mut next_seq = 0;
    let stream = RecordStream::new(&**journal.store(), &summary.id)
        .map(|r| r.inspect(|(seq, _)| next_seq = seq + 1));
    let mut calls = journaled_calls(&summary.id, stream)?;
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
    let in_doubt = settle_in_doubt(engine, journal, &mut calls, &mut problems).await;
    let (order, pending) = pending_undos(engine, journal, &mut calls, &mut problems);
    let undone = run_undos(engine, &calls, &order, &pending, &mut problems).await;
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
                    saved: None,
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
                saved,
                state,
                ..
            } => {
                if let Some(&i) = index.get(&(step, attempt)) {
                    calls[i].done = Some(Completed {
                        seq,
                        undo,
                        saved: saved.map(Box::new),
                        script: None,
                        state: state.map(Box::new),
                    });
                    calls[i].call_data = None;
                }
            }
            Record::Failed { step, attempt, .. } => {
                if let Some(&i) = index.get(&(step, attempt)) {
                    calls[i].failed = true;
                    calls[i].call_data = None;
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
        let call = Call {
            context: c.context.clone(),
            provider_context: (*c.provider_context).clone(),
            execute_data: data,
            state: engine
                .state()
                .handle(&c.context.txn_id, &c.provider, Access::Read("recover")),
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
                    saved: None,
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

/// The undos still to run (completed calls with an undo record or undo script, not yet
/// undone nor found "not applied" by an operator), ordered by when calls completed and
/// started; what cannot be opened goes to `problems`.
fn pending_undos(
    engine: &Engine,
    journal: &DurableJournal,
    calls: &mut [JournaledCall],
    problems: &mut Vec<String>,
) -> (Vec<UndoOrder>, Vec<PendingUndo>) {
    let mut done_seqs: Vec<u64> = calls
        .iter()
        .filter_map(|c| c.done.as_ref().map(|d| d.seq))
        .collect();
    done_seqs.sort_unstable();
    let completed_before = |seq: u64| done_seqs.partition_point(|&d| d < seq);
    let mut order = Vec::new();
    let mut pending = Vec::new();
    for (i, c) in calls.iter_mut().enumerate() {
        if !c.to_undo() {
            continue;
        }
        let Some(done) = c.done.as_mut() else {
            continue;
        };
        let step = &c.context.step_id;
        let state = match done.state.as_deref().map(|g| journal.unguard(g)) {
            None => None,
            Some(Ok(record)) => match record.reversal() {
                // Kept as the change it reverses: the undo reverses it back.
                Ok(reversal) => Some(Arc::new(reversal.reversal())),
                Err(e) => {
                    problems.push(format!(
                        "step {step}: cannot undo its provider-state writes: the record does not decode: {e}"
                    ));
                    continue;
                }
            },
            Some(Err(e)) => {
                problems.push(format!(
                    "step {step}: cannot undo its provider-state writes: {e}"
                ));
                continue;
            }
        };
        let provider_undo = done.undo.is_some() || done.script.is_some();
        // Taken, not copied: the opened record is what the undo gets.
        let (undo, script) = match (done.undo.take(), done.script.as_deref()) {
            (Some(undo), _) => match journal.unguard(&undo) {
                Ok(u) => (u, None),
                Err(e) => {
                    problems.push(format!("step {step}: cannot undo: {e}"));
                    continue;
                }
            },
            (None, Some((record, vars))) => match script_undo(engine, journal, record, vars) {
                Ok(p) => (Element::new("undo"), Some(p)),
                Err(e) => {
                    problems.push(format!("step {step} (script undo): cannot undo: {e}"));
                    continue;
                }
            },
            (None, None) if state.is_some() => (Element::new("undo"), None),
            (None, None) => continue,
        };
        let saved = done.saved.take().and_then(|s| journal.unguard(&*s).ok());
        order.push(UndoOrder {
            started_after: completed_before(c.intent_seq),
            seq: completed_before(done.seq),
        });
        pending.push(PendingUndo {
            call: i,
            undo,
            saved,
            script,
            state,
            provider_undo,
        });
    }
    chain_state_undos(&mut order, &pending);
    (order, pending)
}

/// Orders the undos of calls that wrote provider state one after another, the latest
/// completed first (as the run does, `Txn::state_chain`): each restores the values its
/// writes replaced, which is right only in reverse order of the writes.
fn chain_state_undos(order: &mut [UndoOrder], pending: &[PendingUndo]) {
    let mut writers: Vec<usize> = (0..pending.len())
        .filter(|&k| pending[k].state.is_some())
        .collect();
    writers.sort_by_key(|&k| order[k].seq);
    for pair in writers.windows(2) {
        let (earlier, later) = (order[pair[0]].seq, pair[1]);
        order[later].started_after = order[later].started_after.max(earlier + 1);
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

/// Runs the undos in dependency order; returns how many succeeded, failures go to
/// `problems`.
async fn run_undos(
    engine: &Engine,
    calls: &[JournaledCall],
    order: &[UndoOrder],
    pending: &[PendingUndo],
    problems: &mut Vec<String>,
) -> usize {
    let waited = WaitedOut::default();
    let results = undo_in_dependency_order(order, |k| {
        let p = &pending[k];
        let call = &calls[p.call];
        let provider = p
            .script
            .clone()
            .or_else(|| engine.registry().get(&call.provider).cloned());
        let done = Done {
            context: call.context.clone(),
            provider_context: (*call.provider_context).clone(),
            undo: p.undo.clone(),
            execute_data: p.saved.clone(),
            state: crate::ProviderState::detached(),
        };
        let waited = &waited;
        async move {
            match provider {
                Some(provider) => {
                    let step = done.context.step_id.clone();
                    let state = p.state.clone();
                    engine
                        .undo_one(provider, done, step, waited, state, p.provider_undo)
                        .await
                }
                None => Err(UndoError::NotRegistered),
            }
        }
    })
    .await;
    let mut undone = 0;
    for (p, r) in pending.iter().zip(results) {
        match r {
            Ok(()) => undone += 1,
            Err(e) => problems.push(format!(
                "step {step} ({}): undo failed: {e} (fix the cause, then `provisio tx resume-rollback {txn}`; \
                 or undo it by hand, then `provisio tx resolve {txn} {step} --not-applied`)",
                calls[p.call].target,
                step = calls[p.call].context.step_id,
                txn = calls[p.call].context.txn_id,
            )),
        }
    }
    undone
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
            }
            _ => {}
        }
    }
    intents.retain(|i| !settled.contains(&(i.context.step_id.as_str(), i.context.attempt)));
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
        let call = Call {
            context: i.context.clone(),
            provider_context: i.provider_context.clone(),
            execute_data,
            state: engine
                .state()
                .handle(&i.context.txn_id, &i.provider, Access::Read("recover")),
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
